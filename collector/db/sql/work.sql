-- name: known
-- Which of these events were accepted before (dedupe by CloudEvents identity).
-- $1 text[] sources, $2 text[] event ids (parallel)
SELECT r.source, r.event_id
FROM gc.request r
JOIN unnest($1::text[], $2::text[]) AS e (source, event_id)
  ON r.source = e.source AND r.event_id = e.event_id

-- name: repositories
-- The repositories these requests name, as the database knows them.
-- $1 bigint[] repository ids
SELECT r.id, n.name || '/' || r.name AS path, r.state,
       gc.repository_is_marked(r.state) AS marked
FROM repository r JOIN namespace n ON n.id = r.namespace_id
WHERE r.id = ANY($1::bigint[])

-- name: admit
-- Make accepted requests durable, due at once; an event id already known
-- (a concurrent intake after a rebalance) is skipped. Each request's time is
-- given as its wall-clock time and UTC offset, and turned into an instant by
-- the server, whose timestamptz holds any time a request can carry: year 1 at
-- +23:59 is before year 1 in UTC, which no Python datetime (what asyncpg
-- converts through) holds, and an offset past 15:59 is one the server does not
-- take in a time's text. A request without one gets the time it is received.
-- $1 text[] sources, $2 text[] event ids, $3 text[] types, $4 bigint[] repository ids,
-- $5 text[] repository paths, $6 bigint[] tag ids, $7 bigint[] lifetime ends (ms),
-- $8 text[] record topics, $9 int[] record partitions, $10 bigint[] record offsets,
-- $11 bigint now (ms), $12 bigint[] repository_tag ids, $13 bigint[] lifetime ends (s),
-- $14 text[] request wall-clock times (ISO 8601, no offset), $15 int[] their UTC
-- offsets (s) (arrays parallel, in arrival order)
INSERT INTO gc.request (
    source, event_id, event_type, repository_id, repository_path, tag_id, lifetime_end_ms,
    repository_tag_id, lifetime_end_ts, record_topic, record_partition, record_offset, due_at_ms,
    requested_at
)
SELECT source, event_id, event_type, repository_id, repository_path, tag_id, lifetime_end_ms,
       repository_tag_id, lifetime_end_ts, record_topic, record_partition, record_offset, $11,
       coalesce(
           (wall_time::timestamp - utc_offset_s * interval '1 second') AT TIME ZONE 'UTC', now()
       )
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], $7::bigint[],
    $8::text[], $9::int[], $10::bigint[], $12::bigint[], $13::bigint[], $14::text[], $15::int[]
) WITH ORDINALITY AS e (
    source, event_id, event_type, repository_id, repository_path, tag_id, lifetime_end_ms,
    record_topic, record_partition, record_offset, repository_tag_id, lifetime_end_ts,
    wall_time, utc_offset_s, n
)
ORDER BY n
ON CONFLICT (source, event_id) DO NOTHING

-- name: keep_claim_open
-- A claim's transaction sits idle while the engine works on other connections:
-- a server's or role's idle_in_transaction_session_timeout must not end it
-- (the work would be redone). For this transaction only.
SET LOCAL idle_in_transaction_session_timeout = 0

-- name: claim
-- Lock the $2 oldest requests due at $1 among the heads: each repository's
-- oldest due request. A repository's requests run one at a time, in arrival
-- order; a head another worker holds is skipped, and the requests behind it
-- are no heads. The lock is held while the engine works; a crash releases it
-- and the request stays.
-- $1 bigint now (ms), $2 int how many at most
WITH heads AS (
    SELECT DISTINCT ON (repository_id) id
    FROM gc.request
    WHERE finished_at IS NULL AND due_at_ms <= $1
    ORDER BY repository_id, id
)
SELECT r.id, r.event_id, r.event_type, r.repository_id, r.repository_path, r.tag_id,
       r.lifetime_end_ms, r.repository_tag_id, r.lifetime_end_ts, r.record_topic,
       r.record_partition, r.record_offset
FROM gc.request r
JOIN heads USING (id)
-- Checked again on the locked row's latest version: a head finished by another
-- worker since the heads were read must not be claimed a second time.
WHERE r.finished_at IS NULL AND r.due_at_ms <= $1
ORDER BY r.id
LIMIT $2
FOR UPDATE OF r SKIP LOCKED

-- name: expiring_tag
-- The tag a tag-expired request names, while it still ended when the request
-- says (nothing: the request is stale), with whether it is due at $4 and when
-- it falls due (gc.expiring_tag, gc.tag_is_due, gc.tag_due_at_ms).
-- $1 bigint tag id, $2 bigint repository id, $3 bigint lifetime end (ms), $4 bigint now (ms)
SELECT t.immutable,
       gc.tag_is_due(t.lifetime_end_ms, t.immutable, t.window_s, $4) AS due,
       gc.tag_due_at_ms(t.lifetime_end_ms, t.window_s) AS due_at_ms
FROM gc.expiring_tag($1, $2, $3) t

-- name: expiring_legacy_tag
-- The same for a legacy-tag-expired request (gc.expiring_legacy_tag,
-- gc.legacy_tag_is_due, gc.legacy_tag_due_at_ms); pre-OCI tags are never immutable.
-- $1 bigint repository_tag id, $2 bigint repository id, $3 bigint lifetime end (s),
-- $4 bigint now (ms)
SELECT false AS immutable,
       gc.legacy_tag_is_due(t.lifetime_end_ts, t.window_s, $4) AS due,
       gc.legacy_tag_due_at_ms(t.lifetime_end_ts, t.window_s) AS due_at_ms
FROM gc.expiring_legacy_tag($1, $2, $3) t

-- name: finish
-- Finish a request, with when its removals had all committed (gc.reclaimed_at:
-- now, or NULL when none did). Returns the seconds from the request's time to
-- then (NULL: none committed, or its time is unknown).
-- $1 bigint request id, $2 text outcome, $3 text finished by
UPDATE gc.request r
SET finished_at = now(), outcome = $2, finished_by = $3,
    reclaimed_at = gc.reclaimed_at(r.event_id)
WHERE r.id = $1
RETURNING gc.elapsed_s(r.requested_at, r.reclaimed_at) AS reclaim_s

-- name: finish_stale
-- Finish the requests of these repositories, due or not, whose verdict is
-- "stale" already: tag-expired and legacy-tag-expired requests whose tag is
-- gone or has another lifetime end now. That verdict never changes (a tag does not get an old
-- lifetime end back), so they need not wait for their turn: the collection
-- of a repository's first expiry makes the expiries of its other collected
-- tags stale, and they end in that claim instead of one claim each. Returns
-- them, each with its reclaim_s as `finish` says it.
-- $1 bigint[] repository ids (whose heads this claim holds), $2 text finished by
UPDATE gc.request r
SET finished_at = now(), outcome = 'stale', finished_by = $2,
    reclaimed_at = gc.reclaimed_at(r.event_id)
FROM (
    SELECT q.id
    FROM gc.request q
    WHERE q.repository_id = ANY($1::bigint[]) AND q.finished_at IS NULL
      AND CASE q.event_type
          WHEN 'tag-expired' THEN NOT EXISTS (
              SELECT FROM gc.expiring_tag(q.tag_id, q.repository_id, q.lifetime_end_ms)
          )
          WHEN 'legacy-tag-expired' THEN NOT EXISTS (
              SELECT FROM gc.expiring_legacy_tag(
                  q.repository_tag_id, q.repository_id, q.lifetime_end_ts
              )
          )
          ELSE false
      END
    ORDER BY q.id
    FOR UPDATE OF q SKIP LOCKED
) stale
WHERE r.id = stale.id
RETURNING r.id, r.event_id, r.event_type, r.repository_id, r.repository_path, r.tag_id,
          r.lifetime_end_ms, r.repository_tag_id, r.lifetime_end_ts,
          gc.elapsed_s(r.requested_at, r.reclaimed_at) AS reclaim_s

-- name: defer
-- $1 bigint request id, $2 bigint due at (ms)
UPDATE gc.request SET due_at_ms = $2 WHERE id = $1

-- name: count_due
-- Requests waiting that are due at $1.
-- $1 bigint now (ms)
SELECT count(*) FROM gc.request WHERE finished_at IS NULL AND due_at_ms <= $1

-- name: prune
-- Forget requests finished longer than the retention ago (the dedupe window).
-- $1 interval retention
WITH pruned AS (
    DELETE FROM gc.request
    WHERE finished_at IS NOT NULL AND finished_at < now() - $1::interval
    RETURNING 1
)
SELECT count(*) FROM pruned

-- name: with_candidates
-- Which of the repositories $1 have candidates waiting to be decided.
-- $1 bigint[] repository ids
SELECT DISTINCT repository_id FROM gc.candidate WHERE repository_id = ANY($1::bigint[])
