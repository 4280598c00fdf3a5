"""Lab configuration as data: profiles, the addressing plan, the manifest and the clock."""

from .clock import Clock
from .manifest import Manifest, load_manifest
from .profiles import Profile, load_profile, profile_names

# how a one-process lab's relay (the carrier NAT, or the faults' pass-through) reaches the
# servers behind it: a loopback socket (the default), or an in-memory transport pair
# (`mocks.memory_transport`: cheaper per NOOP, but the 1,000-phone study stalled more with it;
# docs/performance.md, "The NAT's upstream leg in memory")
NAT_UPSTREAMS = ("socket", "memory")

__all__ = ["NAT_UPSTREAMS", "Clock", "Manifest", "load_manifest", "Profile", "load_profile", "profile_names"]
