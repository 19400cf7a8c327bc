"""What a task is: the Task model, its states and their legal transitions, the id and priority rules.

One ``State`` enum names every state; ``TRANSITIONS`` is the one table of which
operation may move a task from which state to which (docs/architecture.md, "Task states").
Stores consult it inside their operations, so no other module decides whether,
say, a done task may be cancelled. ``blocked`` and ``invalid`` are derived for
display and never stored.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from ..errors import ConfigError, TaskError

PRIORITY_NAMES = {"critical": 0, "high": 1, "normal": 2, "low": 3}
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ID_RULE = ("must start with a letter or digit and use only letters, digits, '.', '_' and '-' "
           "(at most 128 characters)")
TITLE_MAX = 80
_ID_RE = re.compile(ID_PATTERN)
_PLACEHOLDER = re.compile(r"\{([^{}\s]+)\}")


class State(StrEnum):
    """A task's state. Stored: pending, running, done, failed, cancelled; shown also: blocked, invalid."""

    PENDING = "pending"
    BLOCKED = "blocked"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INVALID = "invalid"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        """Done, failed or cancelled: nothing runs it until a retry."""
        return self in FINISHED


FINISHED = frozenset({State.DONE, State.FAILED, State.CANCELLED})
# Every state, in the order reports show them.
SHOWN_STATES = tuple(State)

# operation -> {from state: the states it may lead to}. The one table of legal transitions.
TRANSITIONS: dict[str, dict[State, frozenset[State]]] = {
    "claim": {State.PENDING: frozenset({State.RUNNING})},
    "finish": {State.RUNNING: frozenset({State.DONE, State.PENDING, State.FAILED})},
    "release": {State.RUNNING: frozenset({State.PENDING})},
    "land": {State.RUNNING: frozenset({State.DONE})},  # workspaces: the ref moved under the live claim
    "requeue": {State.RUNNING: frozenset({State.PENDING, State.FAILED})},  # a conflict or red gate, uncounted
    "reclaim": {State.RUNNING: frozenset({State.PENDING, State.FAILED})},
    "repair": {State.RUNNING: frozenset({State.PENDING})},
    "cancel": {State.PENDING: frozenset({State.CANCELLED}), State.RUNNING: frozenset({State.CANCELLED})},
    "retry": {state: frozenset({State.PENDING}) for state in FINISHED},
}


def can(operation: str, state: State) -> bool:
    """Whether ``operation`` applies to a task in ``state``."""
    return state in TRANSITIONS[operation]


def transition(operation: str, task_id: str, current: State, target: State) -> State:
    """``target`` if ``operation`` may move the task there from ``current``; else ``TaskError`` saying why."""
    allowed = TRANSITIONS[operation].get(current, frozenset())
    if target in allowed:
        return target
    if operation == "retry":
        raise TaskError(f"task {task_id!r} is {current}; only failed, done or cancelled tasks can be retried",
                        task_id=task_id)
    if operation == "cancel":
        raise TaskError(f"task {task_id!r} is already {current}", task_id=task_id)
    raise TaskError(f"task {task_id!r} is {current}; {operation} cannot make it {target}", task_id=task_id)


def after_attempt(ok: bool, attempts: int, max_attempts: int) -> State:
    """Where a finished or reclaimed attempt leaves its task: done, another try, or failed for good."""
    if ok:
        return State.DONE
    return State.FAILED if attempts >= max_attempts else State.PENDING


def is_valid_id(task_id: str) -> bool:
    """Whether ``task_id`` follows the id rule (``ID_RULE``)."""
    return _ID_RE.fullmatch(task_id) is not None


def priority_number(value: str | int) -> int:
    """A priority as its number: ``"high"`` or ``"HIGH"`` or ``"1"`` or 1 → 1 (the one rule for files and CLI)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must be 0 or more (0 runs first), or one of " + ", ".join(PRIORITY_NAMES))
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in PRIORITY_NAMES:
            return PRIORITY_NAMES[word]
    raise ValueError("must be an integer >= 0 or one of " + ", ".join(PRIORITY_NAMES))


def parse_priority(value: str) -> int:
    """A ``--priority`` option as its number; a usage error naming the choices otherwise."""
    try:
        return priority_number(int(value) if value.strip().isdigit() else value)
    except ValueError as exc:
        raise ConfigError(f"priority {value!r} {exc}", key="--priority") from exc


TaskId = Annotated[str, Field(pattern=ID_PATTERN)]
Scalar = str | int | float | bool


class Task(BaseModel):
    """One task as its file defines it, plus where the loader found it (source, index, seen_ns)."""

    # strict: TOML is typed, so "3" is not silently an int and true is not 1.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: TaskId = Field(description="unique across the fleet; defaults to the file name without .toml")
    prompt: str = Field(description="what to do")
    title: str = Field("", description="for display; defaults to the prompt's first line")
    priority: int = Field(2, ge=0, description='lower runs first: an int >= 0 or "critical", "high", '
                                               '"normal", "low"')
    depends_on: list[TaskId] = Field(default_factory=list, description="ids that must be done before this task runs")
    agent: str | None = Field(None, description="an [agents.NAME] table of fleet.toml")
    model: str | None = Field(None, description="model alias; defaults to the agent's")
    context: list[str] = Field(default_factory=list, description="globs of files inlined into the prompt, inside the fleet root")
    workdir: str | None = Field(None, description="where a command runner runs, inside the fleet root")
    timeout_s: float | None = Field(None, gt=0, description="seconds before an attempt is killed")
    max_attempts: int = Field(3, ge=1, description="attempts before the task is failed")
    acceptance: list[str] | None = Field(None, description='argv that must exit 0, e.g. ["pytest", "-q"]')
    max_tokens_budget: float | None = Field(None, gt=0, description="token budget enforced by the gateway")
    max_usd: float | None = Field(None, gt=0, description="USD budget enforced by the gateway")
    labels: list[str] = Field(default_factory=list, description="free-form labels")
    use_dependency_outputs: bool = Field(True, description="give this task its dependencies' outputs "
                                                           "(inlined by the llm runner; {deps_dir} for commands)")
    vars: dict[str, Scalar] = Field(default_factory=dict, description="values for {name} placeholders in the prompt")
    # Set by the loader, never by a file; excluded from dumps so a task's hash is its definition.
    source: SkipJsonSchema[str] = Field("", exclude=True)
    index: SkipJsonSchema[int] = Field(0, exclude=True)
    seen_ns: SkipJsonSchema[int] = Field(0, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _default_title(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("prompt"), str):
            title = data.get("title")
            if title is None or (isinstance(title, str) and not title.strip()):
                data = {**data, "title": first_line(data["prompt"])}
        return data

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_name(cls, value: Any) -> Any:
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return priority_number(value)
        return value  # any other type: pydantic's own "must be a whole number"

    @field_validator("prompt")
    @classmethod
    def _prompt_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty; write what the task should do")
        return value

    @field_validator("acceptance", mode="before")
    @classmethod
    def _argv(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError('must be an argv list such as ["pytest", "-q"], not one string')
        if isinstance(value, list) and (not value or (isinstance(value[0], str) and not value[0].strip())):
            raise ValueError('needs a program first, e.g. ["pytest", "-q"]; or remove the key')
        return value

    @field_validator("vars", mode="before")
    @classmethod
    def _scalar_vars(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, item in value.items():
                if isinstance(item, (dict, list)) or not isinstance(item, (str, int, float, bool)):
                    kind = "a table" if isinstance(item, dict) else "an array" if isinstance(item, list) \
                        else f"a {type(item).__name__}"
                    raise ValueError(f"vars.{name} is {kind}; use a string, number or boolean")
        return value

    def definition_hash(self) -> str:
        """A short hash of the task's definition (loader fields excluded), stored with each attempt."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def sort_key(self) -> tuple[int, int, str, int, str]:
        """Run order: priority, then first seen (file mtime), then file and position, then id."""
        return (self.priority, self.seen_ns, self.source, self.index, self.id)

    def rendered_prompt(self) -> str:
        """The prompt with ``{name}`` replaced from vars; other braces are left untouched."""
        if not self.vars:
            return self.prompt
        return _PLACEHOLDER.sub(self._substitute, self.prompt)

    def _substitute(self, match: re.Match[str]) -> str:
        value = self.vars.get(match.group(1))
        if value is None:
            return match.group(0)
        if isinstance(value, bool):
            return "true" if value else "false"  # as the TOML file spells it
        return str(value)


def first_line(prompt: str) -> str:
    """The prompt's first non-empty line, cut to TITLE_MAX characters."""
    for line in prompt.splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= TITLE_MAX else line[:TITLE_MAX - 1] + "…"
    return ""


