-- name: latest_expired_tag
-- The most recently ended tag named $3 in repository $1/$2 (what a
-- tag-expired request names); nothing if no tag of that name has ended.
-- $1 text namespace, $2 text repository, $3 text tag name
SELECT t.id, t.lifetime_end_ms
FROM tag t
JOIN repository r ON r.id = t.repository_id
JOIN namespace n ON n.id = r.namespace_id
WHERE n.name = $1 AND r.name = $2 AND t.name = $3 AND t.lifetime_end_ms IS NOT NULL
ORDER BY t.lifetime_end_ms DESC, t.id DESC
LIMIT 1

-- name: latest_expired_legacy_tag
-- The most recently ended pre-OCI tag named $3 in repository $1/$2 (what a
-- legacy-tag-expired request names); nothing if no tag of that name has ended.
-- $1 text namespace, $2 text repository, $3 text tag name
SELECT t.id, t.lifetime_end_ts
FROM repository_tag t
JOIN repository r ON r.id = t.repository_id
JOIN namespace n ON n.id = r.namespace_id
WHERE n.name = $1 AND r.name = $2 AND t.name = $3 AND t.lifetime_end_ts IS NOT NULL
ORDER BY t.lifetime_end_ts DESC, t.id DESC
LIMIT 1

-- name: repositories_to_sweep
-- What a scan asks for: repositories with a tag (OCI or pre-OCI) past its window, an expired
-- upload or undecided candidates (repo-sweep), and repositories marked for
-- deletion (repo-deleted), with their names.
-- $1 bigint now (ms), $2 timestamptz now
SELECT r.id, n.name AS namespace, r.name, gc.repository_is_marked(r.state) AS marked
FROM repository r
JOIN namespace n ON n.id = r.namespace_id
WHERE gc.repository_is_marked(r.state)
   OR r.id IN (SELECT id FROM gc.repositories_with_due_work($1, $2))
ORDER BY r.id
