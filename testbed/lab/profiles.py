"""Profiles (PROTOCOL.md section 9) are data: JSON files in `profiles/`, read into `Profile`.

Besides the protocol's ports and timers, a profile holds the limits the lab puts on hostile
or broken clients (its `limits` object, read into `Limits`; docs/robustness.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

DEFAULT_PROFILE = "lab-report-2013"
_REQUIRED = ("name", "ports", "unprivileged_ports", "heartbeat", "heartbeat_s", "server_idle_s")


# limits that cannot be 0 (a deadline of nothing, a queue of nothing); the others may be 0,
# and those typed Optional may be None, to turn them off
_POSITIVE_LIMITS = frozenset({"frame_timeout_s", "request_head_wall_s", "tls_handshake_wall_s",
                              "tls_close_wall_s", "listen_backlog",
                              "max_connections_per_address"})


@dataclass(frozen=True)
class Limits:
    """Deadlines, caps and quotas that keep hostile or broken clients from holding the
    lab's sockets, memory and accounts (docs/robustness.md).

    Durations are protocol seconds (PROTOCOL.md section 6) except those ending in
    `_wall_s`: they guard the server's resources, not protocol behaviour, so a time scale
    does not shorten them (at k = 2000 a 10 s request deadline would be 5 ms). A field the
    profile leaves out takes the default here; None (JSON null) or 0 where noted turns a
    limit off.
    """

    # -- deadlines for clients that never finish
    frame_timeout_s: Optional[float] = 60.0      # long link: a frame begun, complete by then
    request_head_wall_s: float = 10.0            # short link: the request head, from accept
    body_min_rate: int = 1024                    # short link: body bytes/s on average...
    body_grace_wall_s: float = 10.0              # ...counted from this long after the head
    drain_max_bytes: int = 1 << 20               # a refused body: read and discard at most
    drain_wall_s: float = 2.0                    # this much for this long, then close
    tls_handshake_wall_s: float = 10.0           # TLS port: the handshake, from accept
    tls_close_wall_s: float = 2.0                # TLS port: wait for the peer's close_notify
    # -- caps
    listen_backlog: int = 4096                   # every listening socket's accept queue
    max_connections_per_address: Optional[int] = 5000   # per door, concurrent (None: any)
    # -- memory: media bytes held (an unfinished upload counts its total_len)
    media_quota_user_bytes: Optional[int] = 64 << 20
    media_quota_lab_bytes: Optional[int] = 512 << 20
    # -- login abuse: wrong passwords in a row before logins are refused for
    # login_lockout_s (0: never refused, for labs that study brute force)
    login_max_failures: int = 5                  # per account
    login_max_failures_per_address: int = 20     # per client address, whatever the account
    login_lockout_s: float = 300.0

    def __post_init__(self) -> None:
        # a profile is a user's file: a wrong value is a one-line error when it is read,
        # not a traceback from a server starting with it
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.type.startswith("Optional"):
                continue
            whole = "int" in f.type
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
                raise ValueError(f"limit {f.name} must be {'a whole' if whole else 'a'} number"
                                 f"{' or null' if f.type.startswith('Optional') else ''}, "
                                 f"got {value!r}")
            positive = f.name in _POSITIVE_LIMITS
            if not math.isfinite(value):
                raise ValueError(f"limit {f.name} must be a finite number, got {value!r}")
            if value < 0 or (positive and value == 0):
                raise ValueError(f"limit {f.name} must be "
                                 f"{'above 0' if positive else 'at least 0'}, got {value!r}")

    def behind_relay(self) -> "Limits":
        """These limits for a server every client reaches through a relay (the carrier NAT,
        the faults' pass-through): all its clients share the relay's address, so what is
        counted per address is off there (the relay keeps the connection cap)."""
        return dataclasses.replace(self, max_connections_per_address=None,
                                   login_max_failures_per_address=0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Limits":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown limits {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
        return cls(**data)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    ports: dict[str, int]
    unprivileged_ports: dict[str, int]
    heartbeat: str
    heartbeat_s: float
    server_idle_s: float
    noop_timeout_s: float = 20.0
    max_packet_len: int = 1 << 20
    nearby_radius_m: float = 5000.0
    bodies: str = "clear"
    limits: Limits = field(default_factory=Limits)
    extra: dict[str, Any] = field(default_factory=dict)

    def port_plan(self, privileged: bool) -> dict[str, int]:
        """Ports to bind: the real ones when we may bind below 1024, else the moved ones."""
        return dict(self.ports if privileged else self.unprivileged_ports)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Profile":
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ValueError(f"profile {data.get('name', '?')!r} lacks {', '.join(missing)}")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        fields = {k: v for k, v in data.items() if k in known}
        if "limits" in fields:
            fields["limits"] = Limits.from_dict(fields["limits"])
        return cls(**fields, extra={k: v for k, v in data.items() if k not in known})


def _profile_dir():
    return resources.files("testbed.lab") / "profiles"


def profile_names() -> list[str]:
    return sorted(p.name[:-5] for p in _profile_dir().iterdir() if p.name.endswith(".json"))


def load_profile(name_or_path: str = DEFAULT_PROFILE) -> Profile:
    """A built-in profile by name, or a JSON file by path."""
    path = Path(name_or_path)
    if name_or_path.endswith(".json") and path.exists():
        text = path.read_text()
    else:
        res = _profile_dir() / f"{name_or_path}.json"
        if not res.is_file():
            raise ValueError(f"unknown profile {name_or_path!r}; built-in: "
                             f"{', '.join(profile_names())}")
        text = res.read_text()
    return Profile.from_dict(json.loads(text))
