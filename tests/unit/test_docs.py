"""docs/protocol.md carries the command table exactly as the code has it."""

from pathlib import Path

from testbed.wire import table_doc

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_protocol_doc_table_is_current():
    text = DOC.read_text(encoding="utf-8")
    start = text.index(table_doc.BEGIN)
    end = text.index(table_doc.END) + len(table_doc.END)
    assert text[start:end] == table_doc.block(), \
        "docs/protocol.md is stale: run python -m testbed.wire.table_doc and paste the block"


def test_every_command_appears_in_the_doc():
    text = DOC.read_text(encoding="utf-8")
    from testbed.wire import COMMANDS
    for c in COMMANDS:
        assert f"| {c.name} |" in text
