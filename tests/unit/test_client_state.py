"""What the phone keeps between requests: the sync keys' `key_buf` and the session's
`BaseRequest` (both kept while what they are made of stays the same), and a long-link
request given up on (cancelled) before its answer."""

from __future__ import annotations

import asyncio
import struct

from testbed.client.longlink import LongLink, _LinkProtocol
from testbed.client.session import Session, SyncState
from testbed.lab.clock import ManualClock
from testbed.lab.manifest import Manifest
from testbed.wire import pb
from testbed.wire.commands import NOOP_CMD

HEADER = struct.Struct(">IHHII")


def _keys(buf: pb.SyncKey) -> list[tuple[int, int]]:
    return [(kv.key, kv.val) for kv in buf.keys]


def test_key_buf_follows_the_keys():
    state = SyncState()
    assert _keys(state.key_buf()) == [(1, 0), (2, 0), (3, 0)]
    state.apply(pb.NewSyncResponse(key_buf=pb.SyncKey(keys=[pb.KeyVal(key=2, val=7)])))
    assert _keys(state.key_buf()) == [(1, 0), (2, 7), (3, 0)]
    state.keys[4] = 1                     # set by hand: seen too
    assert _keys(state.key_buf()) == [(1, 0), (2, 7), (3, 0), (4, 1)]
    req = pb.NewSyncRequest(key_buf=state.key_buf())
    req.key_buf.keys[0].val = 99          # a request's copy: the keys are not touched
    assert _keys(state.key_buf())[0] == (1, 0)


def test_base_follows_the_login():
    manifest = Manifest(profile="test", time_scale=1.0, dns_address="127.0.0.1", dns_port=53,
                        hosts={}, ca_cert=None, users=[], heartbeat_s=300.0,
                        server_idle_s=660.0)
    s = Session(manifest, "alice", "pw", device_id=b"d" * 16)
    assert s.base().uin == 0 and s.base().session_key == b""
    s.uin, s.session_key = 42, b"k" * 16
    base = s.base()
    assert (base.uin, base.session_key, base.device_id) == (42, b"k" * 16, b"d" * 16)
    assert base.client_version == 0x25000901 and base.device_type == "android-17"


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()

    def write(self, data) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


async def test_a_cancelled_request_is_forgotten_and_its_late_reply_dropped():
    clock = ManualClock()
    link = LongLink(clock=clock)
    proto, wire = _LinkProtocol(link), _Transport()
    proto.connection_made(wire)
    fut = link.noop(timeout=10.0)
    seq = HEADER.unpack(wire.out[:16])[4]
    assert link.conn.pending == {seq: NOOP_CMD}
    fut.cancel()
    await clock.advance(10.0)             # by its deadline at the latest
    assert link.conn.pending == {}
    proto.data_received(HEADER.pack(16, 16, 1, 1_000_000_000 + NOOP_CMD, seq))
    answered = link.noop(timeout=10.0)    # the link still works, numbering on
    seq2 = HEADER.unpack(wire.out[16:32])[4]
    assert seq2 == seq + 1
    proto.data_received(HEADER.pack(16, 16, 1, 1_000_000_000 + NOOP_CMD, seq2))
    assert await answered == b""
    assert link.conn.pending == {}
