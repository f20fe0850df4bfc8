-- name: lock_due_in
-- Lock up to $3 pre-OCI tags of the repositories $1 past their namespace's
-- window at $2 (gc.legacy_tag_is_due); skips tags another transaction holds.
-- $1 bigint[] repository ids, $2 bigint now (ms), $3 int limit
SELECT t.id, t.repository_id
FROM repository_tag t
JOIN repository r ON r.id = t.repository_id
JOIN namespace n ON n.id = r.namespace_id
WHERE t.repository_id = ANY($1::bigint[])
  AND gc.legacy_tag_is_due(t.lifetime_end_ts, n.removed_tag_expiration_s, $2)
ORDER BY t.id
LIMIT $3
FOR UPDATE OF t SKIP LOCKED

-- name: lock_due_any
-- Lock up to $2 pre-OCI tags of any repository past their window at $1.
-- $1 bigint now (ms), $2 int limit
SELECT t.id, t.repository_id
FROM repository_tag t
JOIN repository r ON r.id = t.repository_id
JOIN namespace n ON n.id = r.namespace_id
WHERE gc.legacy_tag_is_due(t.lifetime_end_ts, n.removed_tag_expiration_s, $1)
ORDER BY t.id
LIMIT $2
FOR UPDATE OF t SKIP LOCKED

-- name: lock_all
-- Lock up to $2 pre-OCI tags of repository $1, whatever their state (purge).
-- $1 bigint repository id, $2 int limit
SELECT id, repository_id FROM repository_tag WHERE repository_id = $1 ORDER BY id LIMIT $2
FOR UPDATE SKIP LOCKED

-- name: delete
-- Delete locked pre-OCI tags, re-checked as due unless $3 (purge), each with
-- its tag manifest, which lives exactly as long as its tag (CONTRACT §3.1):
-- first the rows that hang on the tag manifest (label rows, the label-map rows
-- naming it or its label rows, its manifest mapping) and the mapping rows
-- naming the tag, then the tag manifest and the tag. The mapped manifests,
-- the labels and the tags' images are queued under each tag's request. One
-- statement: foreign keys are checked at its end. Returns one row per tag,
-- with its tag manifest (or NULLs), for the removal events.
-- $1 bigint[] tag ids, $2 bigint now (ms), $3 bool purge,
-- $4 text[] causation ids (parallel to $1)
WITH due AS (
    SELECT l.id, l.causation_id
    FROM unnest($1::bigint[], $4::text[]) AS l (id, causation_id)
    JOIN repository_tag t ON t.id = l.id
    JOIN repository r ON r.id = t.repository_id
    JOIN namespace n ON n.id = r.namespace_id
    WHERE $3 OR gc.legacy_tag_is_due(t.lifetime_end_ts, n.removed_tag_expiration_s, $2)
), tag_manifests AS (
    SELECT tm.id, tm.tag_id, t.repository_id, d.causation_id
    FROM tag_manifest tm
    JOIN due d ON d.id = tm.tag_id
    JOIN repository_tag t ON t.id = tm.tag_id
), label_maps AS (
    DELETE FROM tag_manifest_label_map x
    WHERE x.tag_manifest_id IN (SELECT id FROM tag_manifests)
       OR x.tag_manifest_label_id IN (
           SELECT tl.id FROM tag_manifest_label tl
           WHERE tl.annotated_id IN (SELECT id FROM tag_manifests)
       )
), labels AS (
    DELETE FROM tag_manifest_label x USING tag_manifests tm WHERE x.annotated_id = tm.id
    RETURNING 'label' AS kind, x.label_id AS object_id, x.repository_id, tm.causation_id
), mapped AS (
    DELETE FROM tag_manifest_to_manifest x USING tag_manifests tm WHERE x.tag_manifest_id = tm.id
    RETURNING 'manifest' AS kind, x.manifest_id AS object_id, tm.repository_id, tm.causation_id
), manifests_gone AS (
    DELETE FROM tag_manifest x USING tag_manifests tm WHERE x.id = tm.id
    RETURNING x.id, x.tag_id, x.digest
), links AS (
    DELETE FROM tag_to_repository_tag x USING due d WHERE x.repository_tag_id = d.id
), gone AS (
    DELETE FROM repository_tag t
    USING due d, repository r, namespace n, image i
    WHERE t.id = d.id AND r.id = t.repository_id AND n.id = r.namespace_id
      AND i.id = t.image_id
    RETURNING t.id, t.name, t.repository_id, t.image_id, i.docker_image_id,
              r.name AS repository, n.name AS namespace, d.causation_id
), queued AS (
    INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)
    SELECT DISTINCT ON (kind, object_id) kind, object_id, repository_id, causation_id
    FROM (
        SELECT * FROM labels
        UNION ALL SELECT * FROM mapped
        UNION ALL SELECT 'image', image_id, repository_id, causation_id FROM gone
    ) AS freed
    ORDER BY kind, object_id, causation_id
)
SELECT g.id, g.name, g.repository_id, g.docker_image_id, g.repository, g.namespace,
       g.causation_id, m.id AS tag_manifest_id, m.digest AS tag_manifest_digest
FROM gone g
LEFT JOIN manifests_gone m ON m.tag_id = g.id
ORDER BY g.id
