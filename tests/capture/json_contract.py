"""The `testbed analyze --json` contract as tests check it: a document is valid when the
JSON Schema in the repo (`testbed/capture/analyze.schema.json`) accepts it."""

from __future__ import annotations

import jsonschema

from testbed.capture.schema import load_schema

VALIDATOR = jsonschema.Draft202012Validator(load_schema())


def schema_errors(doc: dict) -> list[str]:
    """Every way `doc` breaks the schema, each as `path: message`."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(e.absolute_path))]


def assert_valid(doc: dict) -> None:
    errors = schema_errors(doc)
    assert not errors, "\n".join(errors[:20])
