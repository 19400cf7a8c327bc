"""Bad task files, shared by the in-process tests and the CLI / agent subprocess tests.

``BAD_CASES`` are files that must each be reported in ``TaskSet.invalid``;
``BLOCKED_CASES`` are files holding a task that must end up in ``TaskSet.blocked``.
Each entry is ``(filename under tasks/, content, expected substring of the message)``.
``GOOD_TASKS`` are valid files that must load untouched beside any of them, and
``write_bad_fleet`` lays everything out in a fleet root, filesystem oddities included.
"""

from __future__ import annotations

import os
from pathlib import Path

GOOD_TASKS: dict[str, str] = {
    "good-one.toml": 'prompt = "Say hello."\n',
    "good-two.toml": ('[[tasks]]\nid = "good-two-a"\nprompt = "First."\n\n'
                      '[[tasks]]\nid = "good-two-b"\nprompt = "Second."\ndepends_on = ["good-two-a"]\n'),
    "sub/good-three.toml": ('prompt = "Summarise {topic}."\npriority = "high"\nlabels = ["x"]\n'
                            'max_attempts = 2\n\n[vars]\ntopic = "the design"\n'),
}
GOOD_IDS = ("good-one", "good-two-a", "good-two-b", "good-three")

HUGE = b'prompt = "x"\n' + b"# padding\n" * 110_000  # just over 1 MiB

BAD_CASES: list[tuple[str, bytes | str, str]] = [
    ("syntax-unterminated.toml", 'prompt = "never closed\n', "TOML syntax error"),
    ("syntax-no-equals.toml", 'prompt "x"\n', "TOML syntax error"),
    ("syntax-duplicate-key.toml", 'prompt = "a"\nprompt = "b"\n', "syntax-duplicate-key.toml:2: TOML syntax"),
    ("empty.toml", "", "has no task in it"),
    ("comments-only.toml", "# a note, no task\n", "has no task in it"),
    ("not-utf8.toml", b'prompt = "caf\xe9"\n', "not UTF-8"),
    ("huge.toml", HUGE, "1 MiB limit"),
    ("deep-nesting.toml", "x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("newline-key.toml", '"sneaky\\nkey" = 1\nprompt = "x"\n', "sneaky\\nkey: unknown key"),
    ("prompt-missing.toml", 'title = "no prompt"\n', "prompt: required key is missing"),
    ("prompt-empty.toml", 'prompt = "   "\n', "prompt: must not be empty"),
    ("prompt-not-string.toml", "prompt = 42\n", "prompt: must be a string"),
    ("unknown-key.toml", 'prompt = "x"\npriorty = 1\n', "priorty: unknown key; remove it or check its spelling"),
    ("loader-key.toml", 'prompt = "x"\nseen_ns = 1\n', "seen_ns: unknown key"),
    ("bad-id.toml", 'id = "has space"\nprompt = "x"\n', "id: must start with a letter or digit"),
    ("id-too-long.toml", f'id = "{"a" * 129}"\nprompt = "x"\n', "id: must start with a letter or digit"),
    ("bad stem!.toml", 'prompt = "x"\n', "id: the file name 'bad stem!' is not a valid task id"),
    ("priority-float.toml", 'prompt = "x"\npriority = 1.5\n', "priority: must be a whole number (got 1.5)"),
    ("priority-name.toml", 'prompt = "x"\npriority = "urgent"\n', "priority: must be an integer >= 0 or one of"),
    ("priority-negative.toml", 'prompt = "x"\npriority = -1\n', "priority: must be 0 or more"),
    ("priority-bool.toml", 'prompt = "x"\npriority = true\n', "priority: must be a whole number (got true)"),
    ("depends-not-list.toml", 'prompt = "x"\ndepends_on = "good-one"\n', "depends_on: must be a list"),
    ("depends-bad-id.toml", 'prompt = "x"\ndepends_on = ["no spaces"]\n', "depends_on[0]: must start with"),
    ("acceptance-string.toml", 'prompt = "x"\nacceptance = "pytest -q"\n', "acceptance: must be an argv list"),
    ("acceptance-empty.toml", 'prompt = "x"\nacceptance = []\n', "acceptance: needs a program first"),
    ("acceptance-int.toml", 'prompt = "x"\nacceptance = ["pytest", 3]\n', "acceptance[1]: must be a string"),
    ("timeout-zero.toml", 'prompt = "x"\ntimeout_s = 0\n', "timeout_s: Input should be greater than 0"),
    ("attempts-zero.toml", 'prompt = "x"\nmax_attempts = 0\n', "max_attempts: Input should be greater than"),
    ("usd-negative.toml", 'prompt = "x"\nmax_usd = -1.5\n', "max_usd: Input should be greater than 0"),
    ("tokens-string.toml", 'prompt = "x"\nmax_tokens_budget = "lots"\n', "max_tokens_budget: must be a number"),
    ("labels-ints.toml", 'prompt = "x"\nlabels = [1, 2]\n', "labels[0]: must be a string"),
    ("title-int.toml", 'prompt = "x"\ntitle = 5\n', "title: must be a string"),
    ("vars-table.toml", 'prompt = "x"\n[vars]\nx = { a = 1 }\n', "vars: vars.x is a table"),
    ("vars-array.toml", 'prompt = "x"\nvars = { x = [1] }\n', "vars: vars.x is an array"),
    ("vars-date.toml", 'prompt = "x"\n[vars]\nwhen = 2024-01-01\n', "vars: vars.when is a date"),
    ("agent-unknown.toml", 'prompt = "x"\nagent = "nobody"\n', "agent: agent 'nobody' is not defined"),
    ("agent-int.toml", 'prompt = "x"\nagent = 3\n', "agent: must be a string"),
    ("context-dotdot.toml", 'prompt = "x"\ncontext = ["../secret.txt"]\n', "context: pattern '../secret.txt' climbs"),
    ("context-absolute.toml", 'prompt = "x"\ncontext = ["/etc/*"]\n', "context: pattern '/etc/*' is absolute"),
    ("workdir-dotdot.toml", 'prompt = "x"\nworkdir = "../elsewhere"\n', "workdir: '../elsewhere' is outside"),
    ("workdir-absolute.toml", 'prompt = "x"\nworkdir = "/etc"\n', "workdir: '/etc' is outside the fleet root"),
    ("array-no-id.toml", '[[tasks]]\nprompt = "x"\n', "array-no-id.toml:1: tasks[0].id: is required"),
    ("array-stray-key.toml", 'priority = 1\n[[tasks]]\nid = "stray-a"\nprompt = "x"\n',
     "array-stray-key.toml:1: priority: top-level key is not allowed beside [[tasks]]"),
    ("array-not-tables.toml", 'tasks = ["a", "b"]\n', "tasks: must be an array of tables"),
    ("array-empty.toml", "tasks = []\n", "has no task in it"),
    ("array-bad-sibling.toml", '[[tasks]]\nid = "sibling-ok"\nprompt = "x"\n\n[[tasks]]\nid = "sibling-bad"\n'
     'prompt = "y"\npriority = "soon"\n', "array-bad-sibling.toml:8: tasks[1].priority: must be"),
    ("array-dup-id.toml", '[[tasks]]\nid = "twice"\nprompt = "x"\n\n[[tasks]]\nid = "twice"\nprompt = "y"\n',
     "tasks[1].id: duplicate id 'twice': an earlier task in this file"),
    ("zz-dup-of-good.toml", 'id = "good-one"\nprompt = "x"\n',
     "id: duplicate id 'good-one': tasks/good-one.toml already defines it"),
    ("self-cycle.toml", 'prompt = "x"\ndepends_on = ["self-cycle"]\n',
     "depends_on: dependency cycle self-cycle → self-cycle"),
    ("two-cycle.toml", '[[tasks]]\nid = "cyc-a"\nprompt = "x"\ndepends_on = ["cyc-b"]\n\n'
     '[[tasks]]\nid = "cyc-b"\nprompt = "y"\ndepends_on = ["cyc-a"]\n', "dependency cycle cyc-a → cyc-b → cyc-a"),
]

BLOCKED_CASES: list[tuple[str, bytes | str, str]] = [
    ("needs-unknown.toml", 'prompt = "x"\ndepends_on = ["does-not-exist"]\n',
     "dependency 'does-not-exist' is not a known task"),
    ("needs-invalid.toml", '[[tasks]]\nid = "broken"\nprompt = ""\n\n'
     '[[tasks]]\nid = "needs-broken"\nprompt = "x"\ndepends_on = ["broken"]\n',
     "dependency 'broken' is invalid (see tasks/needs-invalid.toml)"),
    ("needs-blocked.toml", '[[tasks]]\nid = "chain-a"\nprompt = "x"\ndepends_on = ["missing-too"]\n\n'
     '[[tasks]]\nid = "chain-b"\nprompt = "y"\ndepends_on = ["chain-a"]\n', "dependency 'chain-a' is blocked"),
]

# Filesystem oddities that file content cannot express: (name under tasks/, expected substring).
SPECIAL_CASES: list[tuple[str, str]] = [
    ("folder.toml", "is a folder, not a task file"),
    ("line\nbreak.toml", "line\\nbreak.toml: has no task in it"),
    ("dangling.toml", "is a broken symlink"),
    ("fifo.toml", "is not a regular file"),
    ("context-symlink-out.toml", "context: 'leak/secret.txt' leads through a symlink"),
    ("workdir-symlink-out.toml", "workdir: 'leak' leads through a symlink"),
]


def write_case(root: Path, name: str, content: bytes | str) -> Path:
    """Write one task file under ``root/tasks`` (bytes verbatim, text as UTF-8)."""
    path = root / "tasks" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.write_bytes(data)
    return path


def write_special(root: Path, name: str, outside: Path) -> None:
    """Create the filesystem oddity ``name`` (see SPECIAL_CASES); ``outside`` is a folder outside root."""
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    if name == "folder.toml":
        (tasks / name).mkdir(exist_ok=True)
    elif name == "line\nbreak.toml":
        write_case(root, name, "")
    elif name == "dangling.toml":
        (tasks / name).symlink_to(root / "no-such-target.toml")
    elif name == "fifo.toml":
        os.mkfifo(tasks / name)
    else:
        outside.mkdir(parents=True, exist_ok=True)
        (outside / "secret.txt").write_text("do not send me to a model\n")
        if not (root / "leak").is_symlink():
            (root / "leak").symlink_to(outside, target_is_directory=True)
        key = 'context = ["leak/secret.txt"]' if name.startswith("context") else 'workdir = "leak"'
        write_case(root, name, f'prompt = "x"\n{key}\n')


def write_bad_fleet(root: Path, outside: Path) -> None:
    """Every good task, bad case, blocked case and filesystem oddity, in one fleet root."""
    for name, content in GOOD_TASKS.items():
        write_case(root, name, content)
    for name, content, _ in BAD_CASES + BLOCKED_CASES:
        write_case(root, name, content)
    for name, _ in SPECIAL_CASES:
        write_special(root, name, outside)
