"""The removal events the collector emits (docs/events.md): one per object removed."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from events._model import TYPE_PREFIX, EventData, RepositoryScoped


class Removal(EventData):
    """The `data` of a removal event; subclasses pin the CloudEvents `type`."""

    @property
    def subject(self) -> str:
        raise NotImplementedError

    @property
    def partition_key(self) -> str:
        """The Kafka record key (docs/events.md)."""
        return self.subject


class RepositoryRemoval(RepositoryScoped, Removal):
    """A removal scoped to one repository: keyed by `<namespace>/<repository>`."""

    @property
    def partition_key(self) -> str:
        return self.repository_path


class TagRemoved(RepositoryRemoval):
    """A tag was removed: past its time-machine window, or purged with its repository."""

    event_type: ClassVar[str] = TYPE_PREFIX + "tag-removed"

    tag: str = Field(description="The removed tag's name.")
    tag_id: int = Field(description="The removed `tag` row's id.")
    manifest_digest: str = Field(description="The digest of the manifest the tag pointed at.")

    @property
    def subject(self) -> str:
        return f"{self.repository_path}:{self.tag}"


class ManifestRemoved(RepositoryRemoval):
    """A manifest nothing referenced any more was removed from its repository."""

    event_type: ClassVar[str] = TYPE_PREFIX + "manifest-removed"

    manifest_id: int = Field(description="The removed `manifest` row's id.")
    digest: str = Field(description="The manifest's digest.")
    media_type: str = Field(description="The manifest's media type, as the registry stored it.")

    @property
    def subject(self) -> str:
        return f"{self.repository_path}@{self.digest}"


class LegacyImageRemoved(RepositoryRemoval):
    """A legacy V1 image nothing referenced any more was removed from its repository."""

    event_type: ClassVar[str] = TYPE_PREFIX + "legacy-image-removed"

    image_id: int = Field(description="The removed `image` row's id.")
    docker_image_id: str = Field(description="The image's V1 id (`image.docker_image_id`).")

    @property
    def subject(self) -> str:
        return f"{self.repository_path}/{self.docker_image_id}"


class LegacyTagRemoved(RepositoryRemoval):
    """A pre-OCI tag was removed (past its window, or purged), with its tag manifest."""

    event_type: ClassVar[str] = TYPE_PREFIX + "legacy-tag-removed"

    tag: str = Field(description="The removed pre-OCI tag's name.")
    repository_tag_id: int = Field(description="The removed `repository_tag` row's id.")
    docker_image_id: str = Field(
        description="The V1 id of the legacy image the tag pointed at (`image.docker_image_id`)."
    )

    @property
    def subject(self) -> str:
        return f"{self.repository_path}:{self.tag}"


class LegacyManifestRemoved(RepositoryRemoval):
    """A pre-OCI tag manifest was removed with its tag."""

    event_type: ClassVar[str] = TYPE_PREFIX + "legacy-manifest-removed"

    tag_manifest_id: int = Field(description="The removed `tag_manifest` row's id.")
    digest: str = Field(description="The tag manifest's digest.")

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

    blob_id: int = Field(description="The removed `blob` row's id.")
    digest: str = Field(
        description="The blob's content digest, under which storage keeps its bytes."
    )
    size: int = Field(description="The blob's size in bytes.")
    locations: list[str] = Field(
        description="The storage locations that held the bytes (the blob's"
        " `blob_placement.location` rows)."
    )

    @property
    def subject(self) -> str:
        return self.digest


class LabelRemoved(Removal):
    """A label no manifest carries any more was removed."""

    event_type: ClassVar[str] = TYPE_PREFIX + "label-removed"

    label_id: int = Field(description="The removed `label` row's id.")
    key: str = Field(description="The label's key.")

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
