"""The import rules of docs/architecture.md, kept true on the real source.

One table (`RULES`): each part of the tree, the modules it is made of, the parts it may
import and the outside modules it never imports. Every module under testbed/ and mocks/
belongs to exactly one part; its imports, read with `ast` (top-level, inside functions,
relative, and `importlib.import_module`/`__import__` with a literal name), must keep to its
row. The synthetic modules at the end show that a violation of each kind is caught. The
wire core is also imported in a fresh interpreter, to show that it loads no I/O stack.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
ARCHITECTURE = REPO / "docs" / "architecture.md"

#: the event loop, HTTP, TLS and socket stacks: what sans-I/O code never imports
IO_STACK = frozenset({"asyncio", "aiohttp", "socket", "socketserver", "selectors", "ssl",
                      "trio", "anyio", "uvloop", "subprocess", "http.client", "http.server",
                      "urllib.request"})
#: what carries bytes between hosts: the service and the lab's configuration know none of it
TRANSPORT = frozenset({"aiohttp", "socket", "socketserver", "ssl", "http.client",
                       "http.server", "urllib.request"})


@dataclass(frozen=True)
class Rule:
    modules: tuple[str, ...]      # module names, each with everything under it
    may: frozenset[str]           # parts it may import (its own is always allowed)
    never: frozenset[str] = frozenset()   # outside modules (and their submodules)


_ = frozenset
RULES: dict[str, Rule] = {
    "wire": Rule(("testbed.wire",), _(), IO_STACK),
    "lab": Rule(("testbed.lab",), _({"wire"}), TRANSPORT),
    "state": Rule(("mocks.state",), _({"wire", "lab"})),
    "service": Rule(("mocks.service", "mocks.nearby", "mocks.stats", "mocks.served"),
                    _({"wire", "lab", "state"}), TRANSPORT),
    "mocks": Rule(("mocks",), _({"wire", "lab", "state", "service", "capture", "model",
                                 "shared"})),
    "client": Rule(("testbed.client",), _({"wire", "lab", "shared"})),
    "capture": Rule(("testbed.capture",), _({"wire", "shared"})),
    "verify": Rule(("testbed.verify",), _({"wire", "lab", "capture"}), IO_STACK),
    "report": Rule(("testbed.report",), _({"wire", "lab", "capture", "verify", "shared"}),
                   IO_STACK),
    "radio": Rule(("testbed.radio",), _({"wire", "capture", "client", "shared"}), IO_STACK),
    "model": Rule(tuple(f"testbed.replay.{m}" for m in ("model", "sessions", "tree", "masks",
                                                         "compare", "bindings", "script")),
                  _({"wire", "lab", "capture", "shared"}), TRANSPORT),
    "replay": Rule(("testbed.replay",), _({"wire", "lab", "capture", "model", "client",
                                          "shared"})),
    "study": Rule(("testbed.study",), _({"wire", "lab", "client", "mocks", "radio", "shared"})),
    "shared": Rule(("testbed.__init__", "testbed.argtypes", "testbed.console",
                    "testbed.eventloop", "testbed.fleet", "testbed.interrupt",
                    "testbed.png"), _({"wire"})),
    "commands": Rule(("testbed.cli", "testbed.serve_cli", "testbed.phones_cli", "testbed.demo",
                      "testbed.pytest_plugin"),
                     _({"wire", "lab", "state", "service", "mocks", "client", "capture",
                        "verify", "report", "radio", "model", "replay", "study", "shared"})),
}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def part_of(module: str) -> Optional[str]:
    """The part a module of ours belongs to (the longest matching entry), or None."""
    if module == "testbed":
        module = "testbed.__init__"
    best, length = None, -1
    for part, rule in RULES.items():
        for prefix in rule.modules:
            if _under(module, prefix) and len(prefix) > length:
                best, length = part, len(prefix)
    return best


def ours(module: str) -> bool:
    return _under(module, "testbed") or _under(module, "mocks")


def imports_in(source: str, module: str, is_package: bool = False,
               known: frozenset[str] = frozenset()) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, the source of `module`.
    `from X import y` counts as `X.y` where `X.y` is a module in `known`."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in known else target))
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            if name in ("import_module", "__import__") and node.args \
                    and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(source: str, module: str, is_package: bool = False,
               known: frozenset[str] = frozenset()) -> list[str]:
    """What in `source` (the source of `module`) breaks its part's row of `RULES`."""
    part = part_of(module)
    if part is None:
        return [f"{module} belongs to no part of RULES (docs/architecture.md)"]
    rule = RULES[part]
    bad = []
    for line, name in sorted(set(imports_in(source, module, is_package, known))):
        if ours(name):
            other = part_of(name)
            if other is None:
                bad.append(f"line {line}: {name} belongs to no part")
            elif other != part and other not in rule.may:
                bad.append(f"line {line}: {part} imports {other} ({name})")
        elif any(_under(name, n) for n in rule.never):
            bad.append(f"line {line}: {part} never imports {name}")
    return bad


def _sources() -> dict[str, tuple[Path, bool]]:
    out = {}
    for top in ("testbed", "mocks"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            is_package = rel.name == "__init__"
            name = ".".join(rel.parts[:-1] if is_package else rel.parts)
            out[name] = (path, is_package)
    return out


SOURCES = _sources()
KNOWN = frozenset(SOURCES)


def test_every_module_belongs_to_a_part():
    assert len(SOURCES) > 50
    assert [m for m in SOURCES if part_of(m) is None] == []
    assert {part_of(m) for m in SOURCES} == set(RULES)


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_module_keeps_to_its_row(module):
    path, is_package = SOURCES[module]
    bad = violations(path.read_text(encoding="utf-8"), module, is_package, KNOWN)
    assert not bad, f"{path.relative_to(REPO)}: " + "; ".join(bad)


@pytest.mark.parametrize("module, source, bad", [
    # the wire core: no I/O stack, however it is imported
    ("testbed.wire.x", "import socket", ["wire never imports socket"]),
    ("testbed.wire.x", "import os, asyncio.events as ev", ["wire never imports asyncio.events"]),
    ("testbed.wire.x", "from ssl import SSLContext", ["wire never imports ssl"]),
    ("testbed.wire.x", "def f():\n    import selectors\n", ["wire never imports selectors"]),
    ("testbed.wire.x", "from aiohttp import web", ["wire never imports aiohttp"]),
    ("testbed.wire.x", "import importlib\nimportlib.import_module('socket')",
     ["wire never imports socket"]),
    ("testbed.wire.x", "__import__('asyncio')", ["wire never imports asyncio"]),
    ("testbed.wire.x", "import http.client", ["wire never imports http.client"]),
    ("testbed.wire.x", "from urllib.request import urlopen", ["wire never imports urllib"]),
    ("testbed.wire.x", "import os\nimport struct\nfrom . import socket", []),   # a sibling
    ("testbed.wire.x", "import socketlike\nimport http\nfrom urllib.parse import quote", []),
    ("testbed.wire.x", "from testbed.lab import clock", ["wire imports lab"]),
    # between parts
    ("testbed.client.x", "from mocks.service import Service", ["client imports service"]),
    ("testbed.client.x", "from mocks.runner import start_lab", ["client imports mocks"]),
    ("testbed.capture.x", "from ..client import phone", ["capture imports client"]),
    ("testbed.capture.x", "from .. import verify", ["capture imports verify"]),
    ("testbed.verify.x", "def f():\n    from testbed.report import html\n",
     ["verify imports report"]),
    ("testbed.verify.x", "import subprocess", ["verify never imports subprocess"]),
    ("testbed.lab.x", "import importlib\nimportlib.import_module('mocks.runner')",
     ["lab imports mocks"]),
    ("mocks.service", "from .long_link import LongLinkServer", ["service imports mocks"]),
    ("mocks.service", "from aiohttp import web", ["service never imports aiohttp"]),
    ("mocks.state.x", "from ..service import Service", ["state imports service"]),
    ("mocks.long_link", "from testbed.client.phone import Phone", ["mocks imports client"]),
    ("testbed.replay.x", "from mocks.runner import Lab", ["replay imports mocks"]),
    ("testbed.replay.script", "from testbed.client.phone import Phone", ["model imports client"]),
    ("testbed.replay.model", "from mocks.replay import ReplayService", ["model imports mocks"]),
    ("mocks.replay", "from testbed.replay.player import ClientReplay", ["mocks imports replay"]),
    ("mocks.replay", "from testbed.replay.script import ServerScript", []),
    ("testbed.replay.player", "from testbed.replay.compare import compare", []),
    ("testbed.study.x", "from testbed.report import html", ["study imports report"]),
    ("testbed.newpart", "import os", ["belongs to no part"]),
    ("testbed.verify.x", "from testbed.nosuch import y", ["testbed.nosuch belongs to no part"]),
    # allowed
    ("mocks.nat", "from testbed.capture.tap import GuardedTap", []),
    ("testbed.report.x", "from testbed.verify import CaptureView\nfrom .. import __version__",
     []),
    ("testbed.replay.x", "from testbed.client.longlink import LongLink", []),
    ("testbed.cli", "from mocks.runner import Lab\nfrom testbed.study import heartbeat", []),
])
def test_a_violation_is_caught(module, source, bad):
    found = violations(source, module, known=KNOWN)
    assert len(found) == len(bad), found
    for text, want in zip(found, bad):
        assert want in text, (text, want)


# --------------------------------------------------------------------- the page says the same
def _doc_rows() -> dict[str, tuple[set[str], str]]:
    """part -> (the parts its row of the doc's table says it may import, its never cell)."""
    rows = {}
    for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("**"):
            part = cells[0].strip("*")
            may = set(re.findall(r"\b([a-z]+)\b", cells[3].replace("nothing of ours", "")))
            rows[part] = (may, cells[4])
    return rows


def test_the_architecture_page_has_the_same_table():
    rows = _doc_rows()
    assert set(rows) == set(RULES)
    for part, rule in RULES.items():
        may, never = rows[part]
        if part == "commands":
            assert may == {"everything"}
            continue
        assert may == set(rule.may), part
        named = {p for p in RULES if re.search(rf"\b{p}\b", never)}
        assert not named & rule.may, f"{part}: its never cell names {named & rule.may}"
        for name in rule.never:
            assert f"`{name}`" in never or (rule.never == IO_STACK and "the I/O stack" in never) \
                or (rule.never == TRANSPORT and "the transports" in never), (part, name)


# --------------------------------------------------------------------- wire, loaded for real
#: must not be in sys.modules at all after importing testbed.wire
NEVER_LOADED = {"asyncio", "aiohttp", "socketserver", "selectors", "ssl"}

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


def test_every_wire_submodule_was_imported(wire_import):
    imported = set(wire_import["imported"])
    assert {m for m in SOURCES if part_of(m) == "wire"} <= imported


def test_importing_wire_loads_no_event_loop_http_or_tls_stack(wire_import, deps_import):
    loaded = _top(wire_import["modules"])
    deps = _top(deps_import["modules"])
    # `socket` imports `selectors` itself; dpkt imports `socket`. That is the library's
    # doing, not ours: allow exactly what the dependencies load on their own.
    unexplained = (NEVER_LOADED & loaded) - deps
    assert not unexplained, f"importing testbed.wire loaded {sorted(unexplained)}"
    for name in ("asyncio", "aiohttp", "ssl", "socketserver"):
        assert name not in loaded, name
    extra = set(wire_import["modules"]) - set(deps_import["modules"])
    bad = sorted(m for m in extra if any(_under(m, n) for n in IO_STACK))
    assert not bad, f"importing testbed.wire loaded {bad}"
