"""Why the collector refuses a request: the `reason` codes of a dead letter, in one list.

The codes are stable: consumers of the dead-letter topic match on them. The
first seven come from decoding a record (`decode_request` raises them, in the
order listed); the others from checking a decoded request against the
database, when it arrives or when its turn comes.
"""

from __future__ import annotations

from typing import Literal, get_args

#: Found by decoding a record, checked in this order.
DecodeReason = Literal[
    "oversized-value",
    "invalid-key",
    "malformed-json",
    "invalid-envelope",
    "unknown-type",
    "invalid-field",
    "key-mismatch",
]
#: Found when a decoded request is admitted, against the registry.
AdmissionReason = Literal["unknown-repository", "repository-not-marked"]
#: The `reason` of a `registry.gc.request-rejected` event.
RejectionReason = Literal[DecodeReason, AdmissionReason, "unstorable", "unprocessable"]
#: Every reason, in the order above.
REJECTION_REASONS: tuple[RejectionReason, ...] = get_args(RejectionReason)

#: When the collector refuses a record for each reason.
DESCRIPTIONS: dict[RejectionReason, str] = {
    "oversized-value": (
        "The record's value is larger than the size limit (1 MiB by default;"
        " `COLLECTOR_MAX_REQUEST_BYTES` in the service)."
    ),
    "invalid-key": "The record has no key, or a key that is not UTF-8.",
    "malformed-json": (
        "The value is missing, not UTF-8, not JSON, not a JSON object, names a member"
        " twice, or escapes a lone UTF-16 surrogate."
    ),
    "invalid-envelope": (
        "Not a CloudEvents 1.0 event: an attribute missing or wrong (`specversion`,"
        " `id`, `source`, `type`, `time` not RFC 3339), a record that is neither"
        " structured (a CloudEvents JSON value, under `application/cloudevents+json` or"
        " the data's `application/json`) nor binary mode, a charset other than UTF-8, a"
        " header given"
        " twice, or an `id` or `source` over 256 characters or holding a NUL character."
    ),
    "unknown-type": "The `type` is not one of the request types.",
    "invalid-field": (
        "`data` lacks a field, has one of the wrong type or out of range, or one too"
        " many; a name that is empty, over 1024 characters or holds a NUL character."
    ),
    "key-mismatch": ("The record key is not the data's `<namespace>/<repository>`."),
    "unknown-repository": (
        "No repository has the data's `repository_id`, or that repository is not the"
        " one the data names."
    ),
    "repository-not-marked": (
        "A `repo-deleted` request for a repository that is not marked for deletion:"
        " when it arrives, or when its turn comes (the mark was lifted since)."
    ),
    "unstorable": (
        "The request decoded, but the database refused to store it (a data exception"
        " or a size limit)."
    ),
    "unprocessable": (
        "Handling the request failed for a reason waiting will not change; the"
        " request ends `failed` and the collector goes on with the others."
    ),
}
