"""`testbed serve ROLE`, `testbed lab seed`, `testbed lab manifest`: a lab of separate host
processes on Redis, run as a user runs it (real commands, real worker processes, signals)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from mocks.state import make_store
from mocks.stats import read_stats
from testbed.client.phone import Phone
from testbed.lab.addressing import AddressPlan, client_address
from testbed.lab.clock import Clock
from testbed.lab.manifest import load_manifest

from .helpers import (alive, chat_round, descendants, start_serve, still_alive,
                      tcp_peers, wait_ready)

ROLES = ("dns", "long", "short", "mapabc", "qlogo", "qpic")


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def stop_all(procs, sig=signal.SIGTERM):
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    return [p.communicate(timeout=30) for p in procs]


@pytest.fixture
def store_url(redis_url):
    """A Redis namespace of this test, emptied afterwards."""
    url = f"{redis_url}?namespace=test-{uuid.uuid4().hex[:12]}"
    yield url

    async def clear():
        store = await make_store(url)
        await store.clear()
        await store.close()
    asyncio.run(clear())


def start_hosts(tmp_path, store_url, plan, workers=2):
    """Every host of a lab as its own `testbed serve`, the long and short links with
    `workers` workers each: {role: (process, ready file)}."""
    stateful = ["--store", store_url]
    extra = {"dns": [], "mapabc": [], "qlogo": stateful, "qpic": stateful,
             "long": [*stateful, "--workers", str(workers)],
             "short": [*stateful, "--workers", str(workers), "--ca", str(tmp_path / "ca")]}
    return {role: (start_serve(role, tmp_path / f"{role}.json", "--subnet", plan.prefix,
                               *extra[role]), tmp_path / f"{role}.json") for role in ROLES}


async def test_chat_among_50_users_across_two_long_and_two_short_workers(tmp_path,
                                                                         store_url):
    """Every host a process, two long-link and two short-link workers on one Redis. Each
    phone's long link is on one long worker (found from /proc); each sender writes to
    phones held by the other long worker, alternating the long door and the short door
    (whose workers are other processes again). Every message arrives exactly once, in each
    sender's order, and both workers of each link served requests."""
    n, per_sender = 50, 4
    plan = AddressPlan.random_loopback()
    hosts = start_hosts(tmp_path, store_url, plan)
    phones = []
    try:
        docs = {role: wait_ready(proc, ready) for role, (proc, ready) in hosts.items()}
        seeded = cli("lab", "seed", "--store", store_url, "--users", str(n))
        assert seeded.returncode == 0, seeded.stderr
        manifest_path = tmp_path / "manifest.json"
        made = cli("lab", "manifest", "--out", str(manifest_path), "--store", store_url,
                   *(a for role in ROLES for a in ("--ready", str(hosts[role][1]))))
        assert made.returncode == 0, made.stderr
        manifest = load_manifest(manifest_path)
        assert len(manifest.users) == n
        assert manifest.ca_cert == str((tmp_path / "ca" / "ca.pem").resolve())

        clock = Clock(1.0)
        source = [client_address(manifest.dns_address, i) for i in range(n)]
        for i, u in enumerate(manifest.users):
            phones.append(Phone(manifest, u["username"], u["password"], clock=clock,
                                local_addr=source[i]))
        await asyncio.gather(*(p.start() for p in phones))   # 50 TLS logins over 2 workers

        long_workers = docs["long"]["workers"]
        assert len(long_workers) == 2 and docs["long"]["pid"] not in long_workers
        holder = {}
        for pid in long_workers:
            for ip, _ in tcp_peers(pid):
                holder[ip] = pid
        worker_of = [holder[source[i]] for i in range(n)]
        groups = {pid: [i for i in range(n) if worker_of[i] == pid] for pid in long_workers}
        assert all(groups.values()), f"the kernel put every link on one worker: {groups}"

        plan_of = {}
        for i in range(n):
            others = groups[next(p for p in long_workers if p != worker_of[i])]
            plan_of[i] = [others[(i + k) % len(others)] for k in range(per_sender)]

        for i in range(n):
            for j in plan_of[i]:
                assert worker_of[i] != worker_of[j]
        await chat_round(phones, plan_of)

        store = await make_store(store_url)
        try:
            stats = await read_stats(store)
        finally:
            await store.close()
        assert stats.messages_stored == n * per_sender
        assert sum(stats.requests[(d, "NEWSENDMSG")] for d in ("long", "short")) == \
            n * per_sender
        host = docs["long"]["hostname"]
        for pid in long_workers:
            assert stats.served[("long", f"{host}/{pid}")] > 0
        for pid in docs["short"]["workers"]:       # logins (TLS) and sends (HTTP) on both
            assert stats.served[("tls", f"{host}/{pid}")] > 0
            assert stats.served[("short", f"{host}/{pid}")] > 0
    finally:
        await asyncio.gather(*(p.stop() for p in phones), return_exceptions=True)
        workers = [pid for proc, _ in hosts.values() for pid in descendants(proc.pid)]
        stop_all([proc for proc, _ in hosts.values()])
    assert [proc.returncode for proc, _ in hosts.values()] == [143] * len(ROLES)
    assert not still_alive(workers)
    assert not any(ready.exists() for _, ready in hosts.values())


def test_a_killed_worker_is_restarted_and_sigint_stops_all(tmp_path, store_url):
    """SIGKILL one long-link worker: the host reports it and starts another on the same
    port (the ready file names it); links keep being served. Ctrl-C: exit 130, every
    worker gone within 2 s."""
    from .helpers import read_frame

    plan = AddressPlan.random_loopback()
    ready = tmp_path / "long.json"
    proc = start_serve("long", ready, "--subnet", plan.prefix, "--store", store_url,
                       "--workers", "2")
    try:
        doc = wait_ready(proc, ready)
        victim, survivor = doc["workers"]
        os.kill(victim, signal.SIGKILL)
        doc = wait_ready(proc, ready, want=lambda d: victim not in d["workers"])
        assert survivor in doc["workers"] and len(doc["workers"]) == 2
        replacement = next(p for p in doc["workers"] if p != survivor)
        assert alive(replacement)
        served = set()

        async def noops():
            # connections spread over both workers: each answers a NOOP
            for _ in range(20):
                reader, writer = await asyncio.open_connection(*doc["listen"][0])
                writer.write(bytes.fromhex("00000010001000010000000600000007"))
                cmd, seq, _ = await read_frame(reader)
                assert (cmd, seq) == (1_000_000_006, 7)
                me = writer.get_extra_info("sockname")[:2]
                served.update(p for p in (survivor, replacement) if me in tcp_peers(p))
                writer.close()

        asyncio.run(noops())
        assert served == {survivor, replacement}
    finally:
        workers = descendants(proc.pid)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    assert proc.returncode == 130, err
    assert took < 2.0 and not still_alive(workers, 2.0 - took)
    text = " ".join(err.split())
    assert f"worker 1 (pid {victim}) died" in text or f"worker 2 (pid {victim}) died" in text
    assert "Traceback" not in err and not ready.exists()


def test_single_process_hosts_serve_and_stop_on_signals(tmp_path):
    """mapabc alone (no store), then through `serve nat` in front of it; SIGTERM: 143."""
    plan = AddressPlan.random_loopback()
    web = start_serve("mapabc", tmp_path / "mapabc.json", "--subnet", plan.prefix)
    nat = None
    try:
        doc = wait_ready(web, tmp_path / "mapabc.json")
        assert doc["workers"] == [web.pid] and doc["listen"] == [[f"{plan.prefix}.31", 8080]]
        front = f"{plan.prefix}.32:8090"
        nat = start_serve("nat", tmp_path / "nat.json", "--map",
                          f"{front}={plan.prefix}.31:8080", "--idle-timeout", "300")
        nat_doc = wait_ready(nat, tmp_path / "nat.json")
        assert nat_doc["maps"] == [[front, f"{plan.prefix}.31:8080"]]
        for where in (f"{plan.prefix}.31:8080", front):
            with urllib.request.urlopen(f"http://{where}/v3/geocode/regeo?location="
                                        f"116.30,39.96", timeout=10) as r:
                assert json.loads(r.read())["status"] == "1"
    finally:
        outs = stop_all([p for p in (nat, web) if p is not None])
    assert nat.returncode == 143 and web.returncode == 143, outs


def test_the_nat_host_forgets_an_idle_connection(tmp_path):
    """`serve nat --idle-timeout 30 --time-scale 100`: a keep-alive HTTP connection through
    it answers at once, and after 0.3 s idle wall time (30 protocol s) the next request is
    swallowed: no answer, no FIN, as a carrier NAT does."""
    plan = AddressPlan.random_loopback()
    web = start_serve("mapabc", tmp_path / "mapabc.json", "--subnet", plan.prefix)
    nat = start_serve("nat", tmp_path / "nat.json", "--map",
                      f"{plan.prefix}.32:8090={plan.prefix}.31:8080", "--idle-timeout", "30",
                      "--time-scale", "100")
    request = (b"GET /v3/geocode/regeo?location=116.30,39.96 HTTP/1.1\r\n"
               b"Host: mapi.mapabc.com\r\n\r\n")
    try:
        wait_ready(web, tmp_path / "mapabc.json")
        wait_ready(nat, tmp_path / "nat.json")
        with socket.create_connection((f"{plan.prefix}.32", 8090), timeout=5) as s:
            s.sendall(request)
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(0.6)
            s.sendall(request)
            s.settimeout(1.0)
            with pytest.raises(socket.timeout):
                s.recv(65536)
    finally:
        stop_all([nat, web])


def test_hosts_seeding_one_store_at_once_make_each_user_once(tmp_path, store_url):
    """Three `serve qlogo --seed-users 20` on one namespace, started together: 20 users,
    each with one profile item and 19 contacts; each host is ready only once seeded."""
    plan = AddressPlan.random_loopback()
    procs = [start_serve("qlogo", tmp_path / f"q{k}.json", "--listen",
                         f"{plan.prefix}.{41 + k}:8080", "--store", store_url,
                         "--seed-users", "20") for k in range(3)]
    try:
        for k, p in enumerate(procs):
            wait_ready(p, tmp_path / f"q{k}.json")

        async def check():
            store = await make_store(store_url)
            try:
                assert await store.user_count() == 20
                for uin in range(1, 21):
                    assert await store.log_lengths(uin) == {1: 0, 2: 19, 3: 1}
            finally:
                await store.close()
        asyncio.run(check())
    finally:
        stop_all(procs)


def test_serve_mistakes_are_one_line_errors(tmp_path, redis_url):
    plan = AddressPlan.random_loopback()
    taken = socket.socket()
    taken.bind((f"{plan.prefix}.31", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cases = [
        (["mapabc", "--listen", f"{plan.prefix}.31:{port}"], 1, "cannot bind"),
        (["long", "--workers", "2", "--subnet", plan.prefix], 2, "needs a store they share"),
        (["long", "--workers", "2", "--subnet", plan.prefix, "--store",
          "redis://127.0.0.1:1/0"], 1, "could not start: ConnectionError"),
        (["long", "--subnet", plan.prefix, "--store", "redis://127.0.0.1:1/0"], 1,
         "cannot use the Redis store"),
        (["mapabc", "--listen", "localhost:80"], 2, "not an IPv4 address"),
        (["nat", "--map", f"{plan.prefix}.1:9=nowhere"], 2, "not ADDR:PORT"),
        (["dns", "--workers", "2"], 2, "unrecognized arguments"),
    ]
    try:
        for args, rc, words in cases:
            ready = tmp_path / "ready.json"
            r = cli("serve", *args, "--ready-file", str(ready))
            assert r.returncode == rc, (args, r.stderr)
            assert words in " ".join(r.stderr.split()) and "Traceback" not in r.stderr, args
            assert not ready.exists()
        # a long link with its own Redis port taken by a lab already running there
        ready = tmp_path / "long.json"
        first = start_serve("long", ready, "--subnet", plan.prefix, "--store", redis_url,
                            "--workers", "2")
        try:
            wait_ready(first, ready)
            again = cli("serve", "long", "--subnet", plan.prefix, "--store", redis_url,
                        "--workers", "2")
            assert again.returncode == 1 and "cannot bind" in again.stderr
        finally:
            stop_all([first])
    finally:
        taken.close()


def test_lab_manifest_from_flags_and_its_errors(tmp_path, store_url):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    flags = ["--dns", "198.18.0.53:53", "--long", "198.18.0.11,198.18.0.12:8080",
             "--short", "198.18.0.21,198.18.0.22:8080", "--tls-port", "443",
             "--mapabc", "198.18.0.31:80", "--qlogo", "198.18.0.41:80",
             "--qpic", "198.18.0.51:80", "--ca", str(tmp_path / "ca.pem")]
    out = tmp_path / "m.json"
    empty = cli("lab", "manifest", "--out", str(out), "--store", store_url, *flags)
    assert empty.returncode == 2 and "holds no users" in empty.stderr
    assert cli("lab", "seed", "--store", store_url, "--users", "3",
               "--friends", "none").returncode == 0
    again = cli("lab", "seed", "--store", store_url, "--users", "3")
    assert again.returncode == 0 and "0 new, 3 were there" in again.stderr
    made = cli("lab", "manifest", "--out", str(out), "--store", store_url,
               "--time-scale", "50", *flags)
    assert made.returncode == 0, made.stderr
    m = load_manifest(out)
    assert m.hosts["long.weixin.qq.com"].addresses == ["198.18.0.11", "198.18.0.12"]
    assert m.hosts["short.weixin.qq.com"].tls_port == 443 and m.dns_port == 53
    assert [u["username"] for u in m.users] == ["user0001", "user0002", "user0003"]
    assert m.users[1]["password"] == "pass0002" and m.time_scale == 50
    missing = cli("lab", "manifest", "--out", str(out), "--store", store_url, *flags[:4])
    assert missing.returncode == 2 and "mapi.mapabc.com" in missing.stderr
    bad = cli("lab", "manifest", "--out", str(out), "--store", store_url, *flags,
              "--long", "10.0.0.1:8080")
    assert bad.returncode == 2 and "outside loopback" in bad.stderr
    for r in (empty, missing, bad):
        assert "Traceback" not in r.stderr


def test_serve_workers_keep_the_profiles_limits(tmp_path, store_url):
    """Each worker of a host applies the profile's limits: a frame left unfinished is
    closed at its deadline; one address holds at most the cap per worker."""
    from .helpers import limits_profile, read_frame

    plan = AddressPlan.random_loopback()
    ready = tmp_path / "long.json"
    profile = limits_profile(tmp_path, frame_timeout_s=1, max_connections_per_address=2)
    proc = start_serve("long", ready, "--subnet", plan.prefix, "--store", store_url,
                       "--workers", "2", "--profile", profile)
    try:
        doc = wait_ready(proc, ready)

        async def probe():
            addr, port = doc["listen"][0]
            conns = [await asyncio.open_connection(addr, port) for _ in range(8)]
            open_ = 0
            for i, (r, w) in enumerate(conns):
                try:
                    w.write(bytes.fromhex("0000001000100001000000060000") + bytes([0, i]))
                    await read_frame(r, timeout=5)
                    open_ += 1
                except (ConnectionError, asyncio.IncompleteReadError):
                    pass
            # two workers, two connections each from this address
            assert 2 <= open_ <= 4, open_
            r, w = next((r, w) for r, w in conns if not r.at_eof())
            w.write(bytes.fromhex("0000002000100001"))   # half a header, never the rest
            t0 = time.monotonic()
            assert await asyncio.wait_for(r.read(), 10) == b""
            return time.monotonic() - t0
        took = asyncio.run(probe())
        assert 0.5 < took < 5
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
