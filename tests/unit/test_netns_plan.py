"""The namespace lab's plan as data: addresses, MAC addresses, rates, the NAT's whole seconds
(no root needed; the lab itself is tests/e2e/test_netns_lab.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mocks.netns.lab import nat_wall_timeout, wall_timeout_note
from mocks.netns.namespaces import is_stale, name_of, owner_of
from mocks.netns.network import Impairment, mac_of, parse_rate
from testbed.cli.netns import TOOLS
from testbed.lab.addressing import DNS_OCTET, LONG, QLOGO, NetworkPlan, is_lab_address


def test_the_plan_puts_the_report_s_phone_and_hotspot_on_198_18():
    plan = NetworkPlan()
    assert (plan.phone, plan.hotspot, plan.gateway) == ("198.18.137.87", "198.18.137.1",
                                                       "198.19.0.1")
    assert plan.servers.addresses(LONG) == ["198.19.0.11", "198.19.0.12"]
    assert plan.servers.addresses(QLOGO) == ["198.19.0.41"]
    assert plan.servers.dns == f"198.19.0.{DNS_OCTET}"
    assert all(is_lab_address(a) for a in (plan.phone, plan.hotspot, plan.gateway, plan.store))
    with pytest.raises(ValueError, match="198.18.0.0/15"):
        NetworkPlan(phone_net="10.0.0")
    with pytest.raises(ValueError, match="must differ"):
        NetworkPlan(phone_net="198.19.0")


def test_mac_addresses_are_made_of_the_ip_address():
    assert mac_of("198.18.137.87") == "02:00:c6:12:89:57"
    assert mac_of("198.18.137.1") == "02:00:c6:12:89:01"


def test_rates_are_tc_rates_and_impairments_are_checked():
    assert parse_rate("8mbit") == 8_000_000
    assert parse_rate("512kbit") == 512_000
    assert parse_rate("1.5Mbit") == 1_500_000
    for bad in ("8mb", "fast", "8", "-1mbit"):
        with pytest.raises(ValueError, match="with a unit"):
            parse_rate(bad)
    with pytest.raises(ValueError, match="below 8kbit"):
        parse_rate("1kbit")
    with pytest.raises(ValueError, match="0 to 100"):
        Impairment(loss_pct=100)
    with pytest.raises(ValueError, match="MSS"):
        Impairment(mss=40)


def test_the_nat_timeout_is_whole_wall_seconds_and_says_when_it_rounds():
    assert nat_wall_timeout(300, 100) == 3
    assert wall_timeout_note(300, 100) is None
    assert nat_wall_timeout(300, 250) == 1
    note = wall_timeout_note(300, 250)
    assert "1.2 wall s" in note and "using 1 s = 250 protocol s" in note
    assert nat_wall_timeout(100, 1000) == 1        # never 0: that would mean "no timeout"


def test_namespace_names_carry_their_lab_s_pid():
    assert name_of("phone", 4242) == "tblab-4242-phone"
    assert owner_of("tblab-4242-phone") == 4242
    assert owner_of("tb-4242-ab12cd34") is None and owner_of("tblab-x-phone") is None
    assert not is_stale("someone-elses") and not is_stale(name_of("phone", 1))
    with pytest.raises(ValueError):
        name_of("Phone-1")


def test_ci_installs_every_tool_the_namespace_lab_and_its_test_run():
    """CI runs the namespace lab's tests on a clean machine with TESTBED_REQUIRE_NETNS=1:
    .ci/setup must install the package of every tool the lab runs (testbed.cli.netns.TOOLS)
    and of the ones its test checks the capture with."""
    setup = (Path(__file__).resolve().parents[2] / ".ci" / "setup").read_text()
    listed = re.search(r"^\s*for pkg in ([^;]+); do", setup, re.M)
    assert listed, "no `for pkg in ...; do` list in .ci/setup"
    packages = set(listed.group(1).split())
    assert set(TOOLS.values()) | {"tshark", "tcpdump"} <= packages, packages
