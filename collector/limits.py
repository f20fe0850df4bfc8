"""Bounds of the settings, and the pool sizes they imply: defined once, for Settings and
for the flags that also set one (which then name themselves in an error), without the
flags importing pydantic."""

from __future__ import annotations

#: Objects the engine decides per transaction.
BATCH_SIZE = (1, 50_000)
#: Records a consumer (the intake, the blob deleter) fetches per poll.
POLL_RECORDS = (1, 50_000)
#: Outbox events the relay claims, publishes and marks published per transaction.
RELAY_BATCH_SIZE = (1, 50_000)
#: Repositories collected at once; the service's workers.
REPOSITORY_CONCURRENCY = (1, 64)
#: The share of a batch's files the blob deleter may find gone that no deleter deleted.
MAX_MISSING = (0.0, 1.0)
#: How far ahead `collector plan --horizon` looks, in seconds (up to ten years).
PLAN_HORIZON_S = (0, 3650 * 86_400)
#: What --log-level and COLLECTOR_LOG_LEVEL take, in any case.
LOG_LEVELS = ("debug", "info", "warning", "error")


def engine_pool_size(concurrency: int) -> int:
    """Connections for a command that runs the engine (`collect`, `scan --orphans`).

    The engine's fixpoint claims each of its four candidate kinds (manifests, labels,
    legacy images, blobs) ``concurrency`` times at once, one transaction each; two
    more serve the command's own queries meanwhile.
    """
    return 4 * concurrency + 2


def service_pool_size(concurrency: int) -> int:
    """Connections for `collector run` with ``concurrency`` workers.

    Each worker holds its claim's connection while its engine runs a transaction per
    candidate kind (four), with one to spare: six a worker. Four more serve the
    stages that share the pool: the intake's admissions (a partition's batch at a
    time each; more partitions in hand than connections wait for one), the
    relay's count, the pruner's and the backlog's rounds, and the idle watch.
    """
    return 6 * concurrency + 4
