"""The contract of `testbed analyze --json`: its version, the names its TCP analysis counts
take, and the JSON Schema every document it prints validates against
(`analyze.schema.json`, draft 2020-12, beside this module).

The analysis counts segments by tshark display filter (`tcp.analysis.retransmission`...);
the JSON gives every count under a plural name (`retransmissions`), each one always present,
zero included, so a script never has to ask whether a key exists.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Mapping

#: the `schema` field of every document; raised when a key changes meaning or goes away
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("analyze.schema.json")

#: tshark display filter `tcp.analysis.<name>` -> the JSON name of its count
COUNT_NAMES: dict[str, str] = {
    "retransmission": "retransmissions",        # every kind: plain, fast and spurious
    "fast_retransmission": "fast_retransmissions",
    "spurious_retransmission": "spurious_retransmissions",
    "out_of_order": "out_of_order",
    "lost_segment": "lost_segments",
    "ack_lost_segment": "acked_unseen_segments",
    "duplicate_ack": "duplicate_acks",
    "zero_window": "zero_windows",
    "zero_window_probe": "zero_window_probes",
    "zero_window_probe_ack": "zero_window_probe_acks",
    "keep_alive": "keep_alives",
    "keep_alive_ack": "keep_alive_acks",
    "window_update": "window_updates",
    "window_full": "full_windows",
    "reused_ports": "reused_ports",
}


def tcp_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts by filter name as the JSON gives them: every name, zeros included."""
    return {json_name: int(counts.get(name, 0)) for name, json_name in COUNT_NAMES.items()}


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The JSON Schema of the `testbed analyze --json` document."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
