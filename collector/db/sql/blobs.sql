-- name: lock
-- $1 bigint[] blob ids
SELECT id FROM blob WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE

-- name: unreferenced
-- Of the locked blobs $1, those referenced by nothing in any repository and
-- safe to remove: at least one placement (a blob without one is a
-- proxy-cache placeholder) and not a protected digest.
-- $1 bigint[] blob ids, $2 text[] protected digests, $3 timestamptz now
SELECT b.id
FROM blob b
WHERE b.id = ANY($1::bigint[])
  AND b.digest <> ALL($2::text[])
  AND EXISTS (SELECT 1 FROM blob_placement p WHERE p.blob_id = b.id)
  AND NOT EXISTS (SELECT 1 FROM manifest_blob mb WHERE mb.blob_id = b.id)
  AND NOT EXISTS (SELECT 1 FROM image i WHERE i.storage_id = b.id)
  AND NOT EXISTS (SELECT 1 FROM derived_image_storage d WHERE d.derivative_id = b.id)
  AND NOT EXISTS (SELECT 1 FROM uploaded_blob u WHERE u.blob_id = b.id AND u.expires_at > $3)
ORDER BY b.id

-- name: delete
-- Delete garbage blobs, their placements and the expired uploads, in any
-- repository, that still name them; return what blob-removed needs.
-- $1 bigint[] blob ids, $2 text[] causation ids (parallel)
WITH batch AS (
    SELECT * FROM unnest($1::bigint[], $2::text[]) AS b (id, causation_id)
), uploads AS (
    DELETE FROM uploaded_blob u USING batch b WHERE u.blob_id = b.id
), placements AS (
    DELETE FROM blob_placement p USING batch b WHERE p.blob_id = b.id
    RETURNING p.blob_id, p.location
)
DELETE FROM blob bl
USING batch b
WHERE bl.id = b.id
RETURNING bl.id, bl.digest, bl.size, b.causation_id,
          ARRAY(SELECT p.location FROM placements p WHERE p.blob_id = bl.id ORDER BY 1)
              AS locations
