"""Deterministic answers in every wire format, for the echo backend and the tests' fake upstream.

Both answer with ``synthesize``, so one piece of code decides what they say: the
text ("echo: " + the last user message, cut at the request's output limit) and its
usage, with Anthropic-style prompt-cache accounting (``prompt_cache``) for an API
whose dialect caches by ``cache_control`` marks. The exact bytes real SDKs must
parse (Anthropic's event sequence with its ping, OpenAI's chunks ending in
``[DONE]``) are the dialect's ``text_body`` / ``text_events``. Plain dicts and
``json`` throughout, because the gateway benchmark runs through this code on
every request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import CacheControlError
from ..gateway.dialects import TextAnswer, Usage, dialect_for
from .prompt_cache import CacheUsage, PromptCache, count_tokens


@dataclass
class Answer:
    """A synthesized upstream answer: a JSON body, or SSE events (bytes, is_delta)."""

    status: int
    body: bytes | None = None
    events: list[tuple[bytes, bool]] = field(default_factory=list)
    output_tokens: int = 0

    @property
    def is_stream(self) -> bool:
        """Whether the answer is an SSE stream."""
        return self.body is None


def estimate_text_tokens(text: str) -> int:
    """Tokens of generated text, estimated like prompts: ceil(utf-8 bytes / 4), at least 1."""
    return max(1, -(-len(text.encode()) // 4))


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message (string content or its text blocks), or ""."""
    for message in reversed(body.get("messages") or ()):
        if not isinstance(message, Mapping) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(part.get("text", "") for part in content
                           if isinstance(part, Mapping) and part.get("type") == "text")
    return ""


def _reply_text(body: Mapping[str, Any], prefix: str, cap_chars: int, max_tokens: Any) -> tuple[str, bool]:
    """The answer text and whether ``max_tokens`` cut it short."""
    text = prefix + " ".join(last_user_text(body).split())[:cap_chars]
    if isinstance(max_tokens, int) and max_tokens > 0 and estimate_text_tokens(text) > max_tokens:
        cut = text.encode()[: max_tokens * 4].decode(errors="ignore")
        return cut, True
    return text, False


def synthesize(api: str, path: str, body: Any, stream: bool, *, message_id: str, cache: PromptCache,
               prefix: str = "echo: ", cap_chars: int = 200) -> Answer:
    """Answer ``body`` deterministically as the API named ``api`` would, with usage and prompt-cache accounting."""
    dialect = dialect_for(api)
    if not isinstance(body, Mapping) or not isinstance(body.get("messages"), list):
        return Answer(400, dialect.error_body(400, "messages: Field required"))
    if path.endswith("/count_tokens"):
        return Answer(200, json.dumps({"input_tokens": count_tokens(body)}, separators=(",", ":")).encode())
    try:
        prompt = cache.account(body) if dialect.cache_marks else CacheUsage(count_tokens(body))
    except CacheControlError as exc:
        return Answer(400, dialect.error_body(400, str(exc)))
    text, cut = _reply_text(body, prefix, cap_chars, dialect.max_output_tokens(body))
    usage = Usage(input_tokens=prompt.input_tokens, output_tokens=estimate_text_tokens(text),
                  cache_write_tokens=prompt.cache_creation_input_tokens,
                  cache_read_tokens=prompt.cache_read_input_tokens)
    answer = TextAnswer(message_id, str(body.get("model") or "echo"), text, usage, truncated=cut)
    if not stream:
        return Answer(200, dialect.text_body(answer), output_tokens=usage.output_tokens)
    events = dialect.text_events(answer, include_usage=dialect.streams_usage(body))
    return Answer(200, events=events, output_tokens=usage.output_tokens)
