"""Reading a request body safely: bounded before buffering, inflated with a running cap, checked as JSON.

Any task token can send the gateway a body, and every agent holds one. A gzip body
that inflated to 200 MB once cost the gateway ~270 MB of memory per request, kept
for good. So: a declared length past the limit is refused before a byte is read;
a body read in chunks stops at the limit; gzip and deflate are inflated here (the
server's own decompression is off) a bounded piece at a time, and reading stops
as soon as the inflated size passes the limit, without building the body. Every
refusal is the API's own error JSON (413, 408, 400), never plain text.

The JSON checks are those the gateway itself needs: an object; not nested past
the interpreter's recursion limit; no lone UTF-16 surrogate (which could not be
sent on as UTF-8); and the fields the gateway reads of the right type
(``Dialect.body_problem``).
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from typing import Any

from aiohttp import web

from .apierrors import ApiError
from .dialects import Dialect

CHUNK_BYTES = 64 * 1024
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def too_large(max_bytes: int) -> ApiError:
    """413 naming the limit and where to raise it."""
    return ApiError(413, f"the request body is larger than the gateway's limit of {max_bytes // (1024 * 1024)} MB "
                         f"(after decompression); send less, or raise [gateway] max_body_mb")


async def read_body(request: web.Request, *, max_bytes: int, timeout_s: float) -> bytes | ApiError:
    """The request's body, inflated; an ApiError when it is too large, too slow or badly encoded."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        return too_large(max_bytes)
    try:
        async with asyncio.timeout(timeout_s):
            raw = await _read_raw(request, declared, max_bytes)
    except TimeoutError:
        return ApiError(408, f"the request body did not arrive within {timeout_s:g} s ([gateway] body_timeout_s)")
    except asyncio.IncompleteReadError:
        return ApiError(400, "the request body ended before its content-length")
    if raw is None:
        return too_large(max_bytes)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if not encoding or encoding == "identity":
        return raw
    if encoding not in _WBITS:
        return ApiError(400, f"content-encoding {encoding!r} is not supported; send gzip, deflate or identity")
    return inflate(raw, encoding, max_bytes)


async def _read_raw(request: web.Request, declared: int | None, max_bytes: int) -> bytes | None:
    """The body as sent, or None once it passes ``max_bytes`` (reading stops there)."""
    if declared is not None:
        return await request.content.readexactly(declared) if declared else b""
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > max_bytes:
            return None
        parts.append(chunk)
    return b"".join(parts)


def inflate(raw: bytes, encoding: str, max_bytes: int) -> bytes | ApiError:
    """``raw`` decompressed; 413 as soon as the output passes ``max_bytes``, having held one piece at a time.

    The first pass only measures (each piece is dropped as soon as it is counted),
    so a bomb costs one piece of memory, never the limit's worth; a body within the
    limit is then inflated for real. Compressed bodies are rare, and small ones
    inflate in microseconds, so the second pass is cheap where it happens at all.
    """
    problem = _measure(raw, encoding, max_bytes)
    if problem is not None:
        return problem
    return _inflater(raw, encoding).decompress(raw)


def _inflater(raw: bytes, encoding: str) -> Any:
    wbits = _WBITS[encoding]
    if encoding == "deflate" and raw[:1] != b"\x78":
        wbits = -zlib.MAX_WBITS  # raw deflate, as some clients send it
    return zlib.decompressobj(wbits)


def _measure(raw: bytes, encoding: str, max_bytes: int) -> ApiError | None:
    inflater = _inflater(raw, encoding)
    size = 0
    data = raw
    try:
        while data and not inflater.eof:
            size += len(inflater.decompress(data, CHUNK_BYTES))
            if size > max_bytes:
                return too_large(max_bytes)
            data = inflater.unconsumed_tail
    except zlib.error as exc:
        return ApiError(400, f"the body is not valid {encoding} although content-encoding says so ({exc})")
    if not inflater.eof:
        return ApiError(400, f"the {encoding} body is truncated")
    return None


def parse_json(raw: bytes, dialect: Dialect) -> dict[str, Any] | ApiError:
    """The body as a JSON object the gateway can work with, or the 400 saying what is wrong."""
    try:
        body = json.loads(raw)
    except RecursionError:
        return ApiError(400, "the request body is nested too deeply to read")
    except ValueError as exc:
        return ApiError(400, f"the request body must be a JSON object ({exc})")
    if not isinstance(body, dict):
        return ApiError(400, "the request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw) is not None and has_lone_surrogate(body):
        return ApiError(400, "the request body holds a lone UTF-16 surrogate (e.g. \\ud800), which is not valid "
                             "Unicode; escape characters as whole pairs")
    problem = dialect.body_problem(body)
    return ApiError(400, problem) if problem else body


def has_lone_surrogate(body: dict[str, Any]) -> bool:
    """Whether any string in ``body`` holds an unpaired surrogate (paired escapes decode to one character)."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
