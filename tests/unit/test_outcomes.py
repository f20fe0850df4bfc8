"""How a request ends: the names stored, counted and logged, and the tag a removal takes."""

from __future__ import annotations

from collector.engine.outcomes import ExpiredTag, Finished
from events import LegacyTagRemoved, ManifestRemoved, TagRemoved

DIGEST = "sha256:" + "cd" * 32


def test_outcomes_keep_the_names_stored_and_counted() -> None:
    """`gc.request.outcome`, the `outcome` label of registry_gc_requests_finished_total
    and `request_finished outcome=` all carry these strings."""
    assert [str(outcome) for outcome in Finished] == [
        "collected",
        "purged",
        "stale",
        "immutable",
        "gone",
        "not-marked",
        "failed",
    ]


def test_a_tag_removal_takes_the_tag_it_names() -> None:
    """A tag-removed event takes the OCI tag of its `tag_id`; a legacy-tag-removed the
    pre-OCI tag of its `repository_tag_id`, never the OCI tag of the same id."""
    oci = TagRemoved(
        namespace="acme",
        repository="app",
        repository_id=1,
        tag="v1",
        tag_id=7,
        manifest_digest=DIGEST,
    )
    legacy = LegacyTagRemoved(
        namespace="acme",
        repository="app",
        repository_id=1,
        tag="v1",
        repository_tag_id=7,
        docker_image_id="ab" * 32,
    )

    assert ExpiredTag.removed_by(oci) == ExpiredTag(7)
    assert ExpiredTag.removed_by(legacy) == ExpiredTag(7, legacy=True)
    assert ExpiredTag(7) != ExpiredTag(7, legacy=True)


def test_other_removals_take_no_tag() -> None:
    """A manifest (or any other object) removed is no tag a request waits for."""
    manifest = ManifestRemoved(
        namespace="acme",
        repository="app",
        repository_id=1,
        manifest_id=7,
        digest=DIGEST,
        media_type="application/vnd.oci.image.manifest.v1+json",
    )

    assert ExpiredTag.removed_by(manifest) is None
