-- name: lock_digest
-- Serialise with a registry finalizing an upload of the same digest (DESIGN
-- §3.7): a transaction-level advisory lock on the digest's 64-bit hash,
-- released at commit or rollback. Waits while another transaction holds it.
-- $1 text digest
SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))

-- name: blob_exists
-- Whether a blob row with this digest exists (again): pushed since its
-- removal. Run as its own statement after lock_digest, so that it sees what
-- committed while the lock was awaited.
-- $1 text digest
SELECT EXISTS (SELECT 1 FROM blob WHERE digest = $1::text)

-- name: record_deletion
-- Remember that a deleter deletes these bytes: committed before they go.
-- $1 text digest
INSERT INTO gc.blob_deletion (digest) VALUES ($1::text)
ON CONFLICT (digest) DO UPDATE SET deleted_at = now()

-- name: forget_deletion
-- Undo record_deletion when there were no bytes to delete after all.
-- $1 text digest
DELETE FROM gc.blob_deletion WHERE digest = $1::text

-- name: was_deleted
-- Whether a deleter deleted these bytes within the retention.
-- $1 text digest
SELECT EXISTS (SELECT 1 FROM gc.blob_deletion WHERE digest = $1::text)

-- name: prune_deletions
-- Forget deletions older than the retention; returns how many went.
-- $1 interval retention
WITH pruned AS (
    DELETE FROM gc.blob_deletion WHERE deleted_at < now() - $1::interval RETURNING 1
)
SELECT count(*) FROM pruned

-- name: ping
-- Whether the database answers (the deleter's readiness while it has nothing to delete).
-- No parameters.
SELECT 1
