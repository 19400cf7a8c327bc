"""Wire dialects: one ``Dialect`` per API the gateway speaks, and the registry that finds them.

Everything that differs between the Anthropic Messages API and the OpenAI Chat
Completions API (paths, header rules, errors, usage, SSE events, stream ⇄ body)
lives in ``anthropic.py`` and ``openai.py`` behind the ``base.Dialect`` surface.
Code elsewhere holds a dialect (routed by endpoint) or looks one up by the API's
name from data (``dialect_for``), and asks it, never comparing names itself.

Standard library only, so the ``llm`` runner and the backends can import it cheaply.
"""

from __future__ import annotations

from .anthropic import AnthropicDialect
from .base import Dialect, StreamScanner, TextAnswer, Usage
from .openai import OpenAIDialect

__all__ = ["ANTHROPIC", "DEFAULT_DIALECT", "DIALECTS", "OPENAI", "Dialect", "StreamScanner", "TextAnswer", "Usage",
           "dialect_for", "dialect_for_path"]

ANTHROPIC: Dialect = AnthropicDialect()
OPENAI: Dialect = OpenAIDialect()
DIALECTS: dict[str, Dialect] = {dialect.name: dialect for dialect in (ANTHROPIC, OPENAI)}
# The API of the coordinator's own endpoints: their errors take its shape.
DEFAULT_DIALECT = ANTHROPIC


def dialect_for(name: str) -> Dialect:
    """The dialect of the API called ``name``; ValueError naming the known ones otherwise."""
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown wire API {name!r}; known: {', '.join(DIALECTS)}") from None


def dialect_for_path(path: str) -> Dialect:
    """The dialect a request path belongs to: its endpoint, else a word of it, else the default.

    Unknown paths need a dialect too, so that their 404 comes in the shape the
    client's SDK expects.
    """
    for dialect in DIALECTS.values():
        if path in dialect.paths:
            return dialect
    for dialect in DIALECTS.values():
        if any(word in path for word in dialect.path_words):
            return dialect
    return DEFAULT_DIALECT
