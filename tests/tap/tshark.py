"""Run tshark on a capture and insist it reads the file without complaint."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

TSHARK = shutil.which("tshark")
CAPINFOS = shutil.which("capinfos")
needs_tshark = pytest.mark.skipif(TSHARK is None or CAPINFOS is None,
                                  reason="tshark/capinfos not installed "
                                         "(apt-get install tshark)")

# the one line tshark may print on stderr: it warns whenever it runs as root
_ROOT_WARNING = re.compile(r'^Running as user "root" and group "root"\. This could be '
                           r'dangerous\.$')
CHECKSUMS = ("-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
             "-o", "udp.check_checksum:TRUE")


def _clean_stderr(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not _ROOT_WARNING.match(ln)]


def tshark(path: Path, *args: str) -> str:
    """`tshark -n -r PATH ARGS`: stdout; fails on a non-zero exit or any other stderr."""
    p = subprocess.run([TSHARK, "-n", "-r", str(path), *args], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, f"tshark {args} exited {p.returncode}: {p.stderr}"
    extra = _clean_stderr(p.stderr)
    assert not extra, f"tshark {args} warned: {extra}"
    return p.stdout


def fields(path: Path, *fields_: str, filt: str | None = None, extra=()) -> list[list[str]]:
    args = [*extra, "-T", "fields"]
    for f in fields_:
        args += ["-e", f]
    if filt:
        args += ["-Y", filt]
    out = tshark(path, *args)
    return [ln.split("\t") for ln in out.splitlines() if ln.strip()]


def capinfos(path: Path) -> str:
    p = subprocess.run([CAPINFOS, str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert not _clean_stderr(p.stderr), p.stderr
    return p.stdout


def conversations(path: Path) -> list[tuple[str, str]]:
    """(endpoint A, endpoint B) of every TCP conversation, from `-q -z conv,tcp`."""
    out = tshark(path, "-q", "-z", "conv,tcp")
    convs = []
    for ln in out.splitlines():
        m = re.match(r"^(\S+:\d+)\s+<->\s+(\S+:\d+)\s", ln)
        if m:
            convs.append((m.group(1), m.group(2)))
    return convs
