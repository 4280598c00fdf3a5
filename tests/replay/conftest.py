"""Captures for the replay tests, recorded here by the lab's tap (once per module)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mocks.runner import LabConfig, start_lab
from testbed.client.phone import Phone
from testbed.client.scenarios import photo
from testbed.client.web import WebClient
from testbed.lab.addressing import PHONE_OCTET, lab_host_address

IMAGE_SIDE = 160          # a noisy PNG of ~77 KB: its first upload chunk is a 64 KiB body


async def _chat_and_media(manifest) -> dict:
    """Two phones: login, a text each way (long link, then short), an image (two chunks),
    its download and its CDN GET, the location and people nearby, a logout."""
    import random

    rng = random.Random(7)
    local = lab_host_address(manifest.dns_address, PHONE_OCTET)
    a, b = (Phone(manifest, u["username"], u["password"], local_addr=local, rng=rng)
            for u in manifest.users[:2])
    await a.start()
    await b.start()
    sent = await a.send_text(b.username, "hello from a")
    await b.send_text(a.username, "hello from b", door="short")
    image = photo(rng, IMAGE_SIDE)
    up = await a.send_media(b.username, image)
    for _ in range(400):       # b syncs on the NOTIFY
        msg = next((m for m in b.session.sync_state.messages
                    if m.new_msg_id == up.new_msg_id), None)
        if msg is not None:
            break
        await asyncio.sleep(0.005)
    assert await b.session.download(up.new_msg_id) == image
    web = WebClient(manifest, b.session.resolver, local_addr=local)
    assert (await web.get(msg.media.cdn_url)).body == image
    await b.people_nearby(116.31, 39.99, cell=(460, 0, 4120, 17_311))
    await a.stop(logout=True)
    await b.stop(logout=True)
    return {"msg_id": sent.new_msg_id, "image": image, "image_msg_id": up.new_msg_id}


def record(tmp: Path, script, **lab) -> tuple[Path, dict]:
    """Run `script(manifest)` against a fresh recording lab; the capture and what the
    script returned."""
    out = tmp / "recorded.pcapng"

    async def main():
        the_lab = await start_lab(LabConfig(users=2, time_scale=100, record=out,
                                            manifest_path=tmp / "manifest.json", **lab))
        try:
            return await script(the_lab.manifest)
        finally:
            await the_lab.stop()
    return out, asyncio.run(main())


@pytest.fixture(scope="module")
def chat_capture(tmp_path_factory):
    """(path, facts) of a recorded two-phone session with chat, media and nearby."""
    return record(tmp_path_factory.mktemp("chat"), _chat_and_media)
