"""`testbed serve ROLE ... --check`, the container lab's healthcheck: 0 while the host those
options describe answers in its protocol everywhere it serves, 1 (saying where) once it does
not, and 1 for something else listening there."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from .helpers import start_serve, wait_ready


def _check(role, *args):
    return subprocess.run([sys.executable, "-m", "testbed.cli", "serve", role, *args,
                           "--check"], capture_output=True, text=True, timeout=60)


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)


@pytest.mark.parametrize("role", ["long", "short", "mapabc", "qlogo", "qpic", "dns"])
def test_check_answers_while_the_host_serves_and_fails_after(tmp_path, role):
    extra = []
    if role == "short":
        extra = ["--tls-listen", "127.0.0.1:0", "--ca", str(tmp_path / "ca")]
    proc = start_serve(role, tmp_path / "ready.json", "--listen", "127.0.0.1:0", *extra)
    try:
        doc = wait_ready(proc, tmp_path / "ready.json")
        args = [a for h, p in doc["listen"] for a in ("--listen", f"{h}:{p}")]
        if role == "short":
            [(h, p)] = doc["tls"]
            args += ["--tls-listen", f"{h}:{p}", "--ca", str(tmp_path / "ca")]
        up = _check(role, *args)
        assert up.returncode == 0 and up.stderr == "", up.stderr
    finally:
        _stop(proc)
    down = _check(role, *args)
    assert down.returncode == 1
    assert f"serve {role}: {doc['listen'][0][0]}:{doc['listen'][0][1]}:" in down.stderr
    assert "Traceback" not in down.stderr


def test_check_of_a_nat_asks_each_relay_and_its_target(tmp_path):
    target = start_serve("mapabc", tmp_path / "mapabc.json", "--listen", "127.0.0.1:0")
    try:
        [(h, port)] = wait_ready(target, tmp_path / "mapabc.json")["listen"]
        nat = start_serve("nat", tmp_path / "nat.json", "--map", f"127.0.0.1:0={h}:{port}")
        try:
            [mapping] = wait_ready(nat, tmp_path / "nat.json")["maps"]
            listen = mapping[0]
            assert _check("nat", "--map", f"{listen}={h}:{port}").returncode == 0
        finally:
            _stop(nat)
        gone = _check("nat", "--map", f"{listen}={h}:{port}")
        assert gone.returncode == 1 and f"serve nat: {listen}:" in gone.stderr
        # a long-link check of an HTTP host: something answers, not the long link
        wrong = _check("long", "--listen", f"{h}:{port}")
        assert wrong.returncode == 1 and f"{h}:{port}" in wrong.stderr
    finally:
        _stop(target)


def test_check_of_a_short_link_without_its_ca_says_so(tmp_path):
    p = _check("short", "--listen", "127.0.0.1:1", "--tls-listen", "127.0.0.1:2",
               "--ca", str(tmp_path / "nowhere"))
    assert p.returncode == 1 and "no lab CA at" in p.stderr
