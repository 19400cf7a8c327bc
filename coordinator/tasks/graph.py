"""Checks that span task files: duplicate ids, dependency cycles, blocked tasks.

``tasks.py`` parses each file on its own (so unchanged files are never
re-parsed); this module combines the per-file results into one ``TaskSet``.
The rules (docs/architecture.md, "Task states"): the first file in path order keeps an id; every task
in a dependency cycle is invalid; a task whose dependency is unknown, invalid or
itself blocked is ``blocked`` (kept among the valid tasks, with a reason).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .model import Task

# (source, index within the file, key) -> line of that key, read only when reporting an error.
Locate = Callable[[str, int, str], "int | None"]
MAX_CYCLE_SHOWN = 12
# Every character str.splitlines() breaks on, escaped: file names and TOML keys may hold them,
# and a report line must stay one line.
_ONE_LINE = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


@dataclass(frozen=True)
class InvalidFile:
    """One bad file or bad task, with its whole one-line message ("tasks/x.toml:3: priority: ...").

    ``error`` is its first problem; a task with several keeps the others in ``more``
    (each an InvalidFile of its own line), so it still counts once as invalid.
    """

    path: str
    error: str
    line: int | None = None
    field: str | None = None
    task_id: str | None = None
    more: tuple[InvalidFile, ...] = ()

    def problems(self) -> tuple[InvalidFile, ...]:
        """Every problem of this file or task, the first one first."""
        return (self, *self.more)


@dataclass
class TaskSet:
    """Every task file's outcome: valid tasks in run order, invalid ones, blocked ones, reverse deps."""

    tasks: dict[str, Task] = field(default_factory=dict)
    invalid: list[InvalidFile] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)
    dependents: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class FileResult:
    """What one file yielded: each id it defines in file order (with its Task when valid), and errors."""

    source: str
    in_array: bool = False
    entries: list[tuple[str, Task | None]] = field(default_factory=list)
    invalid: list[InvalidFile] = field(default_factory=list)


def invalid_entry(source: str, message: str, *, line: int | None = None, key: str | None = None,
                  task_id: str | None = None) -> InvalidFile:
    """An InvalidFile whose message is rendered exactly as ConfigError renders it."""
    error = str(ConfigError(message, path=source, key=key, line=line)).translate(_ONE_LINE)
    return InvalidFile(path=source, error=error, line=line, field=key, task_id=task_id)


def build_taskset(files: Iterable[FileResult], locate: Locate) -> TaskSet:
    """Resolve ids and dependencies across files given in path order."""
    invalid: list[InvalidFile] = []
    owners: dict[str, Task | None] = {}
    where: dict[str, str] = {}
    in_array: set[str] = set()
    for result in files:
        invalid.extend(result.invalid)
        if result.in_array:
            in_array.add(result.source)
        for task_id, task in result.entries:
            if task_id not in owners:
                owners[task_id], where[task_id] = task, result.source
            elif task is not None:
                invalid.append(_duplicate(task, where[task_id], result, locate))
    valid = {task_id: task for task_id, task in owners.items() if task is not None}
    for task in _cycle_members(valid, invalid, locate, in_array):
        del valid[task.id]
    ordered = dict(sorted(valid.items(), key=lambda item: item[1].sort_key()))
    dependents: dict[str, list[str]] = {}
    for task in ordered.values():
        for dep in dict.fromkeys(task.depends_on):
            dependents.setdefault(dep, []).append(task.id)
    blocked = _blocked(ordered, where, dependents)
    invalid.sort(key=lambda bad: (bad.path, bad.line or 0))
    return TaskSet(tasks=ordered, invalid=invalid, blocked=blocked, dependents=dependents)


def _prefix(task: Task, in_array: set[str]) -> str:
    """The field prefix of a task inside a [[tasks]] file, as its messages name it."""
    return f"tasks[{task.index}]." if task.source in in_array else ""


def _duplicate(task: Task, first: str, result: FileResult, locate: Locate) -> InvalidFile:
    prefix = _prefix(task, {result.source} if result.in_array else set())
    if first == result.source:
        reason = f"duplicate id {task.id!r}: an earlier task in this file already uses it; rename one of them"
    else:
        reason = f"duplicate id {task.id!r}: {first} already defines it; rename one of them"
    return invalid_entry(result.source, reason, line=locate(task.source, task.index, "id"),
                         key=f"{prefix}id", task_id=task.id)


def _cycle_members(valid: dict[str, Task], invalid: list[InvalidFile], locate: Locate,
                   in_array: set[str]) -> list[Task]:
    """Every task on a dependency cycle, each reported as invalid with a cycle through it."""
    members: list[Task] = []
    suspects = _unpeelable(valid)
    # Cycles lie wholly among the tasks a topological peel cannot remove (usually none).
    graph = {task_id: valid[task_id] for task_id in valid if task_id in suspects}
    for component in _strong_components(graph) if graph else ():
        for task_id, cycle in _cycles_of(component, graph).items():
            task = graph[task_id]
            invalid.append(invalid_entry(
                task.source, f"dependency cycle {cycle}; remove one of these dependencies",
                line=locate(task.source, task.index, "depends_on"), key=f"{_prefix(task, in_array)}depends_on",
                task_id=task_id))
            members.append(task)
    return members


def _cycles_of(component: list[str], graph: dict[str, Task]) -> dict[str, str]:
    """For each member of a strongly connected component, a cycle through it, as text.

    One BFS finds a cycle; members on it get that cycle rotated to start at them,
    so a ring of n tasks costs O(n), not n searches.
    """
    members = set(component)
    shown: dict[str, str] = {}
    for task_id in component:
        if task_id in shown:
            continue
        cycle = _cycle_through(task_id, members, graph)
        for offset, node in enumerate(cycle):
            shown.setdefault(node, _show_cycle(cycle, offset))
    return shown


def _unpeelable(valid: dict[str, Task]) -> set[str]:
    """Tasks left after repeatedly removing those whose dependencies were all removed (Kahn's peel):
    the ones on a cycle or depending on one. Twice as cheap as Tarjan over every task."""
    waiting: dict[str, int] = {}
    users: dict[str, list[str]] = {}
    for task_id, task in valid.items():
        count = 0
        for dep in set(task.depends_on):
            if dep in valid:
                count += 1
                users.setdefault(dep, []).append(task_id)
        if count:
            waiting[task_id] = count
    ready = [task_id for task_id in valid if task_id not in waiting]
    while ready:
        for user in users.get(ready.pop(), ()):
            left = waiting[user] - 1
            if left:
                waiting[user] = left
            else:
                del waiting[user]
                ready.append(user)
    return set(waiting)


def _strong_components(valid: dict[str, Task]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; only components that contain a cycle (size > 1 or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in valid:
        if start in index:
            continue
        work = [(start, iter(_edges(valid, start)))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    found.append(_pop_component(node, stack, on_stack))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(_edges(valid, child))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return [c for c in found if len(c) > 1 or c[0] in valid[c[0]].depends_on]


def _edges(valid: dict[str, Task], task_id: str) -> list[str]:
    return [dep for dep in valid[task_id].depends_on if dep in valid]


def _pop_component(root: str, stack: list[str], on_stack: set[str]) -> list[str]:
    component = []
    while True:
        node = stack.pop()
        on_stack.discard(node)
        component.append(node)
        if node == root:
            return sorted(component)


def _cycle_through(start: str, component: set[str], valid: dict[str, Task]) -> list[str]:
    """The shortest cycle start → … (back to start) inside its component, by BFS; start not repeated."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for dep in _edges(valid, node):
                if dep == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return path[::-1]
                if dep in component and dep not in parent:
                    parent[dep] = node
                    following.append(dep)
        frontier = following
    return [start]  # unreachable for a real component; keeps the message well-formed


def _show_cycle(cycle: list[str], offset: int) -> str:
    """The cycle rotated to start at ``cycle[offset]`` and closed, middle elided when long."""
    size = len(cycle) + 1  # the start is shown again at the end
    half = MAX_CYCLE_SHOWN // 2
    if size <= MAX_CYCLE_SHOWN:
        picks: list[int] | range = range(size)
    else:
        picks = [*range(half), -1, *range(size - half, size)]
    names = [cycle[(offset + j) % len(cycle)] if j >= 0 else f"… {size - 2 * half} more …" for j in picks]
    return " → ".join(names)


def _blocked(valid: dict[str, Task], where: dict[str, str],
             dependents: dict[str, list[str]]) -> dict[str, str]:
    """Tasks that can never run because a dependency is unknown, invalid, or blocked itself."""
    cause: dict[str, str] = {}
    for task in valid.values():
        dep = next((d for d in task.depends_on if d not in valid), None)
        if dep is None:
            continue
        if dep in where:
            cause[task.id] = f"dependency {dep!r} is invalid (see {where[dep]}); fix that task"
        else:
            cause[task.id] = f"dependency {dep!r} is not a known task; add a task with that id or fix depends_on"
    blocked = dict(cause)
    pending = list(cause)
    while pending:
        dep = pending.pop()
        for child in dependents.get(dep, ()):
            if child not in blocked:
                # Name the direct dependency and the root cause only, so chains stay one short line.
                cause[child] = cause[dep]
                blocked[child] = f"dependency {dep!r} is blocked: {cause[dep]}"
                pending.append(child)
    return {task_id: blocked[task_id] for task_id in valid if task_id in blocked}
