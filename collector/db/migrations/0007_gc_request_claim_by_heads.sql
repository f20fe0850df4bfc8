-- Claims now pick among the heads (oldest due request per repository) found
-- through the due index: about a millisecond per claim with or without
-- statistics, and deferred requests (a tag's two-week window) are never read.
-- The pending-by-id index of 0006 made every claim read every pending row,
-- deferred ones included.
DROP INDEX gc.request_pending_idx;
CREATE INDEX request_due_idx ON gc.request (due_at_ms, id) WHERE finished_at IS NULL;
