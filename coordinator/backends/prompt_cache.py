"""Anthropic-style prompt-cache accounting: the one implementation of the documented rules.

The echo backend and the tests' fake upstream both use it, so they report the
``usage`` numbers a real Anthropic upstream would report for the same traffic.
The rules (platform.claude.com, "Prompt caching"):

* The prompt is a sequence of blocks in the order tools → system → messages.
  A breakpoint is a block carrying ``cache_control: {"type": "ephemeral"}``
  (``"ttl": "5m"``, the default, or ``"1h"``) on a tool, a system block or a
  top-level message content block. A top-level ``cache_control`` on the request
  (automatic caching) puts one on the last block.
* More than 4 breakpoints is a 400 ``invalid_request_error``.
* A breakpoint's prefix is every block up to and including it. A prefix shorter
  than ``min_tokens`` (1024) is never written nor read.
* A read needs an exact match of a prefix written earlier and not yet expired.
  Besides the breakpoint itself, the lookup tries the ``LOOKBACK_BLOCKS`` block
  boundaries before it (the documented lookback), longest prefix first. A read
  refreshes the entry's TTL.
* Every breakpoint past the read point is written. Usage then reports
  ``cache_read_input_tokens`` (the prefix read), ``cache_creation_input_tokens``
  (from there to the last breakpoint) and ``input_tokens`` (the rest).

Tokens are estimated, not counted: a block costs ceil(utf-8 bytes of its canonical
JSON / 4). Canonical means sorted keys, compact separators, ``cache_control``
removed (moving a breakpoint does not change the prompt) and the message role
included; a string ``system`` or message ``content`` is one text block. A prefix
costs the sum of its blocks, so the three usage numbers add up to the prompt.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CacheControlError

MAX_BREAKPOINTS = 4
MIN_TOKENS = 1024
LOOKBACK_BLOCKS = 20
TTL_S = {"5m": 300.0, "1h": 3600.0}
_MAX_ENTRIES = 50_000  # bounds memory in a long benchmark; expired entries go first


@dataclass(frozen=True)
class CacheUsage:
    """How a prompt's input tokens split between uncached, written and read."""

    input_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def total(self) -> int:
        """Every input token of the prompt, cached or not."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


# One encoder for every block: json.dumps would build a new one per call with these options.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def _block_cost(data: bytes) -> int:
    return -(-len(data) // 4)


def _ttl_of(block: Any) -> float | None:
    """The TTL of a breakpoint on ``block``, or None when it is not one."""
    if not isinstance(block, Mapping):
        return None
    control = block.get("cache_control")
    if not isinstance(control, Mapping) or control.get("type") != "ephemeral":
        return None
    return TTL_S.get(str(control.get("ttl", "5m")), TTL_S["5m"])


def _strip(block: Any) -> Any:
    if isinstance(block, Mapping) and "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def prompt_blocks(body: Mapping[str, Any]) -> list[tuple[bytes, float | None]]:
    """The prompt as (canonical bytes, breakpoint TTL or None) per block, in cache order."""
    blocks: list[tuple[bytes, float | None]] = []
    for tool in body.get("tools") or ():
        blocks.append((_dumps(["tool", _strip(tool)]), _ttl_of(tool)))
    system = body.get("system")
    if isinstance(system, str) and system:
        blocks.append((_dumps(["system", {"type": "text", "text": system}]), None))
    elif isinstance(system, list):
        for block in system:
            blocks.append((_dumps(["system", _strip(block)]), _ttl_of(block)))
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            blocks.append((_dumps(["message", message]), None))
            continue
        role, content = message.get("role"), message.get("content")
        if isinstance(content, list):
            for index, block in enumerate(content):
                blocks.append((_dumps([role, index, _strip(block)]), _ttl_of(block)))
        else:
            blocks.append((_dumps([role, 0, {"type": "text", "text": content}]), None))
    automatic = _ttl_of(body)  # top-level cache_control: breakpoint on the last block
    if automatic is not None and blocks and blocks[-1][1] is None:
        blocks[-1] = (blocks[-1][0], automatic)
    return blocks


def count_tokens(body: Mapping[str, Any]) -> int:
    """Estimated input tokens of a request body (Anthropic or OpenAI shape)."""
    return sum(_block_cost(data) for data, _ in prompt_blocks(body))


class PromptCache:
    """Prefix cache state of one upstream: what was written, when it expires, counters."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, min_tokens: int = MIN_TOKENS) -> None:
        self.clock = clock
        self.min_tokens = min_tokens
        self.writes = 0  # requests that wrote a prefix
        self.reads = 0  # requests that read a prefix
        self.write_tokens = 0
        self.read_tokens = 0
        self._entries: dict[bytes, tuple[float, float]] = {}  # prefix digest -> (expires_at, ttl_s)
        self._lock = threading.Lock()  # the fake upstream's thread and the test thread both touch it

    def account(self, body: Mapping[str, Any]) -> CacheUsage:
        """Split a request's input tokens into uncached / written / read, updating the cache."""
        blocks = prompt_blocks(body)
        breakpoints = [i for i, (_, ttl) in enumerate(blocks) if ttl is not None]
        if len(breakpoints) > MAX_BREAKPOINTS:
            raise CacheControlError(f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be "
                                    f"provided. Found {len(breakpoints)}.")
        cumulative: list[int] = []
        running = 0
        for data, _ in blocks:
            running += _block_cost(data)
            cumulative.append(running)
        if not breakpoints or cumulative[breakpoints[-1]] < self.min_tokens:
            return CacheUsage(running)
        digests = _prefix_digests(blocks, breakpoints[-1])
        with self._lock:
            read_at = self._read(breakpoints, digests, cumulative)
            self._write(breakpoints, read_at, digests, blocks, cumulative)
            read = cumulative[read_at] if read_at >= 0 else 0
            created = cumulative[breakpoints[-1]] - read
            self._count(read, created)
        return CacheUsage(running - read - created, created, read)

    def _read(self, breakpoints: list[int], digests: list[bytes], cumulative: list[int]) -> int:
        """Index of the longest live cached prefix in the lookback windows, or -1."""
        now = self.clock()
        for point in reversed(breakpoints):
            for index in range(point, max(point - LOOKBACK_BLOCKS, 0) - 1, -1):
                if cumulative[index] < self.min_tokens:
                    break
                entry = self._entries.get(digests[index])
                if entry is not None and entry[0] > now:
                    self._entries[digests[index]] = (now + entry[1], entry[1])  # a read refreshes the TTL
                    return index
        return -1

    def _write(self, breakpoints: list[int], read_at: int, digests: list[bytes],
               blocks: list[tuple[bytes, float | None]], cumulative: list[int]) -> None:
        now = self.clock()
        if len(self._entries) >= _MAX_ENTRIES:
            self._evict(now)
        for point in breakpoints:
            if point > read_at and cumulative[point] >= self.min_tokens:
                ttl = blocks[point][1] or TTL_S["5m"]
                self._entries[digests[point]] = (now + ttl, ttl)

    def _evict(self, now: float) -> None:
        live = {k: v for k, v in self._entries.items() if v[0] > now}
        while len(live) >= _MAX_ENTRIES:  # still full: drop the oldest written
            live.pop(next(iter(live)))
        self._entries = live

    def _count(self, read: int, created: int) -> None:
        if read:
            self.reads += 1
            self.read_tokens += read
        if created:
            self.writes += 1
            self.write_tokens += created


def _prefix_digests(blocks: list[tuple[bytes, float | None]], last: int) -> list[bytes]:
    """A hash per block boundary: digest i identifies blocks[0..i] exactly."""
    digests: list[bytes] = []
    running = hashlib.blake2b(digest_size=16)
    for data, _ in blocks[: last + 1]:
        # Length-prefixed so block boundaries are part of what is hashed.
        running.update(len(data).to_bytes(8, "little"))
        running.update(data)
        digests.append(running.copy().digest())
    return digests
