"""Clean rewards: the function ``task.reward`` names, the built-in answer-checking ones, and their rules.

A task's clean reward is a `_target_` node built with ``_partial_: true``, so the function itself, with any
other keys of the node bound as keyword arguments, is what scores (:class:`RewardFn` has the signature)::

    task.reward._target_=dvpo_lab.tasks.reward.math_verify_match     # a built-in rule (below)
    task.reward._target_=my_pkg.my_reward                            # your own: one function, one override
    +task.reward.window=300                                          # a keyword argument of the function

Built-in rules (``task=arith``, ``gsm8k`` and ``jsonl`` default to :func:`strict_match`):

* :func:`strict_match`: veRL's ``verl/utils/reward_score/gsm8k.py`` rule (method ``strict``), so our accuracy
  numbers mean what veRL users expect: the number of the last ``#### <number>`` equals the reference.
* :func:`math_verify_match`: math-verify's equivalence on the answer the last ``####`` commits to; the
  flexible option for free-form answers (``"#### 5.0"``, ``"\\boxed{5}"`` match ``"5"``).
* :func:`exact_match`: the text of the last ``####`` line equals the reference string (answers that are not
  numbers, e.g. ``"Paris"``).

Where the answer is: the last ``####`` marker commits to it, and nothing written after the committed answer
can change the score, however long it is. veRL reads only the last 300 characters (its stand-in for about
300 tokens, to keep regexes fast), so a correct ``#### 42`` followed by 300 characters of explanation scores 0
there; ``window=300`` (``+task.reward.window=300``) reproduces that for comparisons with numbers published
with it, and the default ``window=None`` reads the whole response.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

from dvpo_lab.config import ConfigError

if TYPE_CHECKING:
    from dvpo_lab.tasks.base import Problem

log = logging.getLogger(__name__)

MARKER = "####"
# veRL's window, in characters (``+task.reward.window=300`` reproduces it; the default reads everything).
VERL_WINDOW_CHARS = 300
# The flexible rule's committed answer is the shortest prefix of the marker's line, in words, that parses;
# "#### The final answer is 42" needs 5 words, so 8 is room enough and bounds the parser calls.
MAX_ANSWER_WORDS = 8
_STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")


def clip_window(text: str, window: int | None) -> str:
    """The part of ``text`` a rule reads: all of it (``window=None``), or veRL's last ``window`` characters."""
    if window is None:
        return text
    if window < 1:
        raise ValueError(f"window must be >= 1 characters or None, got {window}")
    return text[-window:]


def extract_answer_strict(text: str, window: int | None = None) -> str | None:
    """veRL's strict GSM8K extraction: the number of the last ``#### <number>`` (one space, no other text).

    Commas and ``$`` are removed from the match (``"#### 1,234"`` -> ``"1234"``). Returns ``None`` when the
    response has no well-formed final answer, which is what makes the rule test the format too. Text after
    the last match never changes the result; ``window`` (characters, ``None`` = all) clips the response to its
    tail first, as veRL does with 300.
    """
    matches = _STRICT_RE.findall(clip_window(text, window))
    if not matches:
        return None
    return matches[-1].replace(",", "").replace("$", "")


def score_strict(text: str, answer: str, window: int | None = None) -> float:
    """1.0 when the strict extraction equals the reference string exactly, else 0.0 (veRL's defaults)."""
    return 1.0 if extract_answer_strict(text, window) == answer else 0.0


def _math_verify_timeout() -> int | None:
    # math-verify enforces its timeout with signal.alarm, which only works in the main thread; elsewhere it
    # would fail every call, so we run without a timeout there.
    return 5 if threading.current_thread() is threading.main_thread() else None


def final_segment(text: str, window: int | None = None) -> str:
    """The part of a response the flexible rule parses: the rest of the last ``####`` marker's line when
    the response has a marker, else the whole response (``window``: only its last characters).

    A worked GSM8K solution is full of intermediate numbers (``<<6/1=6>>6 mph``) that math-verify would
    otherwise pick up, and explanations after the answer are full of others; the marker says where the
    committed answer is. See :func:`parse_committed` for how much of the marker's line counts.
    """
    text = clip_window(text, window)
    if MARKER not in text:
        return text
    return text.rsplit(MARKER, 1)[1].split("\n", 1)[0]


def parse_committed(text: str, window: int | None = None, timeout: int | None = None) -> list:
    """``math_verify.parse`` of the answer a response commits to (``[]`` when none).

    With a ``####`` marker: the shortest prefix, in words, of the rest of the marker's line that parses
    (at most :data:`MAX_ANSWER_WORDS` words), so ``"#### 42. Then 17 remain"`` is 42 where math-verify alone
    would take its rightmost number, 17; nothing after the marker's line counts, and a marker whose line
    has no answer gives ``[]`` (the response committed to nothing readable). Without a marker: math-verify's
    own choice over the whole response (``\\boxed{}``, then ``the answer is ...``, then the last number;
    rightmost first within each kind), since nothing marks where the answer ends: a later phrase of the same
    kind wins, which is why the prompt asks for ``####``.
    ``window`` clips the response first; a marker left outside it gives ``[]``, never a number from the text
    after it.

    Raises whatever ``math_verify.parse`` raises (callers guard).
    """
    from math_verify import parse

    clipped = clip_window(text, window)
    if MARKER not in clipped:
        # a marker cut off by the window committed to an answer the rule cannot see: the tail after it is
        # explanation, not an answer (strict scores such a response 0 too)
        return [] if MARKER in text else parse(clipped, parsing_timeout=timeout)
    words = final_segment(clipped).split()
    for k in range(1, min(len(words), MAX_ANSWER_WORDS) + 1):
        parsed = parse(" ".join(words[:k]), parsing_timeout=timeout)
        if parsed:
            return parsed
    return []


def extract_answer_math_verify(text: str, window: int | None = None) -> str | None:
    """Flexible extraction: the string form of :func:`parse_committed`'s answer (``"#### 1,234"`` ->
    ``"1234"``, ``"so $\\boxed{6}$"`` -> ``"6"``).

    Never raises: any parser failure (or a missing ``math-verify``) gives ``None``.
    """
    try:
        parsed = parse_committed(text, window, _math_verify_timeout())
    # a scorer must not kill a training run on one odd response, whatever the parser throws
    except Exception as err:  # noqa: BLE001
        log.debug("math_verify.parse failed: %r", err)
        return None
    if len(parsed) < 2:
        return None
    return str(parsed[1])


def score_math_verify(text: str, answer: str, window: int | None = None) -> float:
    """1.0 when ``math_verify.verify`` judges the response's committed answer (:func:`parse_committed`)
    equivalent to the reference (``"579.0"``, ``"\\boxed{579}"`` and ``"#### 579"`` all match ``"579"``),
    else 0.0.

    Never raises: any failure scores 0.0.
    """
    try:
        from math_verify import parse, verify

        timeout = _math_verify_timeout()
        gold = parse(answer, parsing_timeout=timeout)
        pred = parse_committed(text, window, timeout)
        return 1.0 if gold and pred and verify(gold, pred, timeout_seconds=timeout) else 0.0
    except Exception as err:  # noqa: BLE001  (same reason as above)
        log.debug("math_verify scoring failed: %r", err)
        return 0.0


SCORERS: dict[str, Callable[[str, str, int | None], float]] = {
    "strict": score_strict,
    "math_verify": score_math_verify,
}


def score_batch(
    responses: Sequence[str], answers: Sequence[str], method: str = "strict", window: int | None = None
) -> torch.Tensor:
    """Score each response against its reference answer with rule ``method`` (``window``: see
    :func:`clip_window`).

    Returns:
        ``[B]`` float32 tensor in ``{0, 1}``.
    """
    if method not in SCORERS:
        raise ValueError(f"unknown scoring method {method!r}; choose one of {sorted(SCORERS)}")
    if len(responses) != len(answers):
        raise ValueError(f"got {len(responses)} responses for {len(answers)} answers")
    fn = SCORERS[method]
    return torch.tensor([fn(r, a, window) for r, a in zip(responses, answers)], dtype=torch.float32)


# --- the reward protocol and the built-in rewards -----------------------------------------------------------


class RewardFn(Protocol):
    """A task's clean reward: what ``task.reward`` builds and the task's ``score`` calls.

    ``reward(responses, problems) -> scores``, on a batch. It is called:

    * once per RL step on the rollout batch, ``B = rollout.prompts_per_step x rollout.samples_per_prompt``
      sampled responses (per rank); its mean is ``critic/score/mean`` before noise (``noise=none``: the same);
    * on each chunk of the greedy evaluation (``B <= rollout.eval_batch_size``): its mean over the held-out
      split is ``val/acc``; the warm-start's accuracy checks use it too;
    * by ``noise=majority_vote``, with each problem's ``answer`` replaced by the prompt's pseudo-label.

    Args:
        responses: ``B`` decoded response texts (``list[str]``; the prompt and special tokens not included).
        problems: the ``B`` :class:`~dvpo_lab.tasks.base.Problem` they answer, aligned with ``responses``:
            ``answer`` (the reference, a normalised string), ``prompt``, ``solution`` (or ``None``) and
            ``extra_info`` (a dict, or ``None``: ``task=jsonl`` keeps the row's other columns there).
        **kwargs: the reward node's other keys (``+task.reward.window=300``), bound by ``_partial_: true``.

    Returns:
        ``[B]`` scores in ``[0, 1]``, one per response in order: a ``torch.Tensor`` (any dtype, any device) or
        a sequence of floats or bools; 1 = correct. The flip-type noise models (``noise=flip*``, ``asym_*``,
        ``rm*``) flip verdicts, so give them ``{0, 1}``; ``noise=none`` and ``gauss*`` take any value in range.
        A wrong length, a NaN or a value outside ``[0, 1]`` stops the run with one line naming the reward.
    """

    def __call__(self, responses: list[str], problems: list[Problem], /) -> torch.Tensor | Sequence[float]: ...


def strict_match(responses: Sequence[str], problems: Sequence[Problem], window: int | None = None) -> torch.Tensor:
    """veRL's strict rule (:func:`score_strict`): 1 where the number of the last ``#### <number>`` (commas and
    ``$`` removed) equals ``problem.answer`` exactly, else 0. ``window``: characters read from the end
    (``None`` = all). Returns ``[B]`` float32 in ``{0, 1}``."""
    return score_batch(responses, [p.answer for p in problems], "strict", window)


def math_verify_match(responses: Sequence[str], problems: Sequence[Problem], window: int | None = None) -> torch.Tensor:
    """math-verify's equivalence (:func:`score_math_verify`) between the answer a response commits to and
    ``problem.answer``. ``window`` as in :func:`strict_match`. Returns ``[B]`` float32 in ``{0, 1}``."""
    return score_batch(responses, [p.answer for p in problems], "math_verify", window)


def extract_answer_exact(text: str, window: int | None = None) -> str | None:
    """The rest of the last ``####`` marker's line, stripped (``"#### Paris\\nbecause"`` -> ``"Paris"``);
    ``None`` without a marker or with nothing after it. Never raises."""
    clipped = clip_window(text, window)
    if MARKER not in clipped:
        return None
    return final_segment(clipped).strip() or None


def exact_match(responses: Sequence[str], problems: Sequence[Problem], window: int | None = None) -> torch.Tensor:
    """1 where :func:`extract_answer_exact` equals ``problem.answer`` (stripped) exactly, case included:
    answers that are not numbers (``"Paris"``, ``"B"``, ``"x^2"``). Returns ``[B]`` float32 in ``{0, 1}``."""
    if len(responses) != len(problems):
        raise ValueError(f"got {len(responses)} responses for {len(problems)} problems")
    return torch.tensor(
        [1.0 if extract_answer_exact(r, window) == p.answer.strip() else 0.0 for r, p in zip(responses, problems)],
        dtype=torch.float32,
    )


def per_sample(fn: Callable[..., float]) -> Callable[..., list[float]]:
    """A batch reward from a per-response one: ``fn(response: str, answer: str, **kwargs) -> float`` scored
    on each pair in turn (``answer`` = ``problem.answer``). Decorate the function you name in ``task.reward``::

        @per_sample
        def my_reward(response: str, answer: str) -> float:
            return float(answer in response)
    """

    @functools.wraps(fn)
    def batch(responses: Sequence[str], problems: Sequence[Problem], **kwargs: Any) -> list[float]:
        return [float(fn(r, p.answer, **kwargs)) for r, p in zip(responses, problems, strict=True)]

    return batch


def reward_name(reward: Callable[..., Any]) -> str:
    """``module.function`` of a reward (a ``functools.partial``'s function, with its bound keywords)."""
    func = reward.func if isinstance(reward, functools.partial) else reward
    name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', type(func).__name__)}"
    kwargs = reward.keywords if isinstance(reward, functools.partial) else {}
    return name + (f"({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})" if kwargs else "")


def as_scores(values: Any, n: int, reward: Callable[..., Any]) -> torch.Tensor:
    """A reward's output as ``[n]`` float32 on the CPU, checked.

    Raises:
        ConfigError: not one score per response, a NaN, or a value outside ``[0, 1]``; naming the reward.
    """
    try:
        out = torch.as_tensor(values).detach().to("cpu", torch.float32)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(
            f"task.reward ({reward_name(reward)}) returned {type(values).__name__}, not [B] scores "
            f"({err}); return a list of floats or a 1-d tensor, one per response"
        ) from None
    if out.shape != (n,):
        raise ConfigError(
            f"task.reward ({reward_name(reward)}) returned shape {tuple(out.shape)} for {n} "
            f"responses; return one score per response, shape [{n}]"
        )
    bad = ~((out >= 0) & (out <= 1))  # NaN included
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        value = float(out[i])
        raise ConfigError(
            f"task.reward ({reward_name(reward)}) scored response {i} "
            f"{'NaN' if math.isnan(value) else value}; scores must be in [0, 1]"
        )
    return out


def score_with(reward: Callable[..., Any], responses: Sequence[str], problems: Sequence[Problem]) -> torch.Tensor:
    """``reward(responses, problems)`` as checked ``[B]`` float32 scores (:func:`as_scores`): what every
    answer-checking task's ``score`` returns, for the rollouts and for ``val/acc`` alike."""
    if len(responses) != len(problems):
        raise ValueError(f"score() got {len(responses)} responses for {len(problems)} problems")
    return as_scores(reward(list(responses), list(problems)), len(responses), reward)


# the extraction that goes with each built-in reward (majority-vote labels vote over it)
_EXTRACTOR_OF: dict[Callable[..., Any], Callable[..., str | None]] = {
    strict_match: extract_answer_strict,
    math_verify_match: extract_answer_math_verify,
    exact_match: extract_answer_exact,
}


def answer_extractor(reward: Callable[..., Any]) -> Callable[[str], str | None]:
    """The final-answer extraction that matches a reward (its ``window`` included): the built-in rewards'
    own; for any other reward (a user's), veRL's strict ``#### <number>`` rule. ``noise=majority_vote`` votes
    over these strings, then scores with the reward against the winning one."""
    func = reward.func if isinstance(reward, functools.partial) else reward
    extract = next((e for f, e in _EXTRACTOR_OF.items() if f is func), None)  # by identity: any callable
    if extract is None:
        return extract_answer_strict
    window = reward.keywords.get("window") if isinstance(reward, functools.partial) else None
    return functools.partial(extract, window=window)
