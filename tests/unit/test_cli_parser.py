"""The parser built for one light command (`build_parser(command_of(argv))`, which leaves
out the modules of the mocks) parses that command exactly as the whole parser does; and
`testbed analyze` imports only what the capture needs."""

import subprocess
import sys
from pathlib import Path

import pytest

from testbed.cli.parser import build_parser, command_of

ARGVS = [
    ["analyze", "x.pcapng", "--json", "--events", "--time-scale", "100"],
    ["-v", "analyze", "x.pcap"],
    ["-vv", "verify", "x.pcap", "--secret", "pw"],
    ["report", "x.pcap", "--html", "out.html"],
    ["emulate", "login"],
    ["profiles", "--json"],
]


@pytest.mark.parametrize("argv", ARGVS, ids=lambda a: " ".join(a))
def test_light_command_parses_as_the_whole_parser(argv):
    assert command_of(argv) is not None
    assert vars(build_parser(command_of(argv)).parse_args(argv)) == \
        vars(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [["lab", "seed"], ["serve", "long"], ["study"], ["replay"],
                                  ["analyse"], ["--version"], []])
def test_other_commands_get_the_whole_parser(argv):
    assert command_of(argv) is None


#: what `testbed analyze --json` of a capture of TCP alone has no use for: the mocks, the
#: event loop, the terminal tables, the protobuf messages and dpkt (loaded with the first
#: DNS message) stay out of its start-up
NOT_FOR_A_TCP_CAPTURE = ("aiohttp", "mocks.hosts", "asyncio", "rich", "testbed.wire.mm_pb2",
                         "google.protobuf.descriptor_pool", "testbed.wire.connection", "dpkt")


def test_analyze_imports_only_what_it_uses():
    capture = Path(__file__).resolve().parents[1] / "data" / "real" / "http-get.pcapng"
    code = ("import sys; from testbed.cli import main; rc = main(['analyze', '--json', "
            f"{str(capture)!r}]); loaded = [m for m in {NOT_FOR_A_TCP_CAPTURE!r} "
            "if m in sys.modules]; print(loaded, file=sys.stderr); sys.exit(rc or bool(loaded))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '"flows"' in r.stdout and '"host": "www.google.com"' in r.stdout
