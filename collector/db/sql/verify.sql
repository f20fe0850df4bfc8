-- name: dangling
-- Every reference whose target row is missing: impossible while the
-- foreign keys hold, so any row here means a constraint was dropped,
-- disabled or never created. One row per reference, with up to five
-- offending row ids.
SELECT reference, count(*) AS rows, (array_agg(id ORDER BY id))[1:5] AS sample
FROM (
    SELECT 'repository.namespace_id' AS reference, x.id FROM repository x
        WHERE NOT EXISTS (SELECT 1 FROM namespace t WHERE t.id = x.namespace_id)
    UNION ALL SELECT 'blob_placement.blob_id', x.id FROM blob_placement x
        WHERE NOT EXISTS (SELECT 1 FROM blob t WHERE t.id = x.blob_id)
    UNION ALL SELECT 'uploaded_blob.blob_id', x.id FROM uploaded_blob x
        WHERE NOT EXISTS (SELECT 1 FROM blob t WHERE t.id = x.blob_id)
    UNION ALL SELECT 'uploaded_blob.repository_id', x.id FROM uploaded_blob x
        WHERE NOT EXISTS (SELECT 1 FROM repository t WHERE t.id = x.repository_id)
    UNION ALL SELECT 'manifest.repository_id', x.id FROM manifest x
        WHERE NOT EXISTS (SELECT 1 FROM repository t WHERE t.id = x.repository_id)
    UNION ALL SELECT 'manifest_blob.manifest_id', x.id FROM manifest_blob x
        WHERE NOT EXISTS (SELECT 1 FROM manifest t WHERE t.id = x.manifest_id)
    UNION ALL SELECT 'manifest_blob.blob_id', x.id FROM manifest_blob x
        WHERE NOT EXISTS (SELECT 1 FROM blob t WHERE t.id = x.blob_id)
    UNION ALL SELECT 'manifest_child.manifest_id', x.id FROM manifest_child x
        WHERE NOT EXISTS (SELECT 1 FROM manifest t WHERE t.id = x.manifest_id)
    UNION ALL SELECT 'manifest_child.child_manifest_id', x.id FROM manifest_child x
        WHERE NOT EXISTS (SELECT 1 FROM manifest t WHERE t.id = x.child_manifest_id)
    UNION ALL SELECT 'manifest_label.manifest_id', x.id FROM manifest_label x
        WHERE NOT EXISTS (SELECT 1 FROM manifest t WHERE t.id = x.manifest_id)
    UNION ALL SELECT 'manifest_label.label_id', x.id FROM manifest_label x
        WHERE NOT EXISTS (SELECT 1 FROM label t WHERE t.id = x.label_id)
    UNION ALL SELECT 'tag.repository_id', x.id FROM tag x
        WHERE NOT EXISTS (SELECT 1 FROM repository t WHERE t.id = x.repository_id)
    UNION ALL SELECT 'tag.manifest_id', x.id FROM tag x
        WHERE NOT EXISTS (SELECT 1 FROM manifest t WHERE t.id = x.manifest_id)
    UNION ALL SELECT 'tag.linked_tag_id', x.id FROM tag x
        WHERE x.linked_tag_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM tag t WHERE t.id = x.linked_tag_id)
    UNION ALL SELECT 'image.repository_id', x.id FROM image x
        WHERE NOT EXISTS (SELECT 1 FROM repository t WHERE t.id = x.repository_id)
    UNION ALL SELECT 'image.storage_id', x.id FROM image x
        WHERE NOT EXISTS (SELECT 1 FROM blob t WHERE t.id = x.storage_id)
    UNION ALL SELECT 'image.parent_id', x.id FROM image x
        WHERE x.parent_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM image t WHERE t.id = x.parent_id)
    UNION ALL SELECT 'derived_image_storage.source_image_id', x.id FROM derived_image_storage x
        WHERE NOT EXISTS (SELECT 1 FROM image t WHERE t.id = x.source_image_id)
    UNION ALL SELECT 'derived_image_storage.derivative_id', x.id FROM derived_image_storage x
        WHERE NOT EXISTS (SELECT 1 FROM blob t WHERE t.id = x.derivative_id)
    UNION ALL SELECT 'manifest_legacy_image.manifest_id', x.id FROM manifest_legacy_image x
        WHERE NOT EXISTS (SELECT 1 FROM manifest t WHERE t.id = x.manifest_id)
    UNION ALL SELECT 'manifest_legacy_image.image_id', x.id FROM manifest_legacy_image x
        WHERE NOT EXISTS (SELECT 1 FROM image t WHERE t.id = x.image_id)
    UNION ALL SELECT 'app_tag.repository_id', x.id FROM app_tag x
        WHERE NOT EXISTS (SELECT 1 FROM repository t WHERE t.id = x.repository_id)
    UNION ALL SELECT 'app_tag.linked_tag_id', x.id FROM app_tag x
        WHERE x.linked_tag_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM app_tag t WHERE t.id = x.linked_tag_id)
    UNION ALL SELECT 'repository_tag.repository_id', x.id FROM repository_tag x
        WHERE NOT EXISTS (SELECT 1 FROM repository t WHERE t.id = x.repository_id)
    UNION ALL SELECT 'repository_tag.image_id', x.id FROM repository_tag x
        WHERE NOT EXISTS (SELECT 1 FROM image t WHERE t.id = x.image_id)
    UNION ALL SELECT 'repository_tag.linked_tag_id', x.id FROM repository_tag x
        WHERE x.linked_tag_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM repository_tag t WHERE t.id = x.linked_tag_id)
    UNION ALL SELECT 'tag_manifest.tag_id', x.id FROM tag_manifest x
        WHERE NOT EXISTS (SELECT 1 FROM repository_tag t WHERE t.id = x.tag_id)
    UNION ALL SELECT 'tag_manifest_to_manifest.tag_manifest_id', x.id FROM tag_manifest_to_manifest x
        WHERE NOT EXISTS (SELECT 1 FROM tag_manifest t WHERE t.id = x.tag_manifest_id)
    UNION ALL SELECT 'tag_manifest_to_manifest.manifest_id', x.id FROM tag_manifest_to_manifest x
        WHERE NOT EXISTS (SELECT 1 FROM manifest t WHERE t.id = x.manifest_id)
    UNION ALL SELECT 'tag_to_repository_tag.repository_id', x.id FROM tag_to_repository_tag x
        WHERE NOT EXISTS (SELECT 1 FROM repository t WHERE t.id = x.repository_id)
    UNION ALL SELECT 'tag_to_repository_tag.tag_id', x.id FROM tag_to_repository_tag x
        WHERE NOT EXISTS (SELECT 1 FROM tag t WHERE t.id = x.tag_id)
    UNION ALL SELECT 'tag_to_repository_tag.repository_tag_id', x.id FROM tag_to_repository_tag x
        WHERE NOT EXISTS (SELECT 1 FROM repository_tag t WHERE t.id = x.repository_tag_id)
    UNION ALL SELECT 'tag_manifest_label.repository_id', x.id FROM tag_manifest_label x
        WHERE NOT EXISTS (SELECT 1 FROM repository t WHERE t.id = x.repository_id)
    UNION ALL SELECT 'tag_manifest_label.annotated_id', x.id FROM tag_manifest_label x
        WHERE NOT EXISTS (SELECT 1 FROM tag_manifest t WHERE t.id = x.annotated_id)
    UNION ALL SELECT 'tag_manifest_label.label_id', x.id FROM tag_manifest_label x
        WHERE NOT EXISTS (SELECT 1 FROM label t WHERE t.id = x.label_id)
    UNION ALL SELECT 'tag_manifest_label_map.tag_manifest_id', x.id FROM tag_manifest_label_map x
        WHERE NOT EXISTS (SELECT 1 FROM tag_manifest t WHERE t.id = x.tag_manifest_id)
    UNION ALL SELECT 'tag_manifest_label_map.manifest_id', x.id FROM tag_manifest_label_map x
        WHERE x.manifest_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM manifest t WHERE t.id = x.manifest_id)
    UNION ALL SELECT 'tag_manifest_label_map.label_id', x.id FROM tag_manifest_label_map x
        WHERE NOT EXISTS (SELECT 1 FROM label t WHERE t.id = x.label_id)
    UNION ALL SELECT 'tag_manifest_label_map.tag_manifest_label_id', x.id FROM tag_manifest_label_map x
        WHERE x.tag_manifest_label_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM tag_manifest_label t WHERE t.id = x.tag_manifest_label_id)
    UNION ALL SELECT 'tag_manifest_label_map.manifest_label_id', x.id FROM tag_manifest_label_map x
        WHERE x.manifest_label_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM manifest_label t WHERE t.id = x.manifest_label_id)
) AS broken
GROUP BY reference
ORDER BY reference

-- name: garbage
-- Garbage not collected yet, by kind and status, with up to five ids, by the
-- very rules the collectors apply (migration 0010). Status: "queued" when a
-- candidate or a request already waits for it; "due" when the next run or
-- orphan sweep collects it; "grace" for an unreferenced object younger than
-- the grace period (the sweep leaves it alone until then).
-- $1 bigint now (ms), $2 timestamptz now, $3 text[] protected digests,
-- $4 timestamptz grace cutoff (objects created after it are in their grace period)
SELECT kind, status, count(*) AS rows, (array_agg(id ORDER BY id))[1:5] AS sample
FROM (
    SELECT 'tag past its window' AS kind, 'due' AS status, t.id FROM gc.due_tags($1) t
    UNION ALL
    SELECT 'legacy tag past its window', 'due', t.id FROM gc.due_legacy_tags($1) t
    UNION ALL
    SELECT 'expired upload', 'due', u.id FROM gc.expired_uploads($2) u
    UNION ALL
    SELECT 'repository marked for deletion', 'due', r.id
    FROM repository r WHERE gc.repository_is_marked(r.state)
    UNION ALL
    SELECT 'unreferenced ' || o.kind, CASE WHEN o.created_at > $4 THEN 'grace' ELSE 'due' END, o.id
    FROM gc.unreferenced_objects($2, $3) o
    WHERE NOT EXISTS (SELECT 1 FROM gc.candidate c WHERE c.kind = o.kind AND c.object_id = o.id)
    UNION ALL
    SELECT 'candidate ' || c.kind, 'queued', c.id FROM gc.candidate c
    UNION ALL
    SELECT 'request ' || q.event_type, 'queued', q.id FROM gc.request q WHERE q.finished_at IS NULL
) AS garbage
GROUP BY kind, status
ORDER BY kind, status
