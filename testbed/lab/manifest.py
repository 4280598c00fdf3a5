"""The lab manifest (PROTOCOL.md section 8): everything a client needs to talk to a lab."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .addressing import is_lab_address

CONTRACT_VERSION = 1


@dataclass
class HostEntry:
    addresses: list[str]
    port: int
    tls_port: int | None = None
    fallback_port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"addresses": list(self.addresses), "port": self.port}
        if self.tls_port is not None:
            d["tls_port"] = self.tls_port
        if self.fallback_port is not None:
            d["fallback_port"] = self.fallback_port
        return d


@dataclass
class Manifest:
    profile: str
    time_scale: float
    dns_address: str
    dns_port: int
    hosts: dict[str, HostEntry]
    ca_cert: str
    users: list[dict[str, str]]
    heartbeat_s: float
    server_idle_s: float
    contract: int = CONTRACT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "contract": self.contract, "profile": self.profile, "time_scale": self.time_scale,
            "dns": {"address": self.dns_address, "port": self.dns_port},
            "hosts": {name: h.to_dict() for name, h in self.hosts.items()},
            "ca_cert": self.ca_cert, "users": self.users,
            "heartbeat_s": self.heartbeat_s, "server_idle_s": self.server_idle_s,
        }
        d.update(self.extra)
        return d

    def redacted(self) -> dict[str, Any]:
        """The manifest without passwords, as a capture may record it."""
        d = self.to_dict()
        d["users"] = [{"username": u["username"]} for u in self.users]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        try:
            if d["contract"] != CONTRACT_VERSION:
                raise ValueError(f"manifest contract {d['contract']!r}, this testbed speaks "
                                 f"{CONTRACT_VERSION}")
            hosts = {name: HostEntry(list(h["addresses"]), int(h["port"]), h.get("tls_port"),
                                     h.get("fallback_port"))
                     for name, h in d["hosts"].items()}
            known = {"contract", "profile", "time_scale", "dns", "hosts", "ca_cert", "users",
                     "heartbeat_s", "server_idle_s"}
            m = cls(profile=d["profile"], time_scale=float(d["time_scale"]),
                    dns_address=d["dns"]["address"], dns_port=int(d["dns"]["port"]),
                    hosts=hosts, ca_cert=d["ca_cert"], users=list(d["users"]),
                    heartbeat_s=d["heartbeat_s"], server_idle_s=d["server_idle_s"],
                    extra={k: v for k, v in d.items() if k not in known})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a lab manifest: missing or bad {exc}") from exc
        for addr in [m.dns_address] + [a for h in hosts.values() for a in h.addresses]:
            if not is_lab_address(addr):
                raise ValueError(f"manifest names {addr}, outside loopback and 198.18.0.0/15: "
                                 f"refusing to send traffic there")
        return m

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically, so a reader polling for the file never sees half of it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
        return path


def load_manifest(path: str | os.PathLike) -> Manifest:
    """The manifest at `path`. Raises FileNotFoundError, or ValueError saying "not a lab
    manifest" for a file that is not one (not JSON, not a manifest's fields)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not a lab manifest (not JSON); `testbed lab up` writes one")
    except IsADirectoryError:
        raise ValueError("not a lab manifest (a directory)")
    if not isinstance(doc, dict):
        raise ValueError("not a lab manifest (JSON, but not an object)")
    return Manifest.from_dict(doc)
