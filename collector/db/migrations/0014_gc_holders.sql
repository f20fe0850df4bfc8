-- What keeps each kind of object alive, written once as its holders (DESIGN
-- §3.9): one row per reference, naming the object held and the object whose
-- row holds it (its holder). A reference row goes exactly when its holder
-- goes (a tag's row with the tag, a manifest_blob row with its manifest, ...),
-- so "nothing holds it" is the collectors' rule (gc.unreferenced_*, redefined
-- on these below) and "everything that holds it is going" is the plan's
-- (`collector plan`, gc.holders): the same definitions.
--
-- Holder kinds: tag, legacy_tag (repository_tag), tag_manifest, manifest,
-- image, upload (uploaded_blob).
--
-- A kind's plain reference rows are one UNION ALL of single-table SELECTs
-- (`*_links`): PostgreSQL flattens that into an append of index scans, each
-- probed with the id a rule asks about. A reference that needs a join or a
-- filter has a function of its own, or the planner could no longer probe the
-- union by index and would scan every reference table for each batch.

-- A manifest: any tag row (of any state), a pre-OCI tag manifest mapped to it
-- (broken or not), a manifest list naming it as a child.
CREATE FUNCTION gc.manifest_links()
RETURNS TABLE (manifest_id bigint, holder_kind text, holder_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT t.manifest_id, 'tag', t.id FROM tag t
    UNION ALL
    SELECT tm.manifest_id, 'tag_manifest', tm.tag_manifest_id FROM tag_manifest_to_manifest tm
    UNION ALL
    SELECT c.child_manifest_id, 'manifest', c.manifest_id FROM manifest_child c
$$;

-- An OCI referrer: its subject, a manifest of its repository. Referrers never
-- hold their subject.
CREATE FUNCTION gc.referrer_subjects()
RETURNS TABLE (manifest_id bigint, holder_kind text, holder_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT r.id, 'manifest', s.id
    FROM manifest r
    JOIN manifest s ON s.repository_id = r.repository_id AND s.digest = r.subject_digest
$$;

-- A label: any manifest or pre-OCI tag manifest of any repository carrying it.
CREATE FUNCTION gc.label_links()
RETURNS TABLE (label_id bigint, holder_kind text, holder_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT ml.label_id, 'manifest', ml.manifest_id FROM manifest_label ml
    UNION ALL
    SELECT tl.label_id, 'tag_manifest', tl.annotated_id FROM tag_manifest_label tl
$$;

-- A legacy image: a manifest linking it, a pre-OCI tag (of any state)
-- pointing at it, a child image naming it as parent (chains unwind from leaf
-- to root; a root's NULL parent names nothing).
CREATE FUNCTION gc.image_links()
RETURNS TABLE (image_id bigint, holder_kind text, holder_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT li.image_id, 'manifest', li.manifest_id FROM manifest_legacy_image li
    UNION ALL
    SELECT rt.image_id, 'legacy_tag', rt.id FROM repository_tag rt
    UNION ALL
    SELECT c.parent_id, 'image', c.id FROM image c
$$;

-- A blob: a manifest listing it, a legacy image stored in it or derived into
-- it, in any repository.
CREATE FUNCTION gc.blob_links()
RETURNS TABLE (blob_id bigint, holder_kind text, holder_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT mb.blob_id, 'manifest', mb.manifest_id FROM manifest_blob mb
    UNION ALL
    SELECT i.storage_id, 'image', i.id FROM image i
    UNION ALL
    SELECT d.derivative_id, 'image', d.source_image_id FROM derived_image_storage d
$$;

-- A blob, too: an upload of any repository not yet expired at `at_time`.
CREATE FUNCTION gc.unexpired_uploads(at_time timestamptz)
RETURNS TABLE (blob_id bigint, holder_kind text, holder_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT u.blob_id, 'upload', u.id
    FROM uploaded_blob u
    WHERE NOT gc.upload_is_expired(u.expires_at, at_time)
$$;

-- Every holder of every object, by the candidate kind of the object held.
CREATE FUNCTION gc.holders(at_time timestamptz)
RETURNS TABLE (kind text, id bigint, holder_kind text, holder_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT 'manifest', h.manifest_id, h.holder_kind, h.holder_id FROM gc.manifest_links() h
    UNION ALL
    SELECT 'manifest', h.manifest_id, h.holder_kind, h.holder_id FROM gc.referrer_subjects() h
    UNION ALL
    SELECT 'label', h.label_id, h.holder_kind, h.holder_id FROM gc.label_links() h
    UNION ALL
    SELECT 'image', h.image_id, h.holder_kind, h.holder_id FROM gc.image_links() h
    UNION ALL
    SELECT 'blob', h.blob_id, h.holder_kind, h.holder_id FROM gc.blob_links() h
    UNION ALL
    SELECT 'blob', h.blob_id, h.holder_kind, h.holder_id FROM gc.unexpired_uploads(at_time) h
$$;

-- Blobs the collector may remove once nothing holds them: with a placement
-- (one without is a proxy-cache placeholder) and not a protected digest.
CREATE FUNCTION gc.collectable_blobs(protected_digests text[])
RETURNS TABLE (id bigint, created_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT b.id, b.created_at
    FROM blob b
    WHERE b.digest <> ALL(protected_digests)
      AND EXISTS (SELECT 1 FROM blob_placement p WHERE p.blob_id = b.id)
$$;

-- The collectors' rules (migration 0010), unchanged in meaning, on the holders.
CREATE OR REPLACE FUNCTION gc.unreferenced_manifests()
RETURNS TABLE (id bigint, repository_id bigint, created_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT m.id, m.repository_id, m.created_at
    FROM manifest m
    WHERE NOT EXISTS (SELECT 1 FROM gc.manifest_links() h WHERE h.manifest_id = m.id)
      AND NOT EXISTS (SELECT 1 FROM gc.referrer_subjects() h WHERE h.manifest_id = m.id)
$$;

CREATE OR REPLACE FUNCTION gc.unreferenced_labels()
RETURNS TABLE (id bigint, created_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT l.id, l.created_at
    FROM label l
    WHERE NOT EXISTS (SELECT 1 FROM gc.label_links() h WHERE h.label_id = l.id)
$$;

CREATE OR REPLACE FUNCTION gc.unreferenced_images()
RETURNS TABLE (id bigint, repository_id bigint, created_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT i.id, i.repository_id, i.created_at
    FROM image i
    WHERE NOT EXISTS (SELECT 1 FROM gc.image_links() h WHERE h.image_id = i.id)
$$;

CREATE OR REPLACE FUNCTION gc.unreferenced_blobs(at_time timestamptz, protected_digests text[])
RETURNS TABLE (id bigint, created_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT b.id, b.created_at
    FROM gc.collectable_blobs(protected_digests) b
    WHERE NOT EXISTS (SELECT 1 FROM gc.blob_links() h WHERE h.blob_id = b.id)
      AND NOT EXISTS (SELECT 1 FROM gc.unexpired_uploads(at_time) h WHERE h.blob_id = b.id)
$$;
