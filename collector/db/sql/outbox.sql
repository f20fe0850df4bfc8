-- name: insert
-- Write removal events in the deleting transaction.
-- $1 uuid[] event ids, $2 text[] types, $3 text[] keys, $4 text[] event JSON,
-- $5 text[] causation ids (parallel)
INSERT INTO gc.outbox (event_id, event_type, key, event, causation_id)
SELECT event_id, event_type, key, event::json, causation_id
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
    AS e (event_id, event_type, key, event, causation_id)

-- name: try_relay_lock
-- Become the one publishing relay: a session-level advisory lock, released
-- when the session ends (or its connection dies). True when taken.
-- $1 bigint lock key
SELECT pg_try_advisory_lock($1::bigint)

-- name: claim
-- Lock the oldest pending events for publication, in id order, each with the
-- request that caused it (for the relay's log lines).
-- $1 integer how many at most
SELECT id, event_id, key, event::text AS event,
       coalesce(causation_id, event->>'causationid') AS causation_id
FROM gc.outbox
WHERE published_at IS NULL AND undeliverable IS NULL
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED

-- name: mark_published
-- Record that the broker acknowledged these events: now, not when the batch's
-- transaction began (before it was sent).
-- $1 bigint[] outbox ids
UPDATE gc.outbox SET published_at = clock_timestamp()
WHERE id = ANY($1::bigint[]) AND published_at IS NULL

-- name: observe_published
-- The requests whose removal events are all published now: finished with
-- removals committed (reclaimed_at; by then every event of theirs is in the
-- outbox), none of their events still waiting (an event set aside as
-- undeliverable does not wait), at least one published. Each is marked once,
-- with when its last event was published, and returned with the seconds from
-- its time to then (NULL: its time is unknown). Run by the relay on every
-- claim, empty ones included, so that a request is found whichever committed
-- last: the worker's finish or the relay's last mark.
-- No parameters.
UPDATE gc.request r
SET events_published_at = (
    SELECT max(o.published_at) FROM gc.outbox o WHERE o.causation_id = r.event_id
)
WHERE r.reclaimed_at IS NOT NULL AND r.events_published_at IS NULL
  AND NOT EXISTS (
      SELECT FROM gc.outbox o
      WHERE o.causation_id = r.event_id AND o.published_at IS NULL AND o.undeliverable IS NULL
  )
  AND EXISTS (
      SELECT FROM gc.outbox o
      WHERE o.causation_id = r.event_id AND o.published_at IS NOT NULL
  )
RETURNING r.event_type, gc.elapsed_s(r.requested_at, r.events_published_at) AS seconds

-- name: set_aside
-- Record why the broker can never take these events; the relay goes on without them.
-- $1 bigint[] outbox ids, $2 text[] reasons (parallel)
UPDATE gc.outbox SET undeliverable = refused.reason
FROM unnest($1::bigint[], $2::text[]) AS refused (id, reason)
WHERE gc.outbox.id = refused.id

-- name: count_pending
-- How many events up to an outbox id still wait for publication.
-- $1 bigint the last outbox id counted (NULL: every one)
SELECT count(*) FROM gc.outbox
WHERE published_at IS NULL AND undeliverable IS NULL AND (id <= $1::bigint OR $1 IS NULL)

-- name: oldest_pending_age
-- Seconds since the oldest event still waiting for publication was written (0: none).
-- No parameters.
SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM gc.outbox WHERE published_at IS NULL AND undeliverable IS NULL

-- name: count_caused_by
-- How many events one request (or command run) caused after an outbox id.
-- $1 text the causation id, $2 bigint the last outbox id before it began
SELECT count(*) FROM gc.outbox WHERE id > $2::bigint AND event->>'causationid' = $1::text

-- name: last_id
-- The newest outbox id (0 when the outbox is empty). No parameters.
SELECT coalesce(max(id), 0) FROM gc.outbox

-- name: prune
-- Delete published events older than the retention; returns how many went.
-- $1 interval retention
WITH pruned AS (
    DELETE FROM gc.outbox
    WHERE published_at IS NOT NULL AND published_at < now() - $1::interval
    RETURNING 1
)
SELECT count(*) FROM pruned
