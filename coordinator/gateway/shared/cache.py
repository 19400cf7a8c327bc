"""The response cache across gateways: finished replies in Redis, expiring after ``cache_ttl_s``, bounded.

Each host keeps its own ``dedup.ResponseCache`` in front (a hit there costs no round
trip); this one answers a repeat that another host's call answered. A reply is read
in the same script that decides who leads a key (``lua/lead.lua``), so a miss costs
nothing extra, and written by the leader when its call succeeds
(``lua/cache_put.lua``), before its lock is freed. The bound is ``cache_max_mb`` for
the fleet: entries past their TTL, then the oldest, make room (Redis runs with
``noeviction``, so the cache bounds itself). Entries hold responses only (status,
the headers returned to clients, body or events, usage): never a request or a key.
"""

from __future__ import annotations

from ..dedup import Reply
from .codec import pack_reply
from .link import RedisLink, SharedDown


class SharedCache:
    """Replies by request key in Redis, with a TTL and a byte bound."""

    def __init__(self, link: RedisLink, *, ttl_s: float, max_bytes: int) -> None:
        self.link = link
        self.ttl_ms = int(ttl_s * 1000)
        self.max_bytes = max_bytes
        self._meta = [link.key("cache-index"), link.key("cache-sizes"), link.key("cache-bytes")]

    @property
    def enabled(self) -> bool:
        """Whether replies are cached at all (``cache_ttl_s`` and ``cache_max_mb`` above 0)."""
        return self.ttl_ms > 0 and self.max_bytes > 0

    def key(self, request_key: str) -> str:
        """The Redis key of a request key's reply."""
        return self.link.key("cache", request_key)

    async def put(self, request_key: str, reply: Reply) -> bool:
        """Store ``reply`` for every gateway; False when off, too big, or Redis is down."""
        if not self.enabled:
            return False
        args = [request_key, pack_reply(reply), str(self.ttl_ms), str(self.max_bytes), self.link.key("cache", "")]
        try:
            stored = await self.link.run(lambda: self.link.script("cache_put")(keys=[self.key(request_key),
                                                                                    *self._meta], args=args))
        except SharedDown:
            return False
        return bool(stored)
