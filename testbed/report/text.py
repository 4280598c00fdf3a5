"""Text the report makes from capture values: printable (`clean`) and sizes (`byte_size`)."""

from __future__ import annotations

import re
from typing import Any, Optional

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def clean(value: Any, limit: Optional[int] = None) -> str:
    """Text from a capture made printable: control characters as \\xNN, cut to `limit`."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    s = value if isinstance(value, str) else str(value)
    s = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                     else "\ufffd", s)
    s = s.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
    if limit is not None and len(s) > limit:
        s = s[:max(1, limit - 1)] + "…"
    return s


def byte_size(n: Any) -> str:
    """A byte count for people: `812 B`, `12.3 kB`, `4.5 MB` (powers of 1000); `?` for
    what is not a count."""
    try:
        n = int(n)
    except (TypeError, ValueError):
        return "?"
    if abs(n) < 1000:
        return f"{n} B"
    size = float(n)
    for unit in ("kB", "MB", "GB"):
        size /= 1000
        if abs(round(size, 1)) < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} TB"
