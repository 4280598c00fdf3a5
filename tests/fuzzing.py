"""How much the fuzz suites try: one hypothesis profile for the whole run.

`HYPOTHESIS_PROFILE=ci` (the default, and what `.ci/run` sets) keeps every suite to seconds;
`HYPOTHESIS_PROFILE=deep` runs each a hundred times longer, on demand (docs/robustness.md
says how, and what a deep run found). A suite asks for `budget(weight)`: `weight` times the
profile's examples, so a suite of pure functions can try more than one that opens a socket
per example.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CI_EXAMPLES = 100
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture,
          HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None,
                          suppress_health_check=_QUIET, print_blob=True)
settings.register_profile("deep", max_examples=100 * CI_EXAMPLES, deadline=None,
                          suppress_health_check=_QUIET, print_blob=True)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def budget(weight: float = 1.0, **overrides) -> settings:
    """Settings for one fuzz suite: `weight` x the loaded profile's examples (at least 1),
    and any other setting it needs (`deadline=...`)."""
    return settings(max_examples=max(1, round(settings.default.max_examples * weight)),
                    **overrides)


#: edits to a file's bytes: (position, value, how); `damage` applies them
EDITS = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255),
                           st.sampled_from(["set", "insert", "delete", "cut"])),
                 min_size=1, max_size=12)


def damage(data: bytes, edits) -> bytes:
    """`data` with `edits` (from `EDITS`) applied: a byte set, a run inserted, a run
    removed, or the rest cut off, each at its position (modulo the length)."""
    buf = bytearray(data)
    for pos, val, op in edits:
        if not buf:
            break
        pos %= len(buf)
        if op == "set":
            buf[pos] = val
        elif op == "insert":
            buf[pos:pos] = bytes([val]) * (val % 9 + 1)
        elif op == "delete":
            del buf[pos:pos + val % 17 + 1]
        else:
            del buf[pos:]
    return bytes(buf)
