"""The OpenAPI 3.1 document of the task API, written from ``api.ROUTES`` and the models the handlers send.

Schemas come from pydantic (``models.py``) and, for the request body, from the
task file's own JSON Schema (``tasks/schema.py``): nothing here restates a shape
by hand, so the document cannot drift from what the handlers do.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

from ..tasks.schema import task_json_schema
from .api import PREFIX, ROUTES, Route
from .models import (FRAMES, Accepted, AcceptedBatch, ErrorBody, LoginCode, StatusReport, TaskAction, TaskDetail,
                     TaskPage)

_REF = "#/components/schemas/{model}"
_MODELS = (Accepted, AcceptedBatch, ErrorBody, TaskPage, TaskDetail, TaskAction, StatusReport, LoginCode, *FRAMES)
_SSE_DOC = ("text/event-stream. Every frame has an id; reconnect with Last-Event-ID to resume with no gap and "
            "no repeat. Task streams send `state` (StateFrame), `output` (OutputFrame), `usage` (UsageFrame), "
            "then `end` (EndFrame); the fleet stream sends each event-log line as an unnamed frame. "
            "`: keep-alive` comments keep idle streams open.")


@functools.cache
def document() -> dict[str, Any]:
    """The whole document (built once per process)."""
    _, defs = models_json_schema([(m, "serialization") for m in _MODELS], ref_template=_REF)
    schemas = dict(defs.get("$defs", {}))
    schemas.update(_task_file_schemas())
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(PREFIX + route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "coordinator task API", "version": "1",
                 "description": "Add, follow, cancel and retry the tasks of one fleet (docs/api.md)."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "token": {"type": "http", "scheme": "bearer",
                      "description": "the fleet token (.coordinator/gateway.json), or a task's own token"}}},
        "security": [{"token": []}],
    }


def _task_file_schemas() -> dict[str, Any]:
    """The task file's schema as the request body: one task, or {"tasks": [...]}."""
    schema = task_json_schema()
    defs = schema["$defs"]
    text = _rewrite_refs(defs, "#/$defs/", "#/components/schemas/")
    out = {name: value for name, value in text.items()}
    out["TaskSubmission"] = {"description": schema["description"],
                             "oneOf": _rewrite_refs(schema["oneOf"], "#/$defs/", "#/components/schemas/")}
    return out


def _rewrite_refs(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: (v.replace(old, new, 1) if k == "$ref" and isinstance(v, str) else _rewrite_refs(v, old, new))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_refs(v, old, new) for v in value]
    return value


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary, "operationId": route.handler,
                          "responses": {str(s): _response(s, m) for s, m in route.responses.items()}}
    params = [{"name": name, "in": "query", "required": False, "schema": schema, "description": doc}
              for name, schema, doc in route.query]
    if "{task_id}" in route.path:
        params.insert(0, {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}})
    if route.handler in ("task_events", "fleet_events"):
        params.append({"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}})
    if params:
        op["parameters"] = params
    if route.body:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": _REF.format(model="TaskSubmission")}}}}
    return op


def _sse_event(model: str) -> dict[str, Any]:
    """One SSE event as parsed (id, event, data): a task stream's named frames, or the fleet's unnamed ones."""
    frames = {"oneOf": [{"$ref": _REF.format(model=frame.__name__)} for frame in FRAMES]}
    named = model == "sse"
    data = {"type": "string", "contentMediaType": "application/json",
            "contentSchema": frames if named else {"type": "object"}}
    props: dict[str, Any] = {"id": {"type": "string"}, "data": data, "retry": {"type": "integer"}}
    if named:
        props["event"] = {"enum": ["state", "output", "usage", "end"]}
    return {"type": "object", "properties": props}


def _response(status: int, model: Any) -> dict[str, Any]:
    if model is None:
        return {"description": "the stream had ended already (EventSource stops reconnecting)"}
    if model in ("sse", "sse-fleet"):
        return {"description": _SSE_DOC, "content": {"text/event-stream": {"schema": _sse_event(model)}}}
    if model == "openapi":
        return {"description": "this document", "content": {"application/json": {"schema": {"type": "object"}}}}
    if model == "accepted":
        schema = {"oneOf": [{"$ref": _REF.format(model="Accepted")}, {"$ref": _REF.format(model="AcceptedBatch")}]}
        headers = {"Location": {"schema": {"type": "string"}, "description": "the (first) task's URL"}}
        what = "accepted (written)" if status == 202 else "an identical task was there already"
        return {"description": what, "headers": headers, "content": {"application/json": {"schema": schema}}}
    headers = {"Retry-After": {"schema": {"type": "string"}}} if status == 429 else {}
    out: dict[str, Any] = {"description": (model.__doc__ or "").strip().splitlines()[0],
                           "content": {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}}}
    if headers:
        out["headers"] = headers
    return out
