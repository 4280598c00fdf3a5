"""A new scenario in under 30 lines: two phones chat, then the wire is checked."""

import asyncio

import pytest

pytestmark = pytest.mark.asyncio    # async tests: this, or `asyncio_mode = auto` in the ini


@pytest.mark.testbed_lab(users=2, time_scale=500)
async def test_push_then_sync_and_heartbeat(lab, wx_client, recorder):
    alice, bob = await wx_client(0), await wx_client(1)
    await alice.send_text(bob.username, "see you at the library")
    await bob.wait_for_push(timeout=60)                   # the NOTIFY, then bob's newsync
    got = await bob.wait_for_message(text="see you at the library", timeout=60)
    assert got.from_user == alice.username
    stop = asyncio.Event()
    beating = asyncio.create_task(bob.run(stop))        # bob keeps his heartbeat
    await asyncio.sleep(alice.clock.to_wall(3.3 * 300))  # three heartbeats, in protocol time
    stop.set()
    await beating

    wire = recorder.capture()
    wire.expect_sequence(                                 # order across hosts
        {"kind": "frame", "name": "NEWSENDMSG", "host": "long.weixin.qq.com"},
        {"kind": "frame", "name": "NOTIFY", "push": True},
        {"kind": "frame", "name": "NEWSYNC", "reply": False},
    )
    wire.expect_heartbeat(300, tolerance=0.1)           # every 300 s of protocol time
    assert lab.stats()["messages_stored"] == 1
