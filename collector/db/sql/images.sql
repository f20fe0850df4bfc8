-- name: lock
-- $1 bigint[] image ids
SELECT id FROM image WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE

-- name: unreferenced
-- Of the locked legacy images $1, those nothing keeps alive
-- (gc.unreferenced_images): chains unwind from leaf to root.
-- $1 bigint[] image ids
SELECT id FROM gc.unreferenced_images() WHERE id = ANY($1::bigint[]) ORDER BY id

-- name: delete
-- Delete garbage images and their derived storage rows, queue the blobs
-- they held, and return what the events need (with parent_id, the next
-- link of the chain to decide).
-- $1 bigint[] image ids, $2 text[] causation ids (parallel)
WITH batch AS (
    SELECT b.*, i.repository_id
    FROM unnest($1::bigint[], $2::text[]) AS b (id, causation_id)
    JOIN image i ON i.id = b.id
), derived AS (
    DELETE FROM derived_image_storage d USING batch b WHERE d.source_image_id = b.id
    RETURNING d.derivative_id AS blob_id, b.repository_id, b.causation_id
), gone AS (
    DELETE FROM image i
    USING batch b, repository r, namespace n
    WHERE i.id = b.id AND r.id = i.repository_id AND n.id = r.namespace_id
    RETURNING i.id, i.docker_image_id, i.storage_id, i.parent_id, i.repository_id,
              r.name AS repository, n.name AS namespace, b.causation_id
), queued AS (
    INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)
    SELECT DISTINCT ON (blob_id) 'blob', blob_id, repository_id, causation_id
    FROM (
        SELECT blob_id, repository_id, causation_id FROM derived
        UNION ALL SELECT storage_id, repository_id, causation_id FROM gone
    ) AS freed
    ORDER BY blob_id, causation_id
)
SELECT * FROM gone ORDER BY id

-- name: queue_all
-- Queue every legacy image of repository $1 not already queued (purge).
-- $1 bigint repository id, $2 text causation id
INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)
SELECT 'image', i.id, $1, $2
FROM image i
WHERE i.repository_id = $1
  AND NOT EXISTS (SELECT 1 FROM gc.candidate c WHERE c.kind = 'image' AND c.object_id = i.id)
