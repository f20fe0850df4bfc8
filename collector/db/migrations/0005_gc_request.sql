-- Durable requests: every request the intake accepted from the requests topic,
-- written before its offset is committed. Workers claim the oldest due one of
-- a repository (one at a time per repository), run the engine while holding
-- the row lock, then finish it or defer it (a tag not yet past its window).
-- Finished rows stay for the dedupe window: a redelivered or replayed event id
-- is recognised and ignored.
CREATE TABLE gc.request (
    id bigserial PRIMARY KEY,
    -- CloudEvents identity is (source, id).
    source text NOT NULL,
    event_id text NOT NULL,
    event_type text NOT NULL
        CHECK (event_type IN ('tag-expired', 'repo-deleted', 'repo-sweep')),
    -- Not a foreign key: a purge removes the repository row.
    repository_id bigint NOT NULL,
    repository_path text NOT NULL,
    tag_id bigint,
    lifetime_end_ms bigint,
    -- When a worker should look at it next (epoch ms).
    due_at_ms bigint NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- Which collector process finished it (host:pid), for operators.
    finished_by text,
    -- What the request came to: collected, purged, stale, ... (null while pending).
    outcome text,
    CHECK ((finished_at IS NULL) = (outcome IS NULL)),
    CHECK (event_type <> 'tag-expired' OR (tag_id IS NOT NULL AND lifetime_end_ms IS NOT NULL))
);
CREATE UNIQUE INDEX request_event_idx ON gc.request (source, event_id);
CREATE INDEX request_due_idx ON gc.request (due_at_ms, id) WHERE finished_at IS NULL;
CREATE INDEX request_repository_idx ON gc.request (repository_id, id) WHERE finished_at IS NULL;
CREATE INDEX request_finished_idx ON gc.request (finished_at) WHERE finished_at IS NOT NULL;
