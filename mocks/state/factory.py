"""`make_store(url)`: the store a server process uses, named by one string (`--store URL`).

- `memory:` (or nothing): the embedded in-memory store, one process.
- `redis://HOST:PORT/DB` (also `rediss://`, `unix://PATH?db=N`): the Redis store; every
  process given the same URL and namespace serves the same lab. The namespace comes from
  `?namespace=NAME` in the URL, else the `namespace` argument (default `lab`).
"""

from __future__ import annotations

from typing import Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .base import Store
from .memory import MemoryStore

REDIS_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_NAMESPACE = "lab"


def split_namespace(url: str) -> tuple[str, Optional[str]]:
    """The URL without its `namespace` query parameter, and that parameter (if any)."""
    # the query is cut off the URL as written, not rebuilt by `urlunsplit`: that writes
    # `unix:///path` back as `unix:/path`, which redis-py 8 refuses
    base, _, query_text = url.partition("?")
    query = parse_qsl(query_text, keep_blank_values=True)
    names = [v for k, v in query if k == "namespace"]
    rest = urlencode([(k, v) for k, v in query if k != "namespace"])
    return (f"{base}?{rest}" if rest else base), (names[-1] if names else None)


def redact_url(url: str) -> str:
    """The store URL with any password replaced by `***`, fit to print or write down."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


async def make_store(url: Optional[str] = None, *,
                     namespace: Optional[str] = None) -> Store:
    """Open the store `url` names (connected and subscribed to its events, ready to serve).

    `ValueError` for a URL this cannot use, `ConnectionError` if the server does not answer.
    """
    if not url or url in ("memory", "memory:"):
        return MemoryStore()
    scheme = urlsplit(url).scheme
    if scheme not in REDIS_SCHEMES:
        raise ValueError(f"unsupported store {url!r}: use memory: or redis://HOST:PORT/DB")
    from .redis import RedisStore   # redis-py is imported only by labs that use it
    plain, in_url = split_namespace(url)
    return await RedisStore.connect(plain, in_url or namespace or DEFAULT_NAMESPACE)
