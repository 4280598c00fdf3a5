"""The JSON of `testbed analyze` is a contract: its schema is valid draft 2020-12, names
every key the code writes, and accepts the document of every capture in the repo (real and
hand-made), with `--events` and `--radio` too; a document that breaks it is refused."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from testbed.capture import events as ev
from testbed.capture.schema import COUNT_NAMES, SCHEMA_VERSION, load_schema
from testbed.capture.tcp_analysis import FILTERS
from testbed.cli import main

from .builders import pcap_bytes, segments_pcap
from .json_contract import assert_valid, schema_errors
from .real import REAL_FILES
from .scenarios import SCENARIOS, adversarial, build

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "capture.md"
# every capture file in the repo's tree (tests/data/real today), and ../shared's extras
IN_REPO = sorted(p for p in (REPO / "tests").rglob("*") if p.suffix in (".pcap", ".pcapng"))
CAPTURES = IN_REPO + [p for p in REAL_FILES if p not in IN_REPO]


def analyze_json(capsys, path: Path, *options: str) -> dict:
    assert main(["analyze", str(path), "--json", *options]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_schema_is_valid_draft_2020_12():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema"]["const"] == SCHEMA_VERSION


def test_the_schema_names_what_the_code_writes():
    """Counts: one plural name per tshark filter; events: each kind's fields as declared."""
    schema = load_schema()
    assert set(COUNT_NAMES) == set(FILTERS)
    tcp = schema["$defs"]["tcp_counts"]
    assert set(tcp["properties"]) == set(tcp["required"]) == set(COUNT_NAMES.values())
    event = schema["$defs"]["event"]
    assert event["properties"]["kind"]["enum"] == [str(k) for k in ev.Kind]
    by_kind = {rule["if"]["properties"]["kind"]["const"]:
               set(rule["then"]["properties"]["fields"]["properties"])
               for rule in event["allOf"]}
    for kind, fields in ev.FIELDS.items():
        decoded = {"message"} if kind in (ev.HTTP_REQUEST, ev.HTTP_RESPONSE, ev.FRAME) else set()
        assert by_kind[str(kind)] == set(fields) - {"body"} | decoded, kind
    # every key but the optional sections is always there
    top = schema["properties"]
    assert set(schema["required"]) == set(top) - {"events", "radio"}


@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_every_capture_in_the_repo_validates(path, capsys):
    doc = analyze_json(capsys, path, "--events", "--radio", "umts-2010")
    assert_valid(doc)
    assert doc["schema"] == SCHEMA_VERSION and doc["events"] and "radio" in doc


@pytest.mark.parametrize("name", [*SCENARIOS, "adversarial"])
def test_hand_made_tcp_sequences_validate(name, tmp_path, capsys):
    segs, expected = (adversarial(seed=5, n=400), None) if name == "adversarial" \
        else build(name)
    path = tmp_path / f"{name}.pcap"
    path.write_bytes(segments_pcap(segs))
    doc = analyze_json(capsys, path, "--events")
    assert_valid(doc)
    if expected is not None:   # each filter's segments, under the count's plural name
        want = Counter(COUNT_NAMES[n] for names in expected.values() for n in names)
        assert {k: v for k, v in doc["tcp"].items() if v} == dict(want)


def test_zero_counts_are_there_and_an_empty_capture_validates(tmp_path, capsys):
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(pcap_bytes([]))
    doc = analyze_json(capsys, empty, "--events")
    assert_valid(doc)
    assert doc["tcp"] == {name: 0 for name in COUNT_NAMES.values()}
    assert (doc["packets"], doc["flows"], doc["events"], doc["made_by"]) == (0, [], [], None)


def test_a_truncated_capture_validates(tmp_path, capsys):
    real = next(p for p in CAPTURES if p.suffix == ".pcap")
    cut = tmp_path / "cut.pcap"
    data = real.read_bytes()
    cut.write_bytes(data[:len(data) // 2 + 7])
    doc = analyze_json(capsys, cut)
    assert_valid(doc)
    assert doc["truncated"] is True and doc["error"]


def test_documents_that_break_the_contract_are_refused(capsys):
    doc = analyze_json(capsys, next(p for p in CAPTURES if "citizenlab" in p.name), "--events")
    assert not schema_errors(doc)
    flow_tcp = copy.deepcopy(doc)
    del flow_tcp["flows"][0]["tcp"]["retransmissions"]
    unknown = dict(doc, extra=1)
    singular = copy.deepcopy(doc)
    singular["tcp"]["retransmission"] = singular["tcp"].pop("retransmissions")
    bad_kind = copy.deepcopy(doc)
    bad_kind["flows"][0]["kind"] = "medium"
    bad_field = copy.deepcopy(doc)
    request = next(e for e in bad_field["events"] if e["kind"] == "http_request")
    request["fields"]["method"] = 1
    no_schema = {k: v for k, v in doc.items() if k != "schema"}
    for broken, where in [(flow_tcp, "flows/0/tcp"), (unknown, "(top)"), (singular, "tcp"),
                          (bad_kind, "flows/0/kind"), (bad_field, "fields/method"),
                          (no_schema, "(top)")]:
        errors = schema_errors(broken)
        assert errors and any(where in e for e in errors), (where, errors)


def test_docs_show_every_key():
    text = DOCS.read_text(encoding="utf-8")
    schema = load_schema()
    for key in [*schema["properties"], *schema["$defs"]["flow"]["properties"],
                *COUNT_NAMES.values()]:
        assert f"`{key}`" in text, f"docs/capture.md does not show {key!r}"
    assert "analyze.schema.json" in text
