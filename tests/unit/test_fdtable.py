"""The study's processes grow their file descriptor table before the day (`fdtable`): in a
process with threads each growth of the kernel's table waits for an RCU grace period, a
stall of milliseconds in whatever accept or connect crossed 256, 512, 1,024 ... descriptors.
Measured through the kernel's own count (`FDSize` in /proc/self/status), in a fresh
interpreter whose table starts small."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="the kernel's table size is read from /proc")

REPO = Path(__file__).resolve().parents[2]

PROGRAM = r"""
import json, os, resource, threading
from testbed.study.heartbeat.fdtable import grow_fd_table

def table():
    for line in open("/proc/self/status"):
        if line.startswith("FDSize:"):
            return int(line.split()[1])

def open_fds():
    return sorted(int(f) for f in os.listdir("/proc/self/fd"))

threading.Thread(target=threading.Event().wait, daemon=True).start()
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
kept = os.dup2(os.open(os.devnull, os.O_RDONLY), 1000)   # a descriptor of the caller's
out = {"before": table()}
fds_before = open_fds()
out["asked"] = grow_fd_table(3000)
out["after"] = table()
out["same_fds"] = open_fds() == fds_before
os.fstat(kept)                                  # still open
opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(2500)]
out["after_2500_more"] = table()
out["default"] = grow_fd_table()
out["after_default"] = table()
print(json.dumps(out))
"""


def test_the_table_is_grown_ahead_and_nothing_of_the_callers_is_touched():
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True,
                       text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["before"] < 3000 <= out["after"]   # grown at once, by the kernel's count
    assert out["asked"] == 3000 and out["same_fds"]
    # 2,500 descriptors more need no growth: none of the stalls in the day
    assert out["after_2500_more"] == out["after"]
    # by default up to the soft limit of open files (8,192 here)
    assert out["default"] == 8192 and out["after_default"] >= 8192
