"""docs/protocol.md carries the whole wire contract, and the command table exactly as the code
has it; docs/robustness.md names only tests that exist; docs/pytest.md the plugin's API as the
code has it."""

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


def _contract_sections(text: str) -> str:
    """Sections 1 to 9 of a contract text: the part that is the contract itself."""
    start = text.index("## 1. ")
    end = text.index("## 10. ") if "## 10. " in text else len(text)
    return text[start:end].strip()


def test_protocol_doc_carries_the_whole_contract():
    """Sections 1-9 are all there, with the tables and message block the code is tested on;
    where the project's steering files sit beside the checkout (../shared), the repo's copy
    has not drifted from them either."""
    text = DOC.read_text(encoding="utf-8")
    for n, title in enumerate(["Hosts and ports", "Long link framing", "Short link",
                               "Bodies", "Semantics", "Time", "Accounts", "The lab manifest",
                               "Profiles"], start=1):
        assert f"\n## {n}. {title}" in text, title
    assert "| 205 | 1000000205 | IDENTIFY |" in text and "ManualAuthRequest   1 base" in text
    steering = DOC.parents[2] / "shared" / "PROTOCOL.md"
    if steering.is_file():
        ours = _contract_sections(text).replace("[storyboard.md](storyboard.md)",
                                                "`seed/lab-report.txt` and `STORYBOARD.md`")
        assert ours == _contract_sections(steering.read_text(encoding="utf-8"))


def test_every_test_robustness_md_names_exists():
    """docs/robustness.md says which test proves each limit and which suite fuzzes what:
    every test and test file it names is there (a rename must update the page)."""
    import re
    root = DOC.parents[1]
    text = (root / "docs" / "robustness.md").read_text(encoding="utf-8")
    sources = {p.name: p.read_text(encoding="utf-8") for p in (root / "tests").rglob("test_*.py")}
    named = re.findall(r"`((?:[\w/]+/)?(test_\w+\.py)?(?:::)?(test_\w+)?)`", text)
    assert len(named) > 20
    for whole, file, test in named:
        if file:
            assert (root / whole.split("::")[0]).exists() or file in sources, whole
        if test:
            where = [sources[file]] if file else sources.values()
            assert any(re.search(rf"^(async )?def {test}\(", s, re.M) for s in where), whole


def test_pytest_doc_gives_every_capture_view_method_whole():
    """docs/pytest.md lists each public `CaptureView` method with its full signature (its
    parameters and defaults as the code has them), and the phone's waits."""
    import inspect

    from testbed.client.phone import Phone
    from testbed.verify.expect import CaptureView

    text = (Path(__file__).resolve().parents[2] / "docs" / "pytest.md").read_text("utf-8")

    def shown(fn) -> str:
        sig = inspect.signature(fn)
        params = [p.replace(annotation=inspect.Parameter.empty)
                  for p in list(sig.parameters.values())[1:]]
        return fn.__name__ + str(sig.replace(parameters=params,
                                             return_annotation=inspect.Signature.empty))

    methods = [f for n, f in inspect.getmembers(CaptureView, inspect.isfunction)
               if not n.startswith("_")]
    assert len(methods) >= 12
    for fn in [*methods, Phone.wait_for_message, Phone.wait_for_push]:
        assert f"`{shown(fn)}`" in text or f"`await phone.{shown(fn)}`" in text, shown(fn)
