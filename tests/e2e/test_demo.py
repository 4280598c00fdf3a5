"""`testbed demo` as a new user runs it: exit 0, a capture and every lab statement holding."""

from __future__ import annotations

from testbed.capture.analyze import analyze
from testbed.cli import main
from testbed.verify import verify_storyboard


def test_demo_passes_and_writes_its_files(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "demo passed" in text
    capture = out / "demo.pcapng"
    assert capture.stat().st_size > 10_000
    # an independent re-check of the written file
    a = analyze(str(capture), needles=[b"pass0001", b"pass0002"])
    assert a.meta["how"] == "tap" and a.meta["time_scale"] == 100.0
    assert "pass0001" not in str(a.meta)            # the manifest is recorded without passwords
    verdicts = {v.id: v for v in verify_storyboard(a, secrets=[b"pass0001", b"pass0002"])}
    assert all(v.ok for v in verdicts.values() if v.scope == "lab"), \
        [(v.id, v.detail) for v in verdicts.values() if not v.ok]
    assert verdicts["2"].ok is None and verdicts["8"].ok is None   # wire-only, n/a here
