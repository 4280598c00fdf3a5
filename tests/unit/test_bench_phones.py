"""The 50,000-phone benchmark's own measuring parts (`bench/bench_phones.py`), cheaply: its
heartbeat timer on a real long link to a real server, and its verdict."""

import array
import sys
from pathlib import Path

from mocks.long_link import LongLinkServer
from mocks.service import Service
from mocks.state import MemoryStore, SessionRecord
from testbed.client.longlink import LongLink
from testbed.lab.clock import Clock
from testbed.wire import pb

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
try:
    import bench_phones
finally:
    sys.path.pop(0)


async def test_the_timer_times_each_heartbeat_and_nothing_else():
    clock = Clock(1.0)
    store = MemoryStore()
    service = Service(store, clock)
    [user] = await service.seed_users(1, "none")
    key = b"k" * 16
    await store.put_session(SessionRecord(key, user.uin, user.username))
    srv = LongLinkServer(service, clock)
    server = await srv.listen("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    out = array.array("d")
    link = await LongLink.connect("127.0.0.1", port, clock=clock,
                                  observer=bench_phones.HeartbeatTimer(out))
    try:
        resp = await link.call("IDENTIFY", pb.IdentifyRequest(
            base=pb.BaseRequest(session_key=key, uin=user.uin)))
        assert resp.base.ret == 0
        await link.call("NEWSYNC", pb.NewSyncRequest(
            base=pb.BaseRequest(session_key=key, uin=user.uin), selector=7))
        assert len(out) == 0          # requests with bodies are not heartbeats
        for _ in range(3):
            await link.noop(timeout=5.0)
        assert len(out) == 3
        assert all(0 < t < 5.0 for t in out)
    finally:
        link.abort()
        await srv.close()


def _step(target, up, failures=None, deaths=0):
    return {"target": target, "up": up, "failures": failures or {}, "run_errors": 0,
            "window": {"silent_deaths": deaths, "links_closed": 0}}


def test_the_verdict_names_the_ceiling():
    cfg = {"config": {"steps": [10, 20]}}
    ok = bench_phones.verdict(cfg | {"steps": [_step(10, 10), _step(20, 20)], "stopped": ""})
    assert ok.endswith(": OK")
    short = bench_phones.verdict(cfg | {
        "steps": [_step(10, 10), _step(20, 17, {"TimeoutError: ": 3})],
        "stopped": "3 of 20 phones did not come up"})
    assert "BELOW TARGET (17 up; 3 of 20 phones did not come up)" in short
    beaten = bench_phones.verdict(cfg | {"steps": [_step(10, 10), _step(20, 20, deaths=2)],
                                         "stopped": ""})
    assert "BELOW TARGET" in beaten and "2 heartbeat failures" in beaten
