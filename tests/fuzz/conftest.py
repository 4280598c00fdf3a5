"""One lab per fuzz module, in a thread of its own (the suites are sync: hypothesis drives
them); server faults fail the module.

A module whose examples may leave a request unfinished (a request cut short over TLS, which
cannot half-close) sets `LAB_LIMITS` to short deadlines, so that such an example costs a
fraction of a second. The others keep the profile's: a deadline a busy machine can cross
(a TLS handshake slower than a second under load) would end a complete request early.
"""

from __future__ import annotations

import pytest

from testbed.pytest_plugin import LabHandle

from ..e2e.helpers import limits_profile


@pytest.fixture(scope="module")
def fuzz_lab(request, tmp_path_factory):
    """A running lab (`LabHandle`, not recording) with 4 users, all friends, and the
    module's `LAB_LIMITS`."""
    tmp = tmp_path_factory.mktemp("fuzz-lab")
    limits = getattr(request.module, "LAB_LIMITS", {})
    handle = LabHandle(tmp, record=False, users=4,
                       profile=limits_profile(tmp, **limits)).start()
    try:
        yield handle
        errors = handle.new_errors()
        assert not errors, f"server faults while fuzzing: {errors[:3]!r}"
    finally:
        handle.stop()
