-- name: lock
-- $1 bigint[] blob ids
SELECT id FROM blob WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE

-- name: unreferenced
-- Of the locked blobs $1, those referenced by nothing in any repository and
-- safe to remove (gc.unreferenced_blobs: with a placement, not protected).
-- $1 bigint[] blob ids, $2 text[] protected digests, $3 timestamptz now
SELECT id FROM gc.unreferenced_blobs($3, $2::text[]) WHERE id = ANY($1::bigint[]) ORDER BY id

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
), placed AS (
    -- Grouped once: a look-up per blob into the placements would be quadratic.
    SELECT blob_id, array_agg(location ORDER BY location) AS locations
    FROM placements GROUP BY blob_id
)
DELETE FROM blob bl
USING batch b LEFT JOIN placed p ON p.blob_id = b.id
WHERE bl.id = b.id
RETURNING bl.id, bl.digest, bl.size, b.causation_id,
          coalesce(p.locations, '{}') AS locations
