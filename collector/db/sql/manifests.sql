-- name: lock
-- $1 bigint[] manifest ids
SELECT id FROM manifest WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE

-- name: unreferenced
-- Of the locked manifests $1, those nothing keeps alive (the rule:
-- gc.unreferenced_manifests, migration 0010).
-- $1 bigint[] manifest ids
SELECT id FROM gc.unreferenced_manifests() WHERE id = ANY($1::bigint[]) ORDER BY id

-- name: delete
-- Delete garbage manifests with their links, queue what the links pointed
-- at (children, referrers, blobs, labels, legacy images), and return what
-- the removal events need. The pre-OCI label-map rows naming a manifest or
-- one of its label rows go with them (mapping rows, never references). One
-- statement: foreign keys are checked at its end.
-- Candidates belong to the repository of the link that freed them.
-- $1 bigint[] manifest ids, $2 text[] causation ids (parallel)
WITH batch AS (
    SELECT * FROM unnest($1::bigint[], $2::text[]) AS b (id, causation_id)
), children AS (
    DELETE FROM manifest_child mc USING batch b WHERE mc.manifest_id = b.id
    RETURNING 'manifest' AS kind, mc.child_manifest_id AS object_id, mc.repository_id,
              b.causation_id
), blobs AS (
    DELETE FROM manifest_blob mb USING batch b WHERE mb.manifest_id = b.id
    RETURNING 'blob' AS kind, mb.blob_id AS object_id, mb.repository_id, b.causation_id
), label_maps AS (
    DELETE FROM tag_manifest_label_map x
    WHERE x.manifest_id = ANY($1::bigint[])
       OR x.manifest_label_id IN (
           SELECT ml.id FROM manifest_label ml WHERE ml.manifest_id = ANY($1::bigint[])
       )
), labels AS (
    DELETE FROM manifest_label ml USING batch b WHERE ml.manifest_id = b.id
    RETURNING 'label' AS kind, ml.label_id AS object_id, ml.repository_id, b.causation_id
), images AS (
    DELETE FROM manifest_legacy_image li USING batch b WHERE li.manifest_id = b.id
    RETURNING 'image' AS kind, li.image_id AS object_id, li.repository_id, b.causation_id
), referrers AS (
    SELECT 'manifest' AS kind, r.id AS object_id, r.repository_id, b.causation_id
    FROM batch b
    JOIN manifest s ON s.id = b.id
    JOIN manifest r ON r.repository_id = s.repository_id AND r.subject_digest = s.digest
    WHERE r.id <> ALL($1::bigint[])
), queued AS (
    INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)
    SELECT DISTINCT ON (kind, object_id) kind, object_id, repository_id, causation_id
    FROM (
        SELECT * FROM children
        UNION ALL SELECT * FROM blobs
        UNION ALL SELECT * FROM labels
        UNION ALL SELECT * FROM images
        UNION ALL SELECT * FROM referrers
    ) AS freed
    ORDER BY kind, object_id, causation_id
)
DELETE FROM manifest m
USING batch b, repository r, namespace n
WHERE m.id = b.id AND r.id = m.repository_id AND n.id = r.namespace_id
RETURNING m.id, m.digest, m.media_type, m.repository_id,
          r.name AS repository, n.name AS namespace, b.causation_id

-- name: queue_all
-- Queue every manifest of repository $1 not already queued (purge).
-- $1 bigint repository id, $2 text causation id
INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)
SELECT 'manifest', m.id, $1, $2
FROM manifest m
WHERE m.repository_id = $1
  AND NOT EXISTS (
      SELECT 1 FROM gc.candidate c WHERE c.kind = 'manifest' AND c.object_id = m.id
  )
