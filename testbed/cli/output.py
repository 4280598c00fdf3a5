"""What every command prints the same way: tables on stdout at most 100 columns wide
(cells wrap or are elided; `--json` has the full values), diagnostics and errors on stderr,
one line per error."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from testbed.console import table_width

def out_console():
    """The console for results (tables): stdout."""
    from rich.console import Console
    return Console(width=table_width(sys.stdout))


def err_console():
    """The console for diagnostics, progress and errors: stderr."""
    from rich.console import Console
    return Console(stderr=True)


class LazyConsole:
    """`err_console()`, made when first used: a command with nothing to say on stderr (the
    analysis of a sound capture) does not import rich. Only for printing: rich's own
    classes (`Progress(console=...)`) want the console itself."""

    def __init__(self) -> None:
        self._console = None

    def __getattr__(self, name: str):
        if self._console is None:
            self._console = err_console()
        return getattr(self._console, name)


def print_json(doc: Any) -> None:
    """A `--json` document on stdout, written as it is encoded: a top-level key a line, and
    a list under it an item a line (the flows of a big capture), each piece by the C
    encoder. `json.dumps` with an indent is the pure-Python encoder (half a second of a
    300,000-packet analysis) and holds every piece of the text in a list first."""
    encode = json.JSONEncoder(ensure_ascii=False, default=str).encode
    write = sys.stdout.write
    if not isinstance(doc, dict) or not doc:
        write(encode(doc) + "\n")
        sys.stdout.flush()
        return
    batch: list[str] = []
    sep = "{"
    for key, value in doc.items():
        batch.append(f"{sep}{encode(str(key))}: ")
        sep = ",\n "
        if isinstance(value, (list, tuple)) and value:
            items = iter(value)
            batch.append("[" + encode(next(items)))
            for item in items:
                batch.append(",\n  " + encode(item))
                if len(batch) >= 4096:
                    write("".join(batch))
                    batch.clear()
            batch.append("]")
        else:
            batch.append(encode(value))
    batch.append("}\n")
    write("".join(batch))
    sys.stdout.flush()


def error(console, text: str, path: Optional[os.PathLike | str] = None) -> None:
    """`error: PATH: TEXT` on one line, the path only once even when TEXT names it."""
    from rich.markup import escape

    where = "" if path is None or str(path) in text else f"{path}: "
    console.print(f"[red]error:[/red] {escape(where + text)}", highlight=False,
                  soft_wrap=True)


def os_error_text(exc: OSError) -> str:
    """`PATH: what went wrong` for an OSError about a file, without errno or quotes."""
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror or str(exc)


def metrics_table(metrics: dict[str, float], title: str = "what the phones did"):
    """A scenario's metrics (`ScenarioResult.metrics`), one row each: `emulate`'s table and
    `lab results`' for the phones of a lab merged."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        t.add_row(k, f"{v:g}")
    return t


def note(console, text: str) -> None:
    """A diagnostic line (`note: ...`), printed as it is (no markup), never wrapped."""
    console.print(f"note: {text}", markup=False, highlight=False, soft_wrap=True)


def open_analysis(path: Path, console, needles=(), time_scale: Optional[float] = None,
                  all_legs: bool = False, keep_events: bool = True, jobs: int = 1):
    """The capture's analysis, or None after saying on `console` why it cannot be read.
    `time_scale`: what to assume when the capture does not record its own; `all_legs`:
    keep a relay's second copy of each connection (`testbed.capture.legs`); `keep_events`
    False when only the summary is printed (less memory, sooner); `jobs` processes share
    the TCP flows out."""
    from testbed.capture.analyze import ShardError, analyze
    from testbed.capture.packets import CaptureError

    try:
        a = analyze(str(path), needles=needles, time_scale=time_scale, all_legs=all_legs,
                    keep_events=keep_events, jobs=jobs)
    except (CaptureError, OSError, ShardError) as exc:
        error(console, str(exc), path)
        return None
    if time_scale is not None and a.time_scale_source == "capture" \
            and a.time_scale != time_scale:
        note(console, f"{path} records time scale {a.time_scale:g}; --time-scale "
                      f"{time_scale:g} ignored")
    if a.relay_legs and not a.legs_kept:
        note(console, f"{len(a.relay_legs)} connections were seen twice, once on each side "
                      f"of the lab's relay: their relay legs are left out (--all-legs keeps "
                      f"them)")
    return a


def doc_start(a) -> float:
    return a.first_ts or 0.0


def open_manifest(path: Path, console):
    """The lab manifest at `path`, or None after saying on `console` (one line) why not."""
    from testbed.lab.manifest import load_manifest

    try:
        return load_manifest(path)
    except FileNotFoundError:
        error(console, f"no manifest at {path}: start a lab with `testbed lab up` or pass "
                       f"--manifest")
    except (ValueError, OSError) as exc:
        error(console, str(exc), path)
    return None
