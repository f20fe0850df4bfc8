"""JSON Schemas of the events and the AsyncAPI document generated from them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from events import (
    REMOVAL_TYPES,
    REQUEST_TYPES,
    BlobRemoved,
    CloudEvent,
    LabelRemoved,
    LegacyImageRemoved,
    LegacyManifestRemoved,
    LegacyTagExpired,
    LegacyTagRemoved,
    ManifestRemoved,
    RepoDeleted,
    RepoPurged,
    RepoSweep,
    RequestRejected,
    TagExpired,
    TagRemoved,
    asyncapi,
    json_schemas,
    rejection_event,
    removal_event,
    request_event,
)

DIGEST = "sha256:" + "ab" * 32
REPO: dict[str, Any] = {"namespace": "acme", "repository": "web/app", "repository_id": 7}
AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

#: One valid event of every type, as the JSON a consumer reads.
EXAMPLES: dict[str, CloudEvent] = {
    event.type: event
    for event in [
        request_event(
            TagExpired(**REPO, tag="latest", tag_id=11, lifetime_end_ms=1), source="/registry"
        ),
        request_event(
            LegacyTagExpired(**REPO, tag="v1", repository_tag_id=11, lifetime_end_ts=1),
            source="/registry",
        ),
        request_event(RepoDeleted(**REPO), source="/registry"),
        request_event(RepoSweep(**REPO), source="/registry"),
        *(
            removal_event(removal, causation_id="request-1", time=AT)
            for removal in [
                TagRemoved(**REPO, tag="latest", tag_id=11, manifest_digest=DIGEST),
                ManifestRemoved(**REPO, manifest_id=12, digest=DIGEST, media_type="x"),
                LegacyImageRemoved(**REPO, image_id=13, docker_image_id="deadbeef"),
                RepoPurged(**REPO),
                BlobRemoved(blob_id=14, digest=DIGEST, size=1024, locations=["local_us"]),
                LabelRemoved(label_id=15, key="maintainer"),
                LegacyTagRemoved(**REPO, tag="v1", repository_tag_id=16, docker_image_id="beef"),
                LegacyManifestRemoved(**REPO, tag_manifest_id=17, digest=DIGEST),
            ]
        ),
        rejection_event(
            reason="malformed-json",
            detail="not JSON",
            topic="registry.gc.requests",
            partition=0,
            offset=1,
            key=None,
            value=b"\xff",
        ),
    ]
}


def validator(event_type: str) -> jsonschema.Draft202012Validator:
    schema = json_schemas()[event_type]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def document(event_type: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(EXAMPLES[event_type].to_json())
    return parsed


def test_every_event_type_has_a_schema() -> None:
    """json_schemas covers every request, removal and the dead-letter type, nothing else."""
    expected = {*REQUEST_TYPES, *REMOVAL_TYPES, RequestRejected.event_type}
    assert set(json_schemas()) == expected == set(EXAMPLES)
    assert len(expected) == 13


@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_schema_pins_the_type(event_type: str) -> None:
    """Each schema's `type` attribute is a const of its own event type."""
    assert json_schemas()[event_type]["properties"]["type"]["const"] == event_type


@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_schema_is_self_contained(event_type: str) -> None:
    """A schema has no `$ref` or `$defs`, so it can be embedded anywhere as it is."""
    text = json.dumps(json_schemas()[event_type])
    assert "$ref" not in text
    assert "$defs" not in text


@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_valid_event_validates(event_type: str) -> None:
    """An event the models produce validates against its type's schema."""
    validator(event_type).validate(document(event_type))


@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_schema_refuses_another_type(event_type: str) -> None:
    """An event of one type does not validate against another type's schema."""
    other = next(name for name in sorted(EXAMPLES) if name != event_type)
    assert not validator(event_type).is_valid({**document(event_type), "type": other})


@pytest.mark.parametrize("event_type", sorted(REQUEST_TYPES))
def test_request_schema_is_strict(event_type: str) -> None:
    """A request schema refuses a numeric string or bool id, an extra field and a missing one."""
    event = document(event_type)
    check = validator(event_type)
    for data in [
        {**event["data"], "repository_id": "7"},
        {**event["data"], "repository_id": True},
        {**event["data"], "extra": 1},
        {name: value for name, value in event["data"].items() if name != "namespace"},
    ]:
        assert not check.is_valid({**event, "data": data})


@pytest.mark.parametrize("event_type", sorted(REMOVAL_TYPES))
def test_removal_schema_requires_causation_and_subject(event_type: str) -> None:
    """A removal event without causationid or subject does not validate."""
    event = document(event_type)
    check = validator(event_type)
    for attribute in ["causationid", "subject"]:
        assert not check.is_valid({k: v for k, v in event.items() if k != attribute})


def test_dead_letter_schema_allows_null_key() -> None:
    """The dead-letter schema takes a null key and encoding, and refuses an unknown encoding."""
    event = document(RequestRejected.event_type)
    check = validator(RequestRejected.event_type)
    assert event["data"]["key"] is None
    assert check.is_valid(event)
    assert not check.is_valid({**event, "data": {**event["data"], "value_encoding": "hex"}})


# The AsyncAPI document


def committed() -> str:
    return asyncapi.PATH.read_text(encoding="utf-8")


def test_asyncapi_document_is_current() -> None:
    """events/src/events/asyncapi.yaml is what `python -m events.asyncapi` generates from
    the models now."""
    assert committed() == asyncapi.render(), "run `python -m events.asyncapi` and commit"


def test_asyncapi_document_parses() -> None:
    """The committed document is YAML declaring AsyncAPI 3.0.0 with the three default topics."""
    parsed = yaml.safe_load(committed())
    assert parsed["asyncapi"] == "3.0.0"
    assert {channel["address"] for channel in parsed["channels"].values()} == {
        "registry.gc.requests",
        "registry.gc.removals",
        "registry.gc.dead-letter",
    }
    actions = {name: operation["action"] for name, operation in parsed["operations"].items()}
    assert actions == {
        "receiveRequests": "receive",
        "sendRemovals": "send",
        "sendDeadLetters": "send",
    }


def test_asyncapi_message_per_event_type() -> None:
    """Each event type has one message whose payload is that type's JSON Schema and a Kafka key."""
    parsed = yaml.safe_load(committed())
    messages = parsed["components"]["messages"]
    assert {message["name"] for message in messages.values()} == set(json_schemas())
    for message in messages.values():
        reference = message["payload"]["$ref"]
        payload = resolve(parsed, reference)
        expected = {k: v for k, v in json_schemas()[message["name"]].items() if k != "$schema"}
        assert payload == expected
        assert message["bindings"]["kafka"]["key"]["description"]


def test_asyncapi_references_resolve() -> None:
    """Every `$ref` in the document points at something in it."""
    parsed = yaml.safe_load(committed())
    references = list(find_references(parsed))
    assert len(references) > 20
    for reference in references:
        assert resolve(parsed, reference) is not None


def test_asyncapi_check_mode(tmp_path: Path) -> None:
    """`--check` exits 0 on a current file and 1 on a stale one; without it the file is written."""
    output = tmp_path / "asyncapi.yaml"
    assert asyncapi.main(["--check", "--output", str(output)]) == 1
    assert asyncapi.main(["--output", str(output)]) == 0
    assert output.read_text(encoding="utf-8") == asyncapi.render()
    assert asyncapi.main(["--check", "--output", str(output)]) == 0
    output.write_text(asyncapi.render() + "# edited\n", encoding="utf-8")
    assert asyncapi.main(["--check", "--output", str(output)]) == 1


def resolve(root: Any, reference: str) -> Any:
    assert reference.startswith("#/")
    node = root
    for part in reference[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def find_references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [ref for value in node.values() for ref in find_references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in find_references(value)]
    return []
