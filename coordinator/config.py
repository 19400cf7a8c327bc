"""fleet.toml → frozen pydantic models, parsed once at the edge.

Every key has a default, so an empty fleet.toml means all defaults; a fleet root
is a folder holding one, found by walking up as git finds ``.git``. Errors are
``ConfigError`` naming the file, the key and the fix. Core code receives a
``FleetConfig`` and never reads the environment itself; the one exception is
``ROOT_ENV``, resolved here for the CLI.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, PrivateAttr, field_validator, model_validator

from .config_refs import check_references, rule_line
from .errors import ConfigError
from .validation import TYPE_FIXES, all_errors, did_you_mean, header_lines, key_line, toml_error_line, toml_error_reason

ROOT_ENV = "COORDINATOR_ROOT"
CONFIG_NAME = "fleet.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetSection(_Strict):
    """The ``[fleet]`` table: queue and agent-process settings."""

    agents: int = Field(4, ge=1, le=256)
    tasks_dir: str = "tasks"
    state_dir: str = ".coordinator"
    default_agent: str = "llm"
    lease_s: float = Field(30.0, gt=0)
    heartbeat_s: float = Field(5.0, gt=0)
    grace_s: float = Field(10.0, ge=0)
    max_usd: float = Field(0.0, ge=0)
    max_pending: int = Field(0, ge=0)  # the HTTP API refuses new tasks (429) past this many waiting; 0 = no limit
    retry_backoff_s: float = Field(2.0, ge=0)  # a failed attempt's task waits this, doubling per attempt
    retry_backoff_max_s: float = Field(120.0, ge=0)
    # Where claims and records live: "file" (under state_dir, one host) or "redis://host:port/db"
    # (DESIGN §13; its password from the variable state_password_env names, never from this file).
    state: str = "file"
    state_password_env: str | None = None
    state_name: str = Field("", pattern=r"^[A-Za-z0-9._-]*$")  # the fleet's name in a shared Redis; "" = root's name

    @field_validator("state")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value != "file" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError('must be "file" or a Redis URL such as "redis://127.0.0.1:6379/0"')
        return value


class GatewaySection(_Strict):
    """The ``[gateway]`` table: the shared inference pipeline."""

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    dedup: bool = True
    cache_ttl_s: float = Field(600.0, ge=0)
    cache_max_mb: float = Field(64.0, ge=0)
    context_cache: Literal["auto", "off"] = "auto"
    max_queue: int = Field(1024, ge=1)
    warmup_wait_s: float = Field(30.0, ge=0)
    max_body_mb: float = Field(32.0, gt=0)  # a request body past this (inflated) is refused with 413
    header_timeout_s: float = Field(15.0, gt=0)  # a connection idle or mid-headers this long is closed
    body_timeout_s: float = Field(60.0, gt=0)  # a request body not received in full by then gets 408
    max_connections: int = Field(2048, ge=1)  # open client connections; more are refused at once (503)
    # With a Redis state: how long another host's gateway waits on a leader that stops renewing its call
    shared_lease_s: float = Field(10.0, gt=0)

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        if value not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the gateway listens on loopback only; use 127.0.0.1")
        return value


class WorkspaceSection(_Strict):
    """The ``[workspace]`` table: where claims work, and how their work lands (docs/workspaces.md)."""

    mode: Literal["shared", "worktree"] = "shared"
    repo: str = "."  # the git repository, relative to the fleet root
    target: str = "main"  # the branch tasks land on
    land: Literal["merge", "squash", "none"] = "merge"
    gates: list[list[str]] = []  # argvs run on the merged candidate before it lands
    gate_timeout_s: float = Field(900.0, gt=0)
    setup: list[str] = []  # one argv run in each new worktree before the runner
    # `copy` in fleet.toml (BaseModel.copy would be shadowed): globs copied from the primary checkout
    copy_globs: list[str] = Field([], alias="copy")
    max_conflicts: int = Field(3, ge=0)

    @field_validator("gates")
    @classmethod
    def _argvs(cls, value: list[list[str]]) -> list[list[str]]:
        if any(not argv or not argv[0].strip() for argv in value):
            raise ValueError('each gate is an argv naming a program, e.g. [["pytest", "-q"]]')
        return value

    @field_validator("target")
    @classmethod
    def _branch_name(cls, value: str) -> str:
        if not value.strip() or value.startswith(("-", "refs/")) or ".." in value or " " in value:
            raise ValueError("give a plain branch name, e.g. \"main\"")
        return value


class BackendConfig(_Strict):
    """One ``[backends.NAME]`` table."""

    kind: Literal["auto", "anthropic", "openai", "echo"] = "auto"
    base_url: str | list[str] | None = None
    api_key_env: str | None = None
    rpm: float = Field(0.0, ge=0)
    input_tpm: float = Field(0.0, ge=0)
    output_tpm: float = Field(0.0, ge=0)
    max_concurrency: int = Field(64, ge=1)
    timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(4, ge=0)
    retry_base_s: float = Field(0.5, ge=0)
    retry_max_s: float = Field(30.0, ge=0)
    breaker_failures: int = Field(5, ge=1)
    breaker_open_s: float = Field(30.0, gt=0)
    fallback: list[str] = []
    latency_ms: float = Field(20.0, ge=0)  # echo only: time to first token
    ms_per_token: float = Field(0.0, ge=0)  # echo only: streaming pace

    @property
    def base_urls(self) -> list[str]:
        """``base_url`` as a list (several servers get prefix-affinity routing)."""
        if self.base_url is None:
            return []
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)


class ModelAlias(_Strict):
    """One ``[models]`` entry: a backend, the upstream model and its prices per MTok.

    ``model`` unset means the current default model, which the gateway reads from
    the installed anthropic SDK's model list (``backends/models.py``); it is not
    resolved here, so ``status`` and ``--help`` never import the SDK.
    """

    backend: str = "default"
    model: str | None = None
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None
    cache_write_usd_per_mtok: float | None = None
    cache_read_usd_per_mtok: float | None = None
    fallback: list[str] = []  # aliases tried in order when this one's retries run out or its circuit is open
    downgrade: str | None = None  # the alias a request goes to when the task's budget cannot cover this one


def _as_list(value: object) -> object:
    """A single value where a list is expected (``agent = "claude"``) as a one-item list."""
    return [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value


class RoutingRule(_Strict):
    """One ``[[routing]]`` table: conditions, all of which must hold, and the alias they pick.

    A condition left out matches every request; a rule with none is a catch-all.
    Rules are tried in file order and the first match wins (``gateway/routing.py``).
    """

    name: str | None = None  # shown by `coordinator route` and in the gateway's log
    labels: list[str] = []  # the task carries every one of these labels
    priority: list[int] = []  # the task's priority is one of these (numbers or "critical", "high", ...)
    agent: list[str] = []  # the task runs on one of these [agents.NAME]
    max_input_tokens: int | None = Field(None, ge=0)  # the request's estimated input tokens are at most this
    alias: str  # the [models] alias a matching request goes to

    @field_validator("labels", "agent", mode="before")
    @classmethod
    def _listed(cls, value: object) -> object:
        return _as_list(value)

    @field_validator("priority", mode="before")
    @classmethod
    def _priorities(cls, value: object) -> object:
        from .tasks.model import priority_number  # noqa: PLC0415  (the one priority rule; tasks/ loads late)

        values = _as_list(value)
        if not isinstance(values, list):
            return values  # pydantic says it must be a list
        return [priority_number(v) if isinstance(v, (str, int)) and not isinstance(v, bool) else v for v in values]


class AgentConfig(_Strict):
    """One ``[agents.NAME]`` table: an ``llm`` or ``command`` runner."""

    kind: Literal["llm", "command"] = "llm"
    system: str = "You are a careful engineer."
    shared_context: list[str] = []
    model: str = "default"
    max_tokens: int = Field(1024, ge=1)
    command: list[str] = []
    env: dict[str, str] = {}
    timeout_s: float = Field(600.0, gt=0)
    sandbox: Literal["none", "bwrap"] = "none"  # command agents: run under bubblewrap (runners/sandbox.py)
    workspace: Literal["worktree", "shared"] | None = None  # "shared": this agent works in the primary checkout
    own_config_dir: bool = True  # command agents: a CLAUDE_CONFIG_DIR of their own (fleet/homes.py)
    # Claude Code agents (command[0] named `claude`) get --strict-mcp-config: no MCP server from the user's
    # or the project's settings (such as `coordinator mcp` itself) reaches an agent the fleet runs.
    strict_mcp_config: bool = True

    @field_validator("command")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if value and not value[0].strip():
            raise ValueError("command[0] must name a program")
        return value


def _default_agents() -> dict[str, AgentConfig]:
    return {"llm": AgentConfig(kind="llm")}


def _default_models() -> dict[str, ModelAlias]:
    return {"default": ModelAlias()}


def _default_backends() -> dict[str, BackendConfig]:
    return {"default": BackendConfig()}


class FleetConfig(_Strict):
    """The parsed fleet.toml plus the fleet root it was found in."""

    root: Path = Path(".")
    fleet: FleetSection = FleetSection()
    gateway: GatewaySection = GatewaySection()
    workspace: WorkspaceSection = WorkspaceSection()
    backends: dict[str, BackendConfig] = Field(default_factory=_default_backends)
    models: dict[str, ModelAlias] = Field(default_factory=_default_models)
    agents: dict[str, AgentConfig] = Field(default_factory=_default_agents)
    routing: list[RoutingRule] = []  # [[routing]] tables, first match wins
    # The store's password, read from the environment by the CLI (never parsed from fleet.toml).
    _state_password: str | None = PrivateAttr(None)

    def with_state_password(self, password: str | None) -> FleetConfig:
        """This config carrying the state store's password, which the edge read from the environment."""
        config = self.model_copy()
        config._state_password = password
        return config

    @property
    def state_password(self) -> str | None:
        """The state store's password, if the edge supplied one."""
        return self._state_password

    @model_validator(mode="after")
    def _keep_builtins(self) -> FleetConfig:
        """Defining ``[agents.claude]`` must not drop the built-in ``llm`` agent (same for defaults)."""
        for table, name, factory in (("agents", "llm", _default_agents), ("models", "default", _default_models),
                                     ("backends", "default", _default_backends)):
            current = getattr(self, table)
            if name not in current:
                object.__setattr__(self, table, {**factory(), **current})
        return self

    def agent_named(self, name: str, *, key: str = "agent") -> AgentConfig:
        """The ``[agents.NAME]`` table (the one agent-exists check); ``ConfigError`` naming the choices."""
        agent = self.agents.get(name)
        if agent is None:
            raise ConfigError(f"agent {name!r} is not defined in fleet.toml; add [agents.{name}] or use one of: "
                              f"{', '.join(self.agents)}", key=key)
        return agent

    @property
    def tasks_dir(self) -> Path:
        """Absolute path of the folder users drop task files into."""
        return self.root / self.fleet.tasks_dir

    @property
    def state_dir(self) -> Path:
        """Absolute path of the coordinator's own state folder."""
        return self.root / self.fleet.state_dir

    @property
    def config_path(self) -> Path:
        """Where fleet.toml is (or would be)."""
        return self.root / CONFIG_NAME


def find_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` holding a fleet.toml, as git finds ``.git``."""
    for folder in (start, *start.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder
    return None


def resolve_root(root: str | Path | None) -> Path:
    """The fleet root: the nearest fleet.toml at or above ``-C``, else ``$COORDINATOR_ROOT``, else here."""
    chosen = root if root is not None else os.environ.get(ROOT_ENV) or "."
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise ConfigError(f"fleet root {str(path)!r} is not a folder; pass -C DIR with an existing folder")
    found = find_root(path.resolve())
    if found is None:
        if (path / CONFIG_NAME).exists():
            raise ConfigError("is not a file; make it the fleet's TOML config", path=path / CONFIG_NAME)
        raise ConfigError(f"no {CONFIG_NAME} in {path.resolve()} or above; run `coordinator init` or pass -C DIR")
    return found


def load_config(root: str | Path | None = None, *, content: bytes | None = None) -> FleetConfig:
    """Read the fleet.toml found at or above ``root`` (see ``resolve_root``).

    Every problem is found in one pass. The ``ConfigError`` raised names the first
    one on one line, saying how many more there are; all of them (each a
    ``ConfigError``) are in its ``problems`` attribute, which ``validate`` prints.
    ``content`` is the file's bytes when the caller read them already (a reload
    parses exactly the bytes it noticed had changed).
    """
    base = resolve_root(root)
    path = base / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8") if content is None else content.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError("file is not UTF-8 text; save it as UTF-8", path=path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(toml_error_reason(exc), path=path, line=toml_error_line(exc)) from exc
    problems = []
    if "root" in data:
        problems.append(ConfigError("unknown top-level key; remove it", path=path, key="root"))
        data = {key: value for key, value in data.items() if key != "root"}
    try:
        config = FleetConfig(root=base, **data)
    except ValidationError as exc:
        problems += [ConfigError(msg, path=path, key=key, line=_line_of(text, key))
                     for key, msg in all_errors(exc, fixes=TYPE_FIXES, known_keys=_keys_at)]
        raise config_error(problems) from exc
    problems += check_references(config, path, text)
    if problems:
        raise config_error(problems)
    return config


def _line_of(text: str, key: str) -> int | None:
    """The line assigning ``key``, else the line of its table header (``[gatway]``, ``[agents.c]``)."""
    if key.startswith("routing["):
        return rule_line(text, key)
    line = key_line(text, key)
    if line is None:
        line = next((n for n, header in header_lines(text) if header.strip("[]").strip() == key), None)
    return line


def config_error(problems: list[ConfigError]) -> ConfigError:
    """One error for every command to print: the first problem, and how to see the rest."""
    problems = sorted(problems, key=lambda p: p.line or float("inf"))  # file order; unplaced ones last
    first = problems[0]
    if len(problems) == 1:
        first.problems = problems  # type: ignore[attr-defined]
        return first
    err = ConfigError(f"{first.reason} ({len(problems) - 1} more: run `coordinator validate`)", path=first.path,
                      key=first.key, line=first.line)
    err.problems = problems  # type: ignore[attr-defined]
    return err


def _keys_at(loc: tuple[object, ...]) -> list[str]:
    """The keys valid in the table at ``loc`` (("fleet",), ("agents", "claude"), ...), for "did you mean"."""
    model: object = FleetConfig
    keyed = False  # the next part is a table name ([agents.NAME]) or an index ([[routing]]), not a key
    for part in loc:
        if keyed:
            keyed = False
            continue
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        if get_origin(annotation) in (dict, list):  # [agents.NAME] tables, [[routing]] arrays
            model, keyed = get_args(annotation)[-1], True
        else:
            model = annotation
    fields = getattr(model, "model_fields", None)
    return [name for name in fields if name != "root"] if fields and not keyed else []
