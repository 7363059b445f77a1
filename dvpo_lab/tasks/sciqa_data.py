"""Multiple-choice rows of SciQ, ARC and GPQA, from the hub (``datasets``) or local JSONL in the same format.

Every source is read into :class:`MCItem` (question, choices, index of the correct one); ``dvpo_lab.tasks.sciqa``
shuffles the choices and renders the prompt. Row formats, as the hub serves them::

    sciq  allenai/sciq          question, correct_answer, distractor1, distractor2, distractor3, support
    arc   allenai/ai2_arc       question, choices {text: [...], label: [...]}, answerKey   (ARC-Challenge/-Easy)
    gpqa  Idavidrein/gpqa       Question, Correct Answer, Incorrect Answer 1, ... 3        (gpqa_main, ...)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvpo_lab.config import ConfigError
from dvpo_lab.tasks.base import BadRow, iter_jsonl, load_local_split

SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}
MAX_CHOICES = 5  # letters A-E


@dataclass(frozen=True)
class MCItem:
    question: str
    choices: tuple[str, ...]  # in the source's order
    correct: int  # index into choices


@dataclass(frozen=True)
class SourceSpec:
    hub_id: str
    hub_config: str | None
    train_split: str
    test_split: str
    keys: str  # the row keys, for error messages


def _text(row: Mapping[str, Any], key: str, where: str) -> str:
    if key not in row:
        raise BadRow(f"{where}: missing key {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise BadRow(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise BadRow(f"{where}: {key!r} is empty")
    return text


def sciq_item(row: Mapping[str, Any], where: str) -> MCItem:
    """SciQ: the correct answer first, then the three distractors (``support`` is not used)."""
    keys = ("correct_answer", "distractor1", "distractor2", "distractor3")
    return MCItem(_text(row, "question", where), tuple(_text(row, k, where) for k in keys), 0)


def arc_item(row: Mapping[str, Any], where: str) -> MCItem:
    """ARC: ``choices.text`` in ``choices.label`` order (labels A-E or 1-5); ``answerKey`` is one label."""
    if "choices" not in row:
        raise BadRow(f"{where}: missing key 'choices'")
    choices = row["choices"]
    if not isinstance(choices, Mapping) or not {"text", "label"} <= set(choices):
        raise BadRow(f"{where}: 'choices' must be an object with 'text' and 'label' lists")
    if not all(isinstance(choices[k], (list, tuple)) for k in ("text", "label")):
        raise BadRow(f"{where}: 'choices.text' and 'choices.label' must be lists")
    texts, labels = list(choices["text"]), [str(x).strip() for x in choices["label"]]
    if len(texts) != len(labels) or not 2 <= len(texts) <= MAX_CHOICES:
        raise BadRow(
            f"{where}: 'choices' needs as many labels as texts, 2 to {MAX_CHOICES} (got {len(texts)} "
            f"texts, {len(labels)} labels)"
        )
    key = str(row.get("answerKey", "")).strip()
    if key not in labels:
        raise BadRow(f"{where}: answerKey {key!r} is not one of the choice labels {labels}")
    return MCItem(
        _text(row, "question", where),
        tuple(_text({"text": t}, "text", f"{where} choice {i}") for i, t in enumerate(texts)),
        labels.index(key),
    )


def gpqa_item(row: Mapping[str, Any], where: str) -> MCItem:
    """GPQA: the correct answer first, then the three incorrect ones."""
    keys = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
    return MCItem(_text(row, "Question", where), tuple(_text(row, k, where) for k in keys), 0)


PARSERS: dict[str, Callable[[Mapping[str, Any], str], MCItem]] = {
    "sciq": sciq_item,
    "arc": arc_item,
    "gpqa": gpqa_item,
}
# GPQA ships one split only: its halves stand in for train and test.
SOURCES: dict[str, SourceSpec] = {
    "sciq": SourceSpec("allenai/sciq", None, "train", "test", "question, correct_answer, distractor1-3"),
    "arc": SourceSpec(
        "allenai/ai2_arc", "ARC-Challenge", "train", "test", "question, choices {text, label}, answerKey"
    ),
    "gpqa": SourceSpec(
        "Idavidrein/gpqa", "gpqa_main", "train[:50%]", "train[50%:]", "Question, Correct Answer, Incorrect Answer 1-3"
    ),
}


def read_jsonl(path: Path, source: str, limit: int | None = None) -> list[MCItem]:
    """Read ``source``-format JSONL (blank lines skipped), at most ``limit`` rows.

    Raises:
        BadRow: naming ``path:lineno`` for a line that is not a JSON object or not a valid row.
    """
    return [PARSERS[source](row, where) for row, where in iter_jsonl(path, limit)]


def data_fix(source: str) -> str:
    """The one-line fix every data error of ``source`` ends with."""
    spec = SOURCES[source]
    return (
        f"set task.data_dir to a folder with {' and '.join(SPLIT_FILES.values())} ({source} format: one JSON "
        f"object per line with {spec.keys}), task.data_dir=null to load {spec.hub_id} from the hub, or "
        "task.source=generated (offline)"
    )


def load_local(data_dir: str | Path, source: str, split: str, limit: int | None) -> list[MCItem]:
    """One split of ``source`` from ``data_dir``.

    Raises:
        ConfigError: one line naming ``task.data_dir``, the file (and line) and the fix, for a missing folder
            or file, an unreadable or empty file, or a bad line or row.
    """
    return load_local_split(
        data_dir, SPLIT_FILES[split], lambda path: read_jsonl(path, source, limit), data_fix(source)
    )


def load_hub(source: str, hub_id: str, hub_config: str | None, split: str, limit: int | None) -> list[MCItem]:
    """One split of ``source`` from the hub; errors as in :func:`load_local`, naming ``task.data_dir=null``."""
    import datasets  # deferred: importing it costs about a second and local runs never need it

    key = f"task.data_dir=null (hub {hub_id}, {hub_config}, split {split})"
    try:
        ds = datasets.load_dataset(hub_id, hub_config, split=split)
    # any hub or network failure (offline, wrong task.hub_id, ...) is the user's to fix
    except Exception as err:  # noqa: BLE001
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{key}: could not load it ({reason}). Fix: check task.hub_id/hub_config/train_split/test_split, or "
            f"offline set task.data_dir to a folder with {' and '.join(SPLIT_FILES.values())} in the {source} "
            "format, or use task.source=generated"
        ) from None
    rows: Iterable[Mapping[str, Any]] = itertools.islice(ds, limit)
    try:
        items = [PARSERS[source](row, f"{hub_id}[{split}][{i}]") for i, row in enumerate(rows)]
    except BadRow as err:
        raise ConfigError(f"{key}: {err}. Fix: {data_fix(source)}") from None
    if not items:
        raise ConfigError(f"{key}: the split has no rows. Fix: {data_fix(source)}")
    return items
