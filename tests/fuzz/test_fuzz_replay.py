"""The replay loader (testbed.replay.sessions.load_sessions) on damaged captures: the golden
captures with bytes changed, inserted, removed or cut, and files of random bytes. It builds
sessions (saying what it cannot use) or refuses the file with a clear CaptureError."""

from __future__ import annotations

from pathlib import Path

from hypothesis import event, given
from hypothesis import strategies as st

from testbed.capture.packets import CaptureError
from testbed.replay.model import Sessions
from testbed.replay.sessions import load_sessions

from ..fuzzing import EDITS, budget, damage

GOLDEN = Path(__file__).resolve().parents[2] / "captures" / "golden"
SEEDS = {p.name: p.read_bytes() for p in sorted(GOLDEN.glob("*.pcapng"))
         if p.stat().st_size < 64 * 1024}


@st.composite
def damaged(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        event("random bytes")
        return draw(st.binary(max_size=2000))
    name = draw(st.sampled_from(sorted(SEEDS)))
    event(name)
    return damage(SEEDS[name], draw(EDITS))


def test_the_seeds_are_there():
    assert {"login.pcapng", "chat.pcapng"} <= set(SEEDS)


@budget(0.3)
@given(data=damaged())
def test_a_damaged_capture_loads_or_is_refused_clearly(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("replay") / "damaged.pcapng"
    path.write_bytes(data)
    try:
        sessions = load_sessions(str(path))
    except CaptureError as exc:
        assert str(path) in str(exc)
        event("refused")
        return
    assert isinstance(sessions, Sessions)
    event("problems noted" if sessions.problems else "loaded")
