"""Shared fixtures: a real loopback lab per test, on its own random /24 of 127.0.0.0/8."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from mocks.lab import Lab, LabConfig
from testbed.lab.addressing import AddressPlan

SHARED = Path(__file__).resolve().parents[2] / "shared"


async def start_lab(tmp_path: Path, **kwargs) -> Lab:
    """Start a lab on a random loopback /24, retrying if that block happens to be taken."""
    last: OSError | None = None
    for _ in range(8):
        cfg = LabConfig(plan=AddressPlan.random_loopback(),
                        manifest_path=tmp_path / "manifest.json", **kwargs)
        lab = Lab(cfg)
        try:
            await lab.start()
            return lab
        except OSError as exc:
            await lab.stop()
            if exc.errno != errno.EADDRINUSE:
                raise
            last = exc
    raise RuntimeError(f"no free lab block after 8 tries: {last}")


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
