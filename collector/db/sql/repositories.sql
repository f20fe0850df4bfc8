-- name: find
-- $1 text namespace name, $2 text repository name
SELECT r.id, n.name AS namespace, r.name, r.kind, r.state,
       gc.repository_is_marked(r.state) AS marked_for_deletion
FROM repository r JOIN namespace n ON n.id = r.namespace_id
WHERE n.name = $1 AND r.name = $2

-- name: namespace_exists
-- $1 text namespace name
SELECT EXISTS (SELECT 1 FROM namespace WHERE name = $1)

-- name: lock_marked
-- Hold repository $1's row (FOR SHARE: no one may unmark it meanwhile) and
-- say whether it is marked for deletion.
-- $1 bigint repository id
SELECT gc.repository_is_marked(state) AS marked FROM repository WHERE id = $1 FOR SHARE

-- name: delete_app_tags
-- Remove up to $2 application tags of repository $1 (purge); links to a
-- removed tag are cleared by the foreign key.
-- $1 bigint repository id, $2 int limit
WITH gone AS (
    DELETE FROM app_tag WHERE id IN (
        SELECT id FROM app_tag WHERE repository_id = $1 ORDER BY id LIMIT $2 FOR UPDATE
    )
    RETURNING id
)
SELECT count(*) FROM gone

-- name: delete_if_empty
-- Delete repository $1 if it is (still) marked for deletion and holds
-- nothing any more; returns nothing otherwise.
-- $1 bigint repository id
DELETE FROM repository r
USING namespace n
WHERE r.id = $1
  AND n.id = r.namespace_id
  AND gc.repository_is_marked(r.state)
  AND NOT EXISTS (SELECT 1 FROM tag WHERE repository_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM manifest WHERE repository_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM image WHERE repository_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM uploaded_blob WHERE repository_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM app_tag WHERE repository_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM manifest_blob WHERE repository_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM manifest_child WHERE repository_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM manifest_label WHERE repository_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM manifest_legacy_image WHERE repository_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM repository_tag WHERE repository_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM tag_to_repository_tag WHERE repository_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM tag_manifest_label WHERE repository_id = r.id)
RETURNING r.id, r.name, n.name AS namespace

-- name: with_due_work
-- Repositories with something to collect: a tag past its window, an
-- expired upload, or candidates left by an interrupted run.
-- $1 bigint now (ms), $2 timestamptz now
SELECT id FROM gc.repositories_with_due_work($1, $2) ORDER BY id

-- name: marked
-- Repositories marked for deletion.
SELECT id FROM repository WHERE gc.repository_is_marked(state) ORDER BY id
