"""The fault grammar (`testbed.lab.faults`): what each spec means, what is wrong with a bad
one, and the seed's random choices made the same way every time."""

from __future__ import annotations

import pytest

from testbed.lab.addressing import LONG, SHORT
from testbed.lab.faults import (CLIENT, FaultError, FaultKind, FaultPlan, Faults,
                                parse_duration, parse_fault)


@pytest.mark.parametrize("text, want", [
    ("drop:NEWSYNC#2", dict(kind=FaultKind.DROP, door="long", command="NEWSYNC", nth=2)),
    ("delay:NOTIFY#1=30s", dict(kind=FaultKind.DELAY, command="NOTIFY", delay=(30.0, 30.0))),
    ("delay:NOTIFY#* = 10s..30s", dict(nth=None, percent=None, delay=(10.0, 30.0))),
    ("dup:NEWSENDMSG#1", dict(kind=FaultKind.DUP, command="NEWSENDMSG", nth=1)),
    ("truncate:GETMSGIMG#1@100", dict(kind=FaultKind.TRUNCATE, offset=100)),
    ("split:NOOP#3@7", dict(kind=FaultKind.SPLIT, command="NOOP", nth=3, offset=7)),
    ("split:NOOP#3@?", dict(offset=None)),
    ("drop:NOOP%12.5", dict(nth=None, percent=12.5)),
    ("drop:short.NEWSYNC#1", dict(door="short", command="NEWSYNC")),
    ("delay:short.GETCONTACT#2=500ms", dict(door="short", delay=(0.5, 0.5))),
    ("reset:long@120s", dict(kind=FaultKind.RESET, host=LONG, nth=None, at=120.0)),
    ("blackhole:short#2@5m", dict(kind=FaultKind.BLACKHOLE, host=SHORT, nth=2, at=300.0)),
    ("reset:mmsns.qpic.cn@1h", dict(host="mmsns.qpic.cn", at=3600.0)),
])
def test_each_spec_means_what_the_docs_say(text, want):
    spec = parse_fault(text)
    for key, value in want.items():
        assert getattr(spec, key) == value, (text, key)
    assert " " not in spec.text


@pytest.mark.parametrize("text, said", [
    ("drop", "write ACTION:TARGET"),
    ("dorp:NEWSYNC#1", "did you mean 'drop'"),
    ("drop:NEWSYNK#1", "did you mean 'NEWSYNC'"),
    ("drop:NEWSYNC", "say which NEWSYNC: #N"),
    ("drop:NEWSYNC#0", "count from #1"),
    ("drop:NOOP%0", "more than 0 and at most 100"),
    ("delay:NOTIFY#1", "delay takes =DURATION"),
    ("delay:NOTIFY#1=soon", "'soon' is not a duration"),
    ("delay:NOTIFY#1=30s..10s", "runs backwards"),
    ("truncate:GETMSGIMG#1", "truncate takes @BYTES"),
    ("split:NOOP#1@0", "1 or more"),
    ("dup:NEWSYNC#1=3s", "dup takes nothing after the frame"),
    ("drop:LBSFIND#1", "write short.LBSFIND"),
    ("drop:short.GETMSGIMG#1", "has no CGI"),
    ("dup:short.NEWSYNC#1", "on the short link a fault is one of drop, delay, truncate"),
    ("drop:medium.NEWSYNC#1", "unknown door 'medium'"),
    ("reset:long", "reset takes HOST[#N]@DURATION"),
    ("reset:lnog@10s", "did you mean 'long'"),
    ("blackhole:long#0@10s", "count from #1"),
])
def test_a_bad_spec_says_what_is_wrong(text, said):
    with pytest.raises(FaultError, match=said.replace("(", r"\(").replace("[", r"\[")):
        parse_fault(text)


def test_the_replayers_side_has_no_pushes_and_seeds_are_whole_numbers():
    with pytest.raises(FaultError, match="NOTIFY is a push the lab sends"):
        parse_fault("drop:NOTIFY#1", CLIENT)
    with pytest.raises(FaultError, match="acts on its long links"):
        parse_fault("reset:short@5s", CLIENT)          # the replayer would never apply it
    assert parse_fault("blackhole:long#2@5s", CLIENT).host == "long.weixin.qq.com"
    with pytest.raises(FaultError, match="seed=N takes a whole number"):
        FaultPlan.parse(["seed=x"])
    with pytest.raises(FaultError, match="given twice"):
        FaultPlan.parse(["seed=1", "seed=2"])
    plan = FaultPlan.parse(["drop:NEWSYNC#2", "seed=7"])
    assert plan.seed == 7 and plan.describe() == ["drop:NEWSYNC#2"]
    assert 0 <= FaultPlan.parse(["drop:NEWSYNC#2"]).seed < 1 << 31     # drawn when not given
    assert not FaultPlan.parse(["seed=3"])                             # faults nothing
    assert parse_duration("1.5m", "x") == 90.0 and parse_duration("250ms", "x") == 0.25


def _choices(seed: int) -> list:
    faults = Faults(FaultPlan.parse(["drop:NOOP%30", "delay:NOTIFY#*=1s..9s",
                                     "split:NEWSYNC#*@?", f"seed={seed}"]))
    out = []
    for i in range(40):
        for door, name, size in (("long", "NOOP", 16), ("long", "NOTIFY", 20),
                                 ("long", "NEWSYNC", 200)):
            f = faults.frame(door, name, size)
            out.append(None if f is None else (f.kind, round(f.delay, 6), f.offset))
    return out


def test_the_same_seed_makes_the_same_choices_and_another_seed_others():
    a, b, c = _choices(11), _choices(11), _choices(12)
    assert a == b and a != c
    drops = [x for x in a[0::3] if x is not None]
    assert 0 < len(drops) < 40                         # about 30 percent of the NOOPs
    assert all(1 <= x[1] <= 9 for x in a[1::3])        # every NOTIFY delayed in the range
    assert all(1 <= x[2] <= 199 for x in a[2::3])      # every NEWSYNC cut inside it


def test_nth_counts_per_door_and_command_and_connections_per_host():
    faults = Faults(FaultPlan.parse(["drop:NEWSYNC#2", "drop:short.NEWSYNC#1",
                                     "reset:long#2@10s", "blackhole:long@20s", "seed=1"]))
    got = [faults.frame(d, "NEWSYNC", 10) for d in ("long", "short", "long", "long", "short")]
    assert [f is not None for f in got] == [False, True, True, False, False]
    assert [[f.kind for f in faults.link(LONG)] for _ in range(3)] == [
        [FaultKind.BLACKHOLE], [FaultKind.RESET, FaultKind.BLACKHOLE], [FaultKind.BLACKHOLE]]
    assert faults.link(SHORT) == []
    assert [a["fault"] for a in faults.applied] == ["drop:short.NEWSYNC#1", "drop:NEWSYNC#2"]
