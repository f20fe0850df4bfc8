-- The plan (`collector plan`): what a collection would remove, decided by the
-- collectors' own rules in one read-only snapshot, changing nothing and locking
-- no row. The doomed objects of each kind are kept in temporary tables (the only
-- writes a read-only transaction allows); an object is doomed once every holder
-- of it is (gc.holders, migration 0014), exactly as the engine deletes it once
-- nothing holds it. Kinds: tag, legacy_tag, tag_manifest, upload (the roots),
-- manifest, label, image, blob (what they free).

-- name: create_tables
-- The plan's working tables, made before the snapshot's transaction (a
-- read-only one may fill them, not create them) and emptied at its end.
CREATE TEMP TABLE IF NOT EXISTS plan_scope (
    repository_id bigint PRIMARY KEY,
    purge boolean NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS plan_doomed (
    kind text NOT NULL,
    id bigint NOT NULL,
    repository_id bigint,
    round integer NOT NULL,
    PRIMARY KEY (kind, id)
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS plan_frontier (
    kind text NOT NULL,
    id bigint NOT NULL,
    repository_id bigint,
    PRIMARY KEY (kind, id)
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS plan_kept (
    id bigint PRIMARY KEY,
    protected boolean NOT NULL
) ON COMMIT DELETE ROWS;

-- name: settings
-- The rounds are many short statements whose estimated costs (guesses over
-- tables without statistics) pass the JIT thresholds: compiling each would cost
-- more than running it.
SET LOCAL jit = off

-- name: scope
-- The repositories planned for: of namespace $1 (NULL: any), among ids $2
-- (NULL: all); a marked one is purged when $3.
-- $1 text namespace or NULL, $2 bigint[] repository ids or NULL, $3 bool purge marked
INSERT INTO plan_scope (repository_id, purge)
SELECT r.id, $3 AND gc.repository_is_marked(r.state)
FROM repository r
JOIN namespace n ON n.id = r.namespace_id
WHERE ($1::text IS NULL OR n.name = $1)
  AND ($2::bigint[] IS NULL OR r.id = ANY($2::bigint[]))

-- name: reset
-- Forget an evaluation, keeping the scope (TRUNCATE is not read-only).
DELETE FROM plan_doomed;
DELETE FROM plan_frontier;
DELETE FROM plan_kept;

-- name: roots
-- What goes first (round 0): tags and pre-OCI tags past their window, expired
-- uploads, and everything of a repository being purged.
-- $1 bigint now (ms), $2 timestamptz now
INSERT INTO plan_doomed (kind, id, repository_id, round)
SELECT 'tag', t.id, t.repository_id, 0
FROM gc.due_tags($1) t JOIN plan_scope s ON s.repository_id = t.repository_id
UNION
SELECT 'tag', t.id, t.repository_id, 0
FROM tag t JOIN plan_scope s ON s.repository_id = t.repository_id AND s.purge
UNION
SELECT 'legacy_tag', t.id, t.repository_id, 0
FROM gc.due_legacy_tags($1) t JOIN plan_scope s ON s.repository_id = t.repository_id
UNION
SELECT 'legacy_tag', t.id, t.repository_id, 0
FROM repository_tag t JOIN plan_scope s ON s.repository_id = t.repository_id AND s.purge
UNION
SELECT 'upload', u.id, u.repository_id, 0
FROM gc.expired_uploads($2) u JOIN plan_scope s ON s.repository_id = u.repository_id
UNION
SELECT 'upload', u.id, u.repository_id, 0
FROM uploaded_blob u JOIN plan_scope s ON s.repository_id = u.repository_id AND s.purge

-- name: tag_manifests
-- A tag manifest goes with its pre-OCI tag (CONTRACT §3.1).
INSERT INTO plan_doomed (kind, id, repository_id, round)
SELECT 'tag_manifest', tm.id, d.repository_id, 0
FROM plan_doomed d
JOIN tag_manifest tm ON tm.tag_id = d.id
WHERE d.kind = 'legacy_tag'

-- name: first_frontier
-- What round 1 decides besides what the roots held: the blobs the doomed
-- uploads name, every manifest and legacy image of a purged repository, and the
-- candidates already queued in the scope ($1: registry-wide ones too).
-- $1 bool whole registry
INSERT INTO plan_frontier (kind, id, repository_id)
SELECT kind, id, min(repository_id)
FROM (
    SELECT 'blob' AS kind, u.blob_id AS id, u.repository_id
    FROM plan_doomed d JOIN uploaded_blob u ON u.id = d.id
    WHERE d.kind = 'upload'
    UNION ALL
    SELECT 'manifest', m.id, m.repository_id
    FROM manifest m JOIN plan_scope s ON s.repository_id = m.repository_id AND s.purge
    UNION ALL
    SELECT 'image', i.id, i.repository_id
    FROM image i JOIN plan_scope s ON s.repository_id = i.repository_id AND s.purge
    UNION ALL
    SELECT c.kind, c.object_id, c.repository_id
    FROM gc.candidate c
    WHERE c.repository_id IN (SELECT repository_id FROM plan_scope)
       OR (c.repository_id IS NULL AND $1)
) freed
GROUP BY kind, id

-- name: frontier
-- What the objects doomed in round $2 held and is not doomed yet: the next
-- round decides it. An object freed by several repositories belongs to the
-- first. (OFFSET 0 keeps each look-up a probe by index: a join would scan every
-- holder of the registry each round.)
-- $1 timestamptz now, $2 int round
INSERT INTO plan_frontier (kind, id, repository_id)
SELECT h.kind, h.id, min(d.repository_id)
FROM plan_doomed d
CROSS JOIN LATERAL (
    SELECT h.kind, h.id FROM gc.holders($1) h
    WHERE h.holder_kind = d.kind AND h.holder_id = d.id AND h.id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM plan_doomed x WHERE x.kind = h.kind AND x.id = h.id)
    OFFSET 0
) h
WHERE d.round = $2
GROUP BY h.kind, h.id
ON CONFLICT (kind, id) DO UPDATE
SET repository_id = least(plan_frontier.repository_id, excluded.repository_id)

-- name: decide
-- Round $3: of the frontier, the objects every holder of which is doomed are
-- doomed too (a blob only if collectable: one that is not is kept, and said
-- why). Returns how many were doomed.
-- $1 timestamptz now, $2 text[] protected digests, $3 int round
WITH free AS (
    SELECT f.kind, f.id, f.repository_id
    FROM plan_frontier f
    WHERE NOT EXISTS (
        SELECT 1 FROM gc.holders($1) h
        WHERE h.kind = f.kind AND h.id = f.id
          AND NOT EXISTS (
              SELECT 1 FROM plan_doomed d WHERE d.kind = h.holder_kind AND d.id = h.holder_id
          )
        OFFSET 0  -- a probe of its holders by index (an anti-join would scan them all)
    )
), collectable AS (
    SELECT f.* FROM free f
    WHERE f.kind <> 'blob'
       OR EXISTS (SELECT 1 FROM gc.collectable_blobs($2::text[]) b WHERE b.id = f.id OFFSET 0)
), kept AS (
    INSERT INTO plan_kept (id, protected)
    SELECT b.id, b.digest = ANY($2::text[])
    FROM free f JOIN blob b ON b.id = f.id
    WHERE f.kind = 'blob' AND f.id NOT IN (SELECT c.id FROM collectable c WHERE c.kind = 'blob')
    ON CONFLICT DO NOTHING
), doomed AS (
    INSERT INTO plan_doomed (kind, id, repository_id, round)
    SELECT kind, id, repository_id, $3 FROM collectable
    RETURNING 1
)
SELECT count(*) FROM doomed

-- name: next_frontier
-- The frontier is decided: the next is what this round's doomed held.
DELETE FROM plan_frontier

-- name: purged
-- The purged repositories left empty: none of their manifests or legacy
-- images outlives the collection (their tags, pre-OCI tags and uploads are
-- all doomed roots).
SELECT s.repository_id
FROM plan_scope s
WHERE s.purge
  AND NOT EXISTS (
      SELECT 1 FROM manifest m
      WHERE m.repository_id = s.repository_id
        AND NOT EXISTS (SELECT 1 FROM plan_doomed d WHERE d.kind = 'manifest' AND d.id = m.id)
  )
  AND NOT EXISTS (
      SELECT 1 FROM image i
      WHERE i.repository_id = s.repository_id
        AND NOT EXISTS (SELECT 1 FROM plan_doomed d WHERE d.kind = 'image' AND d.id = i.id)
  )

-- name: totals
-- The doomed objects by kind and repository (blobs and labels: of the first
-- repository whose removal frees them), with the bytes of the blobs.
SELECT d.kind, d.repository_id, count(*) AS objects, coalesce(sum(b.size), 0) AS bytes
FROM plan_doomed d
LEFT JOIN blob b ON d.kind = 'blob' AND b.id = d.id
GROUP BY d.kind, d.repository_id

-- name: largest
-- The $1 largest doomed blobs.
-- $1 int limit
SELECT b.digest, b.size, d.repository_id
FROM plan_doomed d JOIN blob b ON b.id = d.id
WHERE d.kind = 'blob'
ORDER BY b.size DESC NULLS LAST, b.id
LIMIT $1

-- name: oldest_due
-- The root due the longest at $1: a tag, pre-OCI tag or upload (its due time
-- in ms, saturated like every due time).
-- $1 bigint now (ms)
SELECT kind, name, repository_id, due_at_ms
FROM (
    SELECT 'tag' AS kind, w.id, t.name, w.repository_id,
           gc.tag_due_at_ms(w.lifetime_end_ms, w.window_s) AS due_at_ms
    FROM plan_doomed d
    JOIN gc.tag_windows() w ON w.id = d.id
    JOIN tag t ON t.id = d.id
    WHERE d.kind = 'tag'
    UNION ALL
    SELECT 'legacy_tag', w.id, t.name, w.repository_id,
           gc.legacy_tag_due_at_ms(w.lifetime_end_ts, w.window_s)
    FROM plan_doomed d
    JOIN gc.legacy_tag_windows() w ON w.id = d.id
    JOIN repository_tag t ON t.id = d.id
    WHERE d.kind = 'legacy_tag'
    UNION ALL
    SELECT 'upload', u.id, b.digest, u.repository_id,
           least(greatest(floor(extract(epoch FROM u.expires_at) * 1000),
                          -9223372036854775808), 9223372036854775807)::bigint
    FROM plan_doomed d
    JOIN uploaded_blob u ON u.id = d.id
    JOIN blob b ON b.id = u.blob_id
    WHERE d.kind = 'upload'
) roots
WHERE due_at_ms <= $1
ORDER BY due_at_ms, kind, id
LIMIT 1

-- name: immutable
-- Immutable tags of the scope (not purged) that would be past their window at
-- $1 were they not immutable: kept by the rule, listed for the operator.
-- $1 bigint now (ms), $2 int limit on the names returned
WITH kept AS (
    SELECT w.id, w.repository_id, gc.tag_due_at_ms(w.lifetime_end_ms, w.window_s) AS due_at_ms
    FROM gc.tag_windows() w
    JOIN plan_scope s ON s.repository_id = w.repository_id AND NOT s.purge
    WHERE w.immutable AND gc.tag_is_due(w.lifetime_end_ms, false, w.window_s, $1)
)
SELECT (SELECT count(*) FROM kept) AS total, t.name, k.repository_id
FROM kept k JOIN tag t ON t.id = k.id
ORDER BY k.due_at_ms, k.id
LIMIT $2

-- name: kept_blobs
-- The blobs nothing would hold any more that the rule keeps: placeholders (no
-- placement) and protected digests, with their sizes.
SELECT b.digest, b.size, k.protected
FROM plan_kept k JOIN blob b ON b.id = k.id
ORDER BY b.size DESC NULLS LAST, b.id

-- name: repositories
-- Names of repositories $1.
-- $1 bigint[] repository ids
SELECT r.id, n.name AS namespace, r.name
FROM repository r JOIN namespace n ON n.id = r.namespace_id
WHERE r.id = ANY($1::bigint[])
