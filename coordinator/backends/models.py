"""The default model: the newest current Sonnet in the installed anthropic SDK's own model list.

Why read it from the SDK: a hard-coded default retires (``claude-sonnet-4-5`` does
on 2026-11-30, and the SDK warns about it), while the SDK lists its models newest
first (``anthropic.types.model.Model``) and names the deprecated ones
(``anthropic._data.DEPRECATED_MODELS``). Only the gateway calls this: the SDK
costs about a second to import, which ``status`` and ``--help`` must not pay, so
``config.ModelAlias.model`` stays unset until the gateway routes a request.
Aliases in ``[models]`` that name a model are never touched.
"""

from __future__ import annotations

import functools
import re
import typing

FAMILY = "claude-sonnet-"
# Used when the SDK is missing or lists no current model of the family.
FALLBACK_MODEL = "claude-sonnet-4-6"
_DATED = re.compile(r"-\d{8}$")  # a pinned snapshot; the alias without the date follows it


def sdk_models() -> tuple[list[str], dict[str, str]]:
    """The SDK's model names (newest first) and its deprecated ones (name → end-of-life date)."""
    try:
        from anthropic.types.model import Model  # noqa: PLC0415 - slow import, gateway only
    except ImportError:
        return [], {}
    names = [name for arg in typing.get_args(Model) for name in typing.get_args(arg) if isinstance(name, str)]
    try:
        from anthropic._data import DEPRECATED_MODELS  # noqa: PLC0415 - private, and absent from older SDKs
    except ImportError:
        DEPRECATED_MODELS = {}  # noqa: N806
    return names, dict(DEPRECATED_MODELS)


@functools.cache
def default_model() -> str:
    """The first model of the Sonnet family the SDK lists that it does not deprecate."""
    names, deprecated = sdk_models()
    for name in names:
        if name.startswith(FAMILY) and not _DATED.search(name) and name not in deprecated:
            return name
    return FALLBACK_MODEL
