"""The built-in ``llm`` runner: RAG → assemble → infer → post → stream.

* RAG: read the agent's ``shared_context`` globs, then the task's ``context``
  globs, through a content-addressed cache (a file is read once per process, and
  the same bytes are included once however many globs match them).
* Assemble: the system prompt and shared context come first, as system blocks
  that are byte-identical for every task, so the gateway can cache that prefix
  once for the whole fleet; then the task's own context, its dependencies'
  outputs (labelled by task id, each cut at a bound), its prompt, and on a
  retried attempt why the previous one failed.
* Infer: one streaming ``/v1/messages`` call through the gateway, with the
  task's token and priority.
* Stream: text deltas are appended to ``stdout.log`` as they arrive, so
  ``coordinator logs -f`` follows them live.
* Post: write ``output.md`` and ``usage.json``, then run ``acceptance``.

Standard library HTTP only, and the code base's one SSE parser
(``gateway.sse``, standard library too): an llm agent stays a small process.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
import urllib.parse
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..errors import CoordinatorError, MalformedEventError
from ..gateway.sse import iter_events
from ..paths import expand_globs
from . import RunContext, RunResult, check_acceptance

ANTHROPIC_VERSION = "2023-06-01"
MAX_CONTEXT_BYTES = 2 * 1024 * 1024
MAX_DEP_OUTPUT_BYTES = 64 * 1024  # what one dependency's output may add to a dependent's prompt
READ_CACHE_MAX_BYTES = 8 * 1024 * 1024  # files kept between tasks (shared context is read once per agent)
_READ_CACHE: OrderedDict[tuple[str, int, int], tuple[str, str]] = OrderedDict()
_cached_bytes = 0


def read_addressed(path: Path, limit: int) -> tuple[str, str]:
    """(sha256, text) of a file of at most ``limit`` bytes, cached by (path, mtime, size).

    The size is checked before reading, and no more than ``limit`` + 1 bytes are
    ever read, so a huge context file costs a stat, not the agent's memory.
    """
    stat = path.stat()
    if stat.st_size > limit:
        raise ValueError(_too_big(path, stat.st_size))
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key in _READ_CACHE:
        _READ_CACHE.move_to_end(key)
        return _READ_CACHE[key]
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:  # it grew since the stat
        raise ValueError(_too_big(path, len(data)))
    entry = (hashlib.sha256(data).hexdigest(), data.decode("utf-8", errors="replace"))
    _remember(key, entry, len(data))
    return entry


def _remember(key: tuple[str, int, int], entry: tuple[str, str], size: int) -> None:
    """Keep a read file for the next task, within READ_CACHE_MAX_BYTES (least recently used goes)."""
    global _cached_bytes  # noqa: PLW0603  (the cache is per process, like the files it holds)
    if size > READ_CACHE_MAX_BYTES:
        return
    _READ_CACHE[key] = entry
    _cached_bytes += size
    while _cached_bytes > READ_CACHE_MAX_BYTES:
        (_, _, old_size), _ = _READ_CACHE.popitem(last=False)
        _cached_bytes -= old_size


def _too_big(path: Path, size: int) -> str:
    return (f"context file {path} is {size} bytes; a prompt's context is limited to {MAX_CONTEXT_BYTES} bytes "
            "in all; narrow the globs")


def gather(root: Path, globs: list[str], seen: set[str], left: list[int], *, what: str) -> list[str]:
    """Context documents for ``globs``, skipping content already included; ``left[0]`` bytes may be read."""
    docs = []
    for path in expand_globs(root, globs, what=what):
        digest, text = read_addressed(path, left[0])
        if digest in seen:
            continue
        seen.add(digest)
        left[0] -= len(text.encode("utf-8", errors="replace"))
        docs.append(f'<file path="{path.relative_to(root).as_posix()}">\n{text}\n</file>')
    return docs


def assemble(ctx: RunContext) -> dict[str, Any]:
    """The Messages API body: shared prefix first, then task context and prompt."""
    seen: set[str] = set()
    left = [MAX_CONTEXT_BYTES]
    shared = gather(ctx.config.root, ctx.agent.shared_context, seen, left, what="shared_context")
    own = gather(ctx.config.root, ctx.task.context, seen, left, what="context")
    system = [{"type": "text", "text": ctx.agent.system}]
    if shared:
        system.append({"type": "text", "text": "\n\n".join(shared)})
    content = [{"type": "text", "text": "\n\n".join(own)}] if own else []
    outputs = dependency_blocks(ctx)
    if outputs:
        content.append({"type": "text", "text": outputs})
    content.append({"type": "text", "text": ctx.task.rendered_prompt()})
    if ctx.feedback_file is not None:
        content.append({"type": "text", "text": ctx.feedback_file.read_text(encoding="utf-8", errors="replace")})
    if ctx.conflict_file is not None:  # workspaces: why the previous attempt did not land
        content.append({"type": "text", "text": ctx.conflict_file.read_text(encoding="utf-8", errors="replace")})
    return {"model": ctx.task.model or ctx.agent.model, "max_tokens": ctx.agent.max_tokens, "system": system,
            "messages": [{"role": "user", "content": content}], "stream": True}


def dependency_blocks(ctx: RunContext) -> str:
    """Each dependency's output, labelled by task id and cut at MAX_DEP_OUTPUT_BYTES, as one text."""
    blocks = []
    for dep, path in ctx.deps.items():
        data = path.read_bytes()
        cut = len(data) > MAX_DEP_OUTPUT_BYTES
        text = data[:MAX_DEP_OUTPUT_BYTES].decode("utf-8", errors="ignore")
        note = f"\n[output cut at {MAX_DEP_OUTPUT_BYTES} of {len(data)} bytes]" if cut else ""
        blocks.append(f'<dependency_output task="{dep}">\n{text}{note}\n</dependency_output>')
    return "\n\n".join(blocks)


class GatewayUnreachable(Exception):  # noqa: N818  (internal signal, never leaves this module)
    """The request never reached the gateway: an infrastructure fault, not the task's."""


def run(ctx: RunContext) -> RunResult:
    """All five stages for one attempt."""
    if not ctx.gateway_url or not ctx.gateway_token:
        return RunResult(False, "no gateway is running; start the fleet with `coordinator run` "
                                "(or `coordinator gateway` beside `coordinator agent`)", infra=True)
    started = time.monotonic()
    try:
        body = assemble(ctx)
    except (ValueError, OSError, CoordinatorError) as exc:  # a bad glob fails the task, not the agent
        return RunResult(False, str(exc))
    write_json_atomic(ctx.run_dir / "request.json", body, indent=1)
    with open(ctx.run_dir / "stdout.log", "a", encoding="utf-8") as out:
        try:
            text, usage, error = infer(ctx, body, out)
        except GatewayUnreachable as exc:
            return RunResult(False, str(exc), infra=True)
    (ctx.run_dir / "output.md").write_text(text, encoding="utf-8")
    write_json_atomic(ctx.run_dir / "usage.json", usage)
    if error:
        return RunResult(False, error, usage)
    error = check_acceptance(ctx, ctx.timeout_s - (time.monotonic() - started))
    return RunResult(error is None, error, usage)


def infer(ctx: RunContext, body: dict[str, Any], out: Any) -> tuple[str, dict[str, Any], str | None]:
    """Stream one answer from the gateway: (text, usage, error or None)."""
    url = urllib.parse.urlsplit(ctx.gateway_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=ctx.timeout_s)
    headers = {"content-type": "application/json", "x-api-key": ctx.gateway_token,
               "anthropic-version": ANTHROPIC_VERSION, "x-coordinator-priority": str(ctx.task.priority),
               "x-coordinator-agent": ctx.agent_id}
    try:
        conn.request("POST", "/v1/messages", body=json.dumps(body).encode(), headers=headers)
        response = conn.getresponse()
    except ConnectionError as exc:  # refused or reset before any answer: the gateway is gone
        conn.close()
        raise GatewayUnreachable(f"gateway unreachable at {ctx.gateway_url}: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return "", {}, f"gateway connection failed: {exc}"
    try:
        if response.status != 200:
            return "", {}, f"gateway answered {response.status}: {_error_message(response.read())}"
        return read_stream(response, out, ctx.should_stop)
    except (ConnectionError, http.client.IncompleteRead) as exc:  # the gateway died mid-answer
        raise GatewayUnreachable(f"gateway connection lost: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        return "", {}, f"gateway connection failed: {exc}"
    finally:
        conn.close()


def read_stream(response: Any, out: Any, should_stop: Any) -> tuple[str, dict[str, Any], str | None]:
    """Parse Anthropic SSE events, writing text deltas to ``out`` as they come."""
    parts: list[str] = []
    usage: dict[str, Any] = {}
    try:
        for event in iter_events(response):
            payload = event.json()
            if event.name == "error" or payload.get("type") == "error":
                return "".join(parts), usage, f"stream error: {_error_message(json.dumps(payload).encode())}"
            _apply(payload, parts, usage, out)
            reason = should_stop()
            if reason:
                return "".join(parts), usage, f"stopped: {reason}"
    except MalformedEventError as exc:
        return "".join(parts), usage, f"the gateway sent a malformed stream: {exc}"
    if not usage.get("stopped"):
        return "".join(parts), usage, "stream ended before message_stop"
    usage.pop("stopped")
    return "".join(parts), usage, None


def _apply(payload: dict[str, Any], parts: list[str], usage: dict[str, Any], out: Any) -> None:
    kind = payload.get("type")
    if kind == "message_start":
        usage.update(payload.get("message", {}).get("usage", {}))
    elif kind == "content_block_delta" and payload.get("delta", {}).get("type") == "text_delta":
        chunk = payload["delta"]["text"]
        parts.append(chunk)
        out.write(chunk)
        out.flush()
    elif kind == "message_delta":
        usage.update({k: v for k, v in payload.get("usage", {}).items() if v is not None})
    elif kind == "message_stop":
        usage["stopped"] = True


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
        return str(data.get("error", {}).get("message") or data)[:300]
    except ValueError:
        return body[:300].decode("utf-8", errors="replace")
