"""A recorded reply and a live one, compared field by field under masks.

Both are trees (`testbed.replay.tree`). Dicts compare key by key, lists element by element
(unless a `set` mask covers them), everything else by value. At each path the first mask
that covers it decides instead; a `captured` mask reads and fills the run's `Bindings`. The
outcome lists every difference (path, recorded, replayed) and every mask that let a
difference pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from .bindings import Bindings
from .masks import Mask, MaskType
from .tree import jsonable


@dataclass(frozen=True)
class Difference:
    path: str
    recorded: Any
    replayed: Any
    note: str = ""


@dataclass
class Outcome:
    diffs: list[Difference] = field(default_factory=list)
    masked: list[tuple[str, Mask]] = field(default_factory=list)   # (path, mask) that passed

    @property
    def equal(self) -> bool:
        return not self.diffs


def compare(recorded: Any, replayed: Any, masks: list[Mask], bindings: Bindings,
            client: Optional[int] = None) -> Outcome:
    """Compare two trees; captured values are bound for `client` (a recorded uin)."""
    out = Outcome()
    _Comparer(masks, bindings, client, out).node(recorded, replayed, "", [], {})
    return out


class _Comparer:
    def __init__(self, masks: list[Mask], bindings: Bindings, client: Optional[int],
                 out: Outcome) -> None:
        self.masks = masks
        self.bindings = bindings
        self.client = client
        self.out = out

    def mask_for(self, parts: list) -> Optional[Mask]:
        for m in self.masks:
            if m.covers(parts):
                return m
        return None

    def differ(self, path: str, a: Any, b: Any, note: str = "") -> None:
        self.out.diffs.append(Difference(path, a, b, note))

    def node(self, a: Any, b: Any, path: str, parts: list, keys: dict) -> None:
        mask = self.mask_for(parts) if parts else None
        if mask is not None and self.masked(mask, a, b, path, keys):
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                self.node(a.get(k), b.get(k), f"{path}.{k}" if path else k, parts + [k],
                          keys)
            return
        if isinstance(a, list) and isinstance(b, list):
            for i in range(max(len(a), len(b))):
                x = a[i] if i < len(a) else None
                y = b[i] if i < len(b) else None
                sub = {**keys}
                for m in self.masks:       # keyed elements: their key for the bindings
                    for p in m.parts:
                        if isinstance(p, tuple) and p and p[0] == "key":
                            for item in (x, y):
                                if isinstance(item, dict) and p[1] in item:
                                    sub[p[1]] = item[p[1]]
                                    break
                self.node(x, y, f"{path}[{i}]", parts + [i], sub)
            return
        if a != b:
            self.differ(path, a, b)

    def masked(self, m: Mask, a: Any, b: Any, path: str, keys: dict) -> bool:
        """True when the mask decided (a difference recorded or let pass); False when the
        comparison goes on below (a `captured` or `set` mask on a value it does not fit)."""
        t = m.type
        if t is MaskType.IGNORE:
            if a != b:
                self.out.masked.append((path, m))
            return True
        if t is MaskType.PRESENT:
            if _present(a) != _present(b):
                self.differ(path, a, b, "present in one only")
            elif a != b:
                self.out.masked.append((path, m))
            return True
        if t is MaskType.SAME_TYPE:
            if type(a) is not type(b):
                self.differ(path, a, b, f"{type(a).__name__} became {type(b).__name__}")
            elif a != b:
                self.out.masked.append((path, m))
            return True
        if t is MaskType.TOLERANCE:
            if not (_number(a) and _number(b)):
                return False
            if abs(a - b) > m.arg:
                self.differ(path, a, b, f"beyond the tolerance of {m.arg:g}")
            elif a != b:
                self.out.masked.append((path, m))
            return True
        if t is MaskType.SET:
            if not (isinstance(a, list) and isinstance(b, list)):
                return False
            if sorted(map(_canon, a)) != sorted(map(_canon, b)):
                self.differ(path, a, b, "not the same elements")
            elif a != b:
                self.out.masked.append((path, m))
            return True
        if t is MaskType.CAPTURED:
            if isinstance(a, (dict, list)) or a is None or not _present(a):
                return False            # nothing handed out here: compare as usual
            scope = self.bindings.scope(m.arg, self.client, keys)
            if not self.bindings.known(m.arg, scope, a):
                self.bindings.bind(m.arg, scope, a, b)      # handed out: captured
                if a != b:
                    self.out.masked.append((path, m))
                return True
            bound = self.bindings.get(m.arg, scope, a)
            if b != bound:
                self.differ(path, a, b, f"the live value captured for it is {bound!r}")
            elif a != b:
                self.out.masked.append((path, m))
            return True
        return False


def _present(v: Any) -> bool:
    return v not in (None, 0, "", b"", [], {}, False)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _canon(v: Any) -> str:
    return json.dumps(jsonable(v), sort_keys=True, ensure_ascii=False)
