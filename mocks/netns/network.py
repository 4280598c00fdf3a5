"""The namespace lab's network: the phone, the hotspot that is also the carrier NAT, and a
namespace per server, joined by veth links (`testbed.lab.addressing.NetworkPlan`).

```
 phone          gateway (hotspot, carrier NAT)         one per host
 wlan0 ──────── hotspot0 198.18.137.1
 198.18.137.87  wan0 198.19.0.1 (bridge) ─ srv-long ─── eth0 198.19.0.11, .12
                                         ─ srv-short ── eth0 198.19.0.21, .22
                                         ─ srv-mapabc, srv-qlogo, srv-qpic, srv-dns ...
```

Every link has MTU 1500 and no offloads (`ethtool -K … tx off tso off gso off gro off`), so
a capture shows the segments that crossed it, with their real checksums. The recorder
sniffs `hotspot0`, the phone's link at the hotspot, where the report's Wireshark ran.

The gateway (one nftables table, `inet testbed`):

- **Carrier NAT.** The kernel's: `masquerade` on `wan0`, so every server sees the phone as
  198.19.0.1. Its idle timeout is conntrack's for established TCP
  (`nf_conntrack_tcp_timeout_established`, per namespace), time-scaled: whole wall seconds.
  A carrier forgets a mapping silently, so the gateway does too: `nf_conntrack_tcp_loose=0`
  makes a packet of a forgotten connection invalid instead of re-creating the mapping, and
  `ct state invalid drop` discards it both ways (no RST from the gateway): the phone's next
  NOOP goes unanswered and is retransmitted on TCP's timer, as behind a real carrier NAT.
  `nf_conntrack_tcp_be_liberal=1` keeps loss from making packets of live connections
  invalid.
- **MSS clamp.** SYNs crossing the phone's link get an MSS of at most `mss` bytes (a
  gateway rewriting the MSS option is what carriers and PPPoE links do), so a small reply
  spans several segments, as the report's avatar did.

The impairments of the phone's link, which have no netem here: loss with `numgen random`
(`--loss PCT`), downlink in the phone's input hook and uplink in the gateway's forward hook,
both past the recorder, so the capture shows each lost packet and its retransmission; fades
(`--fade MS`: a lost packet starts MS milliseconds in which that direction loses every
packet, kept in an nftables set with a timeout), so a segment sent into one is lost again
when TCP's timer sends it the first time and gets through on the second, longer wait; the
rate with `tbf` on both ends of the link (`--rate RATE`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from testbed.lab.addressing import DNS_OCTET, HOST_OCTETS, NET_PREFIX_LEN, NetworkPlan

from .namespaces import Namespaces, exec_in, run

PHONE_IF = "wlan0"          # the phone's end of its link
HOTSPOT_IF = "hotspot0"     # the gateway's end of it: where the recorder sniffs
WAN_IF = "wan0"             # the gateway's bridge to the servers' network
HOST_IF = "eth0"            # each server's end of its link
MTU = 1500
DEFAULT_MSS = 400           # a 96-px avatar with its headers (460 bytes) spans two segments
TABLE = "testbed"
_LOSS_SCALE = 10_000        # loss in hundredths of a percent
MAX_FADE_MS = 10_000
_TBF_LATENCY = "500ms"

_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)$")
_RATE_FACTOR = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000}


def parse_rate(text: str) -> int:
    """A link rate as tc writes it (`8mbit`, `512kbit`, `1gbit`) in bits per second."""
    m = _RATE.match(text.strip().lower())
    if m is None:
        raise ValueError(f"rate {text!r}: give bits per second with a unit, like 8mbit, "
                         f"512kbit or 1gbit")
    bits = int(float(m.group(1)) * _RATE_FACTOR[m.group(2)])
    if bits < 8_000:
        raise ValueError(f"rate {text!r} is below 8kbit: nothing useful gets through")
    return bits


@dataclass(frozen=True)
class Impairment:
    """What the phone's link does to packets: `loss_pct` percent lost each way, each loss
    the start of `fade_ms` milliseconds in which that direction loses everything (0: losses
    independent of each other), at most `rate_bps` bits per second each way (None: as fast
    as the host goes), SYNs' MSS clamped to `mss` bytes (None: not clamped)."""

    loss_pct: float = 0.0
    fade_ms: int = 0
    rate_bps: Optional[int] = None
    mss: Optional[int] = DEFAULT_MSS

    def __post_init__(self) -> None:
        if not 0 <= self.loss_pct < 100:
            raise ValueError(f"loss must be 0 to 100 percent (not 100), got {self.loss_pct:g}")
        if not 0 <= self.fade_ms <= MAX_FADE_MS:
            raise ValueError(f"a fade must be 0 to {MAX_FADE_MS} ms, got {self.fade_ms}")
        if self.mss is not None and not 88 <= self.mss <= MTU - 40:
            raise ValueError(f"MSS must be 88 to {MTU - 40} bytes, got {self.mss}")

    def to_dict(self) -> dict:
        return {"loss_pct": self.loss_pct, "fade_ms": self.fade_ms, "rate_bps": self.rate_bps,
                "mss": self.mss}


# the namespaces of the lab, by role: the servers' are the `testbed serve` roles
SERVER_ROLES = ("dns", "long", "short", "mapabc", "qlogo", "qpic")
PHONE, GATEWAY, STORE = "phone", "gateway", "store"


def mac_of(address: str) -> str:
    """The MAC address of the link end with IPv4 `address`: locally administered, 02:00 and
    then the address's four bytes (198.18.137.87 is 02:00:c6:12:89:57)."""
    return "02:00:" + ":".join(f"{int(b):02x}" for b in address.split("."))


def _octets(role: str) -> tuple[int, ...]:
    from mocks.lab_manifest import HOST_OF_ROLE
    return (DNS_OCTET,) if role == "dns" else HOST_OCTETS[HOST_OF_ROLE[role]]


class LabNetwork:
    """`build()` makes the namespaces, links, NAT and impairments; `namespaces.remove_all()`
    undoes all of it (deleting a namespace removes its links, rules and queues)."""

    def __init__(self, namespaces: Namespaces, plan: NetworkPlan, impairment: Impairment,
                 nat_timeout_wall_s: Optional[int]) -> None:
        self.ns = namespaces
        self.plan = plan
        self.impairment = impairment
        self.nat_timeout_wall_s = nat_timeout_wall_s

    def build(self) -> None:
        for role in (PHONE, GATEWAY, STORE, *SERVER_ROLES):
            # IPv4 only, as the report's network was: no router solicitations or multicast
            # listener reports in the capture (links made after this get it by default)
            self._sysctl(self.ns.add(role), "net.ipv6.conf.all.disable_ipv6=1",
                         "net.ipv6.conf.default.disable_ipv6=1")
        self._phone_link()
        self._server_network()
        self._gateway()
        self._phone()

    # ---------------------------------------------------------------------------- links
    def _veth(self, a_ns: str, a_if: str, a_ip: Optional[str], b_ns: str, b_if: str,
              b_ip: Optional[str]) -> None:
        """A link between two namespaces; an end given an address gets the MAC address made
        of it (`mac_of`), so captures and neighbour tables read the same on every run."""
        def end(name: str, ns: str, ip: Optional[str]) -> list[str]:
            return [name, "netns", ns, "mtu", str(MTU),
                    *(["address", mac_of(ip)] if ip else [])]
        run(["ip", "link", "add", *end(a_if, a_ns, a_ip), "type", "veth", "peer", "name",
             *end(b_if, b_ns, b_ip)])
        for ns, dev in ((a_ns, a_if), (b_ns, b_if)):
            run(exec_in(ns, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off",
                        "gro", "off"))

    def _batch(self, ns: str, *commands: str) -> None:
        run(["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n")

    def _phone_link(self) -> None:
        phone, gw, p = self.ns[PHONE], self.ns[GATEWAY], self.plan
        self._veth(phone, PHONE_IF, p.phone, gw, HOTSPOT_IF, p.hotspot)
        # The phone knows its hotspot (it joined before the capture began); the hotspot does
        # not know the phone, so the first packet it forwards to it makes it ask: the
        # report's ARP request from the hotspot and the phone's reply (statement 2)
        self._batch(phone, f"addr add {p.phone}/{NET_PREFIX_LEN} dev {PHONE_IF}",
                    f"link set {PHONE_IF} up", f"route add default via {p.hotspot}",
                    f"neigh replace {p.hotspot} lladdr {mac_of(p.hotspot)} dev {PHONE_IF} "
                    f"nud permanent")
        self._batch(gw, f"addr add {p.hotspot}/{NET_PREFIX_LEN} dev {HOTSPOT_IF}",
                    f"link set {HOTSPOT_IF} up")

    def _server_network(self) -> None:
        gw, p = self.ns[GATEWAY], self.plan
        self._batch(gw, f"link add {WAN_IF} mtu {MTU} address {mac_of(p.gateway)} type bridge",
                    f"addr add {p.gateway}/{NET_PREFIX_LEN} dev {WAN_IF}",
                    f"link set {WAN_IF} up")
        for role in SERVER_ROLES:
            ns, port = self.ns[role], f"srv-{role}"
            addresses = [f"{p.server_net}.{o}" for o in _octets(role)]
            self._veth(ns, HOST_IF, addresses[0], gw, port, None)
            self._batch(ns, *(f"addr add {a}/{NET_PREFIX_LEN} dev {HOST_IF}" for a in addresses),
                        f"link set {HOST_IF} up", f"route add default via {p.gateway}")
            self._batch(gw, f"link set {port} master {WAN_IF}", f"link set {port} up")

    # ---------------------------------------------------------------------------- rules
    def _sysctl(self, ns: str, *settings: str) -> None:
        run(exec_in(ns, "sysctl", "-q", "-w", *settings))

    def _loss(self, iface: str) -> tuple[str, str]:
        """The set and the rules that lose packets arriving on `iface` (empty: no loss)."""
        n = round(self.impairment.loss_pct * _LOSS_SCALE / 100)
        if not n:
            return "", ""
        lose = f'iifname "{iface}" numgen random mod {_LOSS_SCALE} < {n}'
        fade = self.impairment.fade_ms
        if not fade:
            return "", f"{lose} counter drop"
        return ("set fade { type ifname; flags dynamic,timeout; }",
                f'iifname "{iface}" iifname @fade counter drop\n'
                f"        {lose} add @fade {{ iifname timeout {fade}ms }} counter drop")

    def _shape(self, ns: str, dev: str) -> None:
        rate = self.impairment.rate_bps
        if rate is None:
            return
        burst = max(4 * (MTU + 14), rate // 8 // 100)    # 10 ms of the rate, >= 4 frames
        run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate}bit",
             "burst", str(burst), "latency", _TBF_LATENCY])

    def _gateway(self) -> None:
        gw, mss = self.ns[GATEWAY], self.impairment.mss
        self._sysctl(gw, "net.ipv4.ip_forward=1")
        clamp = (f"tcp flags & (syn | rst) == syn tcp option maxseg size > {mss} "
                 f"tcp option maxseg size set {mss}") if mss else ""
        fade_set, loss = self._loss(HOTSPOT_IF)
        ruleset = f"""
table inet {TABLE} {{
    {fade_set}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct state invalid counter drop
        {loss}
        {clamp}
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        ct state invalid counter drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{WAN_IF}" masquerade
    }}
}}
"""
        run(exec_in(gw, "nft", "-f", "-"), input=ruleset)
        # conntrack's settings exist in a namespace once its rules use conntrack
        settings = ["net.netfilter.nf_conntrack_tcp_loose=0",
                    "net.netfilter.nf_conntrack_tcp_be_liberal=1"]
        if self.nat_timeout_wall_s is not None:
            settings.append(f"net.netfilter.nf_conntrack_tcp_timeout_established="
                            f"{self.nat_timeout_wall_s}")
        self._sysctl(gw, *settings)
        self._shape(gw, HOTSPOT_IF)

    def _phone(self) -> None:
        phone = self.ns[PHONE]
        # many phones share the one address: every ephemeral port for them
        self._sysctl(phone, "net.ipv4.ip_local_port_range=1024 65535")
        fade_set, loss = self._loss(PHONE_IF)
        if loss:
            run(exec_in(phone, "nft", "-f", "-"), input=f"""
table inet {TABLE} {{
    {fade_set}
    chain input {{
        type filter hook input priority filter; policy accept;
        {loss}
    }}
}}
""")
        self._shape(phone, PHONE_IF)
