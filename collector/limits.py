"""Bounds of the settings a flag also sets: defined once, for Settings and for the flags
(which then name themselves in an error), without the flags importing pydantic."""

from __future__ import annotations

#: Objects decided per transaction.
BATCH_SIZE = (1, 50_000)
#: Repositories collected at once; the service's workers.
REPOSITORY_CONCURRENCY = (1, 64)
#: The share of a batch's files the blob deleter may find gone that no deleter deleted.
MAX_MISSING = (0.0, 1.0)
