"""Where a blob's bytes live, and how a sink deletes them.

Keys are content-addressed: digest ``sha256:abcdef…`` is stored under
``sha256/ab/abcdef…``. A digest that is not ``<algorithm>:<lowercase hex>``
is refused before it comes near a path, so a crafted digest (``sha256:../..``,
an absolute path, a NUL byte) can never name anything outside the storage.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Protocol

from collector.errors import CollectorError, ConfigError

# OCI's algorithm grammar (no leading, trailing or doubled separator, so never
# "." or ".."), and an encoded part of hex only: 32 (md5) to 128 (sha512) digits.
_DIGEST = re.compile(r"([a-z0-9]{1,32}(?:[+._-][a-z0-9]{1,32}){0,3}):([0-9a-f]{32,128})", re.ASCII)
_QUOTE_LIMIT = 100


class InvalidDigest(ValueError):
    """A digest that is not ``<algorithm>:<hex>``: it names no blob this storage holds."""

    def __init__(self, digest: str) -> None:
        shown = digest if len(digest) <= _QUOTE_LIMIT else digest[:_QUOTE_LIMIT] + "…"
        super().__init__(f"not an <algorithm>:<hex> digest: {shown!r}")


class ObjectStorageError(CollectorError):
    """The blob storage failed."""

    retriable = True


def blob_key(digest: str) -> str:
    """The relative key of a digest's bytes, ``<algorithm>/<first two hex>/<hex>``."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise InvalidDigest(digest)
    algorithm, encoded = match.groups()
    return f"{algorithm}/{encoded[:2]}/{encoded}"


class Storage(Protocol):
    """The seam an object-store deleter (S3, GCS) plugs into."""

    async def delete(self, digest: str) -> bool:
        """Delete the digest's bytes: True if they were there, False if already gone.

        Raises ``InvalidDigest`` for a malformed digest and ``ObjectStorageError``
        when the storage fails (the deleter retries it).
        """
        ...


class FilesystemStorage:
    """Blobs as files under a root directory: ``<root>/sha256/ab/abcdef…``.

    A file already gone is done, unless the root has neither a ``sha256/``
    directory nor one for the digest's algorithm: then it is not the storage
    (a volume not mounted, a wrong path), and the delete fails as an outage,
    waited out, instead of "already gone" for every blob while the offsets
    move on. A brand-new storage that never held a blob gets ``sha256/`` made
    by hand to go on.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def check(self) -> None:
        """Refuse a root that is not a blob storage: missing, not a directory, or
        without the digest layout (an empty folder, a volume not mounted)."""
        if not self.root.is_dir():
            raise ConfigError(f"storage root {self.root} is not a directory")
        if not (self.root / "sha256").is_dir():
            raise ConfigError(
                f"storage root {self.root} has no sha256/ directory: is the storage mounted"
                " there? (a storage that never held a blob needs it made)"
            )

    def path(self, digest: str) -> Path:
        return self.root / blob_key(digest)

    async def delete(self, digest: str) -> bool:
        # Off the event loop: a network filesystem can take its time.
        return await asyncio.to_thread(self._delete, self.path(digest))

    def _delete(self, path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            if not (self.root / "sha256").is_dir() and not path.parents[1].is_dir():
                raise ObjectStorageError(
                    f"{self.root} has no sha256/ directory: is the storage mounted there?"
                    " (a storage that never held a blob needs it made)"
                ) from None
            return False
        except OSError as exc:
            raise ObjectStorageError(f"cannot delete {path}: {exc}") from exc
        return True
