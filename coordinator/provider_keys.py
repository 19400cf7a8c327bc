"""Provider keys: which environment variables hold them, and an environment without them.

Keys belong to the gateway alone; agents and everything they start get a
per-task gateway token instead. The variables stripped are every
``api_key_env`` the fleet's backends name, plus every variable a provider SDK or
agent CLI is known to read a key from, so a key set for a different tool on the
same machine does not reach an agent either.
"""

from __future__ import annotations

from collections.abc import Mapping

from .config import FleetConfig

# Variables provider SDKs and agent CLIs read credentials from.
PROVIDER_KEY_VARS = frozenset({
    "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN",
    "OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "AZURE_OPENAI_API_KEY", "AZURE_API_KEY",
    "GEMINI_API_KEY", "GOOGLE_API_KEY", "VERTEX_API_KEY", "MISTRAL_API_KEY", "CODESTRAL_API_KEY",
    "GROQ_API_KEY", "TOGETHER_API_KEY", "TOGETHERAI_API_KEY", "COHERE_API_KEY", "CO_API_KEY",
    "DEEPSEEK_API_KEY", "XAI_API_KEY", "OPENROUTER_API_KEY", "FIREWORKS_API_KEY", "PERPLEXITY_API_KEY",
    "CEREBRAS_API_KEY", "DEEPINFRA_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "REPLICATE_API_TOKEN",
    "AWS_BEARER_TOKEN_BEDROCK",
})


def secret_vars(config: FleetConfig) -> frozenset[str]:
    """Every variable that may hold a provider key for this fleet."""
    named = {backend.api_key_env for backend in config.backends.values() if backend.api_key_env}
    return PROVIDER_KEY_VARS | named


def without_secrets(env: Mapping[str, str], config: FleetConfig) -> dict[str, str]:
    """``env`` minus every provider key variable."""
    hidden = secret_vars(config)
    return {name: value for name, value in env.items() if name not in hidden}
