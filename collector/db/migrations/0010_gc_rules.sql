-- Each rule of CONTRACT §3 and §3.1 written once (DESIGN §3.9): what keeps a
-- manifest, label, legacy image or blob alive, when a tag (OCI or pre-OCI) is
-- due, when an upload has expired, when a repository is due for purge. The collectors, `verify`,
-- `scan` and the orphan sweep all call these; none repeats them.
--
-- Rules over sets are SQL functions returning tables: STABLE, not STRICT, one
-- SELECT, so the planner inlines them into the calling query and pushes the
-- caller's filters (an id batch, an id range, a repository) down to the
-- indexes, exactly as if the rule were written in place. Rules over one row
-- are scalar SQL functions, inlined the same way. Callers that lock rows
-- (`FOR UPDATE` cannot name a function) compose the scalar rules instead.

-- When the orphan sweep may judge a row: only once it is older than the grace
-- period, so that an object a registry writes in several transactions is never
-- raced. Existing rows get the migration's time: they are judged one grace
-- period after it, never earlier. (blob has created_at since 0001.)
ALTER TABLE manifest ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE label ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE image ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();

-- When a tag falls due: its lifetime end plus its namespace's window.
-- Saturates at the bigint bounds: no lifetime or window a registry row can
-- hold overflows it (DESIGN §3.10).
CREATE FUNCTION gc.tag_due_at_ms(lifetime_end_ms bigint, window_s bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN least(
    greatest(lifetime_end_ms::numeric + window_s::numeric * 1000, -9223372036854775808),
    9223372036854775807
)::bigint;

-- A tag is due once it ended and its window passed, unless it is immutable.
CREATE OR REPLACE FUNCTION gc.tag_is_due(
    lifetime_end_ms bigint, immutable boolean, window_s bigint, now_ms bigint
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN lifetime_end_ms IS NOT NULL
    AND NOT immutable
    AND gc.tag_due_at_ms(lifetime_end_ms, window_s) <= now_ms;

-- When a pre-OCI tag falls due: `lifetime_end_ts + removed_tag_expiration_s`
-- seconds (CONTRACT §3.1), in milliseconds like everything the collector
-- compares with its clock (a whole second s is due at `now_ms` exactly when
-- s * 1000 <= now_ms), saturating.
CREATE FUNCTION gc.legacy_tag_due_at_ms(lifetime_end_ts bigint, window_s bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN least(
    greatest((lifetime_end_ts::numeric + window_s::numeric) * 1000, -9223372036854775808),
    9223372036854775807
)::bigint;

-- A pre-OCI tag is due once it ended and its window passed (there is no
-- immutable flag in that model).
CREATE FUNCTION gc.legacy_tag_is_due(lifetime_end_ts bigint, window_s bigint, now_ms bigint)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN lifetime_end_ts IS NOT NULL
    AND gc.legacy_tag_due_at_ms(lifetime_end_ts, window_s) <= now_ms;

-- An upload keeps its blob alive until it expires.
CREATE FUNCTION gc.upload_is_expired(expires_at timestamptz, at_time timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN expires_at <= at_time;

-- A repository marked for deletion is due for purge (and only such a one).
CREATE FUNCTION gc.repository_is_marked(state text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN state = 'marked_for_deletion';

-- Every tag with what its due time is made of: its lifetime end, and the
-- time-machine window of its repository's namespace.
CREATE FUNCTION gc.tag_windows()
RETURNS TABLE (
    id bigint, repository_id bigint, lifetime_end_ms bigint, immutable boolean, window_s bigint
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT t.id, t.repository_id, t.lifetime_end_ms, t.immutable, n.removed_tag_expiration_s
    FROM tag t
    JOIN repository r ON r.id = t.repository_id
    JOIN namespace n ON n.id = r.namespace_id
$$;

-- Tags past their namespace's window (the roots of a collection).
CREATE FUNCTION gc.due_tags(now_ms bigint)
RETURNS TABLE (id bigint, repository_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT w.id, w.repository_id
    FROM gc.tag_windows() w
    WHERE gc.tag_is_due(w.lifetime_end_ms, w.immutable, w.window_s, now_ms)
$$;

-- Every pre-OCI tag with its lifetime end and its namespace's window.
CREATE FUNCTION gc.legacy_tag_windows()
RETURNS TABLE (id bigint, repository_id bigint, lifetime_end_ts bigint, window_s bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT t.id, t.repository_id, t.lifetime_end_ts, n.removed_tag_expiration_s
    FROM repository_tag t
    JOIN repository r ON r.id = t.repository_id
    JOIN namespace n ON n.id = r.namespace_id
$$;

-- Pre-OCI tags past their namespace's window.
CREATE FUNCTION gc.due_legacy_tags(now_ms bigint)
RETURNS TABLE (id bigint, repository_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT w.id, w.repository_id
    FROM gc.legacy_tag_windows() w
    WHERE gc.legacy_tag_is_due(w.lifetime_end_ts, w.window_s, now_ms)
$$;

-- Uploads past their expiry: garbage themselves.
CREATE FUNCTION gc.expired_uploads(at_time timestamptz)
RETURNS TABLE (id bigint, repository_id bigint, blob_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT u.id, u.repository_id, u.blob_id
    FROM uploaded_blob u
    WHERE gc.upload_is_expired(u.expires_at, at_time)
$$;

-- The tag a tag-expired request names, while it still has the request's
-- lifetime end: no row means the request is stale (the tag was collected,
-- deleted, restored or re-expired since; a later event speaks for it).
CREATE FUNCTION gc.expiring_tag(
    request_tag_id bigint, request_repository_id bigint, request_lifetime_end_ms bigint
) RETURNS TABLE (lifetime_end_ms bigint, immutable boolean, window_s bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT w.lifetime_end_ms, w.immutable, w.window_s
    FROM gc.tag_windows() w
    WHERE w.id = request_tag_id AND w.repository_id = request_repository_id
      AND w.lifetime_end_ms = request_lifetime_end_ms
$$;

-- The pre-OCI tag a legacy-tag-expired request names, while it still has the
-- request's lifetime end: no row means the request is stale.
CREATE FUNCTION gc.expiring_legacy_tag(
    request_repository_tag_id bigint, request_repository_id bigint, request_lifetime_end_ts bigint
) RETURNS TABLE (lifetime_end_ts bigint, window_s bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT w.lifetime_end_ts, w.window_s
    FROM gc.legacy_tag_windows() w
    WHERE w.id = request_repository_tag_id AND w.repository_id = request_repository_id
      AND w.lifetime_end_ts = request_lifetime_end_ts
$$;

-- Manifests nothing keeps alive: no tag row of any state, no pre-OCI tag
-- manifest mapped to it (broken or not), no manifest list naming it as a
-- child, and (an OCI referrer) no subject in its repository. Referrers never
-- keep their subject alive.
CREATE FUNCTION gc.unreferenced_manifests()
RETURNS TABLE (id bigint, repository_id bigint, created_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT m.id, m.repository_id, m.created_at
    FROM manifest m
    WHERE NOT EXISTS (SELECT 1 FROM tag t WHERE t.manifest_id = m.id)
      AND NOT EXISTS (SELECT 1 FROM tag_manifest_to_manifest tm WHERE tm.manifest_id = m.id)
      AND NOT EXISTS (SELECT 1 FROM manifest_child c WHERE c.child_manifest_id = m.id)
      AND NOT (
          m.subject_digest IS NOT NULL
          AND EXISTS (
              SELECT 1 FROM manifest s
              WHERE s.repository_id = m.repository_id AND s.digest = m.subject_digest
          )
      )
$$;

-- Labels no manifest and no pre-OCI tag manifest of any repository carries.
CREATE FUNCTION gc.unreferenced_labels()
RETURNS TABLE (id bigint, created_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT l.id, l.created_at
    FROM label l
    WHERE NOT EXISTS (SELECT 1 FROM manifest_label ml WHERE ml.label_id = l.id)
      AND NOT EXISTS (SELECT 1 FROM tag_manifest_label tl WHERE tl.label_id = l.id)
$$;

-- Legacy images no manifest links, no pre-OCI tag (of any state) points at,
-- and no child image names as its parent: chains unwind from leaf to root.
CREATE FUNCTION gc.unreferenced_images()
RETURNS TABLE (id bigint, repository_id bigint, created_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT i.id, i.repository_id, i.created_at
    FROM image i
    WHERE NOT EXISTS (SELECT 1 FROM manifest_legacy_image li WHERE li.image_id = i.id)
      AND NOT EXISTS (SELECT 1 FROM repository_tag rt WHERE rt.image_id = i.id)
      AND NOT EXISTS (SELECT 1 FROM image c WHERE c.parent_id = i.id)
$$;

-- Blobs referenced by nothing in any repository at `at_time`, and collectable:
-- with a placement (one without is a proxy-cache placeholder) and not a
-- protected digest.
CREATE FUNCTION gc.unreferenced_blobs(at_time timestamptz, protected_digests text[])
RETURNS TABLE (id bigint, created_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT b.id, b.created_at
    FROM blob b
    WHERE b.digest <> ALL(protected_digests)
      AND EXISTS (SELECT 1 FROM blob_placement p WHERE p.blob_id = b.id)
      AND NOT EXISTS (SELECT 1 FROM manifest_blob mb WHERE mb.blob_id = b.id)
      AND NOT EXISTS (SELECT 1 FROM image i WHERE i.storage_id = b.id)
      AND NOT EXISTS (SELECT 1 FROM derived_image_storage d WHERE d.derivative_id = b.id)
      AND NOT EXISTS (
          SELECT 1 FROM uploaded_blob u
          WHERE u.blob_id = b.id AND NOT gc.upload_is_expired(u.expires_at, at_time)
      )
$$;

-- Every unreferenced object, by candidate kind: what `verify` reports and the
-- orphan sweep queues. Labels and blobs belong to no repository. A caller's
-- filter on kind prunes the other branches when the plan starts.
CREATE FUNCTION gc.unreferenced_objects(at_time timestamptz, protected_digests text[])
RETURNS TABLE (kind text, id bigint, repository_id bigint, created_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT 'manifest', m.id, m.repository_id, m.created_at FROM gc.unreferenced_manifests() m
    UNION ALL
    SELECT 'label', l.id, NULL::bigint, l.created_at FROM gc.unreferenced_labels() l
    UNION ALL
    SELECT 'image', i.id, i.repository_id, i.created_at FROM gc.unreferenced_images() i
    UNION ALL
    SELECT 'blob', b.id, NULL::bigint, b.created_at
    FROM gc.unreferenced_blobs(at_time, protected_digests) b
$$;

-- Repositories with something to collect: a tag (OCI or pre-OCI) past its
-- window, an expired upload, or candidates left to decide.
CREATE FUNCTION gc.repositories_with_due_work(now_ms bigint, at_time timestamptz)
RETURNS TABLE (id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT t.repository_id FROM gc.due_tags(now_ms) t
    UNION
    SELECT t.repository_id FROM gc.due_legacy_tags(now_ms) t
    UNION
    SELECT u.repository_id FROM gc.expired_uploads(at_time) u
    UNION
    SELECT c.repository_id FROM gc.candidate c WHERE c.repository_id IS NOT NULL
$$;

-- Orphans the sweep found that belong to no repository (unreferenced labels
-- and blobs) are candidates of the registry-wide context: no repository id.
ALTER TABLE gc.candidate ALTER COLUMN repository_id DROP NOT NULL;

-- The orphan sweep's place in each table, so that a sweep cut short resumes
-- where it stopped. A pass covers ids up to `until_id` (the table's largest
-- id when the pass began: later rows are younger than any grace period);
-- `until_id` is NULL between passes. A row is made on a table's first sweep.
CREATE TABLE gc.sweep (
    kind text PRIMARY KEY CHECK (kind IN ('manifest', 'label', 'image', 'blob')),
    last_id bigint NOT NULL DEFAULT 0,
    until_id bigint,
    pass_started_at timestamptz,
    pass_finished_at timestamptz
);
