"""The radio model against hand calculations, and the profiles' rule: no number without a
source.

umts-2010 (Qian et al. 2010, Carrier 1): promotion IDLE->DCH 2 s at 530 mW, DCH 800 mW with
a 5 s tail, FACH 460 mW with a 12 s tail, FACH->DCH 1.5 s at 550 mW, FACH carries up to
543 B up / 475 B down; 8 RRC messages to wake up (9 after paging), 2 per demotion, 2 per
release, FACH->DCH 3 up / 2 down. The radio is back in IDLE 2 + 5 + 12 = 19 s after a lone
packet. lte-2012 (Huang et al. 2012): promotion 0.2601 s at 1210.7 mW, CONNECTED 1060 mW
with an 11.576 s tail; 7 messages to wake up (8 after paging), 1 release. Battery 1500 mAh
at 3.7 V = 19,980 J.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.radio import RadioMeter, load_radio_profile, radio_profile_names, simulate
from testbed.radio import doc as radio_doc
from testbed.radio.profile import profile_from_dict

from ..fuzzing import budget

UMTS = load_radio_profile("umts-2010")
LTE = load_radio_profile("lte-2012")
BATTERY_J = 1500 * 3.7 * 3.6
ONE_UMTS_J = 2 * 0.53 + 5 * 0.8 + 12 * 0.46          # 10.58 J
ONE_LTE_J = 0.2601 * 1.2107 + 11.576 * 1.06           # 12.58546307 J
DOC = Path(__file__).resolve().parents[2] / "docs" / "radio.md"


def up(t, size=80):
    return (t, "c2s", size)


def down(t, size=80):
    return (t, "s2c", size)


def test_one_packet_one_promotion_and_the_full_tails():
    c = simulate([up(0)], UMTS)
    assert (c.promotions, c.wakeups, c.server_wakeups) == (1, 1, 0)
    assert c.promotion_s == 2.0 and c.state_s == {"DCH": 5.0, "FACH": 12.0}
    assert c.radio_on_s == 19.0 and c.tail_s == 17.0
    assert c.signalling == {"IDLE->DCH": 8, "DCH->FACH": 2, "FACH->IDLE": 2}
    assert c.signalling_messages == 12
    assert c.energy_j == pytest.approx(ONE_UMTS_J) and ONE_UMTS_J == pytest.approx(10.58)
    assert c.battery_share == pytest.approx(10.58 / 19980)

    lte = simulate([up(0)], LTE)
    assert (lte.promotions, lte.tail_s, lte.signalling_messages) == (1, 11.576, 8)
    assert lte.radio_on_s == pytest.approx(11.8361)
    assert lte.energy_j == pytest.approx(ONE_LTE_J) and ONE_LTE_J == pytest.approx(12.58546307)


def test_two_packets_inside_a_tail_one_promotion():
    # the second packet, 4 s after the first, finds DCH (2..7) and restarts its 5 s timer
    c = simulate([up(0), up(4)], UMTS)
    assert c.promotions == 1 and c.signalling_messages == 12
    assert c.state_s == {"DCH": 7.0, "FACH": 12.0} and c.tail_s == 17.0
    assert c.energy_j == pytest.approx(1.06 + 7 * 0.8 + 12 * 0.46)       # 12.18 J
    # a packet during the promotion goes out with it: the same cost as one packet
    assert simulate([up(0), down(1)], UMTS).energy_j == pytest.approx(ONE_UMTS_J)
    # LTE: 5 s after the first packet the radio is still CONNECTED
    lte = simulate([up(0), down(5)], LTE)
    assert lte.promotions == 1
    assert lte.state_s["CONNECTED"] == pytest.approx(5 - 0.2601 + 11.576)


def test_periodic_packets_just_outside_the_tail_each_wake_the_radio():
    c = simulate([up(19.5 * i) for i in range(4)], UMTS)     # idle again 19 s after each
    assert c.promotions == c.wakeups == 4
    assert c.signalling_messages == 4 * 12 and c.tail_s == 4 * 17.0
    assert c.energy_j == pytest.approx(4 * ONE_UMTS_J)           # 42.32 J
    lte = simulate([up(12.0 * i) for i in range(3)], LTE)       # idle again after 11.8361 s
    assert lte.promotions == 3 and lte.signalling_messages == 24
    assert lte.energy_j == pytest.approx(3 * ONE_LTE_J)


def test_periodic_packets_just_inside_the_tail_keep_the_radio_on():
    lte = simulate([up(11.5 * i) for i in range(3)], LTE)       # 0, 11.5, 23
    assert lte.promotions == 1 and lte.signalling_messages == 8
    on = 23 + 11.576 - 0.2601                                   # CONNECTED 0.2601..34.576
    assert lte.state_s["CONNECTED"] == pytest.approx(on)
    assert lte.energy_j == pytest.approx(0.2601 * 1.2107 + on * 1.06)   # 36.6898 J
    # UMTS every 10 s: DCH 2..7, then FACH carries each small packet and restarts its timer
    c = simulate([up(10 * i) for i in range(4)], UMTS)          # FACH 7..30+12
    assert c.promotions == 1 and c.carried_low == 3
    assert c.state_s == {"DCH": 5.0, "FACH": 35.0} and c.tail_s == 17.0
    assert c.energy_j == pytest.approx(1.06 + 5 * 0.8 + 35 * 0.46)      # 21.16 J


def test_a_push_from_the_server_wakes_the_phone_too():
    c = simulate([down(0)], UMTS)
    assert (c.wakeups, c.server_wakeups) == (1, 1)
    assert c.signalling == {"IDLE->DCH": 9, "DCH->FACH": 2, "FACH->IDLE": 2}   # + paging
    assert c.energy_j == pytest.approx(ONE_UMTS_J)
    lte = simulate([down(0)], LTE)
    assert lte.server_wakeups == 1 and lte.signalling_messages == 9
    # the phone's own answer inside the tail costs no second wake-up
    assert simulate([down(0), up(0.3)], LTE).wakeups == 1


def test_a_large_packet_in_fach_promotes_to_dch():
    # FACH from 7 s; 600 B (> 543 B) at 10 s: FACH 7..10, promotion 10..11.5, DCH 11.5..16.5,
    # FACH 16.5..28.5
    c = simulate([up(0), up(10, 600)], UMTS)
    assert c.promotions_from == {"IDLE": 1, "FACH": 1} and c.wakeups == 1
    assert c.promotion_s == 3.5 and c.state_s == {"DCH": 10.0, "FACH": 15.0}
    assert c.tail_s == 5 + 5 + 12
    assert c.signalling == {"IDLE->DCH": 8, "DCH->FACH": 4, "FACH->DCH": 3, "FACH->IDLE": 2}
    assert c.energy_j == pytest.approx(1.06 + 1.5 * 0.55 + 10 * 0.8 + 15 * 0.46)  # 16.785 J
    # downlink threshold 475 B: 475 B rides FACH, 476 B promotes (2 messages: no report)
    assert simulate([up(0), down(10, 475)], UMTS).promotions == 1
    big = simulate([up(0), down(10, 476)], UMTS)
    assert big.promotions == 2 and big.signalling["FACH->DCH"] == 2


def test_order_duration_and_streaming():
    shuffled = simulate([up(19.5), up(0), up(39)], UMTS)
    assert shuffled.wakeups == 3
    c = simulate([up(0)], UMTS, observed_s=7200)
    assert c.battery_share_per_day == pytest.approx(10.58 / 19980 * 12)
    assert simulate([up(0)], UMTS, observed_s=60).battery_share_per_day is None   # too short
    m = RadioMeter(LTE)
    m.packet(10, "c2s", 80)
    m.packet(9, "s2c", 80)            # a capture clock stepping back: taken as 10 s
    assert m.cost().wakeups == 1
    with pytest.raises(RuntimeError):
        m.packet(30, "c2s", 80)
    with pytest.raises(ValueError):
        RadioMeter(LTE).packet(0, "up", 80)


timelines = st.lists(st.tuples(st.floats(0, 500, allow_nan=False),
                               st.sampled_from(["c2s", "s2c"]), st.integers(40, 1500)),
                     max_size=40)


@budget(1.5)
@given(timelines, st.sampled_from(["umts-2010", "lte-2012"]))
def test_invariants(timeline, name):
    p = load_radio_profile(name)
    c = simulate(timeline, p)
    # every wake-up ends in exactly one release, after the bottom tail ran out in full
    release = f"{p.states[-2].name}->{p.idle.name}"
    assert c.signalling.get(release, 0) == c.wakeups * p.states[-2].demotion_messages
    assert (c.wakeups >= 1) == bool(timeline)
    assert c.tail_s >= c.wakeups * sum(s.inactivity_timer_s for s in p.states[:-1]) - 1e-9
    assert c.tail_s <= sum(c.state_s.values()) + 1e-9
    powers = {s.name: s.power_mw / 1000 for s in p.states}
    assert c.energy_j == pytest.approx(
        sum(secs * powers[k] for k, secs in c.state_s.items()) + c.energy_by["promotion"])
    # a packet at the same time as another goes out with it: it costs nothing more. (One
    # more packet at another time can cost less: kept in FACH, the radio skips a promotion.)
    twice = simulate(timeline + timeline, p)
    assert twice.energy_j == pytest.approx(c.energy_j) and twice.wakeups == c.wakeups
    assert twice.signalling == c.signalling


def test_every_figure_of_every_profile_is_sourced():
    assert set(radio_profile_names()) >= {"umts-2010", "lte-2012"}
    for name in radio_profile_names():
        p = load_radio_profile(name)
        assert p.figures and all(f.source in p.sources for f in p.figures.values())
        assert {f.kind for f in p.figures.values()} <= {"measured", "standard", "choice"}


def _doc(name="umts-2010"):
    return json.loads((Path(__file__).resolve().parents[2] / "testbed" / "radio" / "profiles"
                       / f"{name}.json").read_text())


def test_a_bare_number_or_an_unknown_source_is_refused(tmp_path):
    d = _doc()
    d["states"][0]["power_mw"] = 800
    with pytest.raises(ValueError, match=r"states\.DCH\.power_mw .*needs its source"):
        profile_from_dict(d)
    d = _doc()
    d["states"][1]["inactivity_timer_s"]["source"] = "a blog"
    with pytest.raises(ValueError, match="cites 'a blog', which is not in sources"):
        profile_from_dict(d)
    d = _doc()
    del d["promotions"]["FACH"]
    with pytest.raises(ValueError, match=r"promotions\.FACH is missing"):
        profile_from_dict(d)
    d = _doc("lte-2012")
    d["name"] = "my-lte"
    d["states"][0]["inactivity_timer_s"]["value"] = 5.0
    path = tmp_path / "my-lte.json"
    path.write_text(json.dumps(d))
    mine = load_radio_profile(str(path))
    assert mine.name == "my-lte" and simulate([up(0)], mine).tail_s == 5.0
    with pytest.raises(ValueError, match="unknown radio profile 'gprs'"):
        load_radio_profile("gprs")


def test_docs_carry_the_parameters_as_the_profiles_have_them():
    text = DOC.read_text(encoding="utf-8")
    start = text.index(radio_doc.BEGIN)
    end = text.index(radio_doc.END) + len(radio_doc.END)
    assert text[start:end] == radio_doc.block(), \
        "docs/radio.md is stale: run python -m testbed.radio.doc and paste the block"
