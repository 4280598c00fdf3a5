"""wx.qlogo.cn and mmsns.qpic.cn over real sockets: valid PNGs, stable bytes, ETag and 304."""

from __future__ import annotations

import hashlib
import struct
import zlib

import aiohttp
import pytest
from aiohttp import web

from mocks.cdn import AvatarCache, make_qlogo_app, make_qpic_app, sniff_content_type
from testbed.png import encode_png, identicon
from mocks.service import AVATAR_SIZES, RequestContext, Service
from mocks.state import MediaRecord, MemoryStore
from testbed.wire import BY_NAME, pb


def check_png(data: bytes) -> tuple[int, int, bytes]:
    """Walk every chunk (CRCs included); return width, height and the inflated scanlines."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds, idat = 8, [], b""
    width = height = None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        payload = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert len(payload) == length
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF, kind
        kinds.append(kind)
        if kind == b"IHDR":
            width, height, depth, ctype, comp, filt, inter = struct.unpack(">IIBBBBB", payload)
            assert (depth, ctype, comp, filt, inter) == (8, 2, 0, 0, 0)
        elif kind == b"IDAT":
            idat += payload
        pos += 12 + length
    assert pos == len(data)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    raw = zlib.decompress(idat)
    assert len(raw) == height * (1 + 3 * width)
    assert all(raw[y * (1 + 3 * width)] == 0 for y in range(height))  # filter type None
    return width, height, raw


@pytest.fixture
async def lab():
    svc = Service(MemoryStore())
    users = await svc.seed_users(3)
    runners, bases = [], []
    for app in (make_qlogo_app(svc), make_qpic_app(svc)):
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        runners.append(runner)
        bases.append((app, f"http://{host}:{port}"))
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        yield svc, users, http, bases[0], bases[1]
    for runner in runners:
        await runner.cleanup()


async def fetch(http, url, **headers):
    async with http.get(url, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


async def test_every_size_is_a_valid_png(lab):
    _, users, http, (app, base), _ = lab
    key = users[0].avatar_key
    for size in AVATAR_SIZES:
        status, headers, body = await fetch(http, f"{base}/mmhead/{key}/{size}")
        assert status == 200
        assert headers["Content-Type"] == "image/png"
        assert int(headers["Content-Length"]) == len(body)
        assert "max-age=" in headers["Cache-Control"]
        assert headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        w, h, raw = check_png(body)
        assert w == h == (size or 640)
        # An identicon: exactly two colours, the background and one foreground.
        pixels = {raw[i:i + 3] for y in range(h) for i in
                  range(y * (1 + 3 * w) + 1, (y + 1) * (1 + 3 * w), 3 * max(1, w // 23))}
        assert len(pixels) == 2
        # Mirrored left to right, pixel for pixel, with a background margin all round.
        stride = 1 + 3 * w
        lines = [raw[y * stride + 1:(y + 1) * stride] for y in range(h)]
        for line in lines:
            px = [line[i:i + 3] for i in range(0, len(line), 3)]
            assert px == px[::-1]
            assert px[0] == b"\xf0\xf0\xf0"
        assert lines[0] == lines[-1] == b"\xf0\xf0\xf0" * w
    assert app["stats"][f"/mmhead/{key}/0"] == 1
    assert sum(app["stats"].values()) == len(AVATAR_SIZES)


async def test_same_bytes_every_time_and_users_differ(lab):
    svc, users, http, (_, base), _ = lab
    url = f"{base}/mmhead/{users[0].avatar_key}/96"
    first, second = (await fetch(http, url))[2], (await fetch(http, url))[2]
    assert first == second
    # Same bytes from a fresh server too: nothing depends on the process or the cache.
    assert first == identicon(users[0].username.encode(), 96)
    others = {(await fetch(http, f"{base}/mmhead/{u.avatar_key}/96"))[2] for u in users}
    assert len(others) == 3


async def test_etag_and_304(lab):
    _, users, http, (_, base), _ = lab
    url = f"{base}/mmhead/{users[1].avatar_key}/132"
    _, headers, body = await fetch(http, url)
    etag = headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    for value in (etag, f'"nope", {etag}', "*", f"W/{etag}"):
        status, h304, b304 = await fetch(http, url, **{"If-None-Match": value})
        assert status == 304, value
        assert b304 == b"" and h304["ETag"] == etag
    for value in ('"nope"', '"nope", W/"other"', "garbage"):
        status, _, again = await fetch(http, url, **{"If-None-Match": value})
        assert status == 200 and again == body, value


async def test_head_has_length_without_body(lab):
    _, users, http, (_, base), _ = lab
    url = f"{base}/mmhead/{users[2].avatar_key}/64"
    _, _, body = await fetch(http, url)
    async with http.head(url) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == len(body)
        assert await resp.read() == b""


@pytest.mark.parametrize("path", [
    "/mmhead/{key}/45", "/mmhead/{key}/640", "/mmhead/{key}/046", "/mmhead/{key}/+46",
    "/mmhead/{key}/abc", "/mmhead/{key}/-1", "/mmhead/{key}/", "/mmhead/{key}/96/x",
    "/mmhead/{key}", "/mmhead/0123456789abcdef01234567/96", "/mmhead/%00/0", "/mmsns/{key}/0",
])
async def test_qlogo_404(lab, path):
    _, users, http, (_, base), _ = lab
    status, _, _ = await fetch(http, base + path.format(key=users[0].avatar_key))
    assert status == 404


async def test_qlogo_only_get(lab):
    _, users, http, (_, base), _ = lab
    async with http.post(f"{base}/mmhead/{users[0].avatar_key}/96") as resp:
        assert resp.status == 405


def test_avatar_cache_bounded():
    cache = AvatarCache(limit=3)
    for i in range(5):
        cache.put(f"k{i}", 46, bytes([i]))
    assert len(cache) == 3
    assert cache.get("k0", 46) is None and cache.get("k1", 46) is None
    assert cache.get("k4", 46)[0] == b"\x04"


def test_png_writer_rejects_bad_input():
    assert check_png(encode_png(2, 1, b"\x01\x02\x03\x04\x05\x06"))[2] == \
        b"\x00\x01\x02\x03\x04\x05\x06"
    with pytest.raises(ValueError):
        encode_png(2, 2, b"\x00" * 11)
    with pytest.raises(ValueError):
        encode_png(0, 1, b"")


async def test_qpic_serves_stored_image_with_304(lab):
    svc, _, http, _, (app, base) = lab
    data = identicon(b"a photo", 200)
    await svc.store.put_media(MediaRecord(msg_id=1, sender=1, receiver=2, msg_type=3,
                                          data=data, sha256=hashlib.sha256(data).digest(),
                                          cdn_key="abc"))
    status, headers, body = await fetch(http, f"{base}/mmsns/abc/0")
    assert status == 200 and body == data
    assert headers["Content-Type"] == "image/png"
    assert int(headers["Content-Length"]) == len(data)
    etag = headers["ETag"]
    status, h304, b304 = await fetch(http, f"{base}/mmsns/abc/0", **{"If-None-Match": etag})
    assert status == 304 and b304 == b"" and h304["ETag"] == etag
    assert (await fetch(http, f"{base}/mmsns/abc/0"))[2] == data
    assert app["stats"]["/mmsns/abc/0"] == 3


async def test_qpic_404s(lab):
    svc, _, http, _, (_, base) = lab
    voice = b"#!AMR\n" + b"\x01" * 100
    await svc.store.put_media(MediaRecord(msg_id=2, sender=1, receiver=2, msg_type=34,
                                          data=voice, sha256=hashlib.sha256(voice).digest(),
                                          cdn_key="voicekey"))
    jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 50
    await svc.store.put_media(MediaRecord(msg_id=3, sender=1, receiver=2, msg_type=3,
                                          data=jpeg, sha256=hashlib.sha256(jpeg).digest(),
                                          cdn_key="jpg"))
    for path in ("/mmsns/unknown/0", "/mmsns/voicekey/0", "/mmsns/jpg/1", "/mmsns/jpg/00",
                 "/mmsns/jpg", "/mmhead/jpg/0"):
        assert (await fetch(http, base + path))[0] == 404, path
    status, headers, body = await fetch(http, f"{base}/mmsns/jpg/0")
    assert status == 200 and body == jpeg and headers["Content-Type"] == "image/jpeg"


def test_sniff_content_type():
    assert sniff_content_type(b"GIF89a....") == "image/gif"
    assert sniff_content_type(b"GIF87a") == "image/gif"
    assert sniff_content_type(b"\xff\xd8\xff\xdb") == "image/jpeg"
    assert sniff_content_type(b"\x89PNG\r\n\x1a\nxxxx") == "image/png"
    assert sniff_content_type(b"\x89PNG") == "application/octet-stream"
    assert sniff_content_type(b"") == "application/octet-stream"


async def test_uploaded_image_reaches_the_cdn(lab):
    """The whole path: upload through the service, then fetch the AddMsg's cdn_url."""
    svc, users, http, _, (_, base) = lab
    auth = await svc.handle(BY_NAME["MANUALAUTH"],
                            pb.ManualAuthRequest(username="user0001", password="pass0001"),
                            RequestContext())
    gif = b"GIF89a" + bytes(range(256)) * 300   # > one 64 KiB chunk: two uploads
    base_req = pb.BaseRequest(uin=auth.uin, session_key=auth.session_key)
    pos, resp = 0, None
    while pos < len(gif):
        chunk = gif[pos:pos + 65536]
        resp = await svc.handle(BY_NAME["UPLOADMSGIMG"], pb.UploadMediaRequest(
            base=base_req, client_media_id="img-1", to_user=users[1].username,
            total_len=len(gif), start_pos=pos, data=chunk), RequestContext())
        assert resp.base.ret == 0
        pos = resp.start_pos
    media = await svc.store.get_media(resp.new_msg_id)
    assert media.cdn_key
    status, headers, body = await fetch(http, f"{base}/mmsns/{media.cdn_key}/0")
    assert status == 200 and body == gif and headers["Content-Type"] == "image/gif"
