"""``task=dialogue``: multi-turn, task-oriented dialogue with a rule-based simulated user (offline).

Each episode has a goal: a service in one of the paper's five domains and a value for each of its required
slots. The policy sees only the service; it must ask the user for every slot, one turn each, then complete the
task with a final action that carries the values. Text is compact so the tiny char model learns it::

    prompt      "G:taxi\\n"
    assistant   "ask from\\n"                      <- trained on (response_mask 1)
    user        "from=A7\\n"                       <- context only (response_mask 0)
    assistant   "ask to\\n"
    user        "to=B2\\n"
    assistant   "ask time\\n"
    user        "time=9\\n"
    assistant   "book taxi from=A7 to=B2 time=9\\n" <- final action: the episode ends

The user is a pure function of (goal, assistant turn): ``ask <slot>`` for a slot of the goal is answered
``<slot>=<value>``, anything else ``?``; a turn starting with ``book`` ends the episode, as does the
``max_turns``-th assistant turn. Metrics per episode (ours; the paper names them without definitions):

* **TCR** (task completion): 1 when the final action names the goal's service and carries exactly the goal's
  slot values (no slot missing, wrong, repeated or extra), else 0. The default RL reward and ``val/acc``.
* **ACR** (ask completion): the fraction of the goal's required slots the assistant asked for before the
  final action.
* **GCR** (goal completion): the fraction of the goal's slot values that the final action carries correctly
  (0 without a final action for the right service). ``task.reward=gcr`` trains on it instead of TCR.

Goals are a pure function of (seed, index) through the same counter-based hash as ``task=arith``; training
goals and demonstrations never repeat a test goal.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dvpo_lab.config import ConfigError
from dvpo_lab.seeding import hash_words as _hash
from dvpo_lab.seeding import splitmix64 as _splitmix64
from dvpo_lab.tasks.base import MultiTurnTask, Problem, check_aligned

log = logging.getLogger(__name__)

_STREAM_TRAIN, _STREAM_TEST, _STREAM_SFT = 11, 12, 13
_LOCS = tuple(f"{c}{d}" for c in "ABCDEF" for d in "123456789")
# Slot -> its small value vocabulary (values never contain spaces, "=" or newlines).
SLOT_VALUES: dict[str, tuple[str, ...]] = {
    "from": _LOCS,
    "to": _LOCS,
    "addr": _LOCS,
    "time": tuple(str(h) for h in range(1, 13)),
    "day": ("mo", "tu", "we", "th", "fr", "sa", "su"),
    "seats": tuple("123456"),
    "qty": tuple("123456789"),
    "months": ("3", "6", "12", "24"),
    "amount": tuple(str(10 * k) for k in range(1, 21)),
    "dish": ("rice", "soup", "taco", "cake", "pie"),
    "film": ("jaws", "up", "heat", "rocky", "alien"),
    "dept": ("eye", "skin", "bone", "ear", "lung"),
    "drug": ("dx", "ibu", "para", "zinc"),
}
# Domain -> service -> its required slots, asked in this order by the demonstrations.
DOMAINS: dict[str, dict[str, tuple[str, ...]]] = {
    "life": {"food": ("dish", "time", "addr"), "clean": ("addr", "day")},
    "transport": {"taxi": ("from", "to", "time"), "train": ("from", "to", "day")},
    "health": {"doctor": ("dept", "day"), "pharma": ("drug", "qty")},
    "social": {"movie": ("film", "time", "seats"), "table": ("addr", "time", "seats")},
    "finance": {"pay": ("to", "amount"), "loan": ("amount", "months")},
}
SERVICE_DOMAIN = {s: d for d, services in DOMAINS.items() for s in services}
REWARDS = ("tcr", "gcr")
ASK, BOOK, UNKNOWN = "ask", "book", "?"
_ASK_RE = re.compile(r"ask ([a-z]+)")
_PAIR_RE = re.compile(r"([a-z]+)=(\S+)")


@dataclass(frozen=True)
class Goal:
    """What the simulated user wants: a service and one value per required slot (in asking order)."""

    service: str
    slots: tuple[tuple[str, str], ...]

    @property
    def domain(self) -> str:
        return SERVICE_DOMAIN[self.service]

    def action(self) -> str:
        """The correct final action, e.g. ``"book taxi from=A7 to=B2 time=9"``."""
        return " ".join([BOOK, self.service, *(f"{k}={v}" for k, v in self.slots)])

    def key(self) -> str:
        """The canonical goal string stored in :attr:`Problem.answer` (the action without ``book``)."""
        return self.action()[len(BOOK) + 1 :]

    @classmethod
    def parse(cls, key: str) -> Goal:
        """Inverse of :meth:`key`; raises ``ValueError`` on a string no goal produces."""
        service, *pairs = key.split(" ")
        if service not in SERVICE_DOMAIN:
            raise ValueError(f"unknown service {service!r} in goal {key!r}")
        slots = tuple(tuple(p.split("=", 1)) for p in pairs)
        if tuple(k for k, _ in slots) != SERVICE_SLOTS[service]:
            raise ValueError(f"goal {key!r} does not list the slots {SERVICE_SLOTS[service]} of {service!r}")
        return cls(service, slots)  # type: ignore[arg-type]


SERVICE_SLOTS = {s: slots for services in DOMAINS.values() for s, slots in services.items()}


def user_reply(goal: Goal, turn: str) -> str | None:
    """The simulated user: a pure function of the goal and one assistant turn (end-of-turn removed).

    ``"ask <slot>"`` for a slot of the goal -> ``"<slot>=<value>"``; a turn starting with ``"book"`` -> ``None``
    (the episode ends); anything else (a malformed turn, a slot the goal lacks) -> ``"?"``.
    """
    turn = turn.strip()
    if turn.split(" ", 1)[0] == BOOK:
        return None
    m = _ASK_RE.fullmatch(turn)
    values = dict(goal.slots)
    if m and m.group(1) in values:
        return f"{m.group(1)}={values[m.group(1)]}"
    return UNKNOWN


@dataclass(frozen=True)
class Judgement:
    """The clean judge's verdict on one dialogue: TCR in {0, 1}, ACR and GCR in [0, 1]."""

    tcr: float
    acr: float
    gcr: float


def judge(transcript: str, goal: Goal) -> Judgement:
    """Judge a dialogue transcript (assistant and user turns, one per line) against the goal.

    Only assistant lines matter and the user's lines can never look like them (``<slot>=<value>`` or ``?``),
    so the judge needs no turn bookkeeping: the final action is the first line whose first word is ``book``,
    and the slots asked are the ``ask <slot>`` lines before it. Never raises, whatever the string.
    """
    asked: set[str] = set()
    action: list[str] | None = None
    for line in transcript.split("\n"):
        line = line.strip()
        words = line.split(" ")
        if words[0] == BOOK:
            action = words[1:]
            break
        m = _ASK_RE.fullmatch(line)
        if m:
            asked.add(m.group(1))
    required = dict(goal.slots)
    acr = len(asked & required.keys()) / len(required)
    if not action or action[0] != goal.service:
        return Judgement(tcr=0.0, acr=acr, gcr=0.0)
    given: dict[str, list[str]] = {}
    well_formed = True
    for word in action[1:]:
        m = _PAIR_RE.fullmatch(word)
        if m is None:
            well_formed = False
            continue
        given.setdefault(m.group(1), []).append(m.group(2))
    correct = sum(given.get(k) == [v] for k, v in required.items())
    complete = well_formed and correct == len(required) and given.keys() == required.keys()
    return Judgement(tcr=float(complete), acr=acr, gcr=correct / len(required))


class DialogueTask(MultiTurnTask):
    """Task-oriented dialogue over five domains with a simulated user; see the module docstring.

    Args:
        n_test: size of the held-out split (distinct goals).
        train_seed: seed of the training stream and of the demonstrations.
        test_seed: seed of the held-out split.
        n_sft: number of fixed demonstration dialogues for the supervised warm-start.
        max_turns: assistant turns per episode at most (the longest goal needs its slots + 1).
        reward: the clean training reward, ``tcr`` (binary, default) or ``gcr`` (fraction of slot values;
            flip noise needs a binary reward). A choice between two outputs of the one judge that also gives
            the logged ``val/tcr``, ``val/acr``, ``val/gcr``, not a swappable function: scoring a dialogue
            needs the simulated user's goal, which only this task knows how to read.
        domains: the domains goals are drawn from (default: all five).
    """

    name = "dialogue"

    def __init__(
        self,
        n_test: int = 300,
        train_seed: int = 1,
        test_seed: int = 2,
        n_sft: int = 2000,
        max_turns: int = 5,
        reward: str = "tcr",
        domains: Sequence[str] = tuple(DOMAINS),
    ) -> None:
        unknown = sorted(set(domains) - set(DOMAINS))
        if not domains or unknown:
            raise ConfigError(f"task.domains={list(domains)}: expected a non-empty subset of {list(DOMAINS)}")
        if reward not in REWARDS:
            raise ConfigError(f"task.reward={reward!r}: expected one of {list(REWARDS)}")
        self.domains = tuple(d for d in DOMAINS if d in set(domains))
        self.services = tuple(s for d in self.domains for s in DOMAINS[d])
        longest = max(len(SERVICE_SLOTS[s]) for s in self.services)
        if max_turns < longest + 1:
            raise ConfigError(
                f"task.max_turns={max_turns} leaves no room to ask {longest} slots and then book; "
                f"set task.max_turns >= {longest + 1}"
            )
        if n_test < 1 or n_sft < 0:
            raise ConfigError(f"task.n_test must be >= 1 and task.n_sft >= 0, got {n_test} and {n_sft}")
        self.n_test, self.train_seed, self.test_seed, self.n_sft = n_test, train_seed, test_seed, n_sft
        self.max_turns, self.reward = max_turns, reward

        longest_action = max(len(self._draw_longest(s).action()) for s in self.services)
        longest_reply = max(len(k) + 1 + max(map(len, SLOT_VALUES[k])) for k in SLOT_VALUES)
        # turn text + end of turn + slack, so a slightly over-long turn is still judged (as wrong)
        self.max_turn_tokens = longest_action + 1 + 4
        self.max_response_len = max_turns * (self.max_turn_tokens + longest_reply + 1)

        self._test: list[Problem] = []
        self._test_keys: set[str] = set()
        index = 0
        while len(self._test) < n_test:
            goal = self._draw(_STREAM_TEST, test_seed, index, 0)
            index += 1
            if index > 100 * n_test:
                raise ConfigError(f"task.n_test={n_test} exceeds the distinct goals of domains {self.domains}")
            if goal.key() not in self._test_keys:
                self._test_keys.add(goal.key())
                self._test.append(self._problem(goal))
        log.info(
            "dialogue: %d services in %s, %d test goals; max_turns=%d, max_response_len=%d",
            len(self.services),
            ",".join(self.domains),
            n_test,
            max_turns,
            self.max_response_len,
        )

    # --- goals ------------------------------------------------------------------------------------------

    def _draw(self, stream: int, seed: int, index: int, attempt: int) -> Goal:
        """The goal at (stream, seed, index, attempt): a pure function of these four integers."""
        h = _hash(stream, seed, index, attempt)
        service = self.services[h % len(self.services)]
        slots = []
        for slot in SERVICE_SLOTS[service]:
            h = _splitmix64(h)
            values = SLOT_VALUES[slot]
            slots.append((slot, values[h % len(values)]))
        return Goal(service, tuple(slots))

    @staticmethod
    def _draw_longest(service: str) -> Goal:
        return Goal(service, tuple((k, max(SLOT_VALUES[k], key=len)) for k in SERVICE_SLOTS[service]))

    def _draw_outside_test(self, stream: int, seed: int, index: int) -> Goal:
        attempt = 0
        goal = self._draw(stream, seed, index, attempt)
        while goal.key() in self._test_keys:
            attempt += 1
            goal = self._draw(stream, seed, index, attempt)
        return goal

    def _problem(self, goal: Goal) -> Problem:
        turns = []
        for slot, value in goal.slots:
            turns += [f"{ASK} {slot}", f"{slot}={value}"]
        turns.append(goal.action())
        return Problem(prompt=f"G:{goal.service}\n", answer=goal.key(), solution="".join(t + "\n" for t in turns))

    # --- Task API ---------------------------------------------------------------------------------------

    def train_problems(self, indices: Sequence[int]) -> list[Problem]:
        """Training goals for any non-negative indices (the stream is unbounded)."""
        return [self._problem(self._draw_outside_test(_STREAM_TRAIN, self.train_seed, int(i))) for i in indices]

    def num_train(self) -> int | None:
        return None

    def test_problems(self) -> list[Problem]:
        return list(self._test)

    def sft_problems(self) -> list[Problem]:
        """``n_sft`` fixed demonstrations: the full correct dialogue of goals from their own stream."""
        return [self._problem(self._draw_outside_test(_STREAM_SFT, self.train_seed, i)) for i in range(self.n_sft)]

    def user_reply(self, problem: Problem, assistant_turn: str) -> str | None:
        return user_reply(Goal.parse(problem.answer), assistant_turn)

    def demo_turns(self, problem: Problem) -> list[tuple[str, bool]]:
        """The solution's lines alternate assistant and user, starting and ending with the assistant."""
        lines = problem.solution.split("\n")[:-1] if problem.solution else []
        return [(line + "\n", i % 2 == 0) for i, line in enumerate(lines)]

    def judge(self, responses: list[str], problems: list[Problem]) -> list[Judgement]:
        check_aligned(responses, problems)
        return [judge(r, Goal.parse(p.answer)) for r, p in zip(responses, problems)]

    def score(self, responses: list[str], problems: list[Problem]) -> torch.Tensor:
        """TCR (``task.reward=tcr``) or GCR (``gcr``) of each dialogue; ``[B]`` float32."""
        return torch.tensor([getattr(j, self.reward) for j in self.judge(responses, problems)], dtype=torch.float32)

    def metrics(self, responses: list[str], problems: list[Problem]) -> dict[str, torch.Tensor]:
        """``tcr``, ``acr``, ``gcr`` and per domain ``tcr/<domain>`` (etc.), NaN outside the domain."""
        verdicts = self.judge(responses, problems)
        domains = [SERVICE_DOMAIN[p.answer.split(" ", 1)[0]] for p in problems]
        out: dict[str, torch.Tensor] = {}
        for name in ("tcr", "acr", "gcr"):
            values = [getattr(j, name) for j in verdicts]
            out[name] = torch.tensor(values, dtype=torch.float32)
            for d in self.domains:
                out[f"{name}/{d}"] = torch.tensor(
                    [v if dom == d else math.nan for v, dom in zip(values, domains)], dtype=torch.float32
                )
        return out
