"""What the local run of docker-compose.yml cannot see, read from the file instead.

The local run (local_compose.py) puts every service on one `lo`, as root: a service that
listens on an address that is not its container's, uses an address on a network it has not
joined, binds a low port as the unprivileged user without the sysctl that allows it, or a
phone service that cannot be scaled, would all pass there and fail under Docker.
`problems(doc)` lists each such mistake of a compose document (as `local_compose.load`
returns it), one line each.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re

ADDRESS = re.compile(r"\b(198\.1[89]\.\d{1,3}\.\d{1,3})(/\d{1,2})?")
LISTEN_FLAGS = ("--listen", "--tls-listen", "--bind")
# the manifest names what the phones connect to: its addresses must be the phones' to reach
CONSUMER = {"manifest": "phone"}
LOW_PORTS = "net.ipv4.ip_unprivileged_port_start"


def _networks(svc: dict) -> list[str]:
    nets = svc.get("networks", {})
    return list(nets) if isinstance(nets, (list, dict)) else []


def _own(svc: dict) -> set[str]:
    nets = svc.get("networks", {})
    if not isinstance(nets, dict):
        return set()
    return {v["ipv4_address"] for v in nets.values() if v and "ipv4_address" in v}


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, list):
        return [s for x in obj for s in _strings(x)]
    if isinstance(obj, dict):
        return [s for x in obj.values() for s in _strings(x)]
    return [str(obj)] if obj is not None else []


def _flag_values(argv: list[str], flags) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in flags]


@functools.lru_cache(maxsize=None)
def _reads_store(argv: tuple[str, ...], environment: tuple[tuple[str, str], ...]) -> bool:
    """Whether the command reads the environment's address (`$TESTBED_STORE`, the default of
    its --store): every testbed service inherits the variable, not every one has the option
    (the real parser, given the service's environment, says which); another program's,
    assume it does."""
    if argv[:1] != ("testbed",):
        return True
    from unittest import mock

    from testbed.cli.parser import build_parser
    with mock.patch.dict(os.environ, dict(environment)):
        return hasattr(build_parser().parse_args(argv[1:]), "store")


def problems(doc: dict) -> list[str]:
    subnets = {name: ipaddress.ip_network(net["ipam"]["config"][0]["subnet"])
               for name, net in doc.get("networks", {}).items()}
    services = doc["services"]
    nat_held = set()                                   # public addresses a NAT adds
    for svc in services.values():
        argv = [str(a) for a in svc.get("command", [])]
        if "--add-addresses" in argv:
            nat_held |= {m.split("=")[0].rsplit(":", 1)[0] for m in _flag_values(argv, "--map")}
    owned = set().union(*(_own(s) for s in services.values())) | nat_held

    def reach(name: str) -> list[ipaddress.IPv4Network]:
        svc = services[name]
        mode = svc.get("network_mode")
        if mode == "host":      # the Docker host routes to every bridge (it is each's .1)
            return list(subnets.values())
        if mode == "none":
            return []
        return [subnets[n] for n in _networks(svc)]

    out = []
    for name, svc in services.items():
        argv = [str(a) for a in svc.get("command", [])]
        listens = _flag_values(argv, LISTEN_FLAGS)
        for where in listens:
            address = where.rsplit(":", 1)[0]
            if address not in _own(svc):
                out.append(f"{name}: listens on {address}, not an address of its own")
        root = str(svc.get("user", "")) in ("root", "0") or svc.get("image", "").startswith(
            "redis")
        for where in listens:
            port = int(where.rsplit(":", 1)[1]) if ":" in where else 1024
            allowed = int(svc.get("sysctls", {}).get(LOW_PORTS, 1024))
            if port < 1024 and not root and port < allowed:
                out.append(f"{name}: binds port {port} as an unprivileged user without "
                           f"{LOW_PORTS}")
        env = svc.get("environment") or {}
        env = env if _reads_store(tuple(argv), tuple(sorted((k, str(v)) for k, v in
                                                            env.items()))) else None
        uses = [(CONSUMER.get(name, name), _strings(svc.get("command"))),
                (name, _strings([env, svc.get("healthcheck", {}).get("test"), svc.get("dns")]))]
        for user, texts in uses:
            for text in texts:
                for address, prefix in ADDRESS.findall(text):
                    ip = ipaddress.ip_address(address)
                    if prefix:          # a filter's network: one of the file's networks
                        if ipaddress.ip_network(address + prefix) not in subnets.values():
                            out.append(f"{name}: {address}{prefix} is none of the networks")
                        continue
                    if address not in owned:
                        out.append(f"{name}: {address} is no service's address")
                    elif not any(ip in net for net in reach(user)):
                        out.append(f"{user}: {address} is on no network it joins")
    scaled = services.get("phone", {})
    for key in ("container_name", "hostname"):
        if key in scaled:   # one name for N containers: no scaling, or owners that collide
            out.append(f"phone: {key} set, so --scale phone=N cannot give N phones")
    if _own(scaled):
        out.append("phone: a fixed address, so --scale phone=N cannot give N phones")
    return sorted(set(out))
