"""`testbed analyze --jobs N`: the TCP flows shared out over N processes print the very
document one process prints (flow ids, events in capture order, handshakes, DNS names)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..capture.real import REPO_FILES

GOLDEN = Path(__file__).resolve().parents[2] / "captures" / "golden"


def _analyze(path: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed.cli", "analyze", "--json",
                           *options, str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "100"})


@pytest.mark.parametrize("path", REPO_FILES + [GOLDEN / "storyboard.pcapng"],
                         ids=lambda p: p.name)
def test_jobs_print_what_one_process_prints(path):
    one = _analyze(path, "--events")
    assert one.returncode == 0, one.stderr
    assert '"flows"' in one.stdout
    for jobs in ("2", "3"):
        many = _analyze(path, "--events", "--jobs", jobs)
        assert many.returncode == 0, many.stderr
        assert many.stdout == one.stdout, f"--jobs {jobs} differs on {path.name}"


def test_jobs_must_be_positive():
    r = _analyze(GOLDEN / "login.pcapng", "--jobs", "0")
    assert r.returncode == 2 and r.stdout == ""
    assert "--jobs" in r.stderr and "Traceback" not in r.stderr
