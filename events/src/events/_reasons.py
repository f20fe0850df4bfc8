"""Why the collector refuses a request: the `reason` codes of a dead letter, in one list.

The codes are stable: consumers of the dead-letter topic match on them. The
first seven come from decoding a record (`decode_request` raises them, in the
order listed); the others from checking a decoded request against the
database, when it arrives or when its turn comes.
"""

from __future__ import annotations

from enum import StrEnum


class RejectionReason(StrEnum):
    """The `reason` of a `registry.gc.request-rejected` event."""

    OVERSIZED_VALUE = "oversized-value"
    INVALID_KEY = "invalid-key"
    MALFORMED_JSON = "malformed-json"
    INVALID_ENVELOPE = "invalid-envelope"
    UNKNOWN_TYPE = "unknown-type"
    INVALID_FIELD = "invalid-field"
    KEY_MISMATCH = "key-mismatch"
    UNKNOWN_REPOSITORY = "unknown-repository"
    REPOSITORY_NOT_MARKED = "repository-not-marked"
    UNSTORABLE = "unstorable"
    UNPROCESSABLE = "unprocessable"

    @property
    def description(self) -> str:
        """When the collector refuses a record for this reason."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: dict[RejectionReason, str] = {
    RejectionReason.OVERSIZED_VALUE: (
        "The record's value is larger than the size limit (1 MiB by default;"
        " `COLLECTOR_MAX_REQUEST_BYTES` in the service)."
    ),
    RejectionReason.INVALID_KEY: "The record has no key, or a key that is not UTF-8.",
    RejectionReason.MALFORMED_JSON: (
        "The value is missing, not UTF-8, not JSON, not a JSON object, names a member"
        " twice, or escapes a lone UTF-16 surrogate."
    ),
    RejectionReason.INVALID_ENVELOPE: (
        "Not a CloudEvents 1.0 event: an attribute missing or wrong (`specversion`,"
        " `id`, `source`, `type`, `time` not RFC 3339), a record that is neither"
        " structured (a CloudEvents JSON value, under `application/cloudevents+json` or"
        " the data's `application/json`) nor binary mode, a charset other than UTF-8, a"
        " header given"
        " twice, or an `id` or `source` over 256 characters or holding a NUL character."
    ),
    RejectionReason.UNKNOWN_TYPE: "The `type` is not one of the request types.",
    RejectionReason.INVALID_FIELD: (
        "`data` lacks a field, has one of the wrong type or out of range, or one too"
        " many; a name that is empty, over 1024 characters or holds a NUL character."
    ),
    RejectionReason.KEY_MISMATCH: ("The record key is not the data's `<namespace>/<repository>`."),
    RejectionReason.UNKNOWN_REPOSITORY: (
        "No repository has the data's `repository_id`, or that repository is not the"
        " one the data names."
    ),
    RejectionReason.REPOSITORY_NOT_MARKED: (
        "A `repo-deleted` request for a repository that is not marked for deletion:"
        " when it arrives, or when its turn comes (the mark was lifted since)."
    ),
    RejectionReason.UNSTORABLE: (
        "The request decoded, but the database refused to store it (a data exception"
        " or a size limit)."
    ),
    RejectionReason.UNPROCESSABLE: (
        "Handling the request failed for a reason waiting will not change; the"
        " request ends `failed` and the collector goes on with the others."
    ),
}
