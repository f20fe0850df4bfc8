"""The removal events the collector emits (CONTRACT §2.2): one per object removed."""

from __future__ import annotations

from typing import ClassVar

from events._model import TYPE_PREFIX, EventData, RepositoryScoped


class Removal(EventData):
    """The `data` of a removal event; subclasses pin the CloudEvents `type`."""

    @property
    def subject(self) -> str:
        raise NotImplementedError

    @property
    def partition_key(self) -> str:
        """The Kafka record key (CONTRACT §1)."""
        return self.subject


class RepositoryRemoval(RepositoryScoped, Removal):
    """A removal scoped to one repository: keyed by `<namespace>/<repository>`."""

    @property
    def partition_key(self) -> str:
        return self.repository_path


class TagRemoved(RepositoryRemoval):
    """A tag was removed: past its time-machine window, or purged with its repository."""

    event_type: ClassVar[str] = TYPE_PREFIX + "tag-removed"

    tag: str
    tag_id: int
    manifest_digest: str

    @property
    def subject(self) -> str:
        return f"{self.repository_path}:{self.tag}"


class ManifestRemoved(RepositoryRemoval):
    """A manifest nothing referenced any more was removed from its repository."""

    event_type: ClassVar[str] = TYPE_PREFIX + "manifest-removed"

    manifest_id: int
    digest: str
    media_type: str

    @property
    def subject(self) -> str:
        return f"{self.repository_path}@{self.digest}"


class LegacyImageRemoved(RepositoryRemoval):
    """A legacy V1 image nothing referenced any more was removed from its repository."""

    event_type: ClassVar[str] = TYPE_PREFIX + "legacy-image-removed"

    image_id: int
    docker_image_id: str

    @property
    def subject(self) -> str:
        return f"{self.repository_path}/{self.docker_image_id}"


class LegacyTagRemoved(RepositoryRemoval):
    """A pre-OCI tag was removed (past its window, or purged), with its tag manifest."""

    event_type: ClassVar[str] = TYPE_PREFIX + "legacy-tag-removed"

    tag: str
    repository_tag_id: int
    docker_image_id: str  # of the tag's image

    @property
    def subject(self) -> str:
        return f"{self.repository_path}:{self.tag}"


class LegacyManifestRemoved(RepositoryRemoval):
    """A pre-OCI tag manifest was removed with its tag."""

    event_type: ClassVar[str] = TYPE_PREFIX + "legacy-manifest-removed"

    tag_manifest_id: int
    digest: str

    @property
    def subject(self) -> str:
        return f"{self.repository_path}@{self.digest}"


class RepoPurged(RepositoryRemoval):
    """A repository marked for deletion was purged, all of it."""

    event_type: ClassVar[str] = TYPE_PREFIX + "repo-purged"

    @property
    def subject(self) -> str:
        return self.repository_path


class BlobRemoved(Removal):
    """Keyed by digest: after it, the bytes may be deleted from object storage."""

    event_type: ClassVar[str] = TYPE_PREFIX + "blob-removed"

    blob_id: int
    digest: str
    size: int
    locations: list[str]

    @property
    def subject(self) -> str:
        return self.digest


class LabelRemoved(Removal):
    """A label no manifest carries any more was removed."""

    event_type: ClassVar[str] = TYPE_PREFIX + "label-removed"

    label_id: int
    key: str

    @property
    def subject(self) -> str:
        return f"label/{self.label_id}"


REMOVAL_TYPES: dict[str, type[Removal]] = {
    cls.event_type: cls
    for cls in (
        TagRemoved,
        ManifestRemoved,
        BlobRemoved,
        LabelRemoved,
        LegacyImageRemoved,
        RepoPurged,
        LegacyTagRemoved,
        LegacyManifestRemoved,
    )
}
