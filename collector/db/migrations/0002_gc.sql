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
CREATE INDEX candidate_object_idx ON gc.candidate (kind, object_id);

-- Transactional outbox: removal events written in the deleting transaction,
-- relayed to Kafka afterwards. The event id is fixed here, so a
-- re-publication is a duplicate that consumers drop.
CREATE TABLE gc.outbox (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    event_type text NOT NULL,
    key text NOT NULL,
    event jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_pending_idx ON gc.outbox (id) WHERE published_at IS NULL;
