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
