"""docker-compose.yml, proved without Docker (no engine runs here): it validates against the
compose spec, its addresses follow the lab's plan, and its services, run as local processes
on loopback stand-ins (tests/compose/local_compose.py) with the phone scaled to 2, pass the
storyboard, leave a capture and a report, and gather the phones' results through Redis. A
wrong command, variable or port in the file fails that run, by that service's own exit.
"""

from __future__ import annotations

import copy as copy_module
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed.lab.addressing import (DNS_OCTET, HOST_NAMES, HOST_OCTETS, LONG, MAPABC,
                                    NAT_OCTET, PHONE_NET, PHONES_RANGE, QLOGO, QPIC, SERVER_NET,
                                    SHORT, STORE_OCTET, AddressPlan)
from testbed.lab.profiles import load_profile

from ..conftest import REQUIRE_REDIS
from ..e2e.helpers import wait_ready
from .local_compose import ComposeFailed, LocalCompose, load
from .reachability import problems

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
PHONES = 2


def _need_local_binaries() -> None:
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt-get install redis-server)"
        if os.environ.get(REQUIRE_REDIS) == "1":
            pytest.fail(f"{reason}, but {REQUIRE_REDIS}=1")
        pytest.skip(reason)


def _service(doc, name):
    return doc["services"][name]


def _flag_values(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


# ---------------------------------------------------------------------- the file itself

def test_compose_file_validates_against_the_compose_spec():
    p = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                        "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_file_that_breaks_the_spec_does_not_validate(tmp_path):
    doc = yaml.safe_load(COMPOSE.read_text())
    doc["services"]["phone"]["depends_on"]["manifest"]["condition"] = "service_done"
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(doc))
    p = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                        "vendor.compose-spec", str(bad)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1 and "service_done" in p.stdout + p.stderr


def test_compose_addresses_follow_the_lab_plan():
    """The file's addresses are the plan's (testbed/lab/addressing.py): the DNS answers with
    the public addresses, the NAT holds every one of them and relays it to its host, the
    manifest names them, and nothing lies outside 198.18.0.0/15."""
    doc = load(COMPOSE, env={})
    public, backend = AddressPlan(PHONE_NET), AddressPlan(SERVER_NET)
    nets = doc["networks"]
    assert nets["carrier"]["ipam"]["config"][0]["subnet"] == f"{PHONE_NET}.0/24"
    assert nets["carrier"]["ipam"]["config"][0]["ip_range"] == PHONES_RANGE
    assert nets["backend"]["ipam"]["config"][0]["subnet"] == f"{SERVER_NET}.0/24"

    ports = load_profile("lab-report-2013").ports
    dns = _service(doc, "dns")["command"]
    assert _flag_values(dns, "--listen") == [f"{public.dns}:{ports['dns']}"]
    records = dict(r.split("=") for r in _flag_values(dns, "--record"))
    assert records == {name: ",".join(public.addresses(name)) for name in HOST_NAMES}

    role_of = {LONG: ("long-1", "long-2"), SHORT: ("short",), MAPABC: ("mapabc",),
               QLOGO: ("qlogo",), QPIC: ("qpic",)}
    for name, services in role_of.items():
        for svc, octet in zip(services, HOST_OCTETS[name]):
            net = _service(doc, svc)["networks"]["backend"]
            assert net["ipv4_address"] == f"{SERVER_NET}.{octet}", svc
            assert name in net["aliases"], svc
    assert _service(doc, "redis")["networks"]["backend"]["ipv4_address"] == \
        f"{SERVER_NET}.{STORE_OCTET}"
    nat = _service(doc, "nat")
    assert {n: v["ipv4_address"] for n, v in nat["networks"].items()} == {
        "carrier": f"{PHONE_NET}.{NAT_OCTET}",
        "backend": f"{SERVER_NET}.{NAT_OCTET}"}

    maps = dict(m.split("=") for m in _flag_values(nat["command"], "--map"))
    assert maps == dict(m.split("=") for m in _flag_values(nat["healthcheck"]["test"], "--map"))
    assert nat["healthcheck"]["test"][:5] == ["CMD", "testbed", "serve", "nat", "--check"]
    hosts_of = {}
    for listen, target in maps.items():
        hosts_of.setdefault(listen.rsplit(":")[0], set()).add(target.rsplit(":")[0])
    for name, services in role_of.items():
        for i, address in enumerate(public.addresses(name)):   # every public address relayed
            host = backend.addresses(name)[min(i, len(services) - 1)]
            assert hosts_of[address] == {host}, address

    man = _service(doc, "manifest")["command"]
    assert _flag_values(man, "--dns") == [f"{public.dns}:{ports['dns']}"]
    assert _flag_values(man, "--long") == [f"{','.join(public.addresses(LONG))}:{ports['long']}"]
    assert _flag_values(man, "--short") == [
        f"{','.join(public.addresses(SHORT))}:{ports['short']}"]
    assert _flag_values(man, "--tls-port") == [str(ports["tls"])]
    assert public.dns.endswith(f".{DNS_OCTET}")

    lab = ipaddress.ip_network("198.18.0.0/15")
    for text in re.findall(r"\b\d+\.\d+\.\d+\.\d+\b", COMPOSE.read_text()):
        assert ipaddress.ip_address(text) in lab, text


def test_every_healthcheck_tests_what_its_service_makes():
    """A `test -f` healthcheck tests the ready file its own command writes, in a tmpfs of its
    own container; the others ask the service itself (redis-cli, serve --check)."""
    doc = load(COMPOSE, env={})
    for name, svc in doc["services"].items():
        test = svc.get("healthcheck", {}).get("test")
        if test is None:
            continue
        if test[1:3] == ["test", "-f"]:
            path = test[3]
            assert _flag_values(svc["command"], "--ready-file") == [path], name
            assert any(path.startswith(t + "/") for t in svc.get("tmpfs", [])), name
        elif name == "redis":
            assert test[1] == "redis-cli"
        else:
            assert test[1:3] == ["testbed", "serve"] and "--check" in test, name
    waited = {d for s in doc["services"].values()
              for d, c in s.get("depends_on", {}).items() if c["condition"] == "service_healthy"}
    assert all("healthcheck" in doc["services"][d] for d in waited)


def test_every_service_reaches_what_it_uses_as_docker_would_place_it():
    """What one shared `lo` cannot show, from the file: each service listens on its own
    addresses, uses only addresses some service holds on a network it joins (the phones
    reach what the manifest names), binds low ports unprivileged only with the sysctl, and
    the phone can be scaled. Each kind of mistake is found in a copy that makes it."""
    doc = load(COMPOSE, env={})
    assert problems(doc) == []

    def broken(change) -> list[str]:
        copy = copy_module.deepcopy(doc)
        change(copy["services"])
        return problems(copy)

    def no_backend(s):
        s["phone"]["networks"] = ["carrier"]

    def wrong_listen(s):
        s["long-1"]["command"] = [a.replace("198.19.0.11:", "198.19.0.12:")
                                  for a in s["long-1"]["command"]]

    def wrong_store(s):
        s["qpic"]["environment"] = {**s["qpic"]["environment"],
                                    "TESTBED_STORE": "redis://198.19.0.7:6379/0"}

    def manifest_names_the_backend(s):
        s["phone"]["networks"] = ["carrier"]
        s["manifest"]["command"] = [a.replace("198.18.137.31:80", "198.19.0.31:80")
                                    for a in s["manifest"]["command"]]

    assert broken(no_backend) == ["phone: 198.19.0.6 is on no network it joins"]
    assert broken(wrong_listen) == ["long-1: listens on 198.19.0.12, not an address of its own"]
    assert broken(wrong_store) == ["qpic: 198.19.0.7 is no service's address"]
    assert "phone: 198.19.0.31 is on no network it joins" in broken(manifest_names_the_backend)
    assert broken(lambda s: s["dns"].pop("sysctls")) == [
        "dns: binds port 53 as an unprivileged user without "
        "net.ipv4.ip_unprivileged_port_start"]
    assert broken(lambda s: s["phone"].update(hostname="phone")) == [
        "phone: hostname set, so --scale phone=N cannot give N phones"]


def test_the_image_installs_the_package_from_what_the_dockerfile_copies(tmp_path):
    """The Dockerfile's COPY lines carry everything its `pip install` needs: a wheel built
    from those files alone, at the paths they are copied to, holds the CLI, the mocks and the
    profiles; installed by itself (not this checkout) its `testbed` serves a short link, TLS
    and the lab CA included, and answers the service's healthcheck."""
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^USER testbed$", text, re.M), "the image runs as a user, not root"
    root = tmp_path / "image"
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, dest = line.split()
        assert dest.startswith("/"), f"COPY {line}: an absolute destination (no WORKDIR)"
        for s in sources:
            path, to = REPO / s, root / dest.lstrip("/")
            if dest.endswith("/"):
                to = to / path.name
            to.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if path.is_dir() else shutil.copy)(path, to)
    [target] = re.findall(r"pip install --no-cache-dir '(/[^'\[]+)\[fast\]'", text)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(tmp_path / "wheel"), str(root / target.lstrip("/"))],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    import zipfile
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("testbed/cli/__init__.py", "testbed/cli/parser.py", "mocks/serve.py",
                   "mocks/probe.py",
                   "testbed/lab/profiles/lab-report-2013.json", "testbed/wire/mm_pb2.py"):
        assert needed in names, needed
    assert any(n.endswith("entry_points.txt") for n in names)

    # the wheel alone, installed into a directory of its own that comes first on the path
    # (its dependencies: this machine's; --target needs no venv, so no ensurepip)
    alone = tmp_path / "installed"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                        "--target", str(alone), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(alone))
    where = subprocess.run([sys.executable, "-c",
                            "import mocks, testbed; print(testbed.__file__, mocks.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    files = where.stdout.split()
    assert len(files) == 2 and all(f.startswith(str(alone)) for f in files), where.stderr
    testbed = str(alone / "bin" / "testbed")
    ready, ca = tmp_path / "ready.json", tmp_path / "ca"
    serve = subprocess.Popen([testbed, "serve", "short", "--listen", "127.0.0.1:0",
                              "--tls-listen", "127.0.0.1:0", "--ca", str(ca),
                              "--ready-file", str(ready)], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        doc = wait_ready(serve, ready)
        [(host, port)], [(_, tls)] = doc["listen"], doc["tls"]
        check = subprocess.run([testbed, "serve", "short", "--listen", f"{host}:{port}",
                                "--tls-listen", f"{host}:{tls}", "--ca", str(ca), "--check"],
                               cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0, check.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(20)
    assert serve.returncode == 143, serve.stderr.read()


# ---------------------------------------------------------------------- the run

def _analyze(capture: Path) -> dict:
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "analyze", str(capture), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _verify(capture: Path) -> dict:
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "verify", "--storyboard",
                        str(capture), "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode in (0, 1), p.stderr
    return json.loads(p.stdout)


def _up_then_results(run: LocalCompose, timeout: float):
    """`up` (a failure with the timeline), `testbed lab results --json` once the jobs are
    done, then `down`: the results' process and every service's exit code."""
    try:
        try:
            took = run.up(timeout=timeout)
        except ComposeFailed as exc:
            raise AssertionError(f"{exc}\ntimeline: {run.timeline}") from None
        results = run.run_one_off("results", ["testbed", "lab", "results", "--json"])
    finally:
        codes = run.down()
    print(f"up in {took:.1f} s; timeline {run.timeline}")
    return results, codes


def test_compose_services_pass_the_storyboard_with_two_phones(netns, tmp_path):
    """`docker compose up --scale phone=2`, as local processes: every service starts in
    dependency order once its dependencies are healthy; the two phones claim distinct users
    through Redis and pass the storyboard; the recorder stops when both have posted their
    results and leaves a capture in which the storyboard holds; the report is written; the
    results, read back from Redis, count every message once."""
    _need_local_binaries()
    run = LocalCompose(COMPOSE, tmp_path, netns, scale={"phone": PHONES}, env={})
    results, codes = _up_then_results(run, timeout=150)
    assert results.returncode == 0, results.stdout + results.stderr
    doc = json.loads(results.stdout)

    # the phones, through Redis: distinct users, each passed, every message once
    assert len(doc["phones"]) == PHONES and doc["running"] == []
    claimed = [u for users in doc["claims"].values() for u in users]
    assert len(claimed) == len(set(claimed)) == 2 * PHONES
    for owner, r in doc["phones"].items():
        assert r["ok"], (owner, r)
        assert sorted(r["users"]) == doc["claims"][owner]
        assert r["metrics"]["duplicates"] == 0
    # exactly once: what the phones sent is what the lab stored, summed over the phones
    sent = [r["metrics"]["messages_sent"] for r in doc["phones"].values()]
    assert min(sent) > 0 and doc["messages_stored"] == sum(sent)
    merged = doc["merged"]
    assert merged["ok"] and merged["clients"] == 2 * PHONES

    # the order compose would have followed
    when = {(who, what): t for t, who, what in run.timeline}
    for svc in ("long-1", "long-2", "short", "mapabc", "qlogo", "qpic"):
        assert when[(svc, "healthy")] <= when[("nat", "started")]
    assert when[("seed", "exited 0")] <= when[("manifest", "started")]
    for i in range(1, PHONES + 1):
        assert when[("manifest", "exited 0")] <= when[(f"phone-{i}", "started")]
        assert when[("recorder", "healthy")] <= when[(f"phone-{i}", "started")]
        assert when[(f"phone-{i}", "exited 0")] <= when[("recorder", "exited 0")]
    assert when[("recorder", "exited 0")] <= when[("report", "started")]

    # the capture and the report in ./captures (the bind mount)
    captures = tmp_path / "binds" / "captures"
    capture, report = captures / "lab.pcapng", captures / "report.html"
    assert capture.stat().st_size > 0 and report.stat().st_size > 0
    assert not (tmp_path / "containers" / "recorder" / "tmpfs" / "run" / "testbed" /
                "recording").exists()                        # its ready file went with it
    analysis = _analyze(capture)
    lost = sum(analysis["kernel_drops"].values())     # by interface
    assert lost == 0, f"the recorder lost {lost} packets"
    verdicts = _verify(capture)
    failed = [v for v in verdicts["verdicts"] if v["ok"] is False]
    odd = [f for f in analysis["flows"] if f["app"] == "http" and f["kind"] != "short"]
    assert verdicts["ok"] and not failed, (failed, odd)
    # every statement a lab on loopback can show holds (the wire ones, ARP among them, need
    # real links: n/a on the stand-ins' lo)
    lab_scope = [v for v in verdicts["verdicts"] if v["scope"] == "lab"]
    assert len(lab_scope) >= 10 and all(v["ok"] for v in lab_scope), verdicts
    assert "<html" in report.read_text(errors="replace")[:2000].lower()

    # `docker compose down`: the servers stop on SIGTERM
    for svc in ("dns", "long-1", "long-2", "short", "mapabc", "qlogo", "qpic", "nat"):
        assert codes[svc] == 143, (svc, codes)


MUTATIONS = {
    # a command: the DNS service's command with an option `testbed serve dns` does not have
    "command": ("dns", "command", "--ready-file", "--ready-path", "dns"),
    # a variable: one long-link host is told the wrong Redis port
    "variable": ("long-1", "environment", "TESTBED_STORE", "redis://198.19.0.6:6390/0",
                 "long-1"),
    # a port: the manifest sends the phones to a short-link port nothing listens on
    "port": ("manifest", "command", "198.18.137.21,198.18.137.22:8080",
             "198.18.137.21,198.18.137.22:8081", "phone-"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_wrong_command_variable_or_port_in_the_file_fails_the_run(netns, tmp_path,
                                                                     mutation):
    """The run fails when the broken piece runs, naming it: its own exit, not a timeout. (A
    smaller lab through the file's own variables: one short-link worker, four users.)"""
    _need_local_binaries()
    service, key, old, new, blamed = MUTATIONS[mutation]
    doc = yaml.safe_load(COMPOSE.read_text())
    svc = doc["services"][service]
    if key == "environment":
        svc["environment"] = {**svc["environment"], old: new}
    else:
        assert svc[key].count(old) == 1
        svc[key] = [new if a == old else a for a in svc[key]]
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(doc))
    run = LocalCompose(broken, tmp_path / "run", netns, scale={"phone": PHONES},
                       env={"SHORT_WORKERS": "1", "USERS": "4"})
    try:
        with pytest.raises(ComposeFailed) as failed:
            run.up(timeout=150)
    finally:
        run.down()
    # the broken service's own exit ended the run, not a healthcheck's retries or the
    # timeout (how soon after its start depends on the machine's load, so it is not timed)
    assert re.match(rf"{re.escape(blamed)}\S* (\(a server\) )?exited with [1-9]",
                    str(failed.value)), failed.value
    ended = min(t for t, who, what in run.timeline
                if who.startswith(blamed) and what.startswith("exited"))
    assert not [who for t, who, what in run.timeline if what == "started" and t > ended]


# ---------------------------------------------------------------------- the study profile

STUDY_ENV = {"TIME_SCALE": "2000", "NAT_TIMEOUT": "300", "STUDY_CLIENTS": "1",
             "STUDY_HOURS": "1", "STUDY_MESSAGES": "96", "SHORT_WORKERS": "1",
             "LONG_WORKERS": "1", "USERS": str(PHONES * (3 + 1))}   # 3 policies + a sender


def test_compose_study_profile_gathers_the_heartbeat_figures_through_redis(netns, tmp_path):
    """`docker compose up --scale study-phone=2 study`, as local processes (a short study:
    one protocol hour at k = 2000, four messages a phone): only the study and what it needs
    start; the two study phones claim distinct users through Redis, run the heartbeat study's
    phones behind the lab's NAT and post their figures there; `study` merges them into the
    study's table and ./captures/study.json: one study of two phones per policy, whose
    delivery counts are what each phone posted and what the lab stored, and whose figures
    show the NAT at work (a 28-minute heartbeat dies behind a 5-minute NAT, a 270 s one
    lives)."""
    _need_local_binaries()
    from testbed.study.heartbeat import StudyResult

    run = LocalCompose(COMPOSE, tmp_path, netns, scale={"study-phone": PHONES}, env=STUDY_ENV,
                       targets=["study"])
    results, _codes = _up_then_results(run, timeout=120)
    started = {who for _, who, what in run.timeline if what == "started"}
    assert {"study", "study-phone-1", "study-phone-2"} <= started
    assert not started & {"phone-1", "phone-2", "recorder", "report", "results"}
    when = {(who, what): t for t, who, what in run.timeline}
    for i in range(1, PHONES + 1):
        assert when[(f"study-phone-{i}", "exited 0")] <= when[("study", "started")]

    # what each phone posted, read back from Redis like any phone's result
    assert results.returncode == 0, results.stdout + results.stderr
    doc = json.loads(results.stdout)
    assert len(doc["phones"]) == PHONES and doc["running"] == []
    claimed = [u for users in doc["claims"].values() for u in users]
    assert len(claimed) == len(set(claimed)) == PHONES * (3 + 1)   # 3 policies + a sender
    sent = {owner: r["metrics"]["messages_sent"] for owner, r in doc["phones"].items()}
    assert all(r["ok"] and r["scenario"] == "heartbeat study" for r in doc["phones"].values())
    assert min(sent.values()) > 0 and doc["messages_stored"] == sum(sent.values())

    # the collector's figures: the whole study, merged from both phones
    log = (tmp_path / "logs" / "study.log").read_text()
    figures = tmp_path / "binds" / "captures" / "study.json"
    result = StudyResult.from_dict(json.loads(figures.read_text()))
    assert result.config["time_scale"] == 2000 and result.config["nat_timeout_s"] == 300
    assert result.config["clients"] == PHONES and result.processes == PHONES
    assert sorted(result.lag_by_process) == sorted(doc["phones"])
    by = {p.policy: p for p in result.policies}
    assert sorted(by) == ["fixed:1680", "fixed:270", "mars"]
    for spec, p in by.items():
        assert spec in log
        assert p.clients == PHONES and p.heartbeats_sent > 0, p
        assert p.messages_lost == 0 and p.duplicates == 0 and p.send_failures == 0, p
        assert p.nat_expiries is None     # one NAT host for all: not told apart per phone
    assert sum(p.messages_sent for p in result.policies) == sum(sent.values())
    assert sum(p.messages_delivered + p.messages_caught_up for p in result.policies) == \
        sum(r["metrics"]["messages_received"] for r in doc["phones"].values())
    # every 28-minute link died behind the 5-minute NAT at least once; the 270 s ones less
    assert by["fixed:1680"].silent_deaths >= PHONES
    assert by["fixed:270"].silent_deaths < by["fixed:1680"].silent_deaths
