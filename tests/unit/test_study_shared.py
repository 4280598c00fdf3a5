"""Merging the heartbeat study's shares (`testbed.study.heartbeat.shared.collect`): each
phone host's fleet on one time line, one study of all their phones, and the shares that
cannot be merged refused."""

from __future__ import annotations

import json

import pytest

from mocks.lab_phones import PhoneRuns
from testbed.study.heartbeat import StudyConfig
from testbed.study.heartbeat.driver import FleetReport, PhoneOutcome
from testbed.study.heartbeat.measure import COUNTERS
from testbed.study.heartbeat.shared import collect, phone_result

K = 2000.0


def _fleet(index: int, t0: float, msg_id: int) -> FleetReport:
    snap = {**dict.fromkeys(COUNTERS, 0), "heartbeats_sent": 10, "heartbeats_answered": 10,
            "app_bytes": 320, "long_frames": 20, "intervals": [270.0] * 10,
            "policy_current": None, "policy_probing": None}
    o = PhoneOutcome(index=index, policy_index=0, t0=t0, window_s=3600.0, t_end=t0 + 3700.0,
                     snapshot=snap, sends=[(t0 + 100.0, t0 + 101.0, msg_id, "")],
                     received={msg_id: t0 + 106.0}, caught_up=[], duplicates=0, loop_errors=[])
    return FleetReport(outcomes=[o], lag=[(t0 + 10.0, 0.001)], login_done=t0 - 50.0,
                       online_done=t0, event_loop="uvloop.Loop", cpu_s=1.5, max_rss_mb=50.0)


def _runs(shares: dict) -> PhoneRuns:
    """The phones' results as the store holds them: JSON text, read back."""
    results = {o: json.loads(json.dumps(doc)) for o, doc in shares.items()}
    return PhoneRuns({o: doc["users"] for o, doc in results.items()}, results, 2)


def test_shares_merge_into_one_study_on_one_time_line():
    cfg = StudyConfig(policies=("fixed:270",), clients=1, hours=1.0, time_scale=K)
    a = phone_result(cfg, ["user0001", "user0002"], _fleet(0, 500.0, 11), 1000.0, 3.0)
    b = phone_result(cfg, ["user0003", "user0004"], _fleet(2, 500.0, 12), 1000.5, 3.0)
    assert a["ok"] and a["metrics"] == {"messages_sent": 1, "messages_received": 1,
                                        "duplicates": 0}
    result = collect(_runs({"phone-a/1": a, "phone-b/2": b}))
    assert result.config["clients"] == 2 and result.processes == 2
    [p] = result.policies
    assert p.clients == 2 and p.heartbeats_sent == 20 and p.messages_delivered == 2
    assert p.delay_p50_s == 6.0                     # a delay is one clock's: not shifted
    # b's clock started half a wall second after a's: k/2 protocol seconds later
    assert result.start_spread_s == pytest.approx(0.5 * K)
    assert result.wall_s == pytest.approx(3.5)
    assert sorted(result.lag_by_process) == ["phone-a/1", "phone-b/2"]
    assert result.cpu_s == 3.0 and p.nat_expiries is None
    assert result.cpu_by_process == {"phone-a/1": 1.5, "phone-b/2": 1.5}   # no lab here


def test_shares_that_cannot_be_merged_are_refused():
    cfg = StudyConfig(policies=("fixed:270",), clients=1, hours=1.0, time_scale=K)
    a = phone_result(cfg, ["user0001", "user0002"], _fleet(0, 500.0, 11), 1000.0, 3.0)
    other = phone_result(StudyConfig(policies=("fixed:270",), clients=1, hours=2.0,
                                     time_scale=K),
                         ["user0003", "user0004"], _fleet(2, 500.0, 12), 1000.0, 3.0)
    with pytest.raises(ValueError, match="phone-b/2 ran another study .*hours"):
        collect(_runs({"phone-a/1": a, "phone-b/2": other}))
    failed = {"scenario": "heartbeat study", "clients": 2, "ok": False, "users": ["user0005"],
              "errors": ["ConnectionError: the lab is gone"]}
    with pytest.raises(ValueError, match="1 study phone.*the lab is gone"):
        collect(_runs({"phone-a/1": a, "phone-c/3": failed}))
    with pytest.raises(ValueError, match="no study phone"):
        collect(_runs({}))
