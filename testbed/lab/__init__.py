"""Lab configuration as data: profiles, the addressing plan, the manifest and the clock."""

from .clock import Clock
from .manifest import Manifest, load_manifest
from .profiles import Profile, load_profile, profile_names

__all__ = ["Clock", "Manifest", "load_manifest", "Profile", "load_profile", "profile_names"]
