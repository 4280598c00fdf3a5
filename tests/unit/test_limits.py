"""A profile's `limits` (docs/robustness.md): what a field left out takes, and the one-line
error a wrong value gets from the commands that read a profile."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from testbed.lab.profiles import Limits, load_profile, profile_names

from ..e2e.helpers import limits_profile


def test_a_profile_without_limits_gets_those_of_the_built_in_profiles(tmp_path):
    """docs/robustness.md gives one default per limit, "the values of the built-in
    profiles": a profile that leaves `limits` (or some of them) out gets the same."""
    for name in profile_names():
        assert load_profile(name).limits == Limits(), name
    doc = json.loads(open(limits_profile(tmp_path)).read())
    del doc["limits"]
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(doc))
    assert load_profile(str(bare)).limits == Limits()
    one = load_profile(limits_profile(tmp_path, login_max_failures=0)).limits
    assert one.login_max_failures == 0 and one.media_quota_user_bytes == 64 << 20


def test_null_and_zero_turn_limits_off(tmp_path):
    off = load_profile(limits_profile(
        tmp_path, frame_timeout_s=None, max_connections_per_address=None,
        media_quota_user_bytes=None, media_quota_lab_bytes=None, body_min_rate=0,
        login_max_failures=0, login_max_failures_per_address=0)).limits
    assert off.frame_timeout_s is None and off.max_connections_per_address is None
    assert off.login_max_failures == off.body_min_rate == 0


@pytest.mark.parametrize("limits, says", [
    ({"frame_timeout": 3}, "unknown limits frame_timeout; known: body_grace_wall_s, "),
    ({"frame_timeout_s": "60"}, "limit frame_timeout_s must be a number or null, got '60'"),
    ({"listen_backlog": 0}, "limit listen_backlog must be above 0, got 0"),
    ({"max_connections_per_address": 2.5},
     "limit max_connections_per_address must be a whole number or null, got 2.5"),
    ({"body_min_rate": -1}, "limit body_min_rate must be at least 0, got -1"),
    ({"login_max_failures": True}, "limit login_max_failures must be a whole number, got True"),
    ({"tls_close_wall_s": 0}, "limit tls_close_wall_s must be above 0, got 0"),
])
def test_a_wrong_limit_is_a_one_line_error(tmp_path, limits, says):
    path = tmp_path / "wrong.json"
    doc = json.loads(open(limits_profile(tmp_path)).read())
    doc["limits"].update(limits)
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as err:
        load_profile(str(path))
    assert str(err.value).startswith(says)
    manifest = tmp_path / "m.json"
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "lab", "up", "--profile",
                        str(path), "--users", "1", "--manifest", str(manifest)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == "", p.stderr
    [line] = p.stderr.strip().splitlines()
    assert line.startswith(f"error: {says}")
    assert not manifest.exists()
