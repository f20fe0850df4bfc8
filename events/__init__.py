"""Event models of the registry collector: CloudEvents 1.0 envelopes and payloads.

Importable on its own (no database or Kafka client needed) by every team that
produces requests for the collector or consumes what it removed.
"""

from events._envelope import (
    COLLECTOR_SOURCE,
    CONTENT_TYPE,
    SPECVERSION,
    CloudEvent,
    removal_event,
)
from events._removals import (
    REMOVAL_TYPES,
    BlobRemoved,
    LabelRemoved,
    LegacyImageRemoved,
    ManifestRemoved,
    Removal,
    RepoPurged,
    RepositoryRemoval,
    TagRemoved,
)

__all__ = [
    "COLLECTOR_SOURCE",
    "CONTENT_TYPE",
    "REMOVAL_TYPES",
    "SPECVERSION",
    "BlobRemoved",
    "CloudEvent",
    "LabelRemoved",
    "LegacyImageRemoved",
    "ManifestRemoved",
    "Removal",
    "RepoPurged",
    "RepositoryRemoval",
    "TagRemoved",
    "removal_event",
]
