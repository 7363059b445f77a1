"""Science multiple choice: the generated fact-table variant, the SciQ/ARC/GPQA loaders (local JSONL and a stubbed
hub), choice shuffling, templates, and the letter parser (examples and 10^4 generated strings)."""

from __future__ import annotations

import json
import re
import string
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvpo_lab.config import ConfigError
from dvpo_lab.models.tokenizer import CHARS, build_char_tokenizer
from dvpo_lab.tasks.sciqa import LETTERS, SciQATask, extract_choice
from dvpo_lab.tasks.sciqa_facts import build_facts, category_pools

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


_QUESTIONS = sorted({f.question for f in build_facts()}, key=len, reverse=True)


def _split_generated(prompt: str) -> tuple[str, list[str]]:
    """("Symbol of Sodium?", ["Ne", "Na", "S", "Nb"]) from "Symbol of Sodium? Ne(A) Na(B) S(C) Nb(D)\\n"."""
    question = next(q for q in _QUESTIONS if prompt.startswith(q + " "))
    parts = re.split(r"\(([A-E])\) ?", prompt[len(question) + 1 : -1])  # [text, "A", text, "B", ..., ""]
    assert "".join(parts[1::2]) == "ABCDE"[: len(parts) // 2], prompt  # letters in order, one per option
    return question, parts[0:-1:2]


@pytest.fixture(scope="module")
def task() -> SciQATask:
    return SciQATask()


# --- the generated variant ---------------------------------------------------------------------------------


def test_fact_table_is_a_few_hundred_printable_facts() -> None:
    facts = build_facts()
    assert 300 <= len(facts) <= 600
    assert len({f.question for f in facts}) == len(facts)  # no question asked twice
    pools = category_pools(facts)
    assert min(len(p) for p in pools.values()) >= 4  # enough distractors for 4 choices everywhere
    text = "".join(f.question + f.answer for f in facts)
    assert set(text) <= set(CHARS), set(text) - set(CHARS)  # the char tokenizer covers every character


def test_generated_format(task: SciQATask) -> None:
    facts = {f.question: f for f in task.facts}
    pools = category_pools(task.facts)
    for p in task.test_problems()[:200] + task.train_problems(range(200)):
        assert len(p.prompt) < 120 and p.prompt.endswith("\n")
        question, options = _split_generated(p.prompt)
        fact = facts[question]
        assert len(options) == 4 and len(set(options)) == 4
        assert options.count(fact.answer) == 1 and set(options) <= set(pools[fact.category])
        assert p.answer == LETTERS[options.index(fact.answer)]
        k = options.index(fact.answer)
        worked = " ".join(f"{o}({LETTERS[i]})" for i, o in enumerate(options[: k + 1]))
        assert p.solution == f"{worked} #### {p.answer}"
        assert len(p.solution) + 1 <= task.max_response_len


def test_correct_letter_is_uniform(task: SciQATask) -> None:
    counts = Counter(p.answer for p in task.train_problems(range(8000)))
    assert set(counts) == set("ABCD")
    assert all(abs(c / 8000 - 0.25) < 0.02 for c in counts.values()), counts


def test_solutions_score_one_other_letters_zero(task: SciQATask) -> None:
    probs = task.test_problems()
    assert torch.equal(task.score([p.solution for p in probs], probs), torch.ones(len(probs)))  # type: ignore[misc]
    wrong = [p.solution[:-1] + ("A" if p.answer != "A" else "B") for p in probs]  # type: ignore[index]
    assert torch.equal(task.score(wrong, probs), torch.zeros(len(probs)))
    out = task.score(["", "#### Z"], probs[:2])
    assert out.dtype == torch.float32 and out.tolist() == [0.0, 0.0]


def test_train_and_demonstrations_never_contain_a_test_item(task: SciQATask) -> None:
    test_prompts = {p.prompt for p in task.test_problems()}
    assert len(test_prompts) == task.n_test == 500
    assert not {p.prompt for p in task.train_problems(range(20_000))} & test_prompts
    assert not {p.prompt for p in task.sft_problems()} & test_prompts
    # but the facts themselves are shared: the test asks known facts with unseen options and orders
    train_questions = {_split_generated(p.prompt)[0] for p in task.sft_problems()}
    test_questions = {_split_generated(p.prompt)[0] for p in task.test_problems()}
    assert len(test_questions & train_questions) > 0.9 * len(test_questions)
    assert task.num_train() is None and len(task.sft_problems()) == 2000


def test_deterministic_and_seeded(task: SciQATask) -> None:
    idx = [0, 3, 10**9]
    assert task.train_problems(idx) == SciQATask().train_problems(idx)
    assert task.test_problems() == SciQATask().test_problems()
    other = SciQATask(train_seed=5, test_seed=6)
    assert task.train_problems(range(50)) != other.train_problems(range(50))
    assert task.test_problems() != other.test_problems()


def test_n_choices_knob() -> None:
    t = SciQATask(n_choices=3, n_test=50, n_sft=10)
    for p in t.test_problems():
        assert "(C)\n" in p.prompt and "(D)" not in p.prompt and p.answer in "ABC"
    assert t.extract_answer("#### D") is None  # not a letter of this task
    five = SciQATask(n_choices=5, n_test=50, n_sft=10)
    assert {p.answer for p in five.test_problems()} == set("ABCDE") and five.extract_answer("#### E") == "E"


def test_categories_restrict_the_fact_table() -> None:
    cats = ["element_symbol", "element_name", "atomic_number"]
    t = SciQATask(categories=cats, n_test=100, n_sft=50)
    assert len(t.facts) == 117 and {f.category for f in t.facts} == set(cats)
    questions = {f.question for f in t.facts}
    for p in [*t.test_problems(), *t.sft_problems()]:
        assert p.prompt.split("?")[0] + "?" in questions


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"source": "mmlu"}, "task.source"),
        ({"n_choices": 6}, "n_choices"),
        ({"n_test": 0}, "n_test"),
        ({"template": "fancy"}, "task.template"),
        ({"template": "chat"}, "chat"),  # no tokenizer
        ({"max_train": 0}, "max_train"),
        ({"categories": ["element_symbol", "bogus"]}, "bogus"),
        ({"categories": []}, "empty"),
    ],
)
def test_bad_knobs_fail_clearly(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):  # ConfigError, but task.template's check is in template.py
        SciQATask(**kwargs)


def test_chat_template_needs_one_and_uses_it() -> None:
    tok = build_char_tokenizer()
    with pytest.raises(ValueError, match="no chat template.*task.template=plain"):
        SciQATask(template="chat", tokenizer=tok, n_test=10, n_sft=1)
    tok.chat_template = CHAT_TEMPLATE
    t = SciQATask(template="chat", tokenizer=tok, n_test=10, n_sft=1)
    p = t.test_problems()[0]
    assert p.prompt.startswith("<|user|>") and p.prompt.endswith("\n<|assistant|>") and "(A) " in p.prompt


# --- the letter parser ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, letter",
    [
        ("Na #### B", "B"),
        ("Ne(A) Na(B) #### B", "B"),
        ("Na(B)", "B"),
        ("#### b", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B) sodium", "B"),
        ("B", "B"),
        ("  C  ", "C"),
        ("Answer: b", "B"),
        ("answer: (d) since", "D"),
        ("The answer is B because sodium is Na.", "B"),
        ("the answer is (C).", "C"),
        ("I think (C) is right, trailing text here", "C"),
        ("#### A then later the answer is C", "A"),  # the explicit marker wins
        ("the answer is B. No wait, the answer is D", "D"),  # the last verdict wins
        ("", None),
        ("Na", None),
        ("A cat is a mammal", None),  # a leading article is not a choice
        ("the answer is a mammal", None),
        ("#### because", None),
        ("(A) x (B) y", None),  # restating the options is not choosing
        ("#### E", None),  # not one of A-D
        ("A. x\nB. y", None),  # a restated list of options, one per line
        ("(A) x\n(B) y\n(C) z", None),
        ("B. Because (C) is a gas, it cannot be the metal.", "B"),  # prose after a chosen letter keeps it
        ("B\n\nExplanation: (A) is wrong and so is (C).", "B"),  # a letter alone on the first line
        ("The answer is B ####", "B"),  # a marker without a letter: the text before it counts
        ("#### the answer is C", "C"),  # ... and the rest of its line
        ("Na #### Sodium\nThe answer is B", None),  # but nothing after its line
        ("#### \nI think (C) is right", None),
    ],
)
def test_extract_choice_examples(text: str, letter: str | None) -> None:
    assert extract_choice(text, "ABCD") == letter


_NOISY_TEXT = st.one_of(
    st.text(max_size=200),
    st.text(alphabet="ABCDEabcde()#.:= \nanswerisAnswer", max_size=200),
)


@settings(max_examples=10_000, deadline=None)
@given(_NOISY_TEXT)
def test_extract_choice_never_raises(text: str) -> None:
    out = extract_choice(text, "ABCD")
    assert out is None or out in "ABCD"


@settings(max_examples=2_000, deadline=None)
@given(
    st.sampled_from("ABCD"),
    st.sampled_from(["#### {}", "({})", "{}.", "Answer: {}", "answer: {l}", "the answer is {}", "{}"]),
    st.text(alphabet=" .,;!xyz0123456789\n", max_size=40),
)
def test_extract_choice_finds_the_letter_before_trailing_text(letter: str, form: str, tail: str) -> None:
    text = form.format(letter, l=letter.lower())
    if form != "{}" or not tail.strip():  # a bare letter must be the whole response
        assert extract_choice(text + (" " + tail if tail else ""), "ABCD") == letter


# explanation after the answer that mentions the other options in every way that is not a verdict
_PROSE = "\nExplanation: option (C) is a gas and (A) is a salt, so the answer is not D; 12 of 40 facts agree. "


@pytest.mark.parametrize("n", [0, 50, 299, 300, 301, 400, 2000])
@pytest.mark.parametrize("form", ["#### B", "Na(B) #### B", "The answer is B.", "Answer: (b)", "B.", "B)", "(B)", "B"])
def test_extract_choice_ignores_text_after_the_committed_letter(form: str, n: int) -> None:
    # before the fix "B.", "B)", "(B)" and "B" followed by such prose gave None (other options are marked)
    assert extract_choice(form + (_PROSE * 30)[:n], "ABCD") == "B"


@pytest.mark.parametrize("n", [0, 100, 299, 300, 301, 1000])
def test_extract_choice_marker_never_credits_later_text(n: int) -> None:
    tail = ("the answer is (C). " * 100)[:n]
    assert extract_choice("Ne(A) Na(B) #### B\n" + tail, "ABCD") == "B"
    assert extract_choice("Ne(A) Na(B) ####\n" + tail, "ABCD") is None  # committed to nothing readable


def test_task_score_ignores_text_after_the_committed_letter(task: SciQATask) -> None:
    probs = task.test_problems()[:4]
    long = [p.solution + "\nbecause " + "the other options (A) (C) are wrong; answer is D. " * 10 for p in probs]
    assert task.score(long, probs).tolist() == [1.0] * 4  # type: ignore[operator]


# --- real formats: local JSONL and a stubbed hub ---------------------------------------------------------


def _sciq_row(i: int) -> dict:
    return {
        "question": f"Q{i}: what is right?",
        "correct_answer": f"right{i}",
        "distractor1": f"w1_{i}",
        "distractor2": f"w2_{i}",
        "distractor3": f"w3_{i}",
        "support": "",
    }


def _arc_row(i: int, numeric: bool = False) -> dict:
    labels = ["1", "2", "3", "4"] if numeric else ["A", "B", "C", "D"]
    return {
        "id": str(i),
        "question": f"Q{i}?",
        "choices": {"text": [f"w{i}a", f"right{i}", f"w{i}b", f"w{i}c"], "label": labels},
        "answerKey": labels[1],
    }


def _gpqa_row(i: int) -> dict:
    return {
        "Question": f"Q{i}?\n",
        "Correct Answer": f" right{i} ",
        "Incorrect Answer 1": f"w1_{i}",
        "Incorrect Answer 2": f"w2_{i}",
        "Incorrect Answer 3": f"w3_{i}",
    }


ROW_MAKERS = {"sciq": _sciq_row, "arc": _arc_row, "gpqa": _gpqa_row}


def _write_split(folder: Path, name: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def _data_dir(tmp_path: Path, source: str, n_train: int = 400, n_test: int = 20) -> Path:
    make = ROW_MAKERS[source]
    _write_split(tmp_path, "train.jsonl", [make(i) for i in range(n_train)])
    _write_split(tmp_path, "test.jsonl", [make(1000 + i) for i in range(n_test)])
    return tmp_path


def _chosen_text(prompt: str, letter: str) -> str:
    line = next(ln for ln in prompt.splitlines() if ln.startswith(f"({letter}) "))
    return line[4:]


@pytest.mark.parametrize("source", ["sciq", "arc", "gpqa"])
def test_real_loaders_from_local_jsonl(tmp_path: Path, source: str) -> None:
    t = SciQATask(source=source, data_dir=str(_data_dir(tmp_path, source)))
    assert isinstance(t, SciQATask) and t.num_train() == 400 and len(t.test_problems()) == 20
    assert t.max_response_len == 256
    for p in t.train_problems(range(400)) + t.test_problems():
        assert p.prompt.endswith('after "####".') and p.answer in "ABCD"
        assert _chosen_text(p.prompt, p.answer).startswith("right")  # the key points at the correct text
        assert p.solution == f"{_chosen_text(p.prompt, p.answer)} #### {p.answer}"
    counts = Counter(p.answer for p in t.train_problems(range(400)))
    assert all(60 <= c <= 140 for c in counts.values()) and len(counts) == 4, counts  # shuffled: uniform
    assert t.train_problems([0, 400]) == t.train_problems([0, 0])
    assert t.sft_problems() == t.train_problems(range(400))
    solutions = [p.solution for p in t.test_problems()]
    assert bool(t.score(solutions, t.test_problems()).all())  # type: ignore[arg-type]


def test_shuffle_is_seeded(tmp_path: Path) -> None:
    d = _data_dir(tmp_path, "sciq")
    a, b = SciQATask(source="sciq", data_dir=d), SciQATask(source="sciq", data_dir=d)
    c = SciQATask(source="sciq", data_dir=d, shuffle_seed=1)
    assert a.test_problems() == b.test_problems()
    assert [p.answer for p in a.train_problems(range(400))] != [p.answer for p in c.train_problems(range(400))]


def test_arc_numeric_labels_and_five_choices(tmp_path: Path) -> None:
    rows = [_arc_row(i, numeric=True) for i in range(20)]
    five = _arc_row(99)
    five["choices"] = {"text": ["a", "b", "c", "right", "e"], "label": list("ABCDE")}
    five["answerKey"] = "D"
    _write_split(tmp_path, "train.jsonl", rows)
    _write_split(tmp_path, "test.jsonl", [five])
    t = SciQATask(source="arc", data_dir=tmp_path)
    assert all(_chosen_text(p.prompt, p.answer).startswith("right") for p in t.train_problems(range(20)))
    p = t.test_problems()[0]
    assert "(E) " in p.prompt and _chosen_text(p.prompt, p.answer) == "right"
    assert t.extract_answer("#### E") == "E"


def test_max_rows(tmp_path: Path) -> None:
    t = SciQATask(source="gpqa", data_dir=_data_dir(tmp_path, "gpqa"), max_train=7, max_test=3)
    assert t.num_train() == 7 and len(t.test_problems()) == 3


@pytest.mark.parametrize(
    "source, row, match",
    [
        (
            "sciq",
            {"question": "q", "correct_answer": "a", "distractor1": "b", "distractor2": "c"},
            "missing key 'distractor3'",
        ),
        (
            "arc",
            {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"},
            "answerKey 'C' is not one of",
        ),
        ("arc", {"question": "q", "choices": ["a", "b"], "answerKey": "A"}, "'choices' must be an object"),
        (
            "gpqa",
            {
                "Question": "q",
                "Correct Answer": "",
                "Incorrect Answer 1": "x",
                "Incorrect Answer 2": "y",
                "Incorrect Answer 3": "z",
            },
            "'Correct Answer' is empty",
        ),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, source: str, row: dict, match: str) -> None:
    _data_dir(tmp_path, source, n_train=2, n_test=2)
    (tmp_path / "train.jsonl").write_text(json.dumps(ROW_MAKERS[source](0)) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(ConfigError, match=rf"train\.jsonl:3: {match}"):
        SciQATask(source=source, data_dir=tmp_path)


def _one_line_config_error(err: pytest.ExceptionInfo, data_dir: object, source: str) -> str:
    msg = str(err.value)
    assert err.type is ConfigError and "\n" not in msg, msg
    assert msg.startswith(f"task.data_dir={str(data_dir)!r}: "), msg
    assert f"Fix: set task.data_dir to a folder with train.jsonl and test.jsonl ({source} format:" in msg, msg
    assert "task.source=generated" in msg and "shared" not in msg, msg
    return msg


@pytest.mark.parametrize("source", ["sciq", "arc", "gpqa"])
def test_missing_folder_or_file_says_how_to_fix(tmp_path: Path, source: str) -> None:
    with pytest.raises(ConfigError, match="folder .*nope does not exist") as err:
        SciQATask(source=source, data_dir=tmp_path / "nope")
    _one_line_config_error(err, tmp_path / "nope", source)
    _data_dir(tmp_path, source, n_train=2, n_test=2)
    (tmp_path / "test.jsonl").unlink()
    with pytest.raises(ConfigError, match="test.jsonl is missing in") as err:
        SciQATask(source=source, data_dir=tmp_path)
    _one_line_config_error(err, tmp_path, source)


@pytest.mark.parametrize("source", ["sciq", "arc", "gpqa"])
@pytest.mark.parametrize(
    "content, match",
    [
        (b"", r"test\.jsonl has no rows"),
        (b"\n  \n", r"test\.jsonl has no rows"),
        (b'{"question": "trunc', r"test\.jsonl:1: not valid JSON \(Unterminated string starting at column 14\)"),
        (b'{"x": 1}\n', r"test\.jsonl:1: missing key"),
        (b"\xff\n", r"test\.jsonl:1: not UTF-8 text"),
    ],
)
def test_bad_files_name_key_file_line_and_fix(tmp_path: Path, source: str, content: bytes, match: str) -> None:
    _data_dir(tmp_path, source, n_train=2, n_test=2)
    (tmp_path / "test.jsonl").write_bytes(content)
    with pytest.raises(ConfigError, match=match) as err:
        SciQATask(source=source, data_dir=str(tmp_path))
    _one_line_config_error(err, str(tmp_path), source)


def test_arc_with_too_many_choices_names_the_line(tmp_path: Path) -> None:
    six = _arc_row(0)
    six["choices"] = {"text": list("abcdef"), "label": list("ABCDEF")}
    _write_split(tmp_path, "train.jsonl", [_arc_row(1), six])
    _write_split(tmp_path, "test.jsonl", [_arc_row(2)])
    with pytest.raises(ConfigError, match=r"train\.jsonl:2: 'choices' needs .* 2 to 5 \(got 6 texts"):
        SciQATask(source="arc", data_dir=tmp_path)


def test_hub_path_through_stubbed_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(path: str, name: str | None = None, split: str | None = None) -> list[dict]:
        calls.append((path, name, split))
        source = {"allenai/sciq": "sciq", "allenai/ai2_arc": "arc", "Idavidrein/gpqa": "gpqa"}[path]
        return [ROW_MAKERS[source](i) for i in range(5)]

    # a stand-in module: no hub here
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load_dataset))
    for source in ("sciq", "arc", "gpqa"):
        t = SciQATask(source=source)
        assert t.num_train() == 5 and _chosen_text(t.test_problems()[0].prompt, t.test_problems()[0].answer)
    assert calls == [
        ("allenai/sciq", None, "train"),
        ("allenai/sciq", None, "test"),
        ("allenai/ai2_arc", "ARC-Challenge", "train"),
        ("allenai/ai2_arc", "ARC-Challenge", "test"),
        ("Idavidrein/gpqa", "gpqa_main", "train[:50%]"),
        ("Idavidrein/gpqa", "gpqa_main", "train[50%:]"),
    ]
    calls.clear()
    SciQATask(source="arc", hub_config="ARC-Easy", test_split="validation")
    assert calls == [("allenai/ai2_arc", "ARC-Easy", "train"), ("allenai/ai2_arc", "ARC-Easy", "validation")]


def test_hub_failure_points_to_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(
        ConfigError,
        match=r"^task\.data_dir=null \(hub allenai/ai2_arc, ARC-Challenge, split train\): "
        r"could not load it \(no network\)\. Fix: .*task\.data_dir.*task\.source=generated",
    ) as err:
        SciQATask(source="arc")
    assert "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: []))
    with pytest.raises(ConfigError, match="the split has no rows"):
        SciQATask(source="sciq")


def test_score_against_substitute_letters(task: SciQATask) -> None:
    probs = task.test_problems()[:3]
    responses = ["#### A", "#### B", "nothing"]
    assert task.score_against(responses, probs, ["A", "C", None]).tolist() == [1.0, 0.0, 0.0]
    assert string.ascii_uppercase.startswith(task.letters)
