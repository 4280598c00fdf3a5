"""Shared fixtures: a real loopback lab per test, on its own random /24 of 127.0.0.0/8."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from mocks import runner
from mocks.runner import Lab, LabConfig
from mocks.state.redis_server import RedisServer, redis_unavailable

from . import fuzzing  # noqa: F401  (loads the hypothesis profile, HYPOTHESIS_PROFILE)

REQUIRE_REDIS = "TESTBED_REQUIRE_REDIS"   # "1" in CI: a missing redis-server fails, not skips

async def start_lab(tmp_path: Path, store=None, clock=None, **kwargs) -> Lab:
    """A lab on a free loopback /24 (`mocks.runner.start_lab`), its manifest in tmp_path,
    its state in `store` if given, its clock `clock` if given (a `ManualClock` for tests
    that move time themselves)."""
    return await runner.start_lab(LabConfig(manifest_path=tmp_path / "manifest.json",
                                            **kwargs), store=store, clock=clock)


@pytest.fixture
async def lab(tmp_path, request):
    """A running lab with 4 users, all friends; fails the test if a handler raised."""
    marker = request.node.get_closest_marker("lab")
    kwargs = dict(users=4)
    if marker is not None:
        kwargs.update(marker.kwargs)
    the_lab = await start_lab(tmp_path, **kwargs)
    yield the_lab
    await the_lab.stop()
    errors = the_lab.server_errors()
    assert not errors, f"server handlers raised: {errors!r}"


def pytest_configure(config):
    config.addinivalue_line("markers", "lab(**config): LabConfig fields for the lab fixture")


def netns_unavailable() -> str | None:
    """Why network-namespace tests cannot run here, or None if they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces, AF_PACKET)"
    for tool in ("ip", "tcpdump"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.fixture
def netns():
    """A fresh network namespace with only `lo` (up), deleted afterwards with all in it."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    name = f"tb-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"ip netns add failed: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server started for this test session (and stopped after it), on a TCP port
    (`url`) and a Unix socket (`unix_url`).

    Skips the test where redis-server is not installed, unless TESTBED_REQUIRE_REDIS=1 (CI),
    where that is a failure."""
    reason = redis_unavailable()
    if reason:
        if os.environ.get(REQUIRE_REDIS) == "1":
            pytest.fail(f"{reason}, but {REQUIRE_REDIS}=1")
        pytest.skip(reason)
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server):
    """The URL of the session's redis-server (`redis_server`)."""
    return redis_server.url


@pytest.fixture
async def redis_stores(redis_url):
    """`open()` -> a RedisStore on its own connections, in a namespace of this test (the same
    for every call unless one is given); each namespace used is emptied afterwards."""
    from mocks.state import make_store

    default = f"test-{uuid.uuid4().hex[:12]}"
    opened = []

    async def open_store(namespace: str | None = None):
        store = await make_store(redis_url, namespace=namespace or default)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.clear()
        await store.close()
