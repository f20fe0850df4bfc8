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
) AS broken
GROUP BY reference
ORDER BY reference

-- name: garbage
-- Garbage that is due but not collected yet, by kind, with up to five ids.
-- The same rules the collectors apply (CONTRACT §3), over the whole registry.
-- $1 bigint now (ms), $2 timestamptz now, $3 text[] protected digests
SELECT kind, count(*) AS rows, (array_agg(id ORDER BY id))[1:5] AS sample
FROM (
    SELECT 'tag past its window' AS kind, t.id
    FROM tag t
    JOIN repository r ON r.id = t.repository_id
    JOIN namespace n ON n.id = r.namespace_id
    WHERE gc.tag_is_due(t.lifetime_end_ms, t.immutable, n.removed_tag_expiration_s, $1)
    UNION ALL
    SELECT 'expired upload', u.id FROM uploaded_blob u WHERE u.expires_at <= $2
    UNION ALL
    SELECT 'repository marked for deletion', r.id
    FROM repository r WHERE r.state = 'marked_for_deletion'
    UNION ALL
    SELECT 'unreferenced manifest', m.id
    FROM manifest m
    WHERE NOT EXISTS (SELECT 1 FROM tag t WHERE t.manifest_id = m.id)
      AND NOT EXISTS (SELECT 1 FROM manifest_child c WHERE c.child_manifest_id = m.id)
      AND NOT (
          m.subject_digest IS NOT NULL
          AND EXISTS (
              SELECT 1 FROM manifest s
              WHERE s.repository_id = m.repository_id AND s.digest = m.subject_digest
          )
      )
    UNION ALL
    SELECT 'unreferenced label', l.id
    FROM label l WHERE NOT EXISTS (SELECT 1 FROM manifest_label ml WHERE ml.label_id = l.id)
    UNION ALL
    SELECT 'unreferenced legacy image', i.id
    FROM image i
    WHERE NOT EXISTS (SELECT 1 FROM manifest_legacy_image li WHERE li.image_id = i.id)
      AND NOT EXISTS (SELECT 1 FROM image c WHERE c.parent_id = i.id)
    UNION ALL
    SELECT 'unreferenced blob', b.id
    FROM blob b
    WHERE b.digest <> ALL($3::text[])
      AND EXISTS (SELECT 1 FROM blob_placement p WHERE p.blob_id = b.id)
      AND NOT EXISTS (SELECT 1 FROM manifest_blob mb WHERE mb.blob_id = b.id)
      AND NOT EXISTS (SELECT 1 FROM image i WHERE i.storage_id = b.id)
      AND NOT EXISTS (SELECT 1 FROM derived_image_storage d WHERE d.derivative_id = b.id)
      AND NOT EXISTS (
          SELECT 1 FROM uploaded_blob u WHERE u.blob_id = b.id AND u.expires_at > $2
      )
    UNION ALL
    SELECT 'pending candidate', c.id FROM gc.candidate c
) AS due
GROUP BY kind
ORDER BY kind
