"""Closed sets of names (the doors, the kinds of capture events) as string enums.

A member is its string (`Door.LONG == "long"`, the same hash, written as `"long"` in JSON and
f-strings), so tables, stats keys and JSON documents keep plain strings; what the enum adds is
that a name not in the set is an error that says which names are: `Door("lnog")` raises
`ValueError: unknown door 'lnog' (did you mean 'long'?); valid: long, short, tls`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Iterable


def unknown(what: str, value: Any, valid: Iterable[str]) -> ValueError:
    """The error for `value` that is not one of `valid`: it names them, and the closest."""
    import difflib      # only for an error: not on every import of the enums

    valid = [str(v) for v in valid]
    close = difflib.get_close_matches(str(value), valid, n=1) if isinstance(value, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown {what} {value!r}{hint}; valid: {', '.join(valid) or 'none'}")


class Choice(StrEnum):
    """Base of the closed name sets: `class Door(Choice, what="door")`."""

    def __init_subclass__(cls, what: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._what = what or cls.__name__.lower()

    @classmethod
    def _missing_(cls, value: Any):
        raise unknown(cls._what, value, cls)
