"""`testbed report`: a capture as one self-contained HTML page (ladder diagram, flows,
storyboard verdicts, heartbeat timeline, DNS)."""

from .command import report_main
from .html import render_report, write_report
from .ladder import Ladder, Row, build_ladder
from .timeline import Timeline, build_timeline

__all__ = ["render_report", "write_report", "report_main", "build_ladder", "build_timeline",
           "Ladder", "Row", "Timeline"]
