"""testbed.wire is sans-I/O: importing it pulls in no event loop, HTTP, TLS or server stack,
and its own source files import none of them."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WIRE = REPO / "testbed" / "wire"

#: must not be in sys.modules at all after importing testbed.wire
NEVER_LOADED = {"asyncio", "aiohttp", "socketserver", "selectors", "ssl"}
#: must not be imported by testbed/wire's own source files
FORBIDDEN_IMPORTS = {"asyncio", "aiohttp", "socket", "socketserver", "selectors", "ssl",
                     "trio", "anyio", "uvloop", "subprocess",
                     "http.client", "http.server", "urllib.request"}


def _forbidden(module: str) -> bool:
    parts = module.split(".")
    return any(".".join(parts[:i]) in FORBIDDEN_IMPORTS for i in range(1, len(parts) + 1))

_REPORT = """
import importlib, json, pkgutil, sys
loaded = []
for name in sys.argv[1:]:
    mod = importlib.import_module(name)
    loaded.append(name)
    if name == "testbed.wire":
        for info in pkgutil.walk_packages(mod.__path__, "testbed.wire."):
            importlib.import_module(info.name)
            loaded.append(info.name)
print(json.dumps({"imported": loaded, "modules": sorted(sys.modules)}))
"""


def _fresh_import(*names: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]]
                                                       if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", _REPORT, *names], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _top(modules) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.fixture(scope="module")
def wire_import() -> dict:
    return _fresh_import("testbed.wire")


@pytest.fixture(scope="module")
def deps_import() -> dict:
    """What the third-party libraries testbed.wire builds on load by themselves."""
    return _fresh_import("dpkt", "google.protobuf.message", "google.protobuf.descriptor_pool")


def test_every_submodule_was_imported(wire_import):
    imported = set(wire_import["imported"])
    own = {f"testbed.wire.{p.stem}" for p in WIRE.glob("*.py") if p.stem != "__init__"}
    assert own <= imported
    assert {"testbed.wire.frames", "testbed.wire.commands", "testbed.wire.errors",
            "testbed.wire.dns", "testbed.wire.mm_pb2"} <= imported


def test_no_event_loop_http_or_tls_stack_is_loaded(wire_import, deps_import):
    loaded = _top(wire_import["modules"])
    deps = _top(deps_import["modules"])
    # `socket` imports `selectors` itself; dpkt imports `socket`. That is the library's
    # doing, not ours: allow exactly what the dependencies load on their own.
    unexplained = (NEVER_LOADED & loaded) - deps
    assert not unexplained, f"importing testbed.wire loaded {sorted(unexplained)}"
    for name in ("asyncio", "aiohttp", "ssl", "socketserver"):
        assert name not in loaded, name


def test_wire_loads_nothing_forbidden_beyond_its_dependencies(wire_import, deps_import):
    extra = set(wire_import["modules"]) - set(deps_import["modules"])
    bad = sorted(m for m in extra if _forbidden(m))
    assert not bad, f"importing testbed.wire loaded {bad}"


# --------------------------------------------------------------------- source scan

def forbidden_imports_in(source: str, filename: str = "<src>") -> list[tuple[int, str]]:
    """(line, module) for each import of a forbidden top-level module in `source`."""
    hits = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                names = [node.module]
        elif isinstance(node, ast.Call):
            # importlib.import_module("x") / __import__("x") with a literal name
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            if fname in ("import_module", "__import__") and node.args \
                    and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        hits += [(node.lineno, n) for n in names if _forbidden(n)]
    return hits


@pytest.mark.parametrize("source, bad", [
    ("import socket", ["socket"]),
    ("import os, asyncio.events as ev", ["asyncio.events"]),
    ("from ssl import SSLContext", ["ssl"]),
    ("def f():\n    import selectors\n", ["selectors"]),
    ("from aiohttp import web", ["aiohttp"]),
    ("import importlib\nimportlib.import_module('socket')", ["socket"]),
    ("__import__('asyncio')", ["asyncio"]),
    ("import os\nimport struct\nfrom . import socket", []),      # a relative sibling is fine
    ("import socketlike\nimport ipaddress", []),
    ("import http\nimport urllib.parse\nfrom http import HTTPStatus", []),
    ("import http.client", ["http.client"]),
    ("from urllib.request import urlopen", ["urllib.request"]),
])
def test_scanner_finds_forbidden_imports(source, bad):
    assert [m for _, m in forbidden_imports_in(source)] == bad


def _wire_sources() -> list[Path]:
    files = sorted(WIRE.rglob("*.py"))
    assert files, f"no sources under {WIRE}"
    return files


@pytest.mark.parametrize("path", _wire_sources(), ids=lambda p: p.name)
def test_wire_sources_import_no_io_stack(path):
    hits = forbidden_imports_in(path.read_text(encoding="utf-8"), str(path))
    assert not hits, f"{path.relative_to(REPO)} imports {hits}"
