"""One lab per fuzz module, in a thread of its own (the suites are sync: hypothesis drives
them), with deadlines short enough that an example which leaves a request unfinished costs
a fraction of a second; server faults fail the module."""

from __future__ import annotations

import pytest

from testbed.pytest_plugin import LabHandle

from ..e2e.helpers import limits_profile

FUZZ_LIMITS = dict(request_head_wall_s=0.5, body_grace_wall_s=0.5, drain_wall_s=0.3,
                   tls_handshake_wall_s=1.0, tls_close_wall_s=0.3)


@pytest.fixture(scope="module")
def fuzz_lab(tmp_path_factory):
    """A running lab (`LabHandle`, not recording) with 4 users, all friends."""
    tmp = tmp_path_factory.mktemp("fuzz-lab")
    handle = LabHandle(tmp, record=False, users=4,
                       profile=limits_profile(tmp, **FUZZ_LIMITS)).start()
    try:
        yield handle
        errors = handle.new_errors()
        assert not errors, f"server faults while fuzzing: {errors[:3]!r}"
    finally:
        handle.stop()
