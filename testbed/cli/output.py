"""What several commands print the same way."""

from __future__ import annotations

from pathlib import Path


def open_analysis(path: Path, console, needles=()):
    from testbed.capture.analyze import analyze
    from testbed.capture.packets import CaptureError

    try:
        return analyze(str(path), needles=needles)
    except (CaptureError, OSError) as exc:
        console.print(f"[red]error:[/red] {path}: {exc}")
        return None


def doc_start(a) -> float:
    return a.first_ts or 0.0


