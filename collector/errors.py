"""Errors that cross the collector's boundaries.

Each class's docstring is its default message. Driver errors (asyncpg,
aiokafka) are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import ClassVar


class CollectorError(Exception):
    """The collector failed."""

    retriable: ClassVar[bool] = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class ConfigError(CollectorError):
    """The configuration is invalid."""


class StorageError(CollectorError):
    """The database failed."""


class DatabaseUnavailable(StorageError):
    """The database cannot be reached."""

    retriable = True


class Unstorable(StorageError):
    """The database refused a value (too long, out of range, malformed)."""


class Conflict(StorageError):
    """A transaction lost a race with another writer (serialization, deadlock)."""

    retriable = True


class Contention(StorageError):
    """Transactions kept losing races with other writers."""

    retriable = True


class BrokerUnavailable(CollectorError):
    """The Kafka broker cannot be reached."""

    retriable = True


class RecordTooLarge(CollectorError):
    """The broker takes no record that large."""


class RepositoryNotFound(CollectorError):
    """No such repository."""


class RepositoryNotMarked(CollectorError):
    """The repository is not marked for deletion; refusing to purge it."""
