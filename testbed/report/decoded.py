"""What a ladder row's message holds, decoded, for the report's detail panel: click an arrow
and the page shows its event's fields (the protobuf body as a tree, HTTP headers, DNS
answers), as `testbed analyze --events --json` has them.

Each drawn row carries its event as JSON in a `data-fields` attribute (no script: the page
runs only its own), bounded: long strings and lists are cut, so a video upload's bytes do not
make the page megabytes."""

from __future__ import annotations

import json
from typing import Any, Iterable

MAX_STRING = 300       # characters of a string value kept
MAX_ITEMS = 40         # items of a list or keys of an object kept
MAX_DEPTH = 8


def _bounded(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k): _bounded(v, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            out["…"] = f"{len(items) - MAX_ITEMS} more keys"
        return out
    if isinstance(value, (list, tuple)):
        out = [_bounded(v, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            out.append(f"… {len(value) - MAX_ITEMS} more")
        return out
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING else \
            value[:MAX_STRING] + f"… ({len(value)} characters)"
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _bounded(str(value), depth)


def event_doc(e) -> dict:
    """One event as the panel shows it: where it went and its decoded fields."""
    d = e.to_dict()
    return _bounded({"label": d["label"], "kind": d["kind"], "packet": d["packet"],
                     "src": d["src"], "dst": d["dst"], "host": d["host"], "flow": d["flow"],
                     "fields": d["fields"]})


def decoded_rows(analysis, rows: Iterable) -> dict[int, dict]:
    """{row position: its first message's event, decoded} for the ladder's drawn rows: the
    event of the row's kind in the row's first packet."""
    by_packet: dict[tuple[int, str], Any] = {}
    for e in getattr(analysis, "events", None) or []:
        by_packet.setdefault((e.index, str(e.kind)), e)
    out = {}
    for i, row in enumerate(rows):
        if getattr(row, "gap", False):
            continue
        e = by_packet.get((row.packet, str(row.kind)))
        if e is not None:
            out[i] = event_doc(e)
    return out


def fields_attr(doc: dict) -> str:
    """A decoded event as the value of the row's `data-fields` attribute (JSON, to be
    HTML-escaped by the caller)."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
