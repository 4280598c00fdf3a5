"""How wide the tables a command prints are: what any part that prints tables shares."""

from __future__ import annotations

import os
import shutil
import sys

TABLE_WIDTH = 100


def table_width(stream=None) -> int:
    """What tables are laid out for: the terminal's width up to TABLE_WIDTH, TABLE_WIDTH
    when writing to a pipe or a file (COLUMNS, when set, narrows it). `--json` has the
    values a table must elide."""
    stream = stream or sys.stdout
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return min(int(columns), TABLE_WIDTH)
    if stream.isatty():
        return min(shutil.get_terminal_size((TABLE_WIDTH, 24)).columns, TABLE_WIDTH)
    return TABLE_WIDTH
