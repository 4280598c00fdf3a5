"""Security checks as tests: without a valid session no request through either door reads
or changes another user's messages, media or location; a valid session reaches only its own;
passwords and session keys never reach a log or a capture's metadata."""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import signal
import subprocess
import sys

import pytest

from mocks.state import MemoryStore
from mocks.state.redis_server import RedisServer
from testbed.capture.packets import read_capture
from testbed.client.scenarios import run_scenario
from testbed.client.session import RequestFailed, Session
from testbed.lab.addressing import SHORT
from testbed.wire import BY_CGI, BY_CMD, Ret, pb

from ..conftest import start_lab
from .helpers import (bound_sockets, descendants, logged_in, raw_long, wait_manifest,
                      wait_ready)

VICTIM_SPOT = (116.3975, 39.9087)


def hostile_request(command, base: pb.BaseRequest, victim: str, media_id: int):
    """`command`'s request with `base`, every field that names a user or a media aimed at
    the victim: what an attacker with no session (or someone else's uin) would send."""
    req = command.request(base=base)
    fields = {f.name for f in req.DESCRIPTOR.fields}
    for name, value in (("username", victim), ("to_user", victim), ("client_media_id", "x"),
                        ("msg_id", media_id), ("total_len", 10), ("data", b"0123456789"),
                        ("opcode", 2 if command.cgi == "lbsfind" else 1),
                        ("longitude", VICTIM_SPOT[0]), ("latitude", VICTIM_SPOT[1]),
                        ("verify_content", "hi"), ("selector", 7)):
        if name in fields:
            setattr(req, name, value)
    if "usernames" in fields:
        req.usernames.append(victim)
    if "msgs" in fields:
        req.msgs.add(to_user=victim, content="forged", msg_type=1, client_msg_id="f1")
    if "items" in fields:
        req.items.add(key=1, value="forged")
    return req


async def victim_state(lab, victim_uin: int, media_id: int) -> tuple:
    """What an attack could change or read of the victim: logs, media, location,
    sessions, uploads, and the lab's message count."""
    store = lab.store
    near = await store.candidates_near(*VICTIM_SPOT, 1000)
    return (await store.log_lengths(victim_uin), await store.get_media(media_id),
            sorted(near), await store.media_bytes(victim_uin),
            await store.uploads_in_progress(victim_uin),
            (await store.counters()).get("messages_stored", 0))


async def test_no_request_without_a_valid_session_touches_another_users_data(tmp_path):
    lab = await start_lab(tmp_path, users=3)
    try:
        victim, friend, attacker = [await logged_in(lab, i) for i in range(3)]
        # the victim has messages, a media and a location
        media = await victim.upload(friend.username, b"private image" * 100)
        await friend.send_text(victim.username, "a secret")
        await victim.cgi("lbsfind", pb.LbsFindRequest(base=victim.base(), opcode=1,
                                                       longitude=VICTIM_SPOT[0],
                                                       latitude=VICTIM_SPOT[1]))
        before = await victim_state(lab, victim.uin, media.new_msg_id)
        forged = {
            "no session": pb.BaseRequest(uin=victim.uin),
            "a guessed key": pb.BaseRequest(uin=victim.uin, session_key=os.urandom(16)),
            "someone else's key": pb.BaseRequest(uin=victim.uin,
                                                 session_key=attacker.session_key),
            "a guessed key, the attacker's uin": pb.BaseRequest(uin=attacker.uin,
                                                                session_key=os.urandom(16)),
            # a key that leaked, sent under another uin: a key is good only with its own
            "the victim's key, another uin": pb.BaseRequest(uin=attacker.uin,
                                                            session_key=victim.session_key),
        }
        tried = 0
        for what, base in forged.items():
            for command in BY_CGI.values():
                if command.cgi == "manualauth":
                    continue
                req = hostile_request(command, base, victim.username, media.new_msg_id)
                resp = await attacker.cgi(command.cgi, req, check=False)
                assert resp.base.ret == Ret.SESSION_INVALID, (what, command.name)
                tried += 1
            # the long link: the attacker's own link, identified as the attacker
            for command in BY_CMD.values():
                if command.request is None or command.push_only:
                    continue
                req = hostile_request(command, base, victim.username, media.new_msg_id)
                resp = await attacker.long_call(command.name, req, check=False)
                assert resp.base.ret == Ret.SESSION_INVALID, (what, command.name)
                tried += 1
        assert tried == len(forged) * (len(BY_CGI) - 1 + 10)
        assert await victim_state(lab, victim.uin, media.new_msg_id) == before
        # the victim's session still works: a forged logout ended nothing
        await victim.cgi("getprofile", pb.GetProfileRequest(base=victim.base()))
        # with a valid session of its own, the attacker still cannot read the victim's media
        for name in ("GETMSGIMG", "DOWNLOADVOICE", "DOWNLOADVIDEO"):
            resp = await attacker.long_call(name, pb.DownloadMediaRequest(
                base=attacker.base(), msg_id=media.new_msg_id), check=False)
            assert resp.base.ret == Ret.NOT_ALLOWED and resp.data == b""
        # nor its messages: its own sync holds none of them
        got = await attacker.sync()
        assert not [i for i in got if i.cmd_id == 5]
        # and people nearby gives a distance bucket, never the victim's coordinates
        near = await attacker.cgi("lbsfind", pb.LbsFindRequest(
            base=attacker.base(), opcode=1, longitude=VICTIM_SPOT[0] + 0.001,
            latitude=VICTIM_SPOT[1]))
        [found] = [c for c in near.contacts if c.username == victim.username]
        assert found.distance_m % 100 == 0 and found.distance_m >= 100
        assert str(VICTIM_SPOT[0]) not in str(near) and str(VICTIM_SPOT[1]) not in str(near)
        for s in (victim, friend, attacker):
            await s.close()
    finally:
        await lab.stop()
    assert lab.server_errors() == []


class KeyRecordingStore(MemoryStore):
    """The memory store, noting every session key it is given (to look for them after)."""

    def __init__(self) -> None:
        super().__init__()
        self.session_keys: list[bytes] = []

    async def put_session(self, session):
        self.session_keys.append(session.session_key)
        return await super().put_session(session)


def secret_forms(store: KeyRecordingStore, manifest) -> dict[str, str]:
    """Every password and every session key of the run, in the forms a log might print."""
    forms = {}
    for u in manifest.users:
        forms[u["password"]] = f"{u['username']}'s password"
    for key in store.session_keys:
        for text in (key.hex(), repr(key)[2:-1], base64.b64encode(key).decode()):
            forms[text] = "a session key"
    return forms


async def test_no_password_or_session_key_in_logs_or_capture_metadata(tmp_path, caplog):
    """The whole storyboard, every logger at DEBUG, the lab recording: no log record and no
    metadata of the capture (its section comment, with the manifest it carries) holds a
    password or a session key. (The packets do: the profile's bodies are clear, as the
    report saw them.)"""
    caplog.set_level(logging.DEBUG)
    store = KeyRecordingStore()
    capture = tmp_path / "story.pcapng"
    lab = await start_lab(tmp_path, users=4, store=store, record=capture, time_scale=200.0)
    try:
        result = await run_scenario("storyboard", lab.manifest, clients=2)
        assert result.ok, result.errors
        manifest = lab.manifest
        # and what makes the lab log: wrong passwords until the throttle, a broken frame
        u = manifest.users[3]
        for _ in range(6):
            with pytest.raises(RequestFailed):
                await Session(manifest, u["username"], u["password"][::-1]).login()
        r, w = await raw_long(lab)
        w.write(b"\xff" * 16)
        assert await r.read() == b""
    finally:
        await lab.stop()
    secrets = secret_forms(store, manifest)
    assert len(store.session_keys) >= 2
    logged = "\n".join([r.getMessage() for r in caplog.records]
                       + [r.exc_text or "" for r in caplog.records])
    assert any(r.name.startswith("mocks") for r in caplog.records)   # the lab did log
    for text, what in secrets.items():
        assert text not in logged, f"{what} in the logs"
    cap = read_capture(capture)
    assert sum(1 for _ in cap) > 100
    metadata = "\n".join([*cap.comments, cap.os or "", cap.userappl or ""])
    assert cap.meta["manifest"]["hosts"][SHORT], "the comment carries the manifest"
    for text, what in secrets.items():
        assert text not in metadata, f"{what} in the capture's metadata"


# ------------------------------------------------------------------ loopback by default

def _all_bound(pid: int) -> set[tuple[str, str, int]]:
    out = set()
    for p in {pid} | descendants(pid):
        try:
            out |= bound_sockets(p)
        except OSError:   # a process that ended meanwhile
            pass
    return out


def _assert_loopback(bound, what: str) -> None:
    assert bound, f"{what} bound nothing"
    for table, addr, port in bound:
        assert ipaddress.ip_address(addr).is_loopback, f"{what} bound {addr}:{port} ({table})"


def _stop(proc) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _in_netns(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, sys.executable, "-m", "testbed.cli", *argv]


def test_lab_up_binds_only_loopback_by_default(netns, tmp_path):
    """`testbed lab up` with nothing but a manifest path, in a namespace of its own (so its
    default addresses and ports are free): every socket it listens on is loopback."""
    manifest = tmp_path / "m.json"
    proc = subprocess.Popen(_in_netns(netns, "lab", "up", "--manifest", str(manifest)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_manifest(proc, manifest)
        bound = _all_bound(proc.pid)
        _assert_loopback(bound, "lab up")
        assert ("udp", "127.0.0.53", 5353) in bound and ("tcp", "127.0.0.11", 8080) in bound
    finally:
        _stop(proc)
        proc.stderr.close()


def test_lab_up_on_redis_binds_only_loopback_by_default(netns, tmp_path):
    """The lab of processes too: every `serve` child it starts (and its workers)."""
    redis = RedisServer(tmp_path).start()
    manifest = tmp_path / "m.json"
    try:
        proc = subprocess.Popen(
            _in_netns(netns, "lab", "up", "--manifest", str(manifest), "--store",
                      redis.unix_url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        try:
            wait_manifest(proc, manifest, timeout=60)
            _assert_loopback(_all_bound(proc.pid), "lab up --store")
        finally:
            _stop(proc)
            proc.stderr.close()
    finally:
        redis.stop()


@pytest.mark.parametrize("role", ["long", "short", "mapabc", "qlogo", "qpic", "dns"])
def test_every_serve_role_binds_only_loopback_by_default(netns, tmp_path, role):
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(_in_netns(netns, "serve", role, "--ready-file", str(ready)),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_ready(proc, ready)
        _assert_loopback(_all_bound(proc.pid), f"serve {role}")
    finally:
        _stop(proc)
        proc.stderr.close()
