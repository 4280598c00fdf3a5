"""Every command in the README runs as written (in a scratch directory that sees the repo's
test data and golden captures where a checkout has them). As root they run in a network
namespace of their own, so that the README's lab, on the report's 127.0.0.x, does not meet
another checkout's."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# run elsewhere: the README's own first lines (setup, the test suite itself)
NOT_HERE = {"bash .ci/setup": "installs the package: done before the tests run",
            "python -m pytest": "the suite this test belongs to"}
# no Docker engine runs here: tests/compose/test_compose.py runs docker-compose.yml's
# services as local processes, the phone scaled to 2 (and --scale N is only how many)
DOCKER = {"docker compose up": "tests/compose/test_compose.py",
          "docker compose up --scale phone=4": "tests/compose/test_compose.py"}


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    cmds = []
    for block in re.findall(r"```(?:bash|console)\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            line = re.sub(r"\s+#.*$", "", line)
            if line:
                cmds += [c.strip() for c in line.split("&&")]
    return cmds


def test_readme_opens_with_the_two_commands():
    cmds = readme_commands()
    assert cmds[:3] == ["bash .ci/setup", "testbed demo", "python -m pytest"]


@pytest.fixture
def in_namespace(request):
    """`ip netns exec NAME` (a fresh namespace with only lo) as root, else nothing."""
    from tests.conftest import netns_unavailable
    if netns_unavailable() is not None:
        return []
    return ["ip", "netns", "exec", request.getfixturevalue("netns")]


def test_readme_lab_network_is_the_two_compose_commands():
    """The "Lab network" section is what a user types, and the test that proves it (no
    engine here) scales the service the second command scales."""
    import yaml
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Lab network\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```bash\n(.*?)```", section, re.S)
    cmds = [re.sub(r"\s+#.*$", "", ln).strip() for ln in block.splitlines() if ln.strip()]
    assert cmds == list(DOCKER)
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert "phone" in services
    proof = (REPO / DOCKER[cmds[1]]).read_text()
    assert 'scale={"phone": PHONES}' in proof and "PHONES = 2" in proof


def test_every_readme_command_runs(tmp_path, in_namespace):
    work = tmp_path / "work"
    (work / "tests" / "data").mkdir(parents=True)
    (work / "tests" / "data" / "real").symlink_to(REPO / "tests" / "data" / "real")
    (work / "captures").mkdir()
    (work / "captures" / "golden").symlink_to(REPO / "captures" / "golden")
    env = dict(os.environ, COLUMNS="160")
    lab = None

    def stop_lab():
        nonlocal lab
        if lab is not None:
            lab.send_signal(signal.SIGINT)
            out, err = lab.communicate(timeout=60)
            assert lab.returncode == 130, err     # stopped by Ctrl-C: 128 + SIGINT
            lab = None

    prepared = {p.name for p in work.iterdir()}
    try:
        for cmd in readme_commands():
            if cmd in NOT_HERE:
                continue
            if cmd.startswith("docker "):
                assert cmd in DOCKER, f"{cmd}: no test proves it"
                continue
            argv = shlex.split(cmd)
            assert argv[0] == "testbed", cmd
            argv = [sys.executable, "-m", "testbed.cli", *argv[1:]]
            if argv[3:5] == ["lab", "up"]:
                argv = [*in_namespace, *argv]
                stop_lab()
                manifest = work / argv[argv.index("--manifest") + 1]
                lab = subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
                deadline = time.monotonic() + 30
                while not manifest.exists():
                    assert lab.poll() is None, lab.stderr.read()
                    assert time.monotonic() < deadline, f"{cmd}: no manifest"
                    time.sleep(0.05)
                continue
            p = subprocess.run([*in_namespace, *argv], cwd=work, env=env,
                               capture_output=True, text=True, timeout=240)
            assert p.returncode == 0, f"{cmd}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        stop_lab()
    finally:
        if lab is not None and lab.poll() is None:   # a command failed: kill our own lab
            lab.kill()
            lab.wait()
    assert (work / "captures" / "demo" / "demo.pcapng").exists()
    assert (work / "captures" / "demo" / "report.html").exists()
    # nothing new in the root of a checkout but captures/, and git ignores what the
    # commands wrote there (captures/golden/ is the repo's own)
    assert {p.name for p in work.iterdir()} <= prepared | {"captures"}
    written = [str(p.relative_to(work)) for p in (work / "captures").rglob("*")
               if p.is_file() and p.relative_to(work / "captures").parts[0] != "golden"]
    assert "captures/demo/demo.pcapng" in written
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", *written],
                             capture_output=True, text=True).stdout.split()
    assert sorted(ignored) == sorted(written)
