"""Tasks: the model and its states (``model``), one file's parse (``parse``), the cross-file
graph (``graph``), the folder scan and parse cache (``index``, ``cache``), the JSON Schema (``schema``)."""

from .graph import InvalidFile, TaskSet
from .index import TaskIndex, load_paths, load_tasks
from .model import PRIORITY_NAMES, FINISHED, State, Task, parse_priority

__all__ = ["FINISHED", "PRIORITY_NAMES", "InvalidFile", "State", "Task", "TaskIndex", "TaskSet", "load_paths",
           "load_tasks", "parse_priority"]
