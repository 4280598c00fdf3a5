"""`testbed report CAPTURE [--html OUT] [--secret TEXT ...]`, as a function the CLI calls."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence


def default_output(capture: str) -> Path:
    """`lab.pcapng` -> `lab.pcapng.html`, next to the capture."""
    return Path(f"{capture}.html")


def report_main(capture: str, html_out: Optional[str], secrets: Sequence[str] = (), *,
                time_scale: Optional[float] = None, all_legs: bool = False,
                phones: Optional[int] = None) -> int:
    """Analyse `capture` (searching for `secrets` in clear), verify the storyboard, write the
    HTML report to `html_out` (default `<capture>.html`) and print its path. `time_scale`:
    what to assume when the capture does not record its own (`--time-scale`); `all_legs`:
    keep a relay's second copy of each connection (`--all-legs`); `phones`: the phones
    the storyboard ran with when the capture does not say (`--phones`).

    Returns 0, or 2 with a message on stderr when the capture cannot be read or the report
    cannot be written. Failed storyboard statements do not change the exit status: the
    report shows them (`testbed verify` is the command that fails on them)."""
    from testbed.capture.analyze import analyze
    from testbed.capture.packets import CaptureError
    from testbed.verify import verify_storyboard

    from .html import write_report

    needles = [s.encode("utf-8") for s in secrets or () if s]
    try:
        analysis = analyze(str(capture), needles=needles, time_scale=time_scale,
                           all_legs=all_legs)
    except (CaptureError, OSError) as exc:
        text = str(exc)
        where = "" if str(capture) in text else f"{capture}: "
        print(f"testbed report: cannot read the capture: {where}{text}", file=sys.stderr)
        return 2
    verdicts = verify_storyboard(analysis, secrets=needles, phones=phones)
    out = Path(html_out) if html_out else default_output(str(capture))
    if out.is_dir():
        out = out / f"{Path(capture).name}.html"
    try:
        path = write_report(out, analysis, verdicts, secrets_checked=len(needles))
    except OSError as exc:
        print(f"testbed report: cannot write {out}: {exc}", file=sys.stderr)
        return 2
    if analysis.error:
        print(f"testbed report: warning: {capture}: {analysis.error} (report shows what "
              f"could be read)", file=sys.stderr)
    print(path)
    return 0
