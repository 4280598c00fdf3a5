"""The addressing plan: which address each lab host gets.

Every host has its own address in one /24 of 127.0.0.0/8 (Linux answers on all of it), so
each server can keep its profile's port and a capture shows hosts apart by address, as the
lab report's did. Where only 127.0.0.1 exists (macOS), the lab falls back to that one address
and gives every server its own port.

A lab with real links (network namespaces, containers) uses `NetworkPlan`: the phone's link
and the servers' network in the benchmarking range 198.18.0.0/15, the hosts at the same
octets as on loopback.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Optional

LONG = "long.weixin.qq.com"
SHORT = "short.weixin.qq.com"
MAPABC = "mapi.mapabc.com"
QLOGO = "wx.qlogo.cn"
QPIC = "mmsns.qpic.cn"
HOST_NAMES = (LONG, SHORT, MAPABC, QLOGO, QPIC)

# last octet of each host's addresses; long and short get two A records each (PROTOCOL 1)
HOST_OCTETS: dict[str, tuple[int, ...]] = {
    LONG: (11, 12), SHORT: (21, 22), MAPABC: (31,), QLOGO: (41,), QPIC: (51,),
}
DNS_OCTET = 53
PHONE_OCTET = 87  # the emulator's source address, as the report's phone was .87
# Many clients (phones, or processes of phones) bind 127.99.x.y: 62,500 addresses outside
# every lab block (random ones are 127.100-254.x), each with its own ~28,000 ephemeral ports
CLIENT_NET = "127.99"
MAX_CLIENTS = 250 * 250


@dataclass(frozen=True)
class AddressPlan:
    """Addresses of the lab's hosts in `prefix.0/24` (prefix like "127.0.0")."""

    prefix: str = "127.0.0"

    def __post_init__(self) -> None:
        net = ipaddress.ip_network(f"{self.prefix}.0/24", strict=True)
        if not net.subnet_of(ipaddress.ip_network("127.0.0.0/8")) and \
                not net.subnet_of(ipaddress.ip_network("198.18.0.0/15")):
            raise ValueError(f"lab addresses must be in 127.0.0.0/8 or 198.18.0.0/15, "
                             f"not {net}")

    def addresses(self, host: str) -> list[str]:
        return [f"{self.prefix}.{o}" for o in HOST_OCTETS[host]]

    @property
    def dns(self) -> str:
        return f"{self.prefix}.{DNS_OCTET}"

    @property
    def phone(self) -> str:
        return f"{self.prefix}.{PHONE_OCTET}"

    @classmethod
    def random_loopback(cls, rng: random.Random | None = None) -> "AddressPlan":
        """A /24 in 127.0.0.0/8 away from 127.0.0.x, for tests that run many labs at once."""
        r = rng or random.SystemRandom()
        return cls(f"127.{r.randint(100, 254)}.{r.randint(1, 254)}")


def lab_host_address(dns_address: str, octet: int) -> Optional[str]:
    """Address `octet` in the /24 of a loopback lab whose resolver is `dns_address`, for a
    client's source address (the phone is `PHONE_OCTET`); None for a one-address lab
    (127.0.0.1) or a namespace lab, where the kernel should choose."""
    base = ipaddress.ip_address(dns_address)
    if str(base) == "127.0.0.1" or not base.is_loopback:
        return None
    return str(ipaddress.ip_network(f"{base}/24", strict=False).network_address + octet)


def client_address(lab_address: str, index: int) -> Optional[str]:
    """The loopback source address of client `index` of the lab that answers at
    `lab_address` (its resolver, say): 127.99.{index // 250}.{1 + index % 250}, so that a
    NAT, a capture or a port count can tell clients apart. None where the lab is not on a
    block of loopback of its own (127.0.0.1, a namespace lab): the kernel chooses there."""
    if not 0 <= index < MAX_CLIENTS:
        raise ValueError(f"client index must be 0 to {MAX_CLIENTS - 1}, got {index}")
    base = ipaddress.ip_address(lab_address)
    if str(base) == "127.0.0.1" or not base.is_loopback:
        return None
    return f"{CLIENT_NET}.{index // 250}.{1 + index % 250}"


def is_lab_address(addr: str) -> bool:
    """Only loopback and the benchmarking range (namespace labs) may ever be targeted."""
    ip = ipaddress.ip_address(addr)
    return ip.is_loopback or ip in ipaddress.ip_network("198.18.0.0/15")


# ---------------------------------------------------------------------- labs with real links
# The namespace lab (`lab up --netns`) and the container lab use the same two networks, in
# 198.18.0.0/15 (RFC 2544's benchmarking range, routed nowhere): the phone's link, as the
# report's hotspot Wi-Fi 192.168.137.0/24 was (hotspot .1, phone .87), and the servers'
# network, where the gateway is .1 and each host has its octet of HOST_OCTETS.
PHONE_NET = "198.18.137"
SERVER_NET = "198.19.0"
GATEWAY_OCTET = 1   # the hotspot on the phone's link, the gateway on the servers' network
STORE_OCTET = 6     # the store (Redis), where it is a host on the servers' network
NET_PREFIX_LEN = 24
# The container lab (docker-compose.yml) uses the same two networks: the hosts on the
# servers' network at their octets and the store at STORE_OCTET; the phones on the phone's
# network, numbered by Docker from PHONES_RANGE. `.1` of each is the Docker bridge's, so the
# NAT container is NAT_OCTET on both; a container cannot route through another, so instead
# of routing the phones it holds every host's public address (the host's octets on the
# phone's network, what the lab DNS answers) and relays it to the host.
NAT_OCTET = 2
PHONES_RANGE = f"{PHONE_NET}.128/25"


@dataclass(frozen=True)
class NetworkPlan:
    """The two networks of a lab with real links: the phone's link (`phone_net`.0/24) and
    the servers' network (`server_net`.0/24), joined by the gateway (the carrier NAT)."""

    phone_net: str = PHONE_NET
    server_net: str = SERVER_NET

    def __post_init__(self) -> None:
        for net in (self.phone_net, self.server_net):
            block = ipaddress.ip_network(f"{net}.0/{NET_PREFIX_LEN}", strict=True)
            if not block.subnet_of(ipaddress.ip_network("198.18.0.0/15")):
                raise ValueError(f"a lab's links must be in 198.18.0.0/15, not {block}")
        if self.phone_net == self.server_net:
            raise ValueError("the phone's link and the servers' network must differ")

    @property
    def phone(self) -> str:
        return f"{self.phone_net}.{PHONE_OCTET}"

    @property
    def hotspot(self) -> str:
        """The gateway's address on the phone's link (the phone's default route)."""
        return f"{self.phone_net}.{GATEWAY_OCTET}"

    @property
    def gateway(self) -> str:
        """The gateway's address on the servers' network: the address the NAT gives the
        phone's connections."""
        return f"{self.server_net}.{GATEWAY_OCTET}"

    @property
    def store(self) -> str:
        return f"{self.server_net}.{STORE_OCTET}"

    @property
    def servers(self) -> AddressPlan:
        """Where each host is on the servers' network."""
        return AddressPlan(self.server_net)

    def to_dict(self) -> dict:
        return {"phone_link": f"{self.phone_net}.0/{NET_PREFIX_LEN}",
                "server_network": f"{self.server_net}.0/{NET_PREFIX_LEN}",
                "phone": self.phone, "hotspot": self.hotspot, "gateway": self.gateway}
