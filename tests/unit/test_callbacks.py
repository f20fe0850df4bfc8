"""Post-commit callbacks: dispatched by removal type, in order, errors propagating."""

from __future__ import annotations

import pytest

from collector.engine.callbacks import Callbacks
from collector.outbox.store import Removed
from events import (
    BlobRemoved,
    LabelRemoved,
    Removal,
    RepoPurged,
    RepositoryRemoval,
    TagRemoved,
)

TAG = TagRemoved(
    namespace="acme",
    repository="app",
    repository_id=1,
    tag="latest",
    tag_id=2,
    manifest_digest="sha256:" + "ef" * 32,
)
BLOB = BlobRemoved(blob_id=3, digest="sha256:" + "ef" * 32, size=10, locations=[])
LABEL = LabelRemoved(label_id=4, key="k")

Calls = list[tuple[str, Removal, str]]


class Recorder:
    """Builds callbacks that append (name, removal, causation id) to one shared list."""

    def __init__(self) -> None:
        self.calls: Calls = []

    def make(self, name: str) -> _Recording:
        return _Recording(self.calls, name)


class _Recording:
    def __init__(self, calls: Calls, name: str) -> None:
        self._calls = calls
        self._name = name

    async def __call__(self, removal: Removal, causation_id: str) -> None:
        self._calls.append((self._name, removal, causation_id))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def test_no_callbacks_dispatch_does_nothing() -> None:
    """Dispatching with nothing registered succeeds and calls nothing."""
    await Callbacks().dispatch(Removed(TAG, "request-1"))


async def test_callback_receives_removal_and_causation_id(recorder: Recorder) -> None:
    """A callback is called with the removal and the id of the request that caused it."""
    callbacks = Callbacks()
    callbacks.on(TagRemoved, recorder.make("tag"))
    await callbacks.dispatch(Removed(TAG, "request-1"))
    assert recorder.calls == [("tag", TAG, "request-1")]


async def test_only_matching_type_is_called(recorder: Recorder) -> None:
    """Only callbacks registered for the removal's type run."""
    callbacks = Callbacks()
    callbacks.on(TagRemoved, recorder.make("tag"))
    callbacks.on(BlobRemoved, recorder.make("blob"))
    callbacks.on(RepoPurged, recorder.make("purged"))

    await callbacks.dispatch(Removed(BLOB, "request-1"))

    assert recorder.calls == [("blob", BLOB, "request-1")]


async def test_unmatched_removal_calls_nothing(recorder: Recorder) -> None:
    """A removal of a type no callback is registered for calls nothing."""
    callbacks = Callbacks()
    callbacks.on(TagRemoved, recorder.make("tag"))
    await callbacks.dispatch(Removed(LABEL, "request-1"))
    assert recorder.calls == []


async def test_base_class_callback_sees_subclasses(recorder: Recorder) -> None:
    """A callback registered for a base class runs for removals of its subclasses only."""
    callbacks = Callbacks()
    callbacks.on(RepositoryRemoval, recorder.make("repository"))

    await callbacks.dispatch(Removed(TAG, "request-1"))
    await callbacks.dispatch(Removed(BLOB, "request-2"))

    assert recorder.calls == [("repository", TAG, "request-1")]


async def test_removal_callback_sees_everything(recorder: Recorder) -> None:
    """A callback registered for events.Removal runs for every removal."""
    callbacks = Callbacks()
    callbacks.on(Removal, recorder.make("all"))

    for number, removal in enumerate([TAG, BLOB, LABEL]):
        await callbacks.dispatch(Removed(removal, f"request-{number}"))

    assert recorder.calls == [
        ("all", TAG, "request-0"),
        ("all", BLOB, "request-1"),
        ("all", LABEL, "request-2"),
    ]


async def test_callbacks_run_in_registration_order(recorder: Recorder) -> None:
    """Matching callbacks run in the order they were registered, whatever type they name."""
    callbacks = Callbacks()
    callbacks.on(TagRemoved, recorder.make("first"))
    callbacks.on(Removal, recorder.make("second"))
    callbacks.on(BlobRemoved, recorder.make("skipped"))
    callbacks.on(RepositoryRemoval, recorder.make("third"))
    callbacks.on(TagRemoved, recorder.make("fourth"))

    await callbacks.dispatch(Removed(TAG, "request-1"))

    assert [name for name, _, _ in recorder.calls] == ["first", "second", "third", "fourth"]


async def test_same_callback_registered_twice_runs_twice(recorder: Recorder) -> None:
    """A callback registered twice is called twice: registrations are not deduplicated."""
    callbacks = Callbacks()
    callback = recorder.make("tag")
    callbacks.on(TagRemoved, callback)
    callbacks.on(TagRemoved, callback)
    await callbacks.dispatch(Removed(TAG, "request-1"))
    assert len(recorder.calls) == 2


async def test_callback_error_propagates(recorder: Recorder) -> None:
    """An exception from a callback reaches the caller and stops the later callbacks."""

    async def fail(removal: TagRemoved, causation_id: str) -> None:
        raise RuntimeError(f"search index down for {removal.subject} ({causation_id})")

    callbacks = Callbacks()
    callbacks.on(TagRemoved, recorder.make("before"))
    callbacks.on(TagRemoved, fail)
    callbacks.on(TagRemoved, recorder.make("after"))

    with pytest.raises(RuntimeError, match=r"search index down for acme/app:latest \(request-1\)"):
        await callbacks.dispatch(Removed(TAG, "request-1"))

    assert [name for name, _, _ in recorder.calls] == ["before"]
