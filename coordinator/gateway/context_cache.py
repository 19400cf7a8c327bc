"""The provider side of collapsing context: prompt-cache breakpoints, a warm-up barrier, prefix routing.

Breakpoints. Anthropic caches a prompt prefix only where a request marks it with
``cache_control`` (its dialect's ``cache_marks``). With ``context_cache = "auto"`` a request that carries none gets
one after the shared prefix (tools + system: the part every task of a fleet shares)
and, in a multi-turn history, a rolling one on the last block so the next turn reads
the whole conversation back. That is at most two of Anthropic's four. A request that
brings its own ``cache_control`` anywhere is left exactly as it came.

Warm-up barrier. N requests that share a new prefix and arrive together would each
pay a cache write. The first one goes; the others wait (at most ``wait_s``) until its
response starts, by which time the provider has written the prefix, so it is written
once and read N-1 times. The prefix stays warm for the provider's 5-minute TTL,
refreshed on each use.

Prefix routing. For a backend with several ``base_url``s (vLLM, SGLang, llama.cpp
replicas), requests with the same prefix go to the same server, chosen by
rendezvous hashing so adding a server moves only its share of prefixes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ..clock import REAL_CLOCK, Clock
from .dialects import Dialect

EPHEMERAL = {"type": "ephemeral"}
MAX_BREAKPOINTS = 4
# Anthropic's smallest cacheable prefix (Sonnet/Opus); shorter prefixes are not worth a barrier.
MIN_PREFIX_TOKENS = 1024
CHARS_PER_TOKEN = 4  # a deliberately rough estimate; only thresholds depend on it
PROVIDER_TTL_S = 300.0
_CACHEABLE_BLOCKS = frozenset({"text", "image", "document", "tool_use", "tool_result", "search_result"})
_MAX_WARM = 4096


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _has_cache_control(value: Any) -> bool:
    if isinstance(value, dict):
        return "cache_control" in value or any(_has_cache_control(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_cache_control(v) for v in value)
    return False


def brings_own_cache_control(body: Mapping[str, Any]) -> bool:
    """Whether the client placed any ``cache_control`` itself."""
    return any(_has_cache_control(body.get(part)) for part in ("tools", "system", "messages"))


def count_breakpoints(body: Mapping[str, Any]) -> int:
    """How many ``cache_control`` markers a body carries (tests and assertions use it)."""
    return _dumps({k: body.get(k) for k in ("tools", "system", "messages")}).count('"cache_control"')


def _eligible(block: Any) -> bool:
    if not isinstance(block, dict) or block.get("type") not in _CACHEABLE_BLOCKS:
        return False
    return block.get("type") != "text" or bool(block.get("text"))


def _mark_last(blocks: list[Any]) -> list[Any] | None:
    """A copy of ``blocks`` with a breakpoint on the last eligible block, or None if none is."""
    for index in range(len(blocks) - 1, -1, -1):
        if _eligible(blocks[index]):
            marked = list(blocks)
            marked[index] = {**blocks[index], "cache_control": dict(EPHEMERAL)}
            return marked
    return None


def _as_blocks(content: Any) -> list[Any] | None:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else None
    return content if isinstance(content, list) else None


def add_breakpoints(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with automatic breakpoints (a new dict; the input is not modified)."""
    if brings_own_cache_control(body):
        return body
    out = dict(body)
    system = _as_blocks(body.get("system"))
    marked_system = _mark_last(system) if system else None
    if marked_system:
        out["system"] = marked_system
    elif isinstance(body.get("tools"), list) and body["tools"] and isinstance(body["tools"][-1], dict):
        out["tools"] = [*body["tools"][:-1], {**body["tools"][-1], "cache_control": dict(EPHEMERAL)}]
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) >= 3 and isinstance(messages[-1], dict):
        blocks = _as_blocks(messages[-1].get("content"))
        marked = _mark_last(blocks) if blocks else None
        if marked:
            out["messages"] = [*messages[:-1], {**messages[-1], "content": marked}]
    return out


def shared_prefix(dialect: Dialect, body: Mapping[str, Any]) -> tuple[bytes, int]:
    """(key, estimated tokens) of the part of a request that tasks share (the model and ``dialect.prefix_parts``)."""
    text = _dumps({"model": body.get("model"), **dialect.prefix_parts(body)})
    return hashlib.blake2b(text.encode(), digest_size=16).digest(), len(text) // CHARS_PER_TOKEN


def pick_base_url(urls: list[str], prefix_key: bytes) -> str | None:
    """The server for a prefix among several (rendezvous hashing); None when there is one or none."""
    if len(urls) < 2:
        return None
    return max(urls, key=lambda url: hashlib.blake2b(prefix_key + url.encode(), digest_size=8).digest())


class WarmupBarrier:
    """Lets the first request with a new prefix go, and holds the others until it has started."""

    def __init__(self, *, wait_s: float, ttl_s: float = PROVIDER_TTL_S, clock: Clock = REAL_CLOCK) -> None:
        self.wait_s = wait_s
        self.ttl_s = ttl_s
        self.clock = clock
        self.waiting = 0  # requests held right now, behind a warmer
        self._warm: dict[bytes, float] = {}
        self._warming: dict[bytes, asyncio.Event] = {}

    def is_warm(self, key: bytes) -> bool:
        """Whether the provider should still hold this prefix (and refresh it: a use extends its TTL)."""
        now = self.clock.now()
        if self._warm.get(key, 0.0) > now:
            self._warm[key] = now + self.ttl_s
            return True
        return False

    async def enter(self, key: bytes) -> bool:
        """Wait if another request is warming ``key``; True when the caller must warm it itself."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while not self.is_warm(key):
            event = self._warming.get(key)
            if event is None:
                self._warming[key] = asyncio.Event()
                return True
            self.waiting += 1
            try:
                async with asyncio.timeout_at(deadline):
                    await event.wait()
            except TimeoutError:
                return False  # bounded: go without the cache rather than wait on
            finally:
                self.waiting -= 1
        return False

    def release(self, key: bytes, *, warmed: bool) -> None:
        """The warmer's response started (``warmed``) or it failed: let the waiters go."""
        if warmed:
            self._warm[key] = self.clock.now() + self.ttl_s
            if len(self._warm) > _MAX_WARM:
                self._prune()
        event = self._warming.pop(key, None)
        if event is not None:
            event.set()

    def _prune(self) -> None:
        now = self.clock.now()
        for key in [k for k, expires in self._warm.items() if expires <= now]:
            del self._warm[key]
        while len(self._warm) > _MAX_WARM:
            del self._warm[next(iter(self._warm))]
