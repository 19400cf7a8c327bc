"""The API's SSE streams: one task's states, output, usage and end; and the fleet's event log.

Framing (docs/api.md): every frame has an ``id:`` naming the position it leaves
the client at, so a reconnect with ``Last-Event-ID`` continues with the next
frame, with no gap and no repeat. A task stream's id is
``cursor.index.run.out.err.state.stage``: the feed position (``tailer.Position``),
the run folder and the bytes of its stdout and stderr sent, the last state sent,
and the stage (``live``; ``usage`` once usage was sent; ``end``). A fleet stream's
id is ``cursor.index``. Idle streams get a ``: keep-alive`` comment every
``keepalive_s``. Streams only read: a client that goes away cancels nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from ..store import Store
from ..tasks import FINISHED, State
from .models import EndFrame, OutputFrame, StateFrame, UsageFrame, render
from .tailer import LOG_NAMES, Position, Subscription, Tailer, latest_run

KEEPALIVE_S = 15.0
CHUNK_BYTES = 64 * 1024
STREAMS = ("stdout", "stderr")
_FINISHED_NAMES = {str(state) for state in FINISHED}


@dataclass(frozen=True)
class TaskPosition:
    """Where a task stream's client is: feed position, run, log bytes sent, last state, stage."""

    feed: Position
    run: int = 0
    out: int = 0
    err: int = 0
    state: str = "pending"
    stage: str = "live"  # live | usage (usage sent, end next) | end

    def encode(self) -> str:
        """The SSE ``id``."""
        return (f"{self.feed.cursor}.{self.feed.index}.{self.run}.{self.out}.{self.err}."
                f"{self.state}.{self.stage}")

    @classmethod
    def decode(cls, text: str) -> TaskPosition:
        """Parse an ``id`` this server sent; ValueError if it is not one."""
        parts = text.split(".")
        if len(parts) != 7 or parts[5] not in {str(s) for s in State} or parts[6] not in ("live", "usage", "end"):
            raise ValueError(text)
        cursor, index, run, out, err = (int(p) for p in parts[:5])
        if min(cursor, run, out, err) < 0 or index < -1:
            raise ValueError(text)
        return cls(Position(cursor, index), run, out, err, parts[5], parts[6])


def decode_feed_id(text: str) -> Position:
    """Parse a fleet stream ``id`` (``cursor.index``); ValueError if it is not one."""
    cursor, index = (int(p) for p in text.split("."))
    if cursor < 0 or index < -1:
        raise ValueError(text)
    return Position(cursor, index)


class SSE:
    """Writes frames to one client."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response

    @classmethod
    async def open(cls, request: web.Request) -> SSE:
        """Send the headers (and a first comment, so the client sees the stream at once)."""
        response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8",
                                               "cache-control": "no-cache", "x-accel-buffering": "no"})
        await response.prepare(request)
        await response.write(b"retry: 1000\n: stream open\n\n")
        return cls(response)

    async def send(self, name: str | None, data: Any, frame_id: str) -> None:
        """One frame: ``id``, ``event`` (when named) and one line of JSON data."""
        head = f"id: {frame_id}\n" + (f"event: {name}\n" if name else "")
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
        await self.response.write(f"{head}data: {body}\n\n".encode())

    async def wait(self, sub: Subscription, keepalive_s: float) -> None:
        """Until the tailer has news for ``sub``; a keep-alive comment every ``keepalive_s`` meanwhile."""
        try:
            await asyncio.wait_for(sub.wake.wait(), keepalive_s)
        except TimeoutError:
            await self.response.write(b": keep-alive\n\n")
        sub.wake.clear()


@dataclass
class Streams:
    """What the streams read: the store, its one tailer, and where a task's runs are."""

    store: Store
    tailer: Tailer
    runs_root: Callable[[str], Path]
    keepalive_s: float = KEEPALIVE_S

    async def feed_since(self, position: Position) -> tuple[list[tuple[Position, dict[str, Any]]], Position]:
        """Events after ``position``: from the tailer's memory, else one catch-up read of the store."""
        held = self.tailer.since(position)
        if held is not None:
            return held
        events, end = await asyncio.to_thread(self.store.read_events, position.cursor)
        return [(Position(position.cursor, n), e) for n, e in enumerate(events) if n > position.index], \
            Position(end, -1)

    async def fleet(self, sse: SSE, position: Position | None, *, follow: bool) -> None:
        """Every event of the feed after ``position`` (default: from now), as unnamed frames."""
        sub = self.tailer.subscribe(None)
        position = position or self.tailer.head()
        try:
            while True:
                news, position = await self.feed_since(position)
                for at, event in news:
                    await sse.send(None, event, f"{at.cursor}.{at.index}")
                if not follow:
                    return
                await sse.wait(sub, self.keepalive_s)
        finally:
            self.tailer.unsubscribe(sub)

    async def task(self, sse: SSE, task_id: str, start: TaskPosition | None, *, follow: bool) -> None:
        """One task's stream from ``start`` (default: its state now, then its latest run's log from the top)."""
        stream = _TaskStream(self, sse, task_id)
        sub = self.tailer.subscribe(task_id)
        try:
            pos = start or await stream.first_frame()
            while pos.stage == "live":
                pos = await stream.step(pos)
                sub.running = pos.state == State.RUNNING  # only then does the tailer watch its logs
                if pos.stage != "live" or not follow:
                    break
                await sse.wait(sub, self.keepalive_s)
            if pos.stage == "usage":
                await stream.send_end(pos)
        finally:
            self.tailer.unsubscribe(sub)


class _TaskStream:
    """The frames of one task's stream (``Streams.task`` drives it)."""

    def __init__(self, streams: Streams, sse: SSE, task_id: str) -> None:
        self.streams, self.sse, self.task_id = streams, sse, task_id
        self.runs = streams.runs_root(task_id)

    async def first_frame(self) -> TaskPosition:
        feed = self.streams.tailer.head()  # before reading the record: a change in between is sent again
        record = await asyncio.to_thread(self.streams.store.read_record, self.task_id)
        state = str(record.state) if record else str(State.PENDING)
        pos = TaskPosition(feed, run=latest_run(self.runs), state=state)
        await self.sse.send("state", render(StateFrame, {"state": state}), pos.encode())
        return pos

    async def step(self, pos: TaskPosition) -> TaskPosition:
        """Send the new output, then each state change; usage (stage ``usage``) once finished."""
        if pos.state in _FINISHED_NAMES:
            return await self.finish(pos)
        pos = await self.send_output(pos, final=False)
        news, after = await self.streams.feed_since(pos.feed)
        for at, event in news:
            state = event.get("state") if event.get("task") == self.task_id else None
            if state is None or state == pos.state:
                continue
            pos = replace(pos, feed=at, state=state)
            if state in _FINISHED_NAMES:
                return await self.finish(pos, event)
            frame = {"state": state, "event": event.get("event"), "attempt": event.get("attempt")}
            await self.sse.send("state", render(StateFrame, frame), pos.encode())
        return replace(pos, feed=after) if pos.feed != after else pos

    async def finish(self, pos: TaskPosition, event: dict[str, Any] | None = None) -> TaskPosition:
        """A finished task: its state (when an event just said so), the rest of its log, then its usage."""
        if event is not None:
            frame = {"state": pos.state, "event": event.get("event"), "attempt": event.get("attempt")}
            await self.sse.send("state", render(StateFrame, frame), pos.encode())
        pos = await self.send_output(pos, final=True)
        record = await asyncio.to_thread(self.streams.store.read_record, self.task_id)
        pos = replace(pos, stage="usage")
        usage = {"usage": dict(record.usage) if record else {}, "attempts": record.attempts if record else 0}
        await self.sse.send("usage", render(UsageFrame, usage), pos.encode())
        return pos

    async def send_end(self, pos: TaskPosition) -> None:
        pos = replace(pos, stage="end")
        await self.sse.send("end", render(EndFrame, {"state": pos.state}), pos.encode())

    async def send_output(self, pos: TaskPosition, *, final: bool) -> TaskPosition:
        """Every byte the task's runs gained since ``pos``, run after run, as ``output`` frames."""
        while True:
            latest = latest_run(self.runs)
            if pos.run == 0:
                if latest == 0:
                    return pos
                pos = replace(pos, run=_next_run(self.runs, 0))
            done_with_run = pos.run < latest or final
            for stream, name in zip(STREAMS, LOG_NAMES):
                pos = await self._send_log(pos, stream, self.runs / str(pos.run) / name, done_with_run)
            if pos.run >= latest:
                return pos
            pos = replace(pos, run=_next_run(self.runs, pos.run), out=0, err=0)

    async def _send_log(self, pos: TaskPosition, stream: str, path: Path, whole: bool) -> TaskPosition:
        offset = pos.out if stream == "stdout" else pos.err
        while True:
            text, offset = await asyncio.to_thread(read_text, path, offset, whole)
            if not text:
                return pos
            pos = replace(pos, out=offset) if stream == "stdout" else replace(pos, err=offset)
            frame = {"text": text, "stream": stream, "run": pos.run}
            await self.sse.send("output", render(OutputFrame, frame), pos.encode())


def _next_run(runs: Path, after: int) -> int:
    try:
        later = [int(name) for name in os.listdir(runs) if name.isdigit() and int(name) > after]
    except OSError:
        later = []
    return min(later, default=after)


def read_text(path: Path, offset: int, whole: bool, limit: int = CHUNK_BYTES) -> tuple[str, int]:
    """Up to ``limit`` bytes of ``path`` from ``offset``, cut before a split UTF-8 character unless ``whole``."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(limit)
    except OSError:
        return "", offset
    if not whole or len(data) == limit:
        data = data[:_complete_utf8(data)]
    return data.decode("utf-8", errors="replace"), offset + len(data)


def _complete_utf8(data: bytes) -> int:
    """The length of ``data`` without a trailing, incomplete UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # the lead byte of the last character
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return len(data) if need <= back else len(data) - back
    return len(data)
