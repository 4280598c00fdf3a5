"""A lab with `record=` set, a real client against it, and tshark on the file it wrote."""

from __future__ import annotations

import asyncio
import json

import pytest

from testbed.capture.packets import read_capture
from testbed.client.session import Session
from testbed.lab.addressing import LONG, SHORT
from tests.conftest import start_lab

from .tshark import CHECKSUMS, conversations, fields, needs_tshark, tshark

CHAT = "晚上一起吃饭吗? dinner tonight at 7"


def phone_of(lab) -> str | None:
    """The emulated phone's address (.87) when the lab got its own /24."""
    plan = lab.config.plan
    return plan.phone if lab.manifest.dns_address == plan.dns else None


async def session(lab, i: int) -> Session:
    u = lab.manifest.users[i]
    return Session(lab.manifest, u["username"], u["password"], local_addr=phone_of(lab))


@pytest.fixture
async def recorded(tmp_path):
    """Login over TLS, long link, NOOP, a chat message to bob, a short-link CGI, logout."""
    path = tmp_path / "lab.pcapng"
    lab = await start_lab(tmp_path, users=3, record=path,
                          record_comment_extra={"scenario": "test_lab_record"})
    try:
        assert lab.record_path == path and lab.tap is not None and lab.tap.started
        assert lab.relay is None and lab.transport_tap is not None   # the servers report
        alice, bob = await session(lab, 0), await session(lab, 1)
        await bob.login()
        await alice.login()
        await alice.connect_long()
        await alice.link.noop()
        await alice.send_text(bob.username, CHAT)
        await alice.sync(door="short")
        await alice.logout()
        await alice.close()
        await bob.close()
        await asyncio.sleep(0.05)
    finally:
        await lab.stop()
    assert not lab.server_errors()
    assert lab.tap.closed and lab.tap.dropped == 0
    return lab, path


@needs_tshark
async def test_capture_is_clean_and_says_how_it_was_made(recorded):
    lab, path = recorded
    assert tshark(path, "-Y", "tcp.analysis.flags") == ""
    bad = "tcp.checksum.status==2 || ip.checksum.status==2 || udp.checksum.status==2"
    assert tshark(path, *CHECKSUMS, "-Y", bad) == ""
    cap = read_capture(path)
    assert sum(1 for _ in cap) > 0 and cap.error is None
    c = cap.meta
    assert c["how"] == "tap" and c["synthesised"] is True
    assert c["profile"] == "lab-report-2013" and c["time_scale"] == lab.clock.scale
    assert c["fault_plan"] is None and c["seed"] is None and c["testbed_version"]
    assert c["scenario"] == "test_lab_record" and c["tap"]["relay"] == "none"
    assert c["manifest"]["hosts"][LONG]["port"] == lab.manifest.hosts[LONG].port
    assert [u["username"] for u in c["manifest"]["users"]] == \
        [u["username"] for u in lab.manifest.users]
    assert "password" not in json.dumps(c)
    assert cap.stats[0]["ifdrop"] == 0


@needs_tshark
async def test_dns_tls_http_and_handshakes(recorded):
    lab, path = recorded
    m = lab.manifest
    dns = fields(path, "dns.flags.response", "dns.qry.name", "dns.a", filt="dns",
                 extra=("-d", f"udp.port=={m.dns_port},dns"))
    assert ["0", LONG, ""] in dns
    answers = [r[2].split(",") for r in dns if r[0] == "1" and r[1] == LONG]
    assert answers and answers[0] == m.hosts[LONG].addresses    # several A records
    tls_port = m.hosts[SHORT].tls_port
    sni = fields(path, "tls.handshake.type", "tls.handshake.extensions_server_name",
                 filt="tls.handshake.extensions_server_name",
                 extra=("-d", f"tcp.port=={tls_port},tls"))
    assert sni and all(r == ["1", SHORT] for r in sni)          # ClientHello, SNI
    plain = m.hosts[SHORT].port
    posts = fields(path, "ip.dst", "tcp.dstport", "http.request.uri",
                   filt="http.request.method == \"POST\"",
                   extra=("-d", f"tcp.port=={plain},http"))
    uris = {r[2] for r in posts}
    assert {"/cgi-bin/micromsg-bin/newsync", "/cgi-bin/micromsg-bin/logout"} <= uris
    assert all(r[0] in m.hosts[SHORT].addresses and r[1] == str(plain) for r in posts)
    # every TCP conversation: the phone to a public address and port of the lab
    public = {(a, p) for h in m.hosts.values() for a in h.addresses
              for p in (h.port, h.tls_port) if p}
    convs = conversations(path)
    assert len(convs) >= 5      # 2 TLS logins, the long link, newsync, logout
    phone = phone_of(lab)
    for a, b in convs:
        host, port = b.rsplit(":", 1)
        assert (host, int(port)) in public
        if phone:
            assert a.startswith(phone + ":")
    # the first handshake as the report saw it: SYN 0, SYN-ACK 0/1, ACK 1/1
    first = fields(path, "tcp.seq", "tcp.ack", "tcp.flags", filt="tcp")[:3]
    assert first == [["0", "0", "0x0002"], ["0", "1", "0x0012"], ["1", "1", "0x0010"]]
    # a short connection closes: a FIN from each side, each acknowledged
    fins = fields(path, "tcp.stream", "ip.src", filt="tcp.flags.fin==1")
    per_stream: dict[str, set] = {}
    for stream, src in fins:
        per_stream.setdefault(stream, set()).add(src)
    assert any(len(srcs) == 2 for srcs in per_stream.values())


@needs_tshark
async def test_password_hidden_chat_in_clear(recorded):
    lab, path = recorded
    data = path.read_bytes()
    for u in lab.manifest.users[:2]:
        assert u["password"].encode() not in data       # the logins went through TLS
    assert CHAT.encode("utf-8") in data                 # lab-report-2013: clear bodies


@needs_tshark
async def test_record_behind_the_nat(tmp_path):
    path = tmp_path / "nat.pcapng"
    lab = await start_lab(tmp_path, users=2, record=path, nat_timeout_s=300.0)
    try:
        assert lab.relay is lab.nat and lab.nat.tap.tap is lab.tap     # guarded: see GuardedTap
        s = await session(lab, 0)
        await s.login()
        await s.connect_long()
        await s.link.noop()
        await s.close()
    finally:
        await lab.stop()
    c = read_capture(path).meta
    assert c["tap"]["relay"] == "nat" and c["manifest"]["nat"]["idle_timeout_s"] == 300.0
    assert tshark(path, "-Y", "tcp.analysis.flags") == ""
    assert len(conversations(path)) == 2     # the TLS login, the long link


async def test_failed_start_leaves_no_capture(tmp_path):
    path = tmp_path / "none.pcapng"
    first = await start_lab(tmp_path, users=1)
    try:
        from mocks.runner import Lab, LabConfig
        cfg = LabConfig(users=1, plan=first.config.plan, record=path,
                        manifest_path=tmp_path / "second.json")
        second = Lab(cfg)
        with pytest.raises(OSError):
            await second.start()          # the same addresses and ports: taken
        await second.stop()
        assert not path.exists()
    finally:
        await first.stop()


@needs_tshark
async def test_live_capture_is_readable_while_the_lab_runs(tmp_path):
    path = tmp_path / "live.pcapng"
    lab = await start_lab(tmp_path, users=1, record=path)
    try:
        s = await session(lab, 0)
        await s.resolve(LONG)
        await asyncio.sleep(1.3)            # the lab flushes the capture every second
        dns = f"udp.port=={lab.manifest.dns_port},dns"
        rows = fields(path, "dns.qry.name", extra=("-d", dns))
        assert [LONG] in rows
    finally:
        await lab.stop()


@needs_tshark
async def test_the_phones_fin_after_the_server_closed_first_is_recorded(tmp_path):
    """With no relay the servers report their own connections: one the server closes first
    (an HTTP `Connection: close`) still shows the phone's FIN after the server's, and bytes
    sent into a connection the server closed draw a reset, as from a real closed socket."""
    path = tmp_path / "close.pcapng"
    lab = await start_lab(tmp_path, users=1, record=path)
    try:
        assert lab.relay is None
        host = lab.manifest.hosts[SHORT]
        local = (phone_of(lab), 0) if phone_of(lab) else None
        request = (f"GET / HTTP/1.1\r\nHost: {SHORT}\r\nConnection: close\r\n\r\n").encode()
        reader, writer = await asyncio.open_connection(host.addresses[0], host.port,
                                                       local_addr=local)
        writer.write(request)
        assert (await reader.read()).startswith(b"HTTP/1.1 ")     # then the server's FIN
        writer.close()
        await writer.wait_closed()
        reader, writer = await asyncio.open_connection(host.addresses[0], host.port,
                                                       local_addr=local)
        writer.write(request)
        await reader.read()
        writer.write(b"more, after the server closed")
        await asyncio.sleep(0.2)
        writer.close()
        await asyncio.sleep(0.05)
        assert lab.transport_tap.lingering == 0
    finally:
        await lab.stop()
    rows = fields(path, "tcp.stream", "ip.src", "tcp.flags.fin", "tcp.flags.reset",
                  filt=f"tcp.port=={host.port} && (tcp.flags.fin==1 || tcp.flags.reset==1)")
    by_stream: dict[str, list] = {}
    for stream, src, fin, rst in rows:
        by_stream.setdefault(stream, []).append(
            ("server" if src in host.addresses else "phone", "FIN" if fin in ("1", "True")
             else "RST"))
    assert [("server", "FIN"), ("phone", "FIN")] in by_stream.values(), by_stream
    assert [("server", "FIN"), ("server", "RST")] in by_stream.values(), by_stream
    assert tshark(path, *CHECKSUMS, "-Y", "tcp.checksum.status==2") == ""


@needs_tshark
def test_recording_on_uvloop_keeps_tls_working_and_recorded(tmp_path):
    """uvloop takes any `asyncio.Protocol` for a `data_received` one: the TLS port's tapped
    protocol must stay a buffered one there, or every TLS login is reset."""
    pytest.importorskip("uvloop")
    from testbed.eventloop import run

    path = tmp_path / "uv.pcapng"

    async def main():
        lab = await start_lab(tmp_path, users=1, record=path)
        try:
            s = await session(lab, 0)
            await s.login()          # over TLS
            await s.close()
        finally:
            await lab.stop()
        assert not lab.server_errors()
        return lab.manifest

    m = run(main(), "uvloop")
    tls_port = m.hosts[SHORT].tls_port
    sni = fields(path, "tls.handshake.extensions_server_name",
                 filt="tls.handshake.extensions_server_name",
                 extra=("-d", f"tcp.port=={tls_port},tls"))
    assert sni == [[SHORT]]
    assert tshark(path, "-Y", "tcp.analysis.flags") == ""
