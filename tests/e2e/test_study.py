"""`testbed study heartbeat`: a small but real run of the heartbeat study, through its CLI.

Three phones per policy behind a 300 s carrier NAT for 3 protocol hours at k = 1200 (about
10 s of wall time): the shape of the report's heartbeat argument must show.
"""

from __future__ import annotations

import argparse
import json
import os
import random

import pytest

from testbed.study.heartbeat import (StudyConfig, StudyResult, main_heartbeat, register,
                                     render_table, timing_margin)
from testbed.study.heartbeat.config import usable_cpus

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
POLICIES = ["fixed:270", "fixed:1680", "mars"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="testbed")
    sub = p.add_subparsers(dest="command")
    register(sub)
    return p


def test_study_heartbeat_cli_shows_the_shape(tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs the plot extra "
                                             "(pip install 'wechat-testbed[plot]')")
    out, png = tmp_path / "study.json", tmp_path / "study.png"
    args = _parser().parse_args([
        "study", "heartbeat", "--nat-timeout", "300",
        *[x for p in POLICIES for x in ("--policy", p)],
        "--clients", "3", "--hours", "3", "--time-scale", "1200",
        "--messages-per-client-per-day", "16", "--seed", "7", "--processes", "0",
        "--online-per-s", "20", "--json", str(out), "--plot", str(png), "--quiet"])
    assert args.study_func is main_heartbeat
    assert args.study_func(args) == 0

    data = json.loads(out.read_text())
    by = {p["policy"]: p for p in data["policies"]}
    assert list(by) == POLICIES
    assert data["config"]["clients"] == 3 and data["config"]["nat_timeout_s"] == 300
    assert data["config"]["nat_upstream"] == "memory"      # the study's default
    for p in by.values():
        assert p["clients"] == 3
        assert p["window_s"] >= 3 * 3600

    # Some figures hold whatever the machine does; the rest hold when timing held. Loop
    # stalls adding up to the 30 s slack of fixed:270 under the NAT (25 ms of wall time at
    # k = 1200) can kill a link that would have lived; the run counts stalls of half that
    # and says whether there were any (`timing_ok`).
    assert data["timing_margin_s"] == 30
    timing_ok = data["timing_ok"]
    assert data["stall_threshold_s"] == 15
    assert timing_ok == (data["stalls"] == 0)
    why = f"lag histogram {data['lag_histogram']}"

    # 270 s under a 300 s NAT: the link lives all day
    p270 = by["fixed:270"]
    assert p270["interval_p50_s"] == pytest.approx(270, abs=5)
    assert 3 * 30 <= p270["heartbeats_sent"] <= 3 * 41   # 3 h / 270 s = 40 each
    assert p270["reconnects"] == p270["silent_deaths"]
    if timing_ok:
        assert p270["silent_deaths"] == 0, (p270, why)
        assert 280 <= p270["wakeups_per_day"] <= 330

    # 1680 s behind a 300 s NAT: every heartbeat finds a dead link, then a reconnect
    p1680 = by["fixed:1680"]
    assert p1680["heartbeats_sent"] >= 3 * 5
    assert p1680["silent_deaths"] == p1680["heartbeats_sent"]
    assert p1680["reconnects"] >= p1680["silent_deaths"]
    assert p1680["nat_expiries"] >= p1680["silent_deaths"]
    assert p1680["tcp_connections"] == p1680["reconnects"]   # one new link per death
    # messages wait for the next heartbeat of a black-holed link
    assert p1680["delay_max_s"] > 300

    # mars probes 210, 270, dies at 330, settles at 270 - 20 = 250
    mars = by["mars"]
    assert mars["settled_clients"] == 3
    assert mars["settled_interval_s"] < 300
    assert mars["silent_deaths"] >= 3
    if timing_ok:
        assert mars["settled_intervals"] == {"250": 3}, (mars, why)

    # every message delivered exactly once; by the phone itself unless a stall made one of
    # its newsyncs time out and the retry came after the drain (the final catch-up finds it)
    for p in by.values():
        assert p["messages_sent"] > 0 and p["send_failures"] == 0, p
        assert p["messages_lost"] == 0, p
        assert p["duplicates"] == 0, p
        assert p["messages_delivered"] + p["messages_caught_up"] == p["messages_sent"], p
        if timing_ok:
            assert p["messages_caught_up"] == 0 and p["loop_errors"] == 0, (p, why)
    if timing_ok:
        assert p270["delay_p99_s"] < 100, why   # a live link hears its NOTIFY at once

    # 9 phones online at 20 a wall second: the last 8 / 20 s (480 protocol s) after the
    # first, plus how long going online takes
    assert data["config"]["online_per_s"] == 20
    assert 480 <= data["start_spread_s"] < 480 + 600, data["start_spread_s"]
    assert data["max_loop_lag_s"] >= 0 and data["lag_samples"] > 0
    assert data["processes"] == 0 and list(data["lag_by_process"]) == ["lab+phones"]
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 5000

    # the JSON reads back; the table renders wide and turned
    from rich.console import Console

    result = StudyResult.from_dict(data)
    assert result.by_policy("mars").settled_clients == 3
    for vertical, width in ((False, 150), (True, 80)):
        console = Console(width=width, record=True)
        console.print(render_table(result, vertical=vertical))
        text = console.export_text()
        assert all(p in text for p in POLICIES) and "silent" in text


def test_study_phones_in_their_own_processes(tmp_path):
    """The lab in this process, the phones in two spawned ones, on one protocol time line."""
    out = tmp_path / "study.json"
    args = _parser().parse_args([
        "study", "heartbeat", "--policy", "fixed:270", "--policy", "fixed:1680",
        "--clients", "2", "--hours", "1", "--time-scale", "500",
        "--messages-per-client-per-day", "48", "--processes", "2", "--json", str(out),
        "--loop", "asyncio", "--nat-upstream", "socket", "--quiet"])
    assert args.study_func(args) == 0
    data = json.loads(out.read_text())
    assert data["config"]["nat_upstream"] == "socket"    # as the lab had it (its manifest)
    assert data["processes"] == 2
    assert data["event_loop"].startswith("asyncio."), data["event_loop"]   # in the phones too
    assert set(data["lag_by_process"]) == {"lab", "phones-1", "phones-2"}
    assert sum(v["stalls"] for v in data["lag_by_process"].values()) == data["stalls"]
    # each loop's wait for a CPU while phones ran (where the kernel says), and its stalls
    # that were mostly that: the figures' totals are the processes' sums
    if data["cpu_wait_s"] is not None:
        by = data["lag_by_process"].values()
        assert all(v["cpu_wait_s"] >= 0 and 0 <= v["stalls_waiting_for_cpu"] <= v["stalls"]
                   for v in by)
        assert sum(v["cpu_wait_s"] for v in by) == pytest.approx(data["cpu_wait_s"])
        assert sum(v["stalls_waiting_for_cpu"] for v in by) == data["stalls_waiting_for_cpu"]
    cpu = data["cpu_by_process"]        # each phone process's, the lab's the rest
    assert set(cpu) == {"lab", "phones-1", "phones-2"} and min(cpu.values()) > 0
    assert sum(cpu.values()) == pytest.approx(data["cpu_s"])
    by = {p["policy"]: p for p in data["policies"]}
    p270, p1680 = by["fixed:270"], by["fixed:1680"]
    # each beat is 270 s after the last reply: a few wall ms of lag per beat is as many
    # protocol seconds at k = 500, so 13 a phone in the hour, at least 12 on a busy machine
    assert p270["heartbeats_sent"] >= 2 * 12
    assert p270["silent_deaths"] == 0 or not data["timing_ok"]
    # 1 h = 3600 s: each 1680 phone dies twice, and the NAT, in this process, saw it happen
    # to the phones of the other processes (attributed by their source addresses)
    assert p1680["silent_deaths"] == p1680["heartbeats_sent"] >= 2 * 2
    assert p1680["nat_expiries"] >= p1680["silent_deaths"]
    for p in by.values():
        assert p["messages_sent"] == 2 * 2 and p["messages_delivered"] == p["messages_sent"]
        assert p["messages_lost"] == 0 and p["duplicates"] == 0
        # send and receive times come from two processes' clocks: same origin, sane delays
        assert 0 < p["delay_p50_s"] < 1800 + 200


def test_study_in_shards(tmp_path):
    """--shards 2: two labs in processes of their own, each with its share of the phones
    (long links in memory to its NAT), merged into one study: every phone counted once with
    the whole study's message plan, each shard's loop measured, the NATs' counts added."""
    clients, seed, per_day = 3, 5, 48
    out = tmp_path / "study.json"
    args = _parser().parse_args([
        "study", "heartbeat", "--policy", "fixed:270", "--policy", "fixed:1680",
        "--clients", str(clients), "--hours", "1", "--time-scale", "500",
        "--messages-per-client-per-day", str(per_day), "--seed", str(seed),
        "--shards", "2", "--json", str(out), "--quiet"])
    assert args.study_func(args) == 0
    data = json.loads(out.read_text())
    assert data["config"]["shards"] == 2 and data["processes"] == 2
    assert set(data["lag_by_process"]) == {"shard-1", "shard-2"}
    assert sum(v["stalls"] for v in data["lag_by_process"].values()) == data["stalls"]
    cpu = data["cpu_by_process"]
    assert set(cpu) == {"shard-1", "shard-2"} and min(cpu.values()) > 0
    assert sum(cpu.values()) == pytest.approx(data["cpu_s"])
    by = {p["policy"]: p for p in data["policies"]}
    p270, p1680 = by["fixed:270"], by["fixed:1680"]
    assert p270["clients"] == p1680["clients"] == clients      # 2 + 1 phones of each
    # the one-lab study's message plan, whatever lab a phone ran in: one draw per phone
    # from the seed, in the order of the whole study's phones
    cfg = StudyConfig(policies=("fixed:270", "fixed:1680"), clients=clients, hours=1,
                      messages_per_client_per_day=per_day, seed=seed)
    rng, planned = random.Random(seed), [0, 0]
    for _ in range(clients):
        for p in range(2):
            planned[p] += len(cfg.message_offsets(rng))
    assert [p270["messages_sent"], p1680["messages_sent"]] == planned
    for p in (p270, p1680):
        assert p["messages_delivered"] == p["messages_sent"]
        assert p["messages_lost"] == 0 and p["duplicates"] == 0
    # 13 beats a phone in the hour, 12 on a busy machine, and a message's push and sync
    # puts the next beat an interval after them: up to one beat fewer per message
    assert p270["heartbeats_sent"] >= clients * 12 - planned[0]
    assert p270["silent_deaths"] == 0 or not data["timing_ok"]
    # every fixed:1680 beat dies twice an hour, and each shard's NAT said so of its phones
    # (the memory leg's mappings carry the phones' source addresses as a socket's would)
    assert p1680["silent_deaths"] == p1680["heartbeats_sent"] >= clients * 2
    assert p1680["nat_expiries"] >= p1680["silent_deaths"]
    assert data["nat"]["mappings_opened"] >= 2 * clients + p1680["reconnects"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs this process may use")
def test_pinned_loops_run_on_cpus_of_their_own(tmp_path):
    """--pin-cpus: the lab's loop on the first usable CPU, the phone process on the next
    (as each loop saw its own affinity), and the caller's thread back as it was."""
    before = os.sched_getaffinity(0)
    cpus = sorted(before)
    out = tmp_path / "study.json"
    args = _parser().parse_args([
        "study", "heartbeat", "--policy", "fixed:270", "--clients", "2", "--hours", "1",
        "--time-scale", "1000", "--processes", "1", "--pin-cpus", "--json", str(out),
        "--quiet"])
    assert args.study_func(args) == 0
    data = json.loads(out.read_text())
    assert data["config"]["pin_cpus"] is True
    assert data["cpus_by_process"] == {"lab": [cpus[0]], "phones-1": [cpus[1]]}
    assert os.sched_getaffinity(0) == before
    p270 = data["policies"][0]
    assert p270["heartbeats_sent"] >= 2 * 12 and p270["messages_lost"] == 0


def test_study_bad_arguments_exit_2(tmp_path, capsys):
    parser = _parser()
    for bad in (["--policy", "sometimes"], ["--clients", "0"], ["--hours", "-1"],
                ["--time-scale", "zero"], ["--nat-timeout", "0"],
                ["--messages-per-client-per-day", "-2"], ["--processes", "-1"],
                ["--nat-upstream", "pipe"], ["--online-per-s", "-5"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["study", "heartbeat", *bad])
        assert exc.value.code == 2, bad
    # caught after parsing: a policy given twice, an output that is a directory
    args = parser.parse_args(["study", "heartbeat", "--policy", "mars", "--policy", "mars"])
    assert args.study_func(args) == 2
    assert "given twice" in capsys.readouterr().err
    args = parser.parse_args(["study", "heartbeat", "--json", str(tmp_path)])
    assert args.study_func(args) == 2
    assert "is a directory" in capsys.readouterr().err
    # --pin-cpus: phones in processes of their own, and a CPU for each loop
    for argv, says in ((["--processes", "0"], "processes of their own"),
                       (["--processes", "64"], "CPUs, this process may use")):
        args = parser.parse_args(["study", "heartbeat", "--pin-cpus", *argv])
        assert args.study_func(args) == 2, argv
        assert says in " ".join(capsys.readouterr().err.split()), argv
    # --shards: a lab per shard with its phones in its loop, every long link in memory
    for argv, says in ((["--shards", "2", "--processes", "1"], "not both"),
                       (["--shards", "2", "--pin-cpus"], "not with --shards"),
                       (["--shards", "2", "--nat-upstream", "socket"], "not with --nat-upstream"),
                       (["--shards", "4", "--clients", "3"], "more labs than --clients")):
        args = parser.parse_args(["study", "heartbeat", *argv])
        assert args.study_func(args) == 2, argv
        assert says in " ".join(capsys.readouterr().err.split()), argv
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["study", "heartbeat", "--shards", "-1"])
    assert exc.value.code == 2
    # `testbed study` alone: help, exit 2
    args = parser.parse_args(["study"])
    assert args.study_func(args) == 2



def test_study_on_a_running_lab_bad_arguments_exit_2(tmp_path, capsys, monkeypatch):
    """--manifest and --collect need the lab's store; the lab decides time scale, NAT and
    server timeouts; a lab without a NAT cannot be studied; one mode at a time."""
    monkeypatch.delenv("TESTBED_STORE", raising=False)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({
        "contract": 1, "profile": "lab-report-2013", "time_scale": 100.0,
        "dns": {"address": "127.0.0.1", "port": 53}, "hosts": {}, "ca_cert": "",
        "users": [], "heartbeat_s": 270.0, "server_idle_s": 660.0}))
    store = "redis://127.0.0.1:1/0"
    for argv, says in (
            (["--manifest", str(manifest)], "needs the lab's store"),
            (["--collect"], "needs the lab's store"),
            (["--collect", "--manifest", str(manifest), "--store", store], "one of them"),
            (["--wait", "--store", store], "--wait is for --collect"),
            (["--manifest", str(manifest), "--store", store, "--time-scale", "10"],
             "the running lab decides"),
            (["--manifest", str(manifest), "--store", store, "--nat-upstream", "memory"],
             "the running lab decides"),
            (["--manifest", str(manifest), "--store", store, "--pin-cpus"],
             "the running lab decides"),
            (["--manifest", str(manifest), "--store", store, "--shards", "2"],
             "the running lab decides"),
            (["--manifest", str(manifest), "--store", store], "has no carrier NAT")):
        args = _parser().parse_args(["study", "heartbeat", *argv])
        assert args.study_func(args) == 2, argv
        assert says in " ".join(capsys.readouterr().err.split()), argv


def test_study_config_defaults_and_margin():
    c = StudyConfig()
    c.validate()
    assert c.policies == ("fixed:270", "fixed:1680", "mars") and c.clients == 100
    assert c.hours == 24 and c.time_scale == 2000 and c.messages_per_client_per_day == 4
    assert c.nat_upstream == "memory" and c.online_per_s == 500
    assert c.phone_processes() in (0, 2)
    # two labs by default where two CPUs may run them, none once the layout is asked for
    assert c.shard_count() == (2 if len(usable_cpus()) >= 2 else 0)
    for asked in ({"processes": 2}, {"pin_cpus": True}, {"nat_upstream": "socket"},
                  {"shards": 0}, {"clients": 1}):
        assert StudyConfig(**asked).shard_count() == 0, asked
    assert StudyConfig(shards=3, clients=1000).shard_clients() == [334, 333, 333]
    assert timing_margin(c) == 30
    # at k = 2000 the phone's NOOP timeout is floored at 50 ms of wall time: 100 protocol s
    assert c.noop_timeout_effective() == 100
    with pytest.raises(ValueError, match="fixed"):
        StudyConfig(policies=("fixed:x",)).validate()
    with pytest.raises(ValueError, match="--nat-upstream"):
        StudyConfig(nat_upstream="pipe").validate()


def test_plot_without_matplotlib_names_the_extra(tmp_path):
    """Without matplotlib, --plot is refused before the run, saying what to install."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['matplotlib'] = None; from testbed.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, "study", "heartbeat", "--clients", "1",
                        "--hours", "1", "--plot", str(tmp_path / "p.png")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "pip install 'wechat-testbed[plot]'" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "p.png").exists()


def test_the_nats_figures_come_also_when_it_holds_no_mapping_at_the_end(tmp_path):
    # a NAT that never expires a link lets every mapping close with its phone: it holds
    # none at the end, and its figures were once dropped as if there were no NAT at all
    out = tmp_path / "study.json"
    args = _parser().parse_args([
        "study", "heartbeat", "--policy", "fixed:270", "--clients", "2", "--hours", "0.5",
        "--nat-timeout", "3600", "--processes", "0", "--json", str(out), "--quiet"])
    assert args.study_func(args) == 0
    nat = json.loads(out.read_text())["nat"]
    assert nat["mappings_opened"] >= 2 and nat["mappings_expired"] == 0
    assert nat["mappings_active"] == 0
