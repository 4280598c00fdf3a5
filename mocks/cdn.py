"""The two image CDNs (PROTOCOL.md section 5, "Avatars"): `wx.qlogo.cn` and `mmsns.qpic.cn`.

- `wx.qlogo.cn` serves `GET /mmhead/<key>/<size>`: the avatar of the user whose avatar key is
  `<key>`, drawn as an identicon of their username, `size` px square (0 means 640).
- `mmsns.qpic.cn` serves `GET /mmsns/<key>/0`: the bytes of an uploaded image, exactly as
  uploaded, found by the CDN key the service gave it.

Both answer with the same bytes every time, `Content-Length`, a strong `ETag` and `304 Not
Modified` on a matching `If-None-Match`, because a client's avatar cache (and a capture that
shows it working) depends on exactly that. Unknown keys and sizes are plain 404s.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from typing import Optional

from aiohttp import web

from testbed.wire.commands import MSG_IMAGE

from .mapabc import counting_middleware, set_stats
from testbed.png import identicon
from .service import AVATAR_SIZES, Service

FULL_SIZE = 640                   # size 0 in an avatar URL means the full picture
CACHE_ENTRIES = 4096              # (key, size) avatars kept; ~4096 * <10 KiB at most
AVATAR_MAX_AGE_S = 86400          # an avatar key never changes its picture
IMAGE_MAX_AGE_S = 30 * 86400      # an uploaded image never changes at all
# Exact strings, so "046" or "+46" is not quietly the same URL as "46".
_SIZE_BY_TEXT = {str(s): s for s in AVATAR_SIZES}

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
          (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))


def sniff_content_type(data: bytes) -> str:
    """The client uploads raw bytes with no type; the magic number is all there is to go on."""
    for magic, ctype in _MAGIC:
        if data.startswith(magic):
            return ctype
    return "application/octet-stream"


def strong_etag(digest: bytes) -> str:
    return f'"{digest.hex()[:32]}"'


def etag_matches(request: web.Request, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2): W/"x" matches "x"; * matches."""
    try:
        tags = request.if_none_match
    except ValueError:
        return False  # an unparseable header is ignored, as if absent
    if not tags:
        return False
    value = etag.strip('"')
    return any(t.value == "*" or t.value == value for t in tags)


def _serve(request: web.Request, body: bytes, etag: str, content_type: str,
           max_age: int) -> web.Response:
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}"}
    if etag_matches(request, etag):
        # 304 repeats the validators and caching headers but carries no body (RFC 9110 15.4.5).
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers, content_type=content_type)


class AvatarCache:
    """Generated avatars by (key, size), oldest evicted first beyond `limit` entries.

    Generation is deterministic, so eviction never changes what a client receives; the cache
    only saves re-encoding a 640 px PNG for every request.
    """

    def __init__(self, limit: int = CACHE_ENTRIES) -> None:
        self.limit = limit
        self._items: OrderedDict[tuple[str, int], tuple[bytes, str]] = OrderedDict()

    def get(self, key: str, size: int) -> Optional[tuple[bytes, str]]:
        return self._items.get((key, size))

    def put(self, key: str, size: int, body: bytes) -> tuple[bytes, str]:
        entry = (body, strong_etag(hashlib.sha256(body).digest()))
        self._items[(key, size)] = entry
        while len(self._items) > self.limit:
            self._items.popitem(last=False)
        return entry

    def __len__(self) -> int:
        return len(self._items)


def make_qlogo_app(service: Service, cache_entries: int = CACHE_ENTRIES) -> web.Application:
    """`wx.qlogo.cn`: `GET /mmhead/<key>/<size>`, size in 0 (640 px), 46, 64, 96, 132."""
    stats: Counter = Counter()
    cache = AvatarCache(cache_entries)

    async def avatar(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        size = _SIZE_BY_TEXT.get(request.match_info["size"])
        if size is None:
            raise web.HTTPNotFound()
        entry = cache.get(key, size)
        if entry is None:
            # Look the user up only on a miss: an avatar key is for life, so a cached picture
            # is still the right one.
            user = await service.store.user_by_avatar_key(key)
            if user is None:
                raise web.HTTPNotFound()
            entry = cache.put(key, size, identicon(user.username.encode("utf-8"),
                                                   size or FULL_SIZE))
        body, etag = entry
        return _serve(request, body, etag, "image/png", AVATAR_MAX_AGE_S)

    app = web.Application(middlewares=[counting_middleware(stats)])
    set_stats(app, stats)
    app.router.add_get("/mmhead/{key}/{size}", avatar)
    return app


def make_qpic_app(service: Service) -> web.Application:
    """`mmsns.qpic.cn`: `GET /mmsns/<key>/0`, an uploaded image byte for byte."""
    stats: Counter = Counter()

    async def image(request: web.Request) -> web.Response:
        if request.match_info["size"] != "0":
            raise web.HTTPNotFound()  # the lab keeps no thumbnails: only the original
        media = await service.media_for_cdn(request.match_info["key"])
        # Only images get a CDN key from the service; the type check keeps voice and video
        # behind the authenticated download command even if a store were to index them.
        if media is None or media.msg_type != MSG_IMAGE:
            raise web.HTTPNotFound()
        # The service stores SHA-256 of exactly these bytes; reusing it avoids hashing up to
        # 25 MiB on every request. A record without one (never made by the service) is hashed.
        digest = media.sha256 if len(media.sha256) == 32 else hashlib.sha256(media.data).digest()
        return _serve(request, media.data, strong_etag(digest), sniff_content_type(media.data),
                      IMAGE_MAX_AGE_S)

    app = web.Application(middlewares=[counting_middleware(stats)])
    set_stats(app, stats)
    app.router.add_get("/mmsns/{key}/{size}", image)
    return app
