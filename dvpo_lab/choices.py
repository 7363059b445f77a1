"""Choice fields of the typed config as Enums: OmegaConf checks them when the config is composed (a wrong value is
refused with the list of choices before anything runs), and code and logs keep reading plain strings.

    AggLossMode = choice_enum("AggLossMode", ("token-mean", "seq-mean-token-mean", ...), __name__)

A member's name is its value (so `token-mean` works on the command line), it compares equal to that string
(`mode == "token-mean"`), hashes like it, and prints as it (`f"{mode}"` is `token-mean`).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

__all__ = ["Choice", "choice_enum"]


class Choice(str, Enum):
    """Base of every choice Enum: a str whose text is the value."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


def choice_enum(name: str, values: Iterable[str], module: str) -> type[Choice]:
    """A `Choice` Enum named `name` with one member per value (name = value); `module` is where it is bound to
    `name` (pickling finds it there)."""
    return Choice(name, [(v, v) for v in values], module=module, qualname=name)
