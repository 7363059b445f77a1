"""GSM8K loading (local JSONL and a stubbed hub), veRL's prompt, reference answers and clear data errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvpo_lab.tasks import build_task
from dvpo_lab.tasks.gsm8k import INSTRUCTION, GSM8KTask, reference_answer

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_GSM8K = (REPO_ROOT / "../shared/data/gsm8k").resolve()

ROWS = [
    {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
    {"question": "A big number?", "answer": "It is 1,000 + 234.\n#### 1,234"},
    {"question": "Owe?", "answer": "2 - 5 = -3\n#### -3"},
]


def _write(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    rows = [json.dumps(r) for r in ROWS]
    _write(tmp_path, "train.jsonl", rows)
    _write(tmp_path, "test.jsonl", rows[:2] + [""])  # a trailing blank line is tolerated
    return tmp_path


def test_local_files_load(data_dir: Path) -> None:
    task = build_task("gsm8k", data_dir=str(data_dir))
    assert isinstance(task, GSM8KTask) and task.max_response_len == 256
    assert task.num_train() == 3 and len(task.test_problems()) == 2
    p = task.test_problems()[1]
    assert p.prompt == 'A big number? Let\'s think step by step and output the final answer after "####".'
    assert p.answer == "1234" and p.solution == ROWS[1]["answer"]
    assert [q.answer for q in task.sft_problems()] == ["5", "1234", "-3"]


def test_train_indices_wrap(data_dir: Path) -> None:
    task = GSM8KTask(data_dir=data_dir)
    assert task.train_problems([0, 3, 7]) == task.train_problems([0, 0, 1])


def test_subsample_first_rows(data_dir: Path) -> None:
    task = GSM8KTask(data_dir=data_dir, max_train=2, max_test=1, max_response_len=64)
    assert task.num_train() == 2 and len(task.test_problems()) == 1 and task.max_response_len == 64
    with pytest.raises(ValueError, match="max_test"):
        GSM8KTask(data_dir=data_dir, max_test=0)


def test_scoring_uses_strict_rule(data_dir: Path) -> None:
    task = GSM8KTask(data_dir=data_dir)
    probs = task.train_problems(range(3))
    responses = ["so #### 5", "#### 1,234", "the answer is -3"]
    assert torch.equal(task.score(responses, probs), torch.tensor([1.0, 1.0, 0.0]))


def test_reference_answer() -> None:
    assert reference_answer("a #### b #### 1,000 ") == "1000"
    assert reference_answer("no marker") is None


def test_malformed_json_names_file_and_line(data_dir: Path) -> None:
    _write(data_dir, "test.jsonl", [json.dumps(ROWS[0]), "{not json"])
    with pytest.raises(ValueError, match=r"test\.jsonl:2: not valid JSON"):
        GSM8KTask(data_dir=data_dir)


@pytest.mark.parametrize(
    "line, match",
    [
        (json.dumps({"question": "q"}), "missing key 'answer'"),
        (json.dumps({"question": "q", "answer": "no final"}), "must end with '#### <number>'"),
        (json.dumps(["q", "a"]), "expected a JSON object"),
        (json.dumps({"question": 3, "answer": "#### 3"}), "'question' must be a string"),
    ],
)
def test_bad_rows_name_file_and_line(data_dir: Path, line: str, match: str) -> None:
    _write(data_dir, "train.jsonl", [json.dumps(ROWS[0]), "", line])
    with pytest.raises(ValueError, match=rf"train\.jsonl:3: .*{match}"):
        GSM8KTask(data_dir=data_dir)


def test_missing_folder_or_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match="folder does not exist.*train.jsonl and test.jsonl.*data_dir"
    ):
        GSM8KTask(data_dir=tmp_path / "nope")
    _write(tmp_path, "train.jsonl", [json.dumps(ROWS[0])])
    with pytest.raises(FileNotFoundError, match="test.jsonl is missing"):
        GSM8KTask(data_dir=tmp_path)


def _stub_datasets(monkeypatch: pytest.MonkeyPatch, load_dataset: object) -> None:
    # a stand-in module: no hub here, and importing the real `datasets` would cost a second per test run
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hub_path_through_stubbed_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(path: str, name: str, split: str) -> list[dict[str, str]]:
        calls.append((path, name, split))
        return list(ROWS)  # iterates like a datasets.Dataset: one dict per row

    _stub_datasets(monkeypatch, fake_load_dataset)
    task = GSM8KTask(max_test=2)
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    assert task.num_train() == 3 and len(task.test_problems()) == 2
    assert task.test_problems()[0].prompt.endswith(INSTRUCTION)


def test_hub_failure_points_to_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    _stub_datasets(monkeypatch, offline)
    with pytest.raises(RuntimeError, match="task.data_dir"):
        GSM8KTask()


def test_real_gsm8k_gold_solutions_score_one() -> None:
    if not (SHARED_GSM8K / "test.jsonl").is_file():
        pytest.skip(f"../shared/data/gsm8k not found at {SHARED_GSM8K}; it holds the real GSM8K JSONL files")
    task = GSM8KTask(data_dir=SHARED_GSM8K)
    assert task.num_train() == 7473
    test = task.test_problems()
    assert len(test) == 1319
    scores = task.score([p.solution for p in test], test)  # type: ignore[misc]
    assert bool((scores == 1.0).all()), [p.answer for p, s in zip(test, scores) if s != 1.0][:5]


# --- templates, the flexible reward, answer extraction ----------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_chat_template_wraps_the_verl_prompt(data_dir: Path) -> None:
    from dvpo_lab.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    with pytest.raises(ValueError, match="task.template=chat: the tokenizer .* has no chat template.*plain"):
        GSM8KTask(data_dir=data_dir, template="chat", tokenizer=tok)
    with pytest.raises(ValueError, match="task.template=chat needs the model's tokenizer"):
        GSM8KTask(data_dir=data_dir, template="chat")
    tok.chat_template = CHAT_TEMPLATE
    task = GSM8KTask(data_dir=data_dir, template="chat", tokenizer=tok)
    plain = GSM8KTask(data_dir=data_dir)
    for p, q in zip(task.test_problems(), plain.test_problems()):
        assert p.prompt == f"<|user|>{q.prompt}\n<|assistant|>" and p.answer == q.answer


def test_math_verify_reward_is_flexible(data_dir: Path) -> None:
    strict, flexible = GSM8KTask(data_dir=data_dir), GSM8KTask(data_dir=data_dir, reward="math_verify")
    probs = strict.train_problems(range(3))  # answers 5, 1234, -3
    responses = ["so #### 5.0", "the total is $\\boxed{1234}$", "it comes to -3 dollars"]
    assert strict.score(responses, probs).tolist() == [0.0, 0.0, 0.0]
    assert flexible.score(responses, probs).tolist() == [1.0, 1.0, 1.0]
    # a worked solution's intermediate numbers do not count once "####" says where the answer is
    assert flexible.score(["2 + 3 = <<2+3=5>>5 then 7\n#### 6"], probs[:1]).tolist() == [0.0]
    assert strict.extract_answer("x #### 1,234") == "1234" and strict.extract_answer("1234") is None
    assert flexible.extract_answer("x #### 1,234") == "1234" and flexible.extract_answer("so 7") == "7"
    with pytest.raises(ValueError, match="task.reward='fuzzy'"):
        GSM8KTask(data_dir=data_dir, reward="fuzzy")


@pytest.fixture(scope="module")
def strict_task(tmp_path_factory: pytest.TempPathFactory) -> GSM8KTask:
    folder = tmp_path_factory.mktemp("gsm8k")
    for name in ("train.jsonl", "test.jsonl"):
        (folder / name).write_text(json.dumps(ROWS[0]) + "\n")
    return GSM8KTask(data_dir=folder)


# Arbitrary text, plus text dense in what the rule looks for.
_TEXT = st.one_of(st.text(max_size=400), st.text(alphabet="#0123456789 -.,$x\n", max_size=400))


@settings(max_examples=10_000, deadline=None)
@given(_TEXT)
def test_extract_answer_never_raises(strict_task: GSM8KTask, text: str) -> None:
    out = strict_task.extract_answer(text)
    assert out is None or (isinstance(out, str) and "," not in out)


def test_real_gsm8k_gold_solutions_pass_math_verify() -> None:
    if not (SHARED_GSM8K / "test.jsonl").is_file():
        pytest.skip(f"../shared/data/gsm8k not found at {SHARED_GSM8K}; it holds the real GSM8K JSONL files")
    task = GSM8KTask(data_dir=SHARED_GSM8K, max_train=1, max_test=300, reward="math_verify")
    test = task.test_problems()
    scores = task.score([p.solution for p in test], test)  # type: ignore[misc]
    assert bool((scores == 1.0).all()), [p.answer for p, s in zip(test, scores) if s != 1.0][:5]
    assert [task.extract_answer(p.solution) for p in test[:50]] == [p.answer for p in test[:50]]  # type: ignore[arg-type]
