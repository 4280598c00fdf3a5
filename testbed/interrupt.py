"""Ctrl-C and SIGTERM stop every command the same way.

The first SIGINT or SIGTERM starts an orderly stop: an async command's main task is
cancelled, so its `finally` blocks and `async with` exits run (the lab closes its capture
and removes its manifest, a fleet stops its workers), then `Interrupted` is raised and the
command exits 128 + the signal's number (130 for SIGINT, 143 for SIGTERM). Later signals are
ignored while that stop runs: a terminal's Ctrl-C reaches every process of the group, and a
parent that forwards the signal to its child would otherwise cut the child's clean-up short.
A task still running RECANCEL_S after its cancel is cancelled again (a cancellation can be
lost), unless it is inside `cleaning_up()`: a clean-up that awaits (stopping a lab of
processes) goes in one, and what must happen even if it is cut short in a `finally` that
does not await.

`run_command()` (what `testbed.cli.main` runs every command in) installs the handlers
whatever the disposition the process inherited: a background job started from a
non-interactive shell starts with SIGINT *ignored*, and a lab started that way must still stop
on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Optional

if TYPE_CHECKING:
    import asyncio

# asyncio is imported by the commands that run a loop, not here: `run_command` wraps every
# command, and a command without a loop (`testbed analyze`) would pay for it at start-up

__all__ = ["Interrupted", "catch_signals", "cleaning_up", "run", "run_command",
           "STOP_SIGNALS"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RECANCEL_S = 0.5   # a task still running this long after its cancel is cancelled again


class Interrupted(KeyboardInterrupt):
    """A command was stopped by a signal; `status` is the exit status it should return."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def status(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


_stopping: Optional[int] = None   # the first signal received, once a stop has begun
_catching = False                 # inside catch_signals()
_cleaning: "weakref.WeakSet[asyncio.Task]" = weakref.WeakSet()   # inside cleaning_up()


@contextlib.contextmanager
def cleaning_up() -> Iterator[None]:
    """Around a clean-up that awaits, in the task a signal cancelled: the cancellation is not
    sent again while it runs (it has been received: this is what it started)."""
    import asyncio

    task = asyncio.current_task()
    if task is None:
        yield
        return
    _cleaning.add(task)
    try:
        yield
    finally:
        _cleaning.discard(task)


def _raise(signum: int, _frame: Any) -> None:
    global _stopping
    if _stopping is not None:
        return
    _stopping = signum
    raise Interrupted(signum)


@contextlib.contextmanager
def catch_signals() -> Iterator[None]:
    """Inside: the first SIGINT or SIGTERM raises `Interrupted` in the main thread, later
    ones are ignored. The handlers found on entry are put back on exit. Does nothing outside
    the main thread."""
    global _stopping, _catching
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    _stopping, _catching = None, True
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stopping, _catching = None, False


def run(main: Awaitable[Any],
        runner: Optional[Callable[[Awaitable[Any]], Any]] = None) -> Any:
    """`runner(main)` (asyncio.run by default, uvloop.run, ...), with SIGINT and SIGTERM
    cancelling `main` instead of killing the process; raises `Interrupted` once `main` has
    finished after such a signal, whatever it returned. Within `catch_signals()`, signals
    after the first are ignored until the command ends; otherwise the handlers found on entry
    are back once `main` has finished. Outside the main thread: just `runner(main)`."""
    import asyncio

    if runner is None:
        runner = asyncio.run
    if threading.current_thread() is not threading.main_thread():
        return runner(main)
    got: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def restore() -> None:
        global _stopping
        if got and _catching and _stopping is None:
            _stopping = got[0]      # the stop goes on: ignore the signals that follow
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)

    def defer(signum: int, _frame: Any) -> None:
        # before the loop takes the signals over and after it gives them back: noted, not
        # raised (an exception raised inside the loop's constructor leaves a half-made loop
        # whose __del__ prints a traceback at exit)
        if not got and _stopping is None:
            got.append(signum)

    async def guarded() -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            if not got and _stopping is None:
                got.append(signum)
                task.cancel()
                loop.call_later(RECANCEL_S, cancel_again)

        def cancel_again() -> None:
            # a cancellation can be lost: Python 3.11's wait_for returns the result of an
            # awaitable that completed in the same loop iteration as the cancel, and the
            # task then runs on as if nothing happened
            if not task.done():
                if task not in _cleaning:
                    task.cancel()
                loop.call_later(RECANCEL_S, cancel_again)

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        if got:      # a signal came while the loop was being made: main never starts
            if asyncio.iscoroutine(main):
                main.close()
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
                signal.signal(sig, defer)
            return None
        try:
            return await main
        except asyncio.CancelledError:
            if not got:
                raise
        finally:
            # the loop still has to finish the other tasks: what comes now must not find
            # the default handlers (a traceback, or death by SIGTERM)
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
                signal.signal(sig, defer)

    for sig in STOP_SIGNALS:
        signal.signal(sig, defer)
    try:
        result = runner(guarded())
    finally:
        restore()
    if got:
        raise Interrupted(got[0])
    return result


def run_command(command: Callable[..., int], *args: Any) -> int:
    """`command(*args)` with `catch_signals()` on: its exit status, or, when a signal
    stopped it, "interrupted" on stderr and 128 + the signal's number."""
    with catch_signals():
        try:
            return command(*args)
        except Interrupted as exc:
            print(f"interrupted ({exc.signal_name})", file=sys.stderr, flush=True)
            return exc.status
