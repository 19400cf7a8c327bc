"""What is the Redis store's own, beyond the contract (tests/test_store.py): start-up checks,
the incarnation, an unreachable server, idempotent retries, server time, key layout, and
selecting it from fleet.toml. Every test runs a real redis-server (tests/redis_support.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.clock import ManualClock
from coordinator.errors import ClaimLostError, ConfigError, IncarnationError, StoreUnavailableError
from coordinator.queue.claims import current_holder
from coordinator.tasks.model import State
from tests.conftest import coordinator_argv, subprocess_env
from tests.redis_support import RedisServer, free_port, need_redis, redis_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("redis_server")

try:
    from coordinator.store.redis import RedisStore
    from coordinator.store.redis_setup import connect, redacted
except ConfigError:  # pragma: no cover - redis-py absent (an optional extra): the fixture skips, or fails in CI
    RedisStore = None  # type: ignore[assignment,misc]


@pytest.fixture
def server(redis_server: RedisServer) -> Iterator[RedisServer]:
    redis_server.flush()
    yield redis_server
    client = redis_server.client()  # put back what a test changed
    client.config_set("appendonly", "yes")
    client.config_set("maxmemory-policy", "noeviction")


@pytest.fixture
def open_at(server: RedisServer, tmp_path: Path) -> Callable[..., RedisStore]:
    def make(fleet: str = "f", marker: str = "incarnation", clock: ManualClock | None = None) -> RedisStore:
        return connect(server.url, fleet=fleet, marker=tmp_path / marker, clock=clock)

    return make


# -- start-up checks ---------------------------------------------------------------------


def test_appendonly_no_is_refused_with_its_fix(server: RedisServer, open_at: Callable[..., RedisStore]) -> None:
    server.client().config_set("appendonly", "no")
    with pytest.raises(ConfigError, match="appendonly yes") as caught:
        open_at()
    assert "\n" not in str(caught.value) and caught.value.key == "fleet.state"


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_an_evicting_policy_is_refused_with_its_fix(server: RedisServer, open_at: Callable[..., RedisStore],
                                                    policy: str) -> None:
    server.client().config_set("maxmemory-policy", policy)
    with pytest.raises(ConfigError, match=f"maxmemory-policy {policy}.*maxmemory-policy noeviction"):
        open_at()


def test_an_unreachable_redis_is_one_line_naming_the_url(tmp_path: Path) -> None:
    url = f"redis://:hunter2hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreUnavailableError) as caught:
        connect(url, fleet="f", marker=tmp_path / "m")
    message = str(caught.value)
    assert "\n" not in message and "hunter2" not in message and "cannot reach the state store" in message
    assert redacted(url) in message


def test_a_redis_killed_under_the_store_is_unavailable_then_resumes_from_its_aof(tmp_path: Path) -> None:
    need_redis()
    own = RedisServer(tmp_path / "own").start()
    try:
        store = connect(own.url, fleet="f", marker=tmp_path / "m")
        claim = store.claim("t1", current_holder("a1"), lease_s=30)
        own.kill()
        with pytest.raises(StoreUnavailableError):
            store.renew(claim)
        own.start()  # same port and folder: it replays its AOF
        assert store.read_claim("t1") == claim
        assert store.finish(claim, ok=True, max_attempts=3).state == State.DONE
    finally:
        own.stop()


# -- the incarnation ---------------------------------------------------------------------


def test_a_flushed_redis_halts_the_running_store(server: RedisServer, open_at: Callable[..., RedisStore]) -> None:
    store = open_at()
    claim = store.claim("t1", current_holder("a1"), lease_s=30)
    server.flush()
    for action in (lambda: store.renew(claim), lambda: store.claim("t2", current_holder("a1"), lease_s=30),
                   lambda: store.append_event("note")):
        with pytest.raises(IncarnationError, match="no incarnation"):
            action()
    assert server.client().keys("*") == []  # refused before any write: nothing recreated


def test_a_flushed_redis_is_refused_at_start_until_the_marker_is_removed(
        server: RedisServer, open_at: Callable[..., RedisStore], tmp_path: Path) -> None:
    first = open_at().incarnation
    assert open_at().incarnation == first  # the same fleet, opened again
    server.flush()
    with pytest.raises(IncarnationError, match="wiped or replaced.*delete .*incarnation"):
        open_at()
    (tmp_path / "incarnation").unlink()
    assert open_at().incarnation != first  # the user said so: a new fleet


def test_a_replaced_incarnation_is_refused(server: RedisServer, open_at: Callable[..., RedisStore]) -> None:
    store = open_at()
    server.client().set(store.keys.incarnation, "someone-else")
    with pytest.raises(IncarnationError, match="someone-else"):
        store.claim("t1", current_holder("a1"), lease_s=30)
    with pytest.raises(IncarnationError):
        open_at()


def test_fleet_data_without_an_incarnation_is_refused(server: RedisServer,
                                                      open_at: Callable[..., RedisStore]) -> None:
    store = open_at(marker="host-a")
    store.claim("t1", current_holder("a1"), lease_s=30)
    server.client().delete(store.keys.incarnation)
    with pytest.raises(IncarnationError):
        open_at(marker="host-b")  # a host that never saw this fleet: the data proves it existed


def test_a_second_host_adopts_the_fleets_incarnation(open_at: Callable[..., RedisStore]) -> None:
    assert open_at(marker="host-a").incarnation == open_at(marker="host-b").incarnation


# -- idempotent retries ------------------------------------------------------------------


def test_a_finish_sent_twice_is_answered_once(open_at: Callable[..., RedisStore]) -> None:
    store = open_at(clock=ManualClock())
    claim = store.claim("t1", current_holder("a1"), lease_s=30)
    assert claim.token
    first = store.finish(claim, ok=True, max_attempts=3)
    again = store.finish(claim, ok=True, max_attempts=3)  # the reply to the first was lost
    assert again == first and [e["event"] for e in store.read_events(0)[0]] == ["claimed", "done"]
    with pytest.raises(ClaimLostError):
        store.release(claim, reason="not what it did")  # only the same operation replays


def test_a_claim_sent_twice_is_one_claim(open_at: Callable[..., RedisStore],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_at()
    monkeypatch.setattr("coordinator.store.redis.secrets.token_hex", lambda _n: "fixedtoken")
    first = store.claim("t1", current_holder("a1"), lease_s=30)
    again = store.claim("t1", current_holder("a1"), lease_s=30)
    assert again == first and first.epoch == 1
    assert [e["event"] for e in store.read_events(0)[0]] == ["claimed"]


def test_a_stale_claim_with_another_token_is_still_fenced(open_at: Callable[..., RedisStore]) -> None:
    store = open_at()
    old = store.claim("t1", current_holder("a1"), lease_s=30)
    store.reclaim(old, reason="expired", max_attempts=3)
    new = store.claim("t1", current_holder("a1"), lease_s=30)  # same agent, next epoch, new token
    with pytest.raises(ClaimLostError):
        store.finish(old, ok=True, max_attempts=3)
    assert store.finish(new, ok=True, max_attempts=3).state == State.DONE


# -- time, keys, fleets ------------------------------------------------------------------


def test_without_a_test_clock_scripts_use_the_servers_time(server: RedisServer,
                                                           open_at: Callable[..., RedisStore]) -> None:
    store = open_at()
    before = store.now()
    claim = store.claim("t1", current_holder("a1"), lease_s=30)
    after = store.now()
    assert before <= claim.claimed_at <= after
    event = store.read_events(0)[0][0]
    assert event["ts"] == claim.claimed_at
    assert server.client().zscore(store.keys.leases, "t1") == pytest.approx(claim.renewed_at + 30, abs=1e-6)


def test_every_key_carries_the_fleets_hash_tag(server: RedisServer, open_at: Callable[..., RedisStore]) -> None:
    store = open_at(fleet="blue")
    claim = store.claim("t1", current_holder("a1"), lease_s=30)
    store.write_agent("a1", {"id": "a1"})
    store.set_paused(True)
    store.land(claim, lambda: "abc")
    assert server.client().keys("*")
    assert all("{fleet:blue}" in key for key in server.client().keys("*"))


def test_two_fleets_share_one_redis(open_at: Callable[..., RedisStore]) -> None:
    blue, green = open_at(fleet="blue"), open_at(fleet="green", marker="green")
    assert blue.claim("t1", current_holder("a1"), lease_s=30) is not None
    assert green.claim("t1", current_holder("a1"), lease_s=30) is not None
    assert blue.incarnation != green.incarnation
    assert len(blue.read_events(0)[0]) == len(green.read_events(0)[0]) == 1


def test_the_records_keep_the_file_stores_json_shape(open_at: Callable[..., RedisStore], tmp_path: Path) -> None:
    from coordinator.store.file import FileStore  # noqa: PLC0415

    stores = [open_at(clock=ManualClock()), FileStore(tmp_path / "state", clock=ManualClock())]
    shapes = []
    for store in stores:
        claim = store.claim("t1", current_holder("a1"), lease_s=30)
        record = store.finish(claim, ok=False, error="boom", max_attempts=3, usage={"usd": 0.5},
                              extra={"run_ms": 3}, backoff_s=2.0)
        shapes.append((json.dumps(record.to_json()), store.read_events(0)[0]))
    assert shapes[0] == shapes[1]


# -- selecting it ----------------------------------------------------------------------------


def test_status_runs_on_a_password_protected_redis_named_in_fleet_toml(
        tmp_path: Path, make_fleet: Callable[..., Path]) -> None:
    need_redis()
    own = RedisServer(tmp_path / "own", "--requirepass", "s3cret-pass").start()
    try:
        root = make_fleet(f'[fleet]\nstate = "redis://127.0.0.1:{own.port}/0"\n'
                          'state_password_env = "FLEET_REDIS_PASSWORD"\n',
                          tasks={"t1.toml": 'prompt = "x"\n'})
        run = lambda **env: subprocess.run(coordinator_argv("-C", str(root), "status", "--json"),  # noqa: E731
                                           capture_output=True, text=True, env=subprocess_env(**env), timeout=60)
        missing = run()
        assert missing.returncode == 2 and "FLEET_REDIS_PASSWORD is not set" in missing.stderr
        wrong = run(FLEET_REDIS_PASSWORD="nope")
        assert wrong.returncode != 0 and len(wrong.stderr.strip().splitlines()) == 1
        assert "refused the password" in wrong.stderr and "nope" not in wrong.stderr
        ok = run(FLEET_REDIS_PASSWORD="s3cret-pass")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["tasks"]["pending"] == 1
        assert (root / ".coordinator" / "redis-incarnation").is_file()
    finally:
        own.stop()


def test_an_unknown_state_is_a_config_error(make_fleet: Callable[..., Path]) -> None:
    from coordinator.config import load_config  # noqa: PLC0415

    root = make_fleet('[fleet]\nstate = "mysql://db/fleet"\n')
    with pytest.raises(ConfigError, match='must be "file" or a Redis URL'):
        load_config(root)


def test_a_missing_extra_names_the_install_command() -> None:
    code = ("import sys; sys.modules['redis'] = None\n"
            "from coordinator.errors import ConfigError\n"
            "try:\n    import coordinator.store.redis\nexcept ConfigError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'coordinator[redis]'" in out.stdout, out.stderr


def test_coordinator_host_overrides_the_host_identity() -> None:
    code = "from coordinator.liveness import HOST; print(HOST)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=subprocess_env(COORDINATOR_HOST="host-b"))
    assert out.stdout.strip() == "host-b"
