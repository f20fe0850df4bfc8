"""JSON Schema of every event: the CloudEvents envelope with that type's `data`."""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel

from events._dead_letter import RequestRejected
from events._envelope import CloudEvent
from events._removals import REMOVAL_TYPES
from events._requests import REQUEST_TYPES

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_CAUSATION_ID = {
    "type": "string",
    "minLength": 1,
    "title": "Causationid",
    "description": "The id of the request event that led to this one.",
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Map every event type (requests, removals, dead letter) to its event's JSON Schema.

    Each schema is self-contained (no `$ref`): the full CloudEvent, its `type`
    a const, its `data` the type's payload.
    """
    schemas = {
        event_type: _event_schema(event_type, model) for event_type, model in REQUEST_TYPES.items()
    }
    # What the collector emits carries `causationid` (CONTRACT §2), removals a subject (§2.2).
    for event_type, removal in REMOVAL_TYPES.items():
        schemas[event_type] = _event_schema(
            event_type, removal, subject_required=True, causation_id="required"
        )
    # A refused record may not have a readable id to point at.
    schemas[RequestRejected.event_type] = _event_schema(
        RequestRejected.event_type, RequestRejected, causation_id="optional"
    )
    return schemas


def _event_schema(
    event_type: str,
    data: type[BaseModel],
    *,
    subject_required: bool = False,
    causation_id: Literal["required", "optional"] | None = None,
) -> dict[str, Any]:
    schema = _inline(CloudEvent.model_json_schema())
    properties: dict[str, Any] = schema["properties"]
    required: list[str] = schema["required"]
    properties["type"] = {"const": event_type, "title": "Type", "type": "string"}
    properties["data"] = _inline(data.model_json_schema())
    if subject_required:
        properties["subject"] = {"type": "string", "minLength": 1, "title": "Subject"}
        required.append("subject")
    if causation_id is not None:
        properties["causationid"] = dict(_CAUSATION_ID)
        if causation_id == "required":
            required.append("causationid")
    schema["title"] = f"{data.__name__}Event"
    schema["description"] = f"A CloudEvents 1.0 event of type `{event_type}`."
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with each `#/$defs/...` reference replaced by what it names."""
    definitions: dict[str, Any] = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/$defs/"):
                target = resolve(definitions[reference.removeprefix("#/$defs/")])
                rest = {name: resolve(item) for name, item in node.items() if name != "$ref"}
                return {**target, **rest}
            return {name: resolve(item) for name, item in node.items() if name != "$defs"}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return copy.copy(node)

    resolved: dict[str, Any] = resolve(schema)
    return resolved
