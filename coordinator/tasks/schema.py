"""The JSON Schema of a task file (``coordinator schema``), derived from the Task model."""

from __future__ import annotations

from typing import Any

from .model import PRIORITY_NAMES, Task


def task_json_schema() -> dict[str, Any]:
    """JSON Schema of a task file: one task as top-level keys, or a ``[[tasks]]`` array of them."""
    task = Task.model_json_schema()
    defs = task.pop("$defs", {})
    task["description"] = "One task: what to do, and how and when to run it."
    task["required"] = [name for name in task.get("required", []) if name != "id"]
    props = task["properties"]
    for name, prop in props.items():
        props[name] = _without_null(prop)
    props["priority"] = {"anyOf": [{"type": "integer", "minimum": 0}, {"enum": list(PRIORITY_NAMES)}],
                         "default": 2, "description": props["priority"].get("description", "")}
    props["prompt"]["pattern"] = r"\S"  # not blank
    props["title"].pop("default", None)
    props["acceptance"]["minItems"] = 1
    defs["Task"] = task
    many = {"type": "object", "additionalProperties": False, "required": ["tasks"],
            "properties": {"tasks": {"type": "array", "minItems": 1,
                                     "items": {"allOf": [{"$ref": "#/$defs/Task"}, {"required": ["id"]}]}}}}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "coordinator task file",
            "description": "One task as top-level keys, or several as [[tasks]] tables (each with an id).",
            "$defs": defs, "oneOf": [{"$ref": "#/$defs/Task"}, many]}


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` as plain X: TOML has no null, a missing key is how a file says "none"."""
    options = prop.get("anyOf")
    if not options or {"type": "null"} not in options:
        return prop
    rest = [option for option in options if option != {"type": "null"}]
    out = {key: value for key, value in prop.items() if key != "anyOf" and not (key == "default" and value is None)}
    return {**out, **rest[0]} if len(rest) == 1 else {**out, "anyOf": rest}
