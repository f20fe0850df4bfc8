-- The collector's own state, in schema gc (created by the migration runner).

-- Durable repository context: objects that may have become garbage and must
-- still be decided. A row is written in the transaction whose deletion made
-- the object a candidate, and removed in the transaction that decides it, so
-- a crash at any instant loses nothing. Rows are not unique on purpose: a
-- collector deciding an object only removes the rows it claimed, so a row
-- added concurrently (the object lost another reference meanwhile) survives
-- and forces a fresh decision.
CREATE TABLE gc.candidate (
    id bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('manifest', 'label', 'image', 'blob')),
    object_id bigint NOT NULL,
    -- The repository whose context owns the work (not a foreign key: a purge
    -- removes the repository row once its context is drained).
    repository_id bigint NOT NULL,
    causation_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX candidate_claim_idx ON gc.candidate (repository_id, kind, id);
CREATE INDEX candidate_claim_any_idx ON gc.candidate (kind, id);
CREATE INDEX candidate_object_idx ON gc.candidate (kind, object_id);

-- Transactional outbox: removal events written in the deleting transaction,
-- relayed to Kafka afterwards. The event id is fixed here, so a
-- re-publication is a duplicate that consumers drop.
CREATE TABLE gc.outbox (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    event_type text NOT NULL,
    key text NOT NULL,
    -- json, not jsonb: the relay publishes the very text the engine wrote.
    event json NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_pending_idx ON gc.outbox (id) WHERE published_at IS NULL;

-- The expiry rule of CONTRACT §2.1/§3 in one place: a tag is due once its
-- lifetime ended at least its namespace's time-machine window ago, unless it
-- is immutable. A plain SQL expression, inlined by the planner.
CREATE FUNCTION gc.tag_is_due(
    lifetime_end_ms bigint, immutable boolean, window_s bigint, now_ms bigint
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN lifetime_end_ms IS NOT NULL
    AND NOT immutable
    AND lifetime_end_ms + window_s * 1000 <= now_ms;
