"""pytest fixtures for your own scenarios against a lab (entry point `pytest11: testbed`).

Fixtures:
- `lab`: a running loopback lab (per test, or one per session with `--testbed-scope
  session`), as a `LabHandle`: `.manifest`, `.stats()`, `.users`. The lab runs in a thread
  with its own event loop, so the fixture works for sync and async tests alike; errors raised
  inside server handlers fail the test that caused them.
- `wx_client`: an async factory of logged-in emulated phones: `await wx_client(0)` (a lab
  user by index or name); a phone waits with `await phone.wait_for_message(text=...,
  timeout=...)` and `await phone.wait_for_push()`.
- `recorder`: what crossed the wire during this test: `recorder.capture()` is a
  `CaptureView` with `expect_sequence(...)`, `expect_count(spec, at_least=, at_most=)`,
  `heartbeat_interval()`, `expect_heartbeat(...)`; `recorder.path` is the pcapng file. A
  spec naming a kind, field, command or door that does not exist raises
  `testbed.verify.SpecError`, which lists the valid ones.

A failed test that used the lab gets a "testbed capture" report section: its pcapng's path
and the end of its ladder (`testbed.report.excerpt`). docs/pytest.md has every signature.

Options (command line or ini): `--testbed-scope` / `testbed_scope` (function|session),
`--testbed-time-scale` / `testbed_time_scale`, `--testbed-users` / `testbed_users`,
`--testbed-profile` / `testbed_profile`. Per test: `@pytest.mark.testbed_lab(users=3,
time_scale=100, nat_timeout_s=300)` (function scope only).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

try:   # async fixtures need pytest-asyncio (the `test` extra); strict mode needs the decorator
    import pytest_asyncio
    _async_fixture = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - only without pytest-asyncio
    pytest_asyncio = None
    _async_fixture = pytest.fixture

OPTIONS = {
    "scope": ("function", "lab per test (function) or one for the session"),
    "time_scale": ("100", "protocol seconds per wall second"),
    "users": ("4", "lab users"),
    "profile": ("lab-report-2013", "lab profile"),
}


def pytest_addoption(parser):
    group = parser.getgroup("testbed", "WeChat protocol testbed lab")
    for name, (default, help_) in OPTIONS.items():
        group.addoption(f"--testbed-{name.replace('_', '-')}", dest=f"testbed_{name}",
                        default=None, help=f"{help_} (default {default})")
        parser.addini(f"testbed_{name}", help_, default=default)


def pytest_configure(config):
    config.addinivalue_line("markers", "testbed_lab(**config): LabConfig fields for the "
                                       "`lab` fixture of this test")


def _opt(config, name: str) -> str:
    v = config.getoption(f"testbed_{name}")
    return v if v is not None else config.getini(f"testbed_{name}")


class LabHandle:
    """A lab running in a background thread with its own event loop."""

    def __init__(self, record_dir: Path, *, record: bool = True, **config: Any) -> None:
        """A lab of `config` (LabConfig fields) whose manifest (and, with `record`, its
        capture) goes in `record_dir`."""
        self.config = config
        self.record_dir = record_dir
        self.record = record
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="testbed-lab",
                                       daemon=True)
        self.lab = None
        self.errors_seen = 0

    def start(self) -> "LabHandle":
        from mocks.runner import LabConfig, start_lab

        self.thread.start()
        cfg = LabConfig(manifest_path=self.record_dir / "manifest.json",
                        record=self.record_dir / "lab.pcapng" if self.record else None,
                        **self.config)
        try:
            # made and started in the lab's thread: aiohttp servers bind to the loop they
            # are made in
            self.lab = self.call(start_lab(cfg))
        except BaseException:
            self.stop()
            raise
        return self

    def call(self, coro, timeout: float = 60.0):
        """Run a coroutine in the lab's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn, *args):
        """Run a plain function in the lab's thread (the lab's objects live there)."""
        async def wrapper():
            return fn(*args)
        return self.call(wrapper())

    @property
    def manifest(self):
        return self.lab.manifest

    @property
    def users(self) -> list[dict]:
        return self.lab.manifest.users

    @property
    def record_path(self) -> Optional[Path]:
        return self.lab.record_path

    def stats(self) -> dict:
        """What the servers saw: requests per (door, command), errors per (command, ret),
        behaviour-log items per report kind, messages stored, NOTIFYs sent, links held."""
        from mocks.stats import read_stats

        async def snap():
            out = (await read_stats(self.lab.store)).to_dict()
            out.update(pushes_sent=self.lab.long.pushes_sent,
                       identified_links=self.lab.long.identified_count())
            return out
        return self.call(snap())

    def new_errors(self) -> list[BaseException]:
        errs = self.run(self.lab.server_errors)
        fresh = errs[self.errors_seen:]
        self.errors_seen = len(errs)
        return fresh

    def flush(self) -> None:
        def do():
            tap = self.lab.tap
            if tap is not None and tap.writer is not None:
                tap.writer.flush()
        self.run(do)

    def stop(self) -> None:
        try:
            if self.lab is not None:
                self.call(self.lab.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def _lab_kwargs(config, marker) -> dict:
    kw = {"time_scale": float(_opt(config, "time_scale")), "users": int(_opt(config, "users")),
          "profile": _opt(config, "profile")}
    if marker is not None:
        kw.update(marker.kwargs)
    return kw


@pytest.fixture(scope="session")
def _testbed_session_lab(request, tmp_path_factory):
    if _opt(request.config, "scope") != "session":
        yield None
        return
    handle = LabHandle(tmp_path_factory.mktemp("testbed-lab"),
                       **_lab_kwargs(request.config, None)).start()
    yield handle
    handle.stop()


@pytest.fixture
def lab(request, tmp_path, _testbed_session_lab):
    """A running lab (`LabHandle`); server-side errors fail the test."""
    marker = request.node.get_closest_marker("testbed_lab")
    if _testbed_session_lab is not None:
        if marker is not None:
            pytest.fail("@pytest.mark.testbed_lab needs --testbed-scope function")
        handle, own = _testbed_session_lab, False
        handle.new_errors()
    else:
        handle, own = LabHandle(tmp_path, **_lab_kwargs(request.config, marker)).start(), True
    handle.test_started = time.time()
    try:
        yield handle
        errors = handle.new_errors()
        if errors:
            raise errors[0]
    finally:
        if own:
            handle.stop()


@_async_fixture
async def wx_client(lab):
    """`await wx_client(0)` -> a logged-in `Phone` for a lab user (index or name)."""
    from testbed.client.phone import Phone
    from testbed.lab.addressing import PHONE_OCTET, lab_host_address

    phones = []

    async def make(user=0, *, policy: Optional[str] = None, sync_door: str = "long"):
        # sync_door: a `testbed.wire.Door` or its name; Phone refuses an unknown one
        users = lab.users
        u = users[user] if isinstance(user, int) else next(
            x for x in users if x["username"] == user)
        phone = Phone(lab.manifest, u["username"], u["password"], policy=policy,
                      sync_door=sync_door,
                      local_addr=lab_host_address(lab.manifest.dns_address, PHONE_OCTET))
        await phone.start()
        phones.append(phone)
        return phone

    yield make
    for p in phones:
        await p.stop()


class Recorder:
    """The capture of the current test."""

    def __init__(self, handle: LabHandle) -> None:
        self.handle = handle
        self.since = handle.test_started

    @property
    def path(self) -> Path:
        return self.handle.record_path

    def analysis(self, needles=()):
        from testbed.capture.analyze import analyze
        self.handle.flush()
        return analyze(str(self.path), needles=needles)

    def capture(self, needles=()):
        """A `CaptureView` over the events of this test only (its `.analysis` holds them
        too)."""
        from testbed.verify import CaptureView
        a = self.analysis(needles)
        a.events = [e for e in a.events if e.ts >= self.since]
        return CaptureView(a)


@pytest.fixture
def recorder(lab):
    return Recorder(lab)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used the lab gets a "testbed capture" section: where its pcapng
    is, and the end of its ladder (this test's messages only)."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    handle = getattr(item, "funcargs", {}).get("lab")
    if not isinstance(handle, LabHandle) or handle.lab is None or handle.record_path is None:
        return
    report.sections.append(("testbed capture", failure_section(handle)))


def failure_section(handle: LabHandle) -> str:
    """The capture's path and its ladder since the test started (`report.excerpt`)."""
    text = f"capture: {handle.record_path} (open it in Wireshark, or `testbed report` it)"
    try:
        from testbed.report.excerpt import ladder_excerpt
        a = Recorder(handle).capture().analysis
        return f"{text}\n{ladder_excerpt(a)}"
    except Exception as exc:  # noqa: BLE001 - the test's own failure is what matters
        return f"{text}\n(no ladder: {type(exc).__name__}: {exc})"


@pytest.fixture
def replay_capture(lab):
    """`replay_capture(path, *, pace="asap", masks=(), user_map=None, strict=False)`:
    replay a capture against this test's lab; the test fails with the diff table unless
    every reply is as recorded (masks aside). Runs in a thread of its own, so sync and async
    tests alike can call it."""
    def run(path, *, pace: str = "asap", masks=(), user_map: Optional[dict] = None,
            strict: bool = False, timeout: float = 300.0):
        import io
        import threading

        from rich.console import Console

        from testbed.replay.masks import MaskSet, load_mask_file
        from testbed.replay.player import Pace, replay
        from testbed.replay.result import render
        from testbed.replay.sessions import load_sessions

        sessions = load_sessions(str(path))
        kwargs = dict(pace=Pace.parse(pace), masks=MaskSet([load_mask_file(m) for m in masks]),
                      user_map=user_map)
        box: dict = {}

        def worker():
            try:
                box["result"] = asyncio.run(replay(sessions, lab.manifest, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                box["error"] = exc
        t = threading.Thread(target=worker, name="testbed-replay", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            pytest.fail(f"the replay of {path} did not finish in {timeout:g} s", pytrace=False)
        if "error" in box:
            raise box["error"]
        result = box["result"]
        if result.exit_status(strict):
            text = io.StringIO()
            render(result, Console(file=text, width=160, color_system=None))
            pytest.fail(f"the replay of {path} diverged:\n{text.getvalue()}", pytrace=False)
        return result
    return run
