"""``coordinator init``: a commented fleet.toml, a shared context file, three example tasks, a .gitignore.

The files cite nothing outside the new fleet: a new user's folder holds no
design documents to point at, so every comment explains itself.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

FLEET_TOML = '''# coordinator fleet. Every key has a default; delete what you don't need.

[fleet]
agents = 4                 # default for `coordinator run -n`
default_agent = "llm"      # agent for tasks that name none
lease_s = 30               # a claim not renewed for this long is stale and reclaimed
heartbeat_s = 5            # agents renew their claims this often
grace_s = 10               # Ctrl-C: seconds running tasks get to finish
max_usd = 0                # fleet budget in USD, 0 = none
max_pending = 0            # the HTTP API refuses new tasks (429) past this many waiting, 0 = no limit

[gateway]                  # the shared inference gateway, on 127.0.0.1 only
dedup = true               # identical requests in flight share one upstream call
cache_ttl_s = 600          # repeats within this time are served from cache
cache_max_mb = 64
context_cache = "auto"     # mark the shared prefix for the provider's prompt cache

[backends.default]
# auto: anthropic if ANTHROPIC_API_KEY is set, openai if OPENAI_API_KEY is set,
# else the offline echo backend. Keys are read from the environment only.
kind = "auto"
# base_url = "http://127.0.0.1:8000/v1"   # vLLM, llama.cpp, Ollama: kind = "openai"
# rpm = 50                                 # requests per minute (0 = no limit)
# input_tpm = 0
# output_tpm = 0
# max_concurrency = 64

[models]
# With no model named, the default alias uses the newest Sonnet the installed anthropic SDK
# lists and does not deprecate; name one to pin it: { backend = "default", model = "..." }.
default = { backend = "default" }
# An alias may name fallback = ["other"] (tried when its retries run out or its circuit is open)
# and downgrade = "cheaper" (used when a task's max_usd cannot cover a request at this alias):
# cheap = { backend = "default", model = "claude-haiku-4-5" }

# [[routing]]                       # first match wins; a request no rule matches keeps its model
# labels = ["docs"]                 # also: priority = ["low"], agent = ["llm"], max_input_tokens = 4000
# alias = "cheap"                   # `coordinator route --task ID` explains a decision

[agents.llm]
kind = "llm"
system = "You are a careful engineer."
shared_context = ["context/*.md"]   # every task sees these first: the shared, cached prefix

# [agents.claude]                   # Claude Code through the gateway (npm install -g @anthropic-ai/claude-code)
# kind = "command"
# command = ["claude", "-p", "{prompt}", "--output-format", "json",
#            "--permission-mode", "acceptEdits"]   # headless editing needs acceptEdits (or --allowedTools)
# # The gateway sets ANTHROPIC_BASE_URL and a per-task ANTHROPIC_API_KEY; these keep Claude Code
# # from calling anything but the gateway (telemetry, update checks), so it also runs offline.
# env = { CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1", DISABLE_AUTOUPDATER = "1" }
# strict_mcp_config = true          # the default: --strict-mcp-config, so none of your MCP servers reach it

# [workspace]                       # each claim in its own git worktree, landed through a merge queue
# mode = "worktree"
# target = "main"
# gates = [["pytest", "-q"]]
'''

CONTEXT = '''# Project notes

Shared context for every task in this fleet. Put here what every agent should
know: the project's purpose, its conventions, the definition of done. The llm
runner sends this file first, byte-identical for every task, so the gateway has
the provider cache it once and every other task reads it from the cache.
'''

TASKS = {
    "hello.toml": 'prompt = "Say hello and describe, in one paragraph, what you were asked to do."\n'
                  'priority = "high"\n',
    "outline.toml": 'prompt = "Outline a README for {project}."\n\n[vars]\nproject = "a small command-line tool"\n',
    "summary.toml": 'prompt = "Summarize the outline in three sentences."\n'
                    'depends_on = ["outline"]\npriority = "low"\n',
}


GITIGNORE_LINE = ".coordinator/"


def init_fleet(directory: Path, *, force: bool = False) -> list[Path]:
    """Create the files; refuses to overwrite anything but fleet.toml with ``force``.

    ``.gitignore`` gains a ``.coordinator/`` line (state, logs and the gateway's
    token must never be committed); an existing one is appended to, never replaced.
    """
    if directory.exists() and not directory.is_dir():
        raise ConfigError("is not a folder; pick a folder (it is created if missing)", path=directory)
    directory.mkdir(parents=True, exist_ok=True)
    fleet = directory / "fleet.toml"
    if fleet.exists() and not force:
        raise ConfigError("already exists; pass --force to overwrite it", path=fleet)
    planned = {directory / "context" / "notes.md": CONTEXT,
               **{directory / "tasks" / name: text for name, text in TASKS.items()}}
    clash = [str(p) for p in planned if p.exists()]
    if clash:
        raise ConfigError(f"would overwrite {', '.join(clash)}; move them away or init another folder")
    written = [fleet]
    fleet.write_text(FLEET_TOML, encoding="utf-8")
    for path, text in planned.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    if _ignore_state(directory / ".gitignore"):
        written.append(directory / ".gitignore")
    return written


def _ignore_state(path: Path) -> bool:
    """Add ``.coordinator/`` to a .gitignore unless it is there already; whether the file changed."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if any(line.strip() in (GITIGNORE_LINE, GITIGNORE_LINE.rstrip("/"), "/" + GITIGNORE_LINE)
           for line in text.splitlines()):
        return False
    separator = "" if not text or text.endswith("\n") else "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{separator}# coordinator state: claims, logs, the gateway's token\n{GITIGNORE_LINE}\n")
    return True
