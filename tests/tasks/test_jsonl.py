"""`task=jsonl`: a user's prompt/answer rows from a file, a folder, two paths or a (stubbed) hub dataset, the column
mapping, the held-out split, and data errors as one line naming the key, the file and line, and the fix."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from dvpo_lab.config import ConfigError
from dvpo_lab.tasks.jsonl import JSONLTask, reference_answer
from dvpo_lab.tasks.reward import exact_match, math_verify_match

ROWS = [{"q": f"{a}+{a}=", "a": 2 * a, "sol": f"#### {2 * a}", "level": a % 3} for a in range(10)]


def _write(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _task(**kwargs) -> JSONLTask:
    return JSONLTask(prompt_key="q", answer_key="a", solution_key="sol", **kwargs)


def test_one_file_holds_out_evenly_spread_test_rows(tmp_path: Path) -> None:
    task = _task(path=str(_write(tmp_path / "data.jsonl", ROWS)), test_size=3)
    assert [p.prompt for p in task.test_problems()] == ["0+0=", "3+3=", "6+6="]  # rows i * n // k
    assert task.num_train() == 7 and "0+0=" not in {p.prompt for p in task.sft_problems()}
    p = task.train_problems([0])[0]
    assert (p.prompt, p.answer, p.solution, p.extra_info) == ("1+1=", "2", "#### 2", {"level": 1})
    assert task.train_problems([7]) == task.train_problems([0])  # wraps around the split
    default = _task(path=str(tmp_path / "data.jsonl"))  # test_size 0.1 of 10 rows: one row
    assert len(default.test_problems()) == 1 and default.num_train() == 9


def test_folder_with_splits_and_two_paths(tmp_path: Path) -> None:
    _write(tmp_path / "d" / "train.jsonl", ROWS[:6])
    _write(tmp_path / "d" / "test.jsonl", ROWS[6:])
    task = _task(path=str(tmp_path / "d"))
    assert task.num_train() == 6 and len(task.test_problems()) == 4
    (tmp_path / "d" / "test.jsonl").unlink()  # no test file: held out of train.jsonl
    assert len(_task(path=str(tmp_path / "d")).test_problems()) == 1
    two = _task(
        train_path=str(_write(tmp_path / "a.jsonl", ROWS[:3])), test_path=str(_write(tmp_path / "b.jsonl", ROWS[3:5]))
    )
    assert two.num_train() == 3 and [p.answer for p in two.test_problems()] == ["6", "8"]
    capped = _task(train_path=str(tmp_path / "a.jsonl"), test_path=str(tmp_path / "b.jsonl"), max_train=2, max_test=1)
    assert capped.num_train() == 2 and len(capped.test_problems()) == 1


def test_default_columns_instruction_and_reward(tmp_path: Path) -> None:
    rows = [{"prompt": "What is 2+2?", "answer": "#### 4"}, {"prompt": "1+1?", "answer": 2}]
    path = _write(tmp_path / "x.jsonl", rows)
    task = JSONLTask(path=str(path), test_size=1, instruction='Answer after "####".')
    p = task.test_problems()[0]  # row 0 is held out (test_size=1)
    assert p.prompt == 'What is 2+2? Answer after "####".' and p.answer == "4" and p.extra_info is None
    assert task.train_problems([0])[0].answer == "2"  # a number in the answer column
    assert task.score(["so #### 4", "#### 4.0", "4"], [p] * 3).tolist() == [1.0, 0.0, 0.0]  # veRL's strict rule
    assert task.extract_answer("x #### 4") == "4"
    with pytest.raises(ConfigError, match="task.solution_key=null: the warm-start .*model.warm_start=false"):
        task.sft_problems()


def test_reference_answers_are_normalised() -> None:
    assert [reference_answer(v) for v in (42, " 7 ", "x\n#### 1,234", "1,234.5", "Paris, France", -3.5)] == [
        "42",
        "7",
        "1234",
        "1234.5",
        "Paris, France",
        "-3.5",
    ]


def test_text_answers_need_a_text_reward(tmp_path: Path) -> None:
    path = _write(tmp_path / "cap.jsonl", [{"prompt": "Capital of France?", "answer": "Paris"}] * 3)
    with pytest.raises(ConfigError) as err:
        JSONLTask(path=str(path))
    msg = str(err.value)
    assert msg.startswith(f"task.path={str(path)!r}: {path}:1: answer 'Paris' is not a number") and "\n" not in msg
    assert msg.endswith(
        "Fix: for text answers set task.reward._target_=dvpo_lab.tasks.reward.exact_match (or "
        "math_verify_match for equivalent forms)"
    )
    task = JSONLTask(path=str(path), test_size=1, reward=exact_match)
    p = task.test_problems()[0]
    assert task.score(["I think #### Paris\nbecause", "#### paris", "Paris"], [p] * 3).tolist() == [1.0, 0.0, 0.0]
    assert JSONLTask(path=str(path), test_size=1, reward=math_verify_match).num_train() == 2  # no check for others


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"q": "1+1=", "a": 2', r"not valid JSON \(Expecting ',' delimiter at column 21\)"),
        (json.dumps({"a": 2, "sol": "#### 2"}), r"no column 'q' \(task.prompt_key; the row has \['a', 'sol'\]\)"),
        (json.dumps({"q": "1+1=", "sol": "#### 2"}), r"no column 'a' \(task.answer_key"),
        (json.dumps({"q": "1+1=", "a": 2}), r"no column 'sol' \(task.solution_key"),
        (json.dumps({"q": ["1+1="], "a": 2, "sol": "#### 2"}), r"column 'q' \(task.prompt_key\) holds list, not text"),
        (json.dumps({"q": "1+1=", "a": None, "sol": "#### 2"}), "answer column 'a' holds NoneType"),
        (json.dumps({"q": "1+1=", "a": " ", "sol": "#### 2"}), "empty answer in column 'a'"),
        (json.dumps([1, 2]), "expected a JSON object, got list"),
    ],
)
def test_bad_rows_name_key_file_line_and_fix(tmp_path: Path, line: str, match: str) -> None:
    path = _write(tmp_path / "data.jsonl", [ROWS[0], "", line])
    with pytest.raises(ConfigError, match=rf"^task\.path='{path}': {path}:3: {match}") as err:
        _task(path=str(path))
    msg = str(err.value)
    assert "\n" not in msg and "Fix: each line a JSON object with the prompt in 'q' (task.prompt_key)" in msg


def test_missing_paths_and_sources(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^task=jsonl: no data; set exactly one of task.path="):
        JSONLTask()
    with pytest.raises(ConfigError, match="task.path and task.hub_id together"):
        JSONLTask(path="a.jsonl", hub_id="org/name")
    with pytest.raises(ConfigError, match=r"^task.path='.*nope.jsonl': .*nope.jsonl does not exist\. Fix: a .jsonl"):
        JSONLTask(path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ConfigError, match=r"^task.path='.*': train.jsonl is missing in"):
        JSONLTask(path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"^task.train_path='.*a.jsonl': .*a.jsonl does not exist"):
        JSONLTask(train_path=str(tmp_path / "a.jsonl"))
    with pytest.raises(ConfigError, match="task.test_path=.* goes with task.train_path"):
        JSONLTask(path=str(tmp_path), test_path="b.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ConfigError, match=r"empty.jsonl has no rows \(empty, or only blank lines\)"):
        JSONLTask(path=str(tmp_path / "empty.jsonl"))


@pytest.mark.parametrize(
    ("test_size", "match"),
    [(0, "task.test_size=0: must be a fraction"), (2.5, "task.test_size=2.5"), (10, "holds out 10 of the 10 rows")],
)
def test_test_size_must_leave_both_splits(tmp_path: Path, test_size: float, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _task(path=str(_write(tmp_path / "d.jsonl", ROWS)), test_size=test_size)


def test_hub_dataset_through_stubbed_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub path with a stand-in `datasets` module (no hub here): the same column mapping, split names passed."""
    calls = []

    def load_dataset(path: str, name: str | None, split: str) -> list[dict]:
        calls.append((path, name, split))
        return ROWS[8:] if split == "test" else ROWS[:8]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = _task(hub_id="me/sums", hub_config="v1")
    assert calls == [("me/sums", "v1", "train"), ("me/sums", "v1", "test")]
    assert task.num_train() == 8 and [p.answer for p in task.test_problems()] == ["16", "18"]
    calls.clear()
    held = _task(hub_id="me/sums", train_split="train[:80%]", test_split=None, test_size=2)
    assert calls == [("me/sums", None, "train[:80%]")] and len(held.test_problems()) == 2

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(
        ConfigError,
        match=r"^task.hub_id='me/sums' \(default config, split train\): could not load "
        r"it \(no network\)\. Fix: .*set task.path",
    ):
        _task(hub_id="me/sums")
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: [{"q": "x"}]))
    with pytest.raises(ConfigError, match=r"me/sums\[train\]\[0\]: no column 'a' \(task.answer_key"):
        _task(hub_id="me/sums")


def test_chat_template_needs_a_tokenizer_with_one(tmp_path: Path) -> None:
    from dvpo_lab.models.tokenizer import build_char_tokenizer

    path = str(_write(tmp_path / "d.jsonl", ROWS))
    with pytest.raises(ValueError, match="task.template=chat needs the model's tokenizer"):
        _task(path=path, template="chat")
    tok = build_char_tokenizer()
    tok.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}<|assistant|>"
    task = _task(path=path, template="chat", tokenizer=tok)
    assert task.train_problems([0])[0].prompt == "<|user|>1+1=<|assistant|>"
