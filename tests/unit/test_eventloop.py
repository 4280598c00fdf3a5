"""One event-loop picker for `lab up --uvloop`, the study's `--loop` and the benchmarks."""

from __future__ import annotations

import asyncio

import pytest

from testbed.eventloop import LOOPS, Loop, available_loops, have_uvloop, pick, run


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_is_uvloop_where_installed():
    assert pick("auto") is (Loop.UVLOOP if have_uvloop() else Loop.ASYNCIO)
    assert pick(Loop.ASYNCIO) is Loop.ASYNCIO and set(available_loops()) <= set(LOOPS)
    assert available_loops()[0] is Loop.ASYNCIO


def test_run_runs_on_the_loop_picked():
    assert run(_loop_module(), "asyncio").startswith("asyncio.")
    if have_uvloop():
        assert run(_loop_module(), "uvloop").startswith("uvloop")
        assert run(_loop_module()).startswith("uvloop")
    else:
        with pytest.raises(ValueError, match="uvloop is not installed"):
            run(_loop_module(), "uvloop")


def test_an_unknown_loop_is_an_error_naming_the_loops(recwarn):
    with pytest.raises(ValueError, match=r"unknown event loop 'uvlop' \(did you mean "
                                         r"'uvloop'\?\); valid: auto, asyncio, uvloop"):
        run(_loop_module(), "uvlop")
    assert not [w for w in recwarn if "never awaited" in str(w.message)]
