"""Opening the Redis store: the connection, the settings it needs, and the fleet's incarnation.

The store's guarantees hold on one primary that keeps every write (DESIGN §13),
so ``connect`` refuses a server without ``appendonly yes`` (a restart would lose
recent claims and hand out their epochs again) or with an eviction policy other
than ``noeviction`` (Redis would delete claims under memory pressure).

The incarnation is a random value the fleet's first process writes into Redis and
every host remembers in its state folder. A Redis that lost it (flushed, rebuilt,
replaced) would otherwise look like a fresh fleet and reissue epochs that fenced
claims still hold; instead it halts the fleet with ``IncarnationError``. Every
script checks it too, so a wipe under a running fleet is caught at the next call.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..atomic import PRIVATE_DIR, PRIVATE_FILE, write_bytes_atomic
from ..clock import Clock
from ..errors import ConfigError, IncarnationError
from .redis import Keys, RedisStore, redis

INCARNATION_FILE = "redis-incarnation"
CONNECT_TIMEOUT_S = 5.0
# A call the network lost is sent again (the scripts are idempotent by claim token),
# a few times, then the store is reported unreachable.
RETRIES = 3


def connect(url: str, *, fleet: str, marker: Path, password: str | None = None,
            clock: Clock | None = None) -> RedisStore:
    """A ``RedisStore`` on ``url`` after the start-up checks; ``marker`` remembers the incarnation."""
    shown = redacted(url)
    retry = redis.retry.Retry(redis.backoff.ExponentialBackoff(cap=1.0, base=0.05), RETRIES)
    client = redis.Redis.from_url(url, password=password, decode_responses=True, retry=retry,
                                  socket_timeout=CONNECT_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S)
    store = RedisStore(client, keys=Keys(fleet), incarnation="", url=shown, clock=clock)
    with store._talking():  # noqa: SLF001  (one translation of redis-py's errors, the store's)
        check_settings(client, shown)
        store.incarnation = settle_incarnation(client, store.keys, marker, shown)
    return store


def check_settings(client: redis.Redis, url: str) -> None:
    """Refuse a server that may lose or evict writes, naming the setting to change."""
    if int(client.info("persistence").get("aof_enabled", 0)) != 1:
        raise ConfigError(f"Redis at {url} has appendonly no, so a restart loses claims; set `appendonly yes` "
                          "in redis.conf (or `redis-cli CONFIG SET appendonly yes`)", key="fleet.state")
    policy = client.info("memory").get("maxmemory_policy", "noeviction")
    if policy != "noeviction":
        raise ConfigError(f"Redis at {url} has maxmemory-policy {policy}, so it may evict claims; set "
                          "`maxmemory-policy noeviction` in redis.conf (or with `redis-cli CONFIG SET`)",
                          key="fleet.state")


def settle_incarnation(client: redis.Redis, keys: Keys, marker: Path, url: str) -> str:
    """The fleet's incarnation: created with the fleet, then the same forever, or ``IncarnationError``."""
    known = marker.read_text("utf-8").strip() if marker.is_file() else None
    found = client.get(keys.incarnation)
    if found is None and known is None:
        if client.exists(keys.events, keys.records, keys.leases):
            raise IncarnationError(url, "(none recorded)", None, marker=marker)  # data without its incarnation
        client.set(keys.incarnation, secrets.token_hex(8), nx=True)  # a racing first process may win
        found = client.get(keys.incarnation)
    if found is None or (known is not None and found != known):
        raise IncarnationError(url, known or "(none recorded)", found, marker=marker)
    if known is None:
        marker.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        write_bytes_atomic(marker, (found + "\n").encode(), mode=PRIVATE_FILE)
    return found


def redacted(url: str) -> str:
    """``url`` without a password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username + '@' if parts.username else ''}{host}{':' + str(parts.port) if parts.port else ''}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
