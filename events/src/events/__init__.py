"""Event models of the registry collector: CloudEvents 1.0 envelopes and payloads.

Its own distribution (``registry-gc-events``, needing pydantic alone), for every
team that produces requests for the collector or consumes what it removed:
``pip install ./events``.
"""

from events._commands import Command, command_causation_id, command_of
from events._dead_letter import RequestRejected, rejection_event
from events._decode import DecodeError, Request, decode_request, describe_invalid
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
from events._reasons import (
    REJECTION_REASONS,
    AdmissionReason,
    DecodeReason,
    RejectionReason,
)
from events._records import InvalidRecord, causation_id, decode_event, removal_of
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
    "REJECTION_REASONS",
    "REMOVAL_TYPES",
    "REQUEST_TYPES",
    "SPECVERSION",
    "TYPE_PREFIX",
    "AdmissionReason",
    "BlobRemoved",
    "CloudEvent",
    "Command",
    "DecodeError",
    "DecodeReason",
    "InvalidRecord",
    "LabelRemoved",
    "LegacyImageRemoved",
    "LegacyManifestRemoved",
    "LegacyTagExpired",
    "LegacyTagRemoved",
    "ManifestRemoved",
    "RejectionReason",
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
    "causation_id",
    "command_causation_id",
    "command_of",
    "decode_event",
    "decode_request",
    "describe_invalid",
    "json_schemas",
    "rejection_event",
    "removal_event",
    "removal_of",
    "request_event",
    "to_record",
]
