"""`testbed profiles`: the built-in lab profiles."""

from __future__ import annotations


def profiles(args) -> int:
    from testbed.lab.profiles import load_profile, profile_names
    for name in profile_names():
        print(f"{name:20} {load_profile(name).description}")
    return 0
