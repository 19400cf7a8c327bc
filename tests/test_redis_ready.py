"""The Redis store's ready set (DESIGN §13): definitions loaded by file hash, dependency counters,
backoff, and ``claim_next`` picking by priority then run order in one script.

The store keeps the queue itself so an agent claims in one round trip; these tests
drive it directly on a real redis-server, with a ManualClock for backoffs, and check
every move in and out of "ready" against what the agent's own view would pick.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.clock import ManualClock
from coordinator.config import load_config
from coordinator.errors import ConfigError
from coordinator.queue.claims import ClaimBook, current_holder
from coordinator.queue.picking import claim_best
from coordinator.queue.view import QueueView
from coordinator.store import open_store
from coordinator.store.base import Claim
from coordinator.tasks import Task
from coordinator.tasks.model import State
from tests.redis_support import RedisServer, redis_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("redis_server")

try:
    from coordinator.store.redis import RedisStore
    from coordinator.store.redis_setup import connect
except ConfigError:  # pragma: no cover - redis-py absent: the fixture skips, or fails in CI
    RedisStore = None  # type: ignore[assignment,misc]

LEASE_S = 30.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(redis_server: RedisServer, tmp_path: Path, clock: ManualClock) -> Iterator[RedisStore]:
    redis_server.flush()
    yield connect(redis_server.url, fleet="ready", marker=tmp_path / "incarnation", clock=clock)


def task(task_id: str, priority: int = 2, *, seen: int = 0, deps: tuple[str, ...] = (), source: str = "") -> Task:
    return Task(id=task_id, prompt="do it", priority=priority, depends_on=list(deps), seen_ns=seen,
                source=source or f"tasks/{task_id}.toml")


def take(store: RedisStore, agent: str = "a1") -> Claim | None:
    return store.claim_next(current_holder(agent), lease_s=LEASE_S)


def drain(store: RedisStore) -> list[str]:
    """Claim and finish (done) every ready task, in the order the store hands them out."""
    order = []
    while (claim := take(store)) is not None:
        order.append(claim.task)
        store.finish(claim, ok=True, max_attempts=3)
    return order


def ready_members(store: RedisStore) -> list[str]:
    return [member.rsplit(" ", 1)[1] for member in store.client.zrange(store.keys.ready, 0, -1)]


def test_claims_follow_priority_then_run_order_exactly_as_the_view_sorts(store: RedisStore) -> None:
    tasks = [task("late", 1, seen=30), task("urgent", 0, seen=50), task("b", 2, seen=10, source="tasks/ab.toml"),
             task("a", 2, seen=10, source="tasks/a.toml"), task("z", 2, seen=5), task("low", 3, seen=1),
             task("e9", 2, seen=10, source="tasks/é.toml")]  # a non-ASCII path sorts as Python sorts it
    assert store.load_ready(tasks, [], version=0)
    expected = [t.id for t in sorted(tasks, key=Task.sort_key)]
    assert drain(store) == expected == ["urgent", "late", "z", "a", "b", "e9", "low"]
    assert take(store) is None and ready_members(store) == []


def test_a_claimed_task_is_a_normal_live_claim(store: RedisStore) -> None:
    store.load_ready([task("t1")], [], version=0)
    claim = take(store, "agent-7")
    assert claim is not None and claim.task == "t1" and claim.agent == "agent-7" and claim.epoch == 1
    assert store.read_claim("t1") == claim and store.read_record("t1").state == State.RUNNING
    assert [e["event"] for e in store.read_events()[0]] == ["claimed"]


def test_loading_is_idempotent_and_a_changed_priority_reorders(store: RedisStore) -> None:
    first = [task("x", 2, seen=1), task("y", 2, seen=2)]
    store.load_ready(first, [], version=0)
    store.load_ready(first, [], version=0)  # another process loading the same files: nothing changes
    assert ready_members(store) == ["x", "y"]
    store.load_ready([task("y", 0, seen=2)], [], version=0)  # y's file now says critical
    assert ready_members(store) == ["y", "x"]
    assert drain(store) == ["y", "x"]


def test_a_dependent_becomes_ready_only_when_every_dependency_is_done(store: RedisStore) -> None:
    store.load_ready([task("child", 0, deps=("p1", "p2")), task("p1", 2, seen=1), task("p2", 2, seen=2)], [],
                     version=0)
    first = take(store)
    assert first is not None and first.task == "p1"  # the child outranks both but waits for them
    store.finish(first, ok=True, max_attempts=1)
    second = take(store)
    assert second is not None and second.task == "p2"
    assert take(store) is None  # p2 still running: the child waits
    store.finish(second, ok=True, max_attempts=1)
    assert drain(store) == ["child"]


def test_a_failed_dependency_holds_its_dependent_until_it_is_retried_and_done(store: RedisStore) -> None:
    store.load_ready([task("parent"), task("child", deps=("parent",))], [], version=0)
    claim = take(store)
    store.finish(claim, ok=False, max_attempts=1, error="boom")
    assert take(store) is None
    store.retry("parent")
    assert drain(store) == ["parent", "child"]


def test_a_done_dependency_retried_takes_its_pending_dependent_out_of_ready(store: RedisStore) -> None:
    store.load_ready([task("parent", 0), task("child", 1, deps=("parent",)), task("other", 2)], [], version=0)
    parent = take(store)
    store.finish(parent, ok=True, max_attempts=1)
    store.retry("parent")  # done no more: the child must wait for it again
    assert drain(store) == ["parent", "child", "other"]


def test_a_dependency_loaded_after_its_dependent_still_counts(store: RedisStore) -> None:
    store.load_ready([task("child", deps=("later",))], [], version=0)
    assert take(store) is None  # an unknown dependency is not done
    store.load_ready([task("later")], [], version=0)
    assert drain(store) == ["later", "child"]


def test_a_failed_attempt_waits_out_its_backoff(store: RedisStore, clock: ManualClock) -> None:
    store.load_ready([task("flaky", 0), task("next", 2)], [], version=0)
    claim = take(store)
    store.finish(claim, ok=False, max_attempts=3, error="flake", backoff_s=10)
    again = take(store)
    assert again is not None and again.task == "next"  # the flaky one backs off
    store.finish(again, ok=True, max_attempts=3)
    assert take(store) is None
    clock.advance(10.5)
    retried = take(store)
    assert retried is not None and retried.task == "flaky" and retried.attempt == 2


@pytest.mark.parametrize("how", ["release", "reclaim", "requeue", "repair"])
def test_a_task_given_back_is_ready_again(store: RedisStore, how: str) -> None:
    store.load_ready([task("t1")], [], version=0)
    claim = take(store)
    if how == "release":
        store.release(claim, reason="stopping")
    elif how == "reclaim":
        store.reclaim(claim, reason="expired", max_attempts=3)
    elif how == "requeue":
        store.requeue(claim, kind="conflict", reason="target moved", max_conflicts=3)
    else:
        store.client.hdel(store.keys.task("t1"), "c.epoch", "c.agent", "c.token")  # a crash's leftover
        store.client.zrem(store.keys.leases, "t1")
        assert store.repair(["t1"]) == ["t1"]
    again = take(store, "a2")
    assert again is not None and again.task == "t1" and again.epoch == claim.epoch + 1


def test_cancelled_and_finished_tasks_are_never_handed_out(store: RedisStore) -> None:
    store.load_ready([task("keep", 2, seen=2), task("drop", 0, seen=1)], [], version=0)
    store.cancel("drop")
    assert drain(store) == ["keep"]
    store.load_ready([task("keep", 1, seen=2)], [], version=0)  # a reload of a done task's file
    assert take(store) is None


def test_a_paused_fleet_hands_out_nothing(store: RedisStore) -> None:
    store.load_ready([task("t1")], [], version=0)
    store.set_paused(True)
    assert take(store) is None
    store.set_paused(False)
    assert drain(store) == ["t1"]


def test_a_task_claimed_by_id_leaves_the_ready_set(store: RedisStore) -> None:
    store.load_ready([task("a", seen=1), task("b", seen=2)], [], version=0)
    store.claim("a", current_holder("a1"), lease_s=LEASE_S)
    assert ready_members(store) == ["b"]
    assert drain(store) == ["b"]


def test_a_task_no_longer_valid_is_dropped_only_at_the_files_current_version(store: RedisStore) -> None:
    store.load_ready([task("a"), task("b", seen=1)], [], version=0)
    store.share_task_files({"tasks/x.toml": ("0" * 64, 1, 'prompt = "x"\n')})  # the files moved on: version 1
    assert not store.load_ready([], ["a"], version=0)  # a loader behind the files drops nothing
    assert ready_members(store) == ["a", "b"]
    assert store.load_ready([], ["a"], version=1)
    assert drain(store) == ["b"]
    assert store.client.hget(store.keys.task("a"), "d.rank") is None


def test_a_retried_claim_whose_reply_was_lost_gets_the_same_task(store: RedisStore) -> None:
    store.load_ready([task("a", seen=1), task("b", seen=2)], [], version=0)
    holder = current_holder("a1")
    args = {"task": None, "agent": holder.agent, "pid": holder.pid, "pid_started_at": repr(holder.pid_started_at),
            "host": holder.host, "lease_s": repr(LEASE_S), "token": "feedfacefeedface", "from": ["pending"],
            "to": "running"}
    first = store._run("claim_next", None, args)  # the reply "lost": the same call is sent again
    second = store._run("claim_next", None, args)
    assert first[0] == second[0] == "claimed" and first[2] == second[2] == "a"
    assert ready_members(store) == ["b"] and len(store.list_claims()) == 1


def test_the_ready_set_survives_a_restart_from_the_aof(tmp_path: Path) -> None:
    own = RedisServer(tmp_path / "own").start()
    try:
        store = connect(own.url, fleet="f", marker=tmp_path / "m")
        store.load_ready([task(f"t{n}", n % 3, seen=n) for n in range(30)], [], version=0)
        first = take(store)
        store.finish(first, ok=True, max_attempts=1)
        own.kill()
        own.start()
        store = connect(own.url, fleet="f", marker=tmp_path / "m")
        expected = [t.id for t in sorted((task(f"t{n}", n % 3, seen=n) for n in range(30)), key=Task.sort_key)]
        assert [first.task, *drain(store)] == expected
    finally:
        own.stop()


def test_every_script_keeps_its_event_and_state_change_together(store: RedisStore) -> None:
    """Loading writes no event (no task changed state); each claim and finish writes exactly one."""
    store.load_ready([task("a"), task("b", deps=("a",))], [], version=0)
    assert store.read_events()[0] == []
    drain(store)
    events = [e["event"] for e in store.read_events()[0]]
    assert events == ["claimed", "done", "claimed", "done"]


def test_the_ready_set_is_exact_so_its_counts_tell_a_drained_queue(store: RedisStore, clock: ManualClock) -> None:
    """Every change puts a task where it belongs at once: ready, delayed, leased, or none of them."""
    store.load_ready([task("a", 0), task("b", 1), task("c", 2, deps=("a",))], [], version=0)
    assert store.ready_counts() == (2, 0, 0)  # c waits for a
    a = take(store)
    assert store.ready_counts() == (1, 0, 1)
    store.finish(a, ok=False, max_attempts=3, error="flake", backoff_s=5)
    assert store.ready_counts() == (1, 1, 0)
    store.cancel("a")  # cancelled while backing off: out of the delayed set too
    assert store.ready_counts() == (1, 0, 0)
    store.retry("a")
    assert store.ready_counts() == (2, 0, 0)
    a = take(store)
    store.finish(a, ok=True, max_attempts=3)
    assert store.ready_counts() == (2, 0, 0)  # b, and c now that a is done
    store.retry("a")  # a is pending again, so c waits again
    assert sorted(ready_members(store)) == ["a", "b"]
    assert drain(store) == ["a", "b", "c"] and store.ready_counts() == (0, 0, 0)


def test_a_member_that_is_not_ready_after_all_is_skipped_not_claimed(store: RedisStore) -> None:
    store.load_ready([task("done", 0), task("next", 1)], [], version=0)
    done = take(store)
    store.finish(done, ok=True, max_attempts=1)
    rank = store.client.hget(store.keys.task("done"), "d.rank")
    store.client.zadd(store.keys.ready, {rank: 0})  # a member no script should have left
    assert drain(store) == ["next"] and store.read_record("done").attempts == 1


def _agent_parts(root: Path) -> tuple[RedisStore, ClaimBook, QueueView]:
    """What an agent claims with: the fleet's store, a claim book, and a view of the task files."""
    config = load_config(root)
    store = open_store(config)
    return store, ClaimBook(store, lease_s=LEASE_S), QueueView(config, store)


def test_a_ready_task_missing_from_the_ready_set_is_still_claimed_and_said(redis_server: RedisServer,
                                                                          make_fleet) -> None:
    """The safety net: the agent's own view finds what the store's ready set lacks, claims it by id, warns."""
    redis_server.flush()
    root = make_fleet(f'[fleet]\nstate = "{redis_server.url}"\nstate_name = "net"\n',
                      tasks={"only.toml": 'prompt = "x"\n'})
    store, book, _ = _agent_parts(root)
    view = QueueView(load_config(root), store, loads=False)  # so nothing put it in the ready set
    view.resync()
    warnings: list[str] = []
    picked = claim_best(view, book, current_holder("a1"), warnings.append)
    assert picked is not None and picked[0].id == "only" and picked[1].task == "only"
    assert warnings == ["only: ready here but not in the store's ready set; claimed it by id"]
    assert claim_best(view, book, current_holder("a1"), warnings.append) is None and len(warnings) == 1


def test_an_agent_view_that_agrees_with_the_ready_set_claims_without_a_word(redis_server: RedisServer,
                                                                           make_fleet) -> None:
    redis_server.flush()
    root = make_fleet(f'[fleet]\nstate = "{redis_server.url}"\nstate_name = "agree"\n',
                      tasks={"b.toml": 'prompt = "b"\npriority = "low"\n', "a.toml": 'prompt = "a"\n'})
    store, book, view = _agent_parts(root)
    view.resync()
    warnings: list[str] = []
    order = []
    while (picked := claim_best(view, book, current_holder("a1"), warnings.append)) is not None:
        order.append(picked[0].id)
        store.finish(picked[1], ok=True, max_attempts=1)
    assert order == ["a", "b"] and warnings == []


@pytest.mark.parametrize("seed", range(8))
def test_the_ready_set_matches_the_rule_after_any_sequence_of_operations(store: RedisStore, clock: ManualClock,
                                                                        seed: int) -> None:
    """Random operations; after each, `ready` holds exactly the tasks the rule calls ready, in run order.

    The rule (what the agent's own view computes): loaded, pending, every dependency done,
    no backoff running. Dependencies and priorities change on reloads, as edited files do.
    """
    rng = random.Random(seed)
    ids = [f"t{n}" for n in range(12)]
    defs: dict[str, Task] = {}
    claims: dict[str, Claim] = {}

    def define(task_id: str) -> Task:
        earlier = [other for other in ids if other < task_id]  # no cycles: a task waits only on smaller ids
        deps = tuple(rng.sample(earlier, k=min(len(earlier), rng.choice([0, 0, 1, 2]))))
        return task(task_id, rng.randrange(4), seen=rng.randrange(3), deps=deps)

    def expected() -> tuple[list[str], set[str], set[str]]:
        """(ready in run order, backing off, backed off but not yet promoted) by the rule."""
        records = {tid: store.read_record(tid) for tid in ids}

        def state(tid: str) -> str:
            return str(records[tid].state) if records[tid] else "pending"

        runnable = [t for tid, t in defs.items()
                    if state(tid) == "pending" and all(state(dep) == "done" for dep in t.depends_on)]
        retry_at = {t.id: records[t.id].retry_at for t in runnable if records[t.id] and records[t.id].retry_at}
        holding = {tid for tid, at in retry_at.items() if at > clock.wall()}
        ready = [t.id for t in sorted(runnable, key=Task.sort_key) if t.id not in retry_at or t.id not in holding]
        return ready, holding, set(retry_at) - holding

    for step in range(200):
        move = rng.choice(["load", "load", "claim", "claim", "finish", "fail", "release", "cancel", "retry",
                           "reclaim", "wait"])
        if move == "load":
            chosen = rng.sample(ids, k=rng.randint(1, 4))
            changed = [define(tid) for tid in chosen]
            defs.update((t.id, t) for t in changed)
            store.load_ready(changed, [], version=0)
        elif move == "claim":
            claim = take(store)
            if claim is not None:
                claims[claim.task] = claim
        elif move in ("finish", "fail", "release", "reclaim") and claims:
            claim = claims.pop(rng.choice(sorted(claims)))
            if move == "finish":
                store.finish(claim, ok=True, max_attempts=3)
            elif move == "fail":
                store.finish(claim, ok=False, max_attempts=3, error="x", backoff_s=rng.choice([0, 5]))
            elif move == "release":
                store.release(claim, reason="stopping")
            else:
                store.reclaim(claim, reason="expired", max_attempts=3)
        elif move == "cancel" and defs:
            tid = rng.choice(sorted(defs))
            record = store.read_record(tid)
            if record is None or record.state in (State.PENDING, State.RUNNING):
                store.cancel(tid)
                claims.pop(tid, None)
        elif move == "retry" and defs:
            tid = rng.choice(sorted(defs))
            record = store.read_record(tid)
            if record is not None and record.state in (State.DONE, State.FAILED, State.CANCELLED):
                store.retry(tid)
        elif move == "wait":
            clock.advance(rng.choice([1, 6]))
            take_due = store.claim_next(current_holder("probe"), lease_s=LEASE_S)  # promotes due backoffs
            if take_due is not None:
                claims[take_due.task] = take_due
        ready, holding, due = expected()
        delayed = set(store.client.zrange(store.keys.delayed, 0, -1))
        # A backoff that ran out waits in `delayed` until the next claim promotes it; nothing else is there.
        assert holding <= delayed <= holding | due, f"seed {seed}, step {step} ({move})"
        assert ready_members(store) == [tid for tid in ready if tid not in delayed], f"seed {seed}, step {step} ({move})"
