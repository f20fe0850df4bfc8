-- name: lock_due_in
-- Lock up to $3 tags of the repositories $1 past their namespace's
-- time-machine window at $2; immutable tags never expire. Skips tags another
-- transaction holds: they are being collected or changed right now.
-- $1 bigint[] repository ids, $2 bigint now (ms), $3 int limit
SELECT t.id, t.repository_id
FROM tag t
JOIN repository r ON r.id = t.repository_id
JOIN namespace n ON n.id = r.namespace_id
WHERE t.repository_id = ANY($1::bigint[])
  AND gc.tag_is_due(t.lifetime_end_ms, t.immutable, n.removed_tag_expiration_s, $2)
ORDER BY t.id
LIMIT $3
FOR UPDATE OF t SKIP LOCKED

-- name: lock_due_any
-- Lock up to $2 tags of any repository past their window at $1.
-- $1 bigint now (ms), $2 int limit
SELECT t.id, t.repository_id
FROM tag t
JOIN repository r ON r.id = t.repository_id
JOIN namespace n ON n.id = r.namespace_id
WHERE gc.tag_is_due(t.lifetime_end_ms, t.immutable, n.removed_tag_expiration_s, $1)
ORDER BY t.id
LIMIT $2
FOR UPDATE OF t SKIP LOCKED

-- name: lock_all
-- Lock up to $2 tags of repository $1, whatever their state (purge).
-- $1 bigint repository id, $2 int limit
SELECT id, repository_id FROM tag WHERE repository_id = $1 ORDER BY id LIMIT $2
FOR UPDATE SKIP LOCKED

-- name: delete
-- Delete locked tags, re-checking expiry unless $3 (purge), with the
-- tag_to_repository_tag rows naming them (mapping rows, never references),
-- queue their manifests under the request that caused each, and return what
-- the removal events need.
-- $1 bigint[] tag ids, $2 bigint now (ms), $3 bool purge,
-- $4 text[] causation ids (parallel to $1)
WITH locked AS (
    SELECT * FROM unnest($1::bigint[], $4::text[]) AS l (id, causation_id)
), gone AS (
    DELETE FROM tag t
    USING locked l, repository r, namespace n, manifest m
    WHERE t.id = l.id
      AND r.id = t.repository_id
      AND n.id = r.namespace_id
      AND m.id = t.manifest_id
      AND ($3 OR gc.tag_is_due(t.lifetime_end_ms, t.immutable, n.removed_tag_expiration_s, $2))
    RETURNING t.id, t.name, t.manifest_id, t.repository_id, m.digest AS manifest_digest,
              r.name AS repository, n.name AS namespace, l.causation_id
), links AS (
    DELETE FROM tag_to_repository_tag x USING gone g WHERE x.tag_id = g.id
), queued AS (
    INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)
    SELECT DISTINCT 'manifest', manifest_id, repository_id, causation_id FROM gone
)
SELECT * FROM gone ORDER BY id
