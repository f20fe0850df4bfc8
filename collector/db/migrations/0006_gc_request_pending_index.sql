-- Claims walk the pending requests in id order. With the (due_at_ms, id)
-- index, a table not analyzed yet (a burst of requests on a fresh service)
-- got a generic plan that re-read every pending row for every pending row:
-- 370 ms per claim at a thousand requests. Pending rows by id keep the outer
-- scan in claim order and bound the inner one, whatever the statistics say.
DROP INDEX gc.request_due_idx;
CREATE INDEX request_pending_idx ON gc.request (id) WHERE finished_at IS NULL;
