"""GSM8K loading (local JSONL and a stubbed hub), veRL's prompt, reference answers and clear data errors."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvpo_lab.config import ConfigError
from dvpo_lab.tasks.gsm8k import INSTRUCTION, GSM8KTask, reference_answer
from dvpo_lab.tasks.reward import math_verify_match, strict_match

REWARDS = {"strict": strict_match, "math_verify": math_verify_match}  # the built-in rules task.reward names

REPO_ROOT = Path(__file__).resolve().parents[2]
# The real GSM8K files (openai/gsm8k as train.jsonl / test.jsonl), for the tests that need them: the folder
# named by GSM8K_DATA_DIR, else the checkout's sibling data folder where the project's CI keeps them.
SHARED_GSM8K = Path(os.environ.get("GSM8K_DATA_DIR") or REPO_ROOT.parent / "shared" / "data" / "gsm8k").resolve()
NO_REAL_DATA = f"no GSM8K files at {SHARED_GSM8K}; set GSM8K_DATA_DIR to a folder with train.jsonl and test.jsonl"

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
    task = GSM8KTask(data_dir=str(data_dir))
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


def _one_line_config_error(err: pytest.ExceptionInfo, data_dir: object) -> str:
    """The message of a data error: a ConfigError, one line, naming the key and the fix, no internal paths."""
    msg = str(err.value)
    assert err.type is ConfigError and "\n" not in msg, msg
    assert msg.startswith(f"task.data_dir={str(data_dir)!r}: "), msg
    assert "Fix: set task.data_dir to a folder with train.jsonl and test.jsonl (GSM8K format:" in msg, msg
    assert "shared" not in msg, msg
    return msg


def test_malformed_json_names_key_file_line_and_fix(data_dir: Path) -> None:
    _write(data_dir, "train.jsonl", [json.dumps(ROWS[0]), "", '{"question": "Tom has 2 app'])  # truncated
    with pytest.raises(ConfigError) as err:
        GSM8KTask(data_dir=data_dir)
    msg = _one_line_config_error(err, data_dir)
    assert f"{data_dir / 'train.jsonl'}:3: not valid JSON (Unterminated string starting at column 14)" in msg


@pytest.mark.parametrize(
    "line, match",
    [
        (json.dumps({"question": "q"}), "missing key 'answer' .*it has \\['question'\\]"),
        (json.dumps({"answer": "#### 3"}), "missing key 'question'"),
        (json.dumps({"question": "q", "answer": "no final"}), "'answer' must end with '#### <number>'"),
        (json.dumps({"question": "q", "answer": "line one\nno final"}), "'answer' must end with '#### <number>'"),
        (json.dumps(["q", "a"]), "expected a JSON object, got list"),
        (json.dumps({"question": 3, "answer": "#### 3"}), "'question' must be a string"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_rows_name_key_file_line_and_fix(data_dir: Path, line: str, match: str) -> None:
    _write(data_dir, "test.jsonl", [json.dumps(ROWS[0]), "", line])
    with pytest.raises(ConfigError, match=rf"test\.jsonl:3: {match}") as err:
        GSM8KTask(data_dir=str(data_dir))
    _one_line_config_error(err, str(data_dir))


def test_missing_folder_or_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"folder .*nope does not exist\. Fix: set task\.data_dir") as err:
        GSM8KTask(data_dir=tmp_path / "nope")
    _one_line_config_error(err, tmp_path / "nope")
    _write(tmp_path, "train.jsonl", [json.dumps(ROWS[0])])
    with pytest.raises(ConfigError, match="test.jsonl is missing in") as err:
        GSM8KTask(data_dir=tmp_path)
    _one_line_config_error(err, tmp_path)
    (tmp_path / "train.jsonl").rename(tmp_path / "test.jsonl")
    with pytest.raises(ConfigError, match="train.jsonl is missing in"):
        GSM8KTask(data_dir=tmp_path)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        GSM8KTask(data_dir=tmp_path / "test.jsonl")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file_names_it(data_dir: Path, content: bytes) -> None:
    (data_dir / "test.jsonl").write_bytes(content)
    with pytest.raises(ConfigError, match=r"test\.jsonl has no rows \(empty, or only blank lines\)") as err:
        GSM8KTask(data_dir=data_dir)
    _one_line_config_error(err, data_dir)


def test_unreadable_files_name_the_line(data_dir: Path) -> None:
    (data_dir / "train.jsonl").write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(ConfigError, match=r"train\.jsonl:2: not UTF-8 text") as err:
        GSM8KTask(data_dir=data_dir)
    _one_line_config_error(err, data_dir)
    (data_dir / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n")  # a BOM is fine
    assert GSM8KTask(data_dir=data_dir).num_train() == 1
    (data_dir / "train.jsonl").unlink()
    (data_dir / "train.jsonl").mkdir()
    with pytest.raises(ConfigError, match="train.jsonl is missing"):  # a folder is not a data file
        GSM8KTask(data_dir=data_dir)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_train": 0}, "task.max_train=0: must be >= 1 or null"),
        ({"max_response_len": 0}, "task.max_response_len=0"),
    ],
)
def test_bad_knobs_are_config_errors(data_dir: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        GSM8KTask(data_dir=data_dir, **kwargs)


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
    with pytest.raises(
        ConfigError,
        match=r"^task\.data_dir=null \(hub openai/gsm8k, main, split train\): could "
        r"not load it \(no network\)\. Fix: offline, set task\.data_dir to a folder with train",
    ) as err:
        GSM8KTask()
    assert "\n" not in str(err.value)


def test_bad_hub_rows_and_empty_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    _stub_datasets(monkeypatch, lambda path, name, split: [ROWS[0], {"question": "q"}])
    with pytest.raises(
        ConfigError,
        match=r"^task\.data_dir=null \(hub .*\): openai/gsm8k\[train\]\[1\]: missing key "
        "'answer'.*Fix: set task.data_dir",
    ):
        GSM8KTask()
    _stub_datasets(monkeypatch, lambda path, name, split: [])
    with pytest.raises(ConfigError, match="split train.*the split has no rows"):
        GSM8KTask()


def test_real_gsm8k_gold_solutions_score_one() -> None:
    if not (SHARED_GSM8K / "test.jsonl").is_file():
        pytest.skip(NO_REAL_DATA)
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
    strict, flexible = GSM8KTask(data_dir=data_dir), GSM8KTask(data_dir=data_dir, reward=math_verify_match)
    probs = strict.train_problems(range(3))  # answers 5, 1234, -3
    responses = ["so #### 5.0", "the total is $\\boxed{1234}$", "it comes to -3 dollars"]
    assert strict.score(responses, probs).tolist() == [0.0, 0.0, 0.0]
    assert flexible.score(responses, probs).tolist() == [1.0, 1.0, 1.0]
    # a worked solution's intermediate numbers do not count once "####" says where the answer is
    assert flexible.score(["2 + 3 = <<2+3=5>>5 then 7\n#### 6"], probs[:1]).tolist() == [0.0]
    assert strict.extract_answer("x #### 1,234") == "1234" and strict.extract_answer("1234") is None
    assert flexible.extract_answer("x #### 1,234") == "1234" and flexible.extract_answer("so 7") == "7"


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
        pytest.skip(NO_REAL_DATA)
    task = GSM8KTask(data_dir=SHARED_GSM8K, max_train=1, max_test=300, reward=math_verify_match)
    test = task.test_problems()
    scores = task.score([p.solution for p in test], test)  # type: ignore[misc]
    assert bool((scores == 1.0).all()), [p.answer for p, s in zip(test, scores) if s != 1.0][:5]
    assert [task.extract_answer(p.solution) for p in test[:50]] == [p.answer for p in test[:50]]  # type: ignore[arg-type]


# --- where the answer is: the committed "####", not the last 300 characters -----------------------------------

# a worked solution, its committed answer, then 352 characters of explanation full of other numbers
LONG = "2+40=42\n#### 5\n" + ("To check: 17 apples and 25 pears, 3 boxes of 14, or 6 rows of 7. " * 6)[:352]


@pytest.mark.parametrize("reward", ["strict", "math_verify"])
def test_task_score_ignores_text_after_the_committed_answer(data_dir: Path, reward: str) -> None:
    task = GSM8KTask(data_dir=data_dir, reward=REWARDS[reward])
    p = task.train_problems([0])  # answer 5
    assert task.score([LONG], p).tolist() == [1.0]
    assert task.extract_answer(LONG) == "5"
    assert task.score([LONG.replace("#### 5", "#### 6")], p).tolist() == [0.0]  # a wrong answer stays wrong
    seven = [dataclasses.replace(p[0], answer="7")]  # the prose's last number is never the answer
    assert task.score([LONG], seven).tolist() == [0.0]
    assert task.score_against([LONG], p, ["7"]).tolist() == [0.0]  # majority-vote labels use the same rule


@pytest.mark.parametrize("reward", ["strict", "math_verify"])
def test_reward_window_300_is_verls(data_dir: Path, reward: str) -> None:
    task = GSM8KTask(data_dir=data_dir, reward=functools.partial(REWARDS[reward], window=300))
    p = task.train_problems([0])
    assert task.score([LONG], p).tolist() == [0.0]  # the marker is outside veRL's window
    assert task.extract_answer(LONG) is None  # and no prose number is taken instead
    assert task.score(["2 + 3 = 5\n#### 5\nshort tail"], p).tolist() == [1.0]


def test_reward_window_is_a_keyword_of_the_reward_node(data_dir: Path) -> None:
    """`+task.reward.window=300` (veRL's window) reaches the rule through the reward node; the default reads all."""
    from dvpo_lab.run import make_task
    from tests.conftest import compose_cfg

    base = ["task=gsm8k", f"task.data_dir={data_dir}"]
    default = make_task(compose_cfg(base))
    verl = make_task(compose_cfg([*base, "+task.reward.window=300"]))
    flexible = make_task(
        compose_cfg([*base, "task.reward._target_=dvpo_lab.tasks.reward.math_verify_match", "+task.reward.window=300"])
    )
    p = default.train_problems([0])
    assert default.score([LONG], p).tolist() == [1.0] and default.extract_answer(LONG) == "5"
    assert verl.score([LONG], p).tolist() == [0.0] and verl.extract_answer(LONG) is None
    assert flexible.score([LONG], p).tolist() == [0.0] and flexible.extract_answer(LONG) is None
    assert flexible.score(["so $\\boxed{5}$"], p).tolist() == [1.0]  # and the flexible rule it names
