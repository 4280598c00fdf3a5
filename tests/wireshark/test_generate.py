"""The Lua dissector's command table is rendered from testbed/wire/commands.py and the
committed file is current (`python wireshark/generate.py --check`)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.wire import pb
from testbed.wire.commands import BY_CMD, COMMANDS

REPO = Path(__file__).resolve().parents[2]
LUA = REPO / "wireshark" / "wechat_longlink.lua"
GENERATE = REPO / "wireshark" / "generate.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("wechat_ll_generate", GENERATE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _lua_rows(text: str) -> dict[int, tuple[str, str | None, str | None, bool]]:
    rows = {}
    pat = re.compile(r'^\s*\[(\d+)\] = \{ name = "([A-Z]+)", request = (nil|"[\w.]+"), '
                     r'response = (nil|"[\w.]+")(, push_only = true)? \},$', re.MULTILINE)
    for m in pat.finditer(text):
        req = None if m.group(3) == "nil" else m.group(3).strip('"')
        resp = None if m.group(4) == "nil" else m.group(4).strip('"')
        rows[int(m.group(1))] = (m.group(2), req, resp, bool(m.group(5)))
    return rows


def test_committed_lua_is_current(gen):
    text = LUA.read_text(encoding="utf-8")
    assert gen.render_block() in text
    assert gen.splice(text, gen.render_block()) == text
    assert gen.main(["--check"]) == 0


def test_check_from_the_command_line():
    p = subprocess.run([sys.executable, str(GENERATE), "--check"], check=False, capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr


def test_lua_table_is_the_command_table():
    rows = _lua_rows(LUA.read_text(encoding="utf-8"))
    expected = {c.cmd: (c.name,
                        c.request.DESCRIPTOR.full_name if c.request else None,
                        c.response.DESCRIPTOR.full_name if c.response else None,
                        c.push_only)
                for c in COMMANDS if c.cmd is not None}
    assert rows == expected
    assert set(rows) == set(BY_CMD)
    assert rows[237][1] == "testbed.mm.NewSendMsgRequest"
    assert rows[24] == ("NOTIFY", None, None, True)
    assert f'local ERROR_RESPONSE = "{pb.ErrorResponse.DESCRIPTOR.full_name}"' in \
        LUA.read_text(encoding="utf-8")


def test_stale_table_is_detected_and_rewritten(gen, tmp_path):
    stale = tmp_path / "wechat_longlink.lua"
    text = LUA.read_text(encoding="utf-8")
    stale.write_text(text.replace('[237] = { name = "NEWSENDMSG"', '[237] = { name = "OLDNAME"'),
                     encoding="utf-8")
    assert gen.main(["--check", "--lua", str(stale)]) == 1
    assert gen.main(["--lua", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == text
    # a new command in the table shows up in the rendering
    extra = COMMANDS[0].__class__("PING", "ping", None, None, cmd=99)
    assert '[99] = { name = "PING", request = nil, response = nil },' in \
        gen.render_block(COMMANDS + (extra,))


def test_markers_required(gen):
    with pytest.raises(ValueError):
        gen.splice("local COMMANDS = {}\n", gen.render_block())
