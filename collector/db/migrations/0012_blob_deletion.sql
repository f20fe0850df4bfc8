-- What the blob deleter deleted, kept for the retention: bytes it finds gone
-- that a deleter deleted before (a redelivery after a crash, a second deleter)
-- are told apart from bytes no deleter ever deleted, a sign that the storage
-- root is not the storage (the deleter stops rather than lose the deletions).
CREATE TABLE gc.blob_deletion (
    digest text PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX blob_deletion_deleted_at_idx ON gc.blob_deletion (deleted_at);
