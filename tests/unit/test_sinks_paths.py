"""Where the blob deleter looks for a digest's bytes, and the digests it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.sinks.storage import FilesystemStorage, InvalidDigest, ObjectStorageError, blob_key

SHA256 = "sha256:" + "ab" + "cd" * 31


def test_a_sha256_digest_maps_to_its_two_character_fan_out() -> None:
    """sha256:abcd… is stored at sha256/ab/abcd…, under the storage root."""
    assert blob_key(SHA256) == f"sha256/ab/ab{'cd' * 31}"
    storage = FilesystemStorage(Path("/srv/blobs"))
    assert storage.path(SHA256) == Path("/srv/blobs/sha256/ab") / SHA256.removeprefix("sha256:")


def test_other_algorithms_keep_their_name() -> None:
    """A sha512 digest (128 hex digits) lives under its own algorithm directory."""
    digest = "sha512:" + "0f" * 64
    assert blob_key(digest) == f"sha512/0f/{'0f' * 64}"


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:../../../etc/passwd",
        "sha256:" + "ab" * 31 + "/..",
        "../sha256:" + "ab" * 32,
        "..:" + "ab" * 32,
        ".:" + "ab" * 32,
        "/etc:" + "ab" * 32,
        "sha256/../..:" + "ab" * 32,
        "sha256:/" + "ab" * 32,
        "sha256:" + "ab" * 32 + "\x00",
        "sha256:" + "ab" * 32 + "\n",
        "sha256:" + "AB" * 32,
        "sha256:" + "ab" * 8,
        "sha256:" + "ab" * 65,
        "sha256" + "ab" * 32,
        ":" + "ab" * 32,
        "",
    ],
)
def test_a_digest_that_is_not_algorithm_colon_hex_is_refused(digest: str) -> None:
    """Separators, dots, NUL, newline, upper case, wrong lengths and missing parts never
    become a path."""
    with pytest.raises(InvalidDigest, match="not an <algorithm>:<hex> digest"):
        blob_key(digest)
    with pytest.raises(InvalidDigest):
        FilesystemStorage(Path("/srv/blobs")).path(digest)


async def test_delete_says_whether_the_bytes_were_there(tmp_path: Path) -> None:
    """The first delete removes the file (True); the second finds it gone (False)."""
    storage = FilesystemStorage(tmp_path)
    path = storage.path(SHA256)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"layer")

    assert await storage.delete(SHA256) is True
    assert not path.exists()
    assert await storage.delete(SHA256) is False


async def test_a_refused_digest_deletes_nothing(tmp_path: Path) -> None:
    """A traversal digest raises before any file is touched, even one it would name."""
    root = tmp_path / "root"
    root.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    with pytest.raises(InvalidDigest):
        await FilesystemStorage(root).delete("sha256:../../victim")
    assert victim.read_bytes() == b"keep me"


async def test_a_missing_file_is_gone_unless_the_root_is_not_the_storage(tmp_path: Path) -> None:
    """An empty root (a volume not mounted) makes a delete an outage; once the root holds
    sha256/, a missing file is already gone, of any algorithm (a sha512 digest this
    storage never held included: it must not stall the deleter)."""
    storage = FilesystemStorage(tmp_path)
    with pytest.raises(ObjectStorageError, match="has no sha256/ directory"):
        await storage.delete(SHA256)
    (tmp_path / "sha256").mkdir()

    assert await storage.delete(SHA256) is False
    assert await storage.delete("sha512:" + "0f" * 64) is False
