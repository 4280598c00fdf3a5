"""`testbed.interrupt`: what every command's Ctrl-C goes through (the commands themselves are
signalled as processes in tests/e2e/test_signals.py)."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from testbed import interrupt


def test_a_signal_cancels_the_main_task_and_its_clean_up_runs():
    cleaned = []

    async def main():
        try:
            signal.raise_signal(signal.SIGTERM)
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.01)      # clean-up that awaits still runs
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(interrupt.Interrupted) as info:
        interrupt.run(main())
    assert info.value.status == 143 and info.value.signal_name == "SIGTERM"
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before     # the caller's handler is back


def test_a_signal_while_the_loop_is_being_made_stops_cleanly():
    """A SIGTERM that comes before the loop runs (a host stopped as it starts): the loop is
    made and closed whole, the main coroutine never starts (and is closed: no "never
    awaited" warning), and the signal's exit follows. Raised inside the loop's constructor,
    it left a half-made loop whose __del__ printed a traceback at exit."""
    started = []

    async def main():
        started.append(True)

    loops = []

    def runner(coro):
        signal.raise_signal(signal.SIGTERM)     # before any loop exists
        with asyncio.Runner() as r:
            loops.append(r.get_loop())
            return r.run(coro)

    coro = main()
    with interrupt.catch_signals():
        with pytest.raises(interrupt.Interrupted) as info:
            interrupt.run(coro, runner)
    assert info.value.signal_name == "SIGTERM" and started == []
    assert coro.cr_frame is None                 # closed, not left for the collector
    assert len(loops) == 1 and loops[0].is_closed()


def test_a_lost_cancellation_is_sent_again():
    """A task that swallows its cancellation (as 3.11's wait_for can) is cancelled again."""
    async def main():
        signal.raise_signal(signal.SIGINT)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass                            # lost
        await asyncio.sleep(30)

    t0 = time.monotonic()
    with pytest.raises(interrupt.Interrupted) as info:
        interrupt.run(main())
    assert info.value.status == 130
    assert time.monotonic() - t0 < interrupt.RECANCEL_S + 1.0


def test_run_command_turns_a_signal_into_its_exit_status(capsys):
    def command() -> int:
        signal.raise_signal(signal.SIGINT)
        time.sleep(5)                       # not reached: the handler raises
        return 0

    assert interrupt.run_command(command) == 130
    assert "interrupted (SIGINT)" in capsys.readouterr().err


def test_later_signals_are_ignored_while_a_command_stops():
    def command() -> int:
        async def main():
            try:
                signal.raise_signal(signal.SIGINT)
                await asyncio.sleep(30)
            finally:
                signal.raise_signal(signal.SIGINT)      # a second Ctrl-C, mid clean-up
                signal.raise_signal(signal.SIGTERM)
                await asyncio.sleep(0.05)
        interrupt.run(main())
        return 0

    assert interrupt.run_command(command) == 130


def test_a_clean_up_that_takes_long_is_not_cancelled_again():
    """Inside cleaning_up() the re-sent cancellation waits: the clean-up ends its own way."""
    done = []

    async def main():
        try:
            signal.raise_signal(signal.SIGTERM)
            await asyncio.sleep(30)
        finally:
            with interrupt.cleaning_up():
                await asyncio.sleep(interrupt.RECANCEL_S * 3)   # past two re-sends
                done.append(True)

    with pytest.raises(interrupt.Interrupted):
        interrupt.run(main())
    assert done == [True]
