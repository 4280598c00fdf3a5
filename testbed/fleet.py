"""Workers spread over processes: the one way to run many phones in processes of their own.

`Fleet(work, payloads)` runs `await work(payload, channel)` once per payload, each in a
spawned child process with an event loop of its own, or, with `spawn=False`, as a task in
the caller's loop (the same code path without processes). A worker talks to its parent
through its `Channel` only, both ways: `channel.send(kind, *args)` and `await
channel.receive()`; its return value, or its traceback, goes back the same way. The parent
reads every worker from its own event loop (`await fleet.run(on_message)`, `await
fleet.collect(kind)`) and writes with `fleet.send(i, ...)` or `fleet.broadcast(...)`.
Payloads, messages and results cross a pipe, so they must pickle; `work` must be a function
a child can import by name. Source addresses for the workers' clients come from
`testbed.lab.addressing.client_address`.

Children die with their parent, however it ends: they ignore SIGINT (Ctrl-C reaches the
whole process group; the parent stops them), stop when the pipe to their parent closes, and
ask the kernel to kill them if the thread that started them dies (Linux `PR_SET_PDEATHSIG`),
even of SIGKILL. Leaving `async with Fleet(...)` (an error, Ctrl-C, a cancellation) sends
SIGTERM to every worker still running, by its own PID, then SIGKILL if it lingers.
A supervisor keeps a fleet of servers up with `fleet.restart(i)` after worker i failed.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import traceback
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Sequence

from testbed.eventloop import Loop, pick as pick_loop, run as run_on

log = logging.getLogger(__name__)

__all__ = ["Channel", "Fleet", "Message", "WorkerFailed", "die_with_parent",
           "end_with_parent"]

Work = Callable[[Any, "Channel"], Awaitable[Any]]

_RESULT, _ERROR, _EXIT = "result", "error", "exit"   # the runner's own message kinds
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Message:
    """What worker `worker` sent: `channel.send(kind, *args)`."""

    worker: int
    kind: str
    args: tuple
    generation: int = 0   # which start of the worker (`Fleet.restart`) sent it

    @property
    def value(self) -> Any:
        """The one argument, or all of them as a tuple."""
        return self.args[0] if len(self.args) == 1 else self.args


class WorkerFailed(RuntimeError):
    """A worker raised, or its process ended before returning."""

    def __init__(self, worker: int, name: str, detail: str) -> None:
        super().__init__(f"{name} failed: {detail}")
        self.worker = worker
        self.name = name
        self.detail = detail


class Channel:
    """A worker's one line to its parent."""

    def __init__(self) -> None:
        self._inbox: asyncio.Queue = asyncio.Queue()

    def send(self, kind: str, *args: Any) -> None:
        """Send `(kind, *args)` to the parent (never blocks the worker for long)."""
        raise NotImplementedError

    async def receive(self) -> tuple:
        """The next `(kind, *args)` the parent sent."""
        return await self._inbox.get()


# ---------------------------------------------------------------------------- child side
class _PipeChannel(Channel):
    def __init__(self, conn, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.conn = conn
        self.parent_gone = asyncio.Event()
        self._loop = loop
        loop.add_reader(conn.fileno(), self._readable)
        # uvloop's add_reader makes the pipe non-blocking: a large send would then fail
        # half-written; recv() must read whole messages
        os.set_blocking(conn.fileno(), True)

    def send(self, kind: str, *args: Any) -> None:
        self.conn.send((kind, *args))

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                self._inbox.put_nowait(self.conn.recv())
        except (EOFError, OSError):      # the parent closed its end, or died
            self._loop.remove_reader(self.conn.fileno())
            self.parent_gone.set()

    def detach(self) -> None:
        if not self.parent_gone.is_set():
            self._loop.remove_reader(self.conn.fileno())


class _ParentGone(Exception):
    pass


def end_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` for a child that is not ours to change (redis-server, a recorder) and
    must not outlive the thread that starts it: the kernel sends it `sig` when that thread
    ends (Linux `PR_SET_PDEATHSIG`, kept across `exec`, `ip netns exec` included)."""
    def preexec() -> None:
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
        except (OSError, AttributeError):   # not Linux: its owner stops it, if it can
            pass
    return preexec


def die_with_parent(parent_pid: int) -> None:
    """Make this process end with `parent_pid`: SIGKILL when the parent thread that started
    us dies (Linux), exit now if it already has; Ctrl-C is left to the parent, which stops
    us. Fleet workers call it first; so does any child process that a supervisor stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent handles Ctrl-C and stops us
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):   # not Linux: the pipe's EOF still stops us
        pass
    if os.getppid() != parent_pid:      # the parent died before we asked
        os._exit(1)


def _child_main(conn, work: Work, payload: Any, loop: Loop | str, parent_pid: int,
                log_level: int) -> None:
    die_with_parent(parent_pid)
    logging.basicConfig(level=log_level)

    async def main() -> Any:
        channel = _PipeChannel(conn, asyncio.get_running_loop())
        task = asyncio.ensure_future(work(payload, channel))
        gone = asyncio.ensure_future(channel.parent_gone.wait())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            channel.detach()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise _ParentGone
        return task.result()

    try:
        result = run_on(main(), loop)
        conn.send((_RESULT, result))
    except _ParentGone:
        pass
    except BaseException:   # noqa: BLE001 - the parent says what failed
        try:
            conn.send((_ERROR, traceback.format_exc()))
        except (OSError, EOFError):
            pass
    finally:
        conn.close()


# ---------------------------------------------------------------------------- in-process
class _LocalChannel(Channel):
    def __init__(self, fleet: "Fleet", index: int) -> None:
        super().__init__()
        self.fleet = fleet
        self.index = index

    def send(self, kind: str, *args: Any) -> None:
        self.fleet._inbox.put_nowait(Message(self.index, kind, args))


# ---------------------------------------------------------------------------- parent side
class Fleet:
    """Workers `work(payload, channel)`, one per payload; see the module docstring."""

    def __init__(self, work: Work, payloads: Sequence[Any], *, spawn: bool = True,
                 loop: Loop | str = Loop.AUTO, name: str = "fleet") -> None:
        if not payloads:
            raise ValueError("a fleet needs at least one payload")
        self.work = work
        self.payloads = list(payloads)
        self.spawn = spawn
        self.loop_choice = loop
        self.name = name
        self.results: list[Any] = [None] * len(self.payloads)
        self._finished: set[int] = set()
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._procs: list = []
        self._conns: list = []
        self._tasks: list[asyncio.Task] = []
        self._local: list[_LocalChannel] = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._generation: list[int] = [0] * len(self.payloads)

    def __len__(self) -> int:
        return len(self.payloads)

    def worker_name(self, i: int) -> str:
        return f"{self.name}-{i + 1}"

    @property
    def pids(self) -> list[int]:
        """The workers' process IDs (none with `spawn=False`); a restarted worker's is its
        new process's."""
        return [p.pid for p in self._procs]

    # ------------------------------------------------------------------ start and stop
    async def __aenter__(self) -> "Fleet":
        try:
            self.start()
        except BaseException:   # the workers started so far must not outlive this
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def start(self) -> None:
        """Start every worker (from inside the parent's event loop)."""
        self._loop = loop = asyncio.get_running_loop()
        if not self.spawn:
            pick_loop(self.loop_choice)   # the same error for a bad choice either way
            for i, payload in enumerate(self.payloads):
                channel = _LocalChannel(self, i)
                task = loop.create_task(self.work(payload, channel))
                task.add_done_callback(lambda t, i=i: self._local_done(i, t))
                self._local.append(channel)
                self._tasks.append(task)
            return
        for i in range(len(self.payloads)):
            self._procs.append(None)
            self._conns.append(None)
            self._spawn(i)

    def _spawn(self, i: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        level = logging.getLogger().getEffectiveLevel()
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child_main, name=self.worker_name(i), daemon=True,
                           args=(child, self.work, self.payloads[i], self.loop_choice,
                                 os.getpid(), level))
        proc.start()
        child.close()
        self._procs[i] = proc
        self._conns[i] = parent
        gen = self._generation[i]
        self._loop.add_reader(parent.fileno(), self._readable, i, gen)
        os.set_blocking(parent.fileno(), True)   # see _PipeChannel
        self._loop.add_reader(proc.sentinel, self._exited, i, gen)

    def restart(self, i: int) -> None:
        """Start worker i again, in a new process with the same payload, once it has ended
        (after `receive` reported its result or failure). Anything its old process sent
        that is still unread is dropped. Spawned fleets only."""
        if not self.spawn:
            raise RuntimeError("only a spawned fleet restarts workers")
        if i not in self._finished:
            raise RuntimeError(f"{self.worker_name(i)} is still running")
        old, conn = self._procs[i], self._conns[i]
        self._loop.remove_reader(conn.fileno())
        self._loop.remove_reader(old.sentinel)
        old.join(2.0)
        if old.is_alive():   # it returned but lingers: it must not hold on to anything
            old.kill()
            old.join(2.0)
        conn.close()
        self._generation[i] += 1
        self._finished.discard(i)
        self.results[i] = None
        self._spawn(i)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop what is still running: workers that returned are waited for (they are
        exiting), the others get SIGTERM at once, then SIGKILL after 2 s."""
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = self._loop
        started = [(i, p, c) for i, (p, c) in enumerate(zip(self._procs, self._conns))
                   if p is not None]     # a start that failed midway left the rest None
        for i, proc, conn in started:
            if loop is not None and not loop.is_closed():
                loop.remove_reader(conn.fileno())
                loop.remove_reader(proc.sentinel)
            if i not in self._finished and proc.is_alive():
                proc.terminate()
        for i, proc, _ in started:
            proc.join(timeout if i in self._finished else 2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
        for _, _, conn in started:
            conn.close()
        self._procs, self._conns, self._tasks = [], [], []

    # ------------------------------------------------------------------ talking
    def send(self, i: int, kind: str, *args: Any) -> None:
        """Send `(kind, *args)` to worker i (what its `channel.receive()` returns)."""
        if not self.spawn:
            self._local[i]._inbox.put_nowait((kind, *args))
        else:
            self._conns[i].send((kind, *args))

    def broadcast(self, kind: str, *args: Any) -> None:
        for i in range(len(self)):
            if i not in self._finished:
                self.send(i, kind, *args)

    def done(self) -> bool:
        return len(self._finished) == len(self)

    async def receive(self, timeout: Optional[float] = None) -> Message:
        """The next message from any worker. A worker's return value comes as kind
        "result" (and is kept in `results`); a failed worker raises `WorkerFailed`."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:
                m = await asyncio.wait_for(self._inbox.get(),
                                           None if deadline is None else
                                           max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                quiet = [self.worker_name(i) for i in range(len(self))
                         if i not in self._finished]
                raise TimeoutError(f"nothing from {', '.join(quiet)} in {timeout} s") from None
            if m.generation != self._generation[m.worker]:
                continue        # from a process of this worker that was since restarted
            if m.kind == _EXIT and m.worker in self._finished:
                continue        # the process of a worker that returned (or failed) ended
            if m.kind == _RESULT:
                self.results[m.worker] = m.value
                self._finished.add(m.worker)
            elif m.kind in (_ERROR, _EXIT):
                self._finished.add(m.worker)
                detail = (f"exited with code {m.args[0]} before returning" if m.kind == _EXIT
                          else m.args[0])
                cause = m.args[1] if len(m.args) > 1 else None   # in-process: the exception
                raise WorkerFailed(m.worker, self.worker_name(m.worker), detail) from cause
            return m

    async def run(self, on_message: Optional[Callable[[Message], None]] = None,
                  on_failure: Optional[Callable[[WorkerFailed], Any]] = None) -> list:
        """Until every worker has returned: their results, in payload order. Other
        messages go to `on_message`. A failure raises, unless `on_failure` turns it into
        that worker's result."""
        while not self.done():
            try:
                m = await self.receive()
            except WorkerFailed as failed:
                if on_failure is None:
                    raise
                self.results[failed.worker] = on_failure(failed)
                continue
            if m.kind != _RESULT and on_message is not None:
                on_message(m)
        return list(self.results)

    async def collect(self, kind: str, timeout: Optional[float] = None) -> list:
        """One message `kind` from every worker (say, the replies to a broadcast): their
        values, in payload order."""
        got: dict[int, Any] = {}
        while len(got) < len(self):
            m = await self.receive(timeout)
            if m.kind != kind:
                raise RuntimeError(f"{self.worker_name(m.worker)} sent {m.kind!r} while "
                                   f"{kind!r} was awaited")
            got[m.worker] = m.value
        return [got[i] for i in range(len(self))]

    # ------------------------------------------------------------------ readers
    def _readable(self, i: int, gen: int) -> None:
        conn = self._conns[i]
        try:
            while conn.poll():
                kind, *args = conn.recv()
                self._inbox.put_nowait(Message(i, kind, tuple(args), gen))
        except (EOFError, OSError):      # the child is gone; _exited says how
            self._loop.remove_reader(conn.fileno())
        except Exception as exc:   # noqa: BLE001 - e.g. a result that does not unpickle
            self._loop.remove_reader(conn.fileno())
            self._inbox.put_nowait(Message(i, _ERROR, (f"bad message: {exc!r}",), gen))

    def _exited(self, i: int, gen: int) -> None:
        self._loop.remove_reader(self._procs[i].sentinel)
        self._readable(i, gen)   # what it wrote before exiting is all in the pipe now
        proc = self._procs[i]
        proc.join(1.0)   # its sentinel closes a moment before it can be reaped
        self._inbox.put_nowait(Message(i, _EXIT, (proc.exitcode,), gen))

    def _local_done(self, i: int, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._inbox.put_nowait(Message(i, _RESULT, (task.result(),)))
        else:
            detail = "".join(traceback.format_exception(exc))
            self._inbox.put_nowait(Message(i, _ERROR, (detail, exc)))
