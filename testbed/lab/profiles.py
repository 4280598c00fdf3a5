"""Profiles (PROTOCOL.md section 9) are data: JSON files in `profiles/`, read into `Profile`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_PROFILE = "lab-report-2013"
_REQUIRED = ("name", "ports", "unprivileged_ports", "heartbeat", "heartbeat_s", "server_idle_s")


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
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})


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
