"""Event models of the registry collector: CloudEvents 1.0 envelopes and payloads.

Importable on its own (no database or Kafka client needed) by every team that
produces requests for the collector or consumes what it removed.
"""

from events._commands import Command, command_causation_id, command_of
from events._dead_letter import RequestRejected, rejection_event
from events._decode import DecodeError, DecodeReason, Request, decode_request, describe_invalid
from events._envelope import (
    COLLECTOR_SOURCE,
    CONTENT_TYPE,
    SPECVERSION,
    CloudEvent,
    removal_event,
    request_event,
    to_record,
)
from events._model import TYPE_PREFIX
from events._removals import (
    REMOVAL_TYPES,
    BlobRemoved,
    LabelRemoved,
    LegacyImageRemoved,
    LegacyManifestRemoved,
    LegacyTagRemoved,
    ManifestRemoved,
    Removal,
    RepoPurged,
    RepositoryRemoval,
    TagRemoved,
)
from events._requests import (
    REQUEST_TYPES,
    LegacyTagExpired,
    RepoDeleted,
    RepoSweep,
    RequestData,
    TagExpired,
)
from events._schemas import json_schemas

__all__ = [
    "COLLECTOR_SOURCE",
    "CONTENT_TYPE",
    "REMOVAL_TYPES",
    "REQUEST_TYPES",
    "SPECVERSION",
    "TYPE_PREFIX",
    "BlobRemoved",
    "CloudEvent",
    "Command",
    "DecodeError",
    "DecodeReason",
    "LabelRemoved",
    "LegacyImageRemoved",
    "LegacyManifestRemoved",
    "LegacyTagExpired",
    "LegacyTagRemoved",
    "ManifestRemoved",
    "Removal",
    "RepoDeleted",
    "RepoPurged",
    "RepoSweep",
    "RepositoryRemoval",
    "Request",
    "RequestData",
    "RequestRejected",
    "TagExpired",
    "TagRemoved",
    "command_causation_id",
    "command_of",
    "decode_request",
    "describe_invalid",
    "json_schemas",
    "rejection_event",
    "removal_event",
    "request_event",
    "to_record",
]
