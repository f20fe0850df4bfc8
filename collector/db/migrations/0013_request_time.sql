-- Time to reclaim: how long after a request (its CloudEvents `time`) its
-- deletions committed and its removal events were published. Both are
-- measured once per request, from what is durable here.
--
-- gc.request.requested_at: the request's CloudEvents `time`, as the intake
--   read it (any RFC 3339 time: timestamptz spans far more than a record can
--   name). Requests admitted before this migration keep NULL: their time is
--   unknown, and they are measured by neither histogram.
-- gc.request.reclaimed_at: when a worker finished the request with removals
--   committed under its id (its outbox rows exist); NULL otherwise. Set in
--   the claim's transaction, after every engine transaction of the request
--   committed: its removal events are all in the outbox by then.
-- gc.request.events_published_at: when the last of those events was
--   published. Set once, by the relay, in the transaction in which it finds
--   none of them waiting any more; setting it is what observes
--   registry_gc_request_published_seconds (see outbox.sql, observe_published).
ALTER TABLE gc.request
    ADD COLUMN requested_at timestamptz,
    ADD COLUMN reclaimed_at timestamptz,
    ADD COLUMN events_published_at timestamptz;

-- The requests the relay looks at on every claim: finished with removals, not
-- yet seen published. A handful at any time.
CREATE INDEX request_unpublished_idx ON gc.request (id)
    WHERE reclaimed_at IS NOT NULL AND events_published_at IS NULL;

-- Each event names the request (or command run) that caused it: its
-- `causationid`, as a column the relay and the workers find a request's
-- events by. NULL for events written before this migration.
ALTER TABLE gc.outbox ADD COLUMN causation_id text;
-- (causation_id, published_at): whether any of a request's events still waits
-- (published_at IS NULL), and when its last one was published (the greatest).
CREATE INDEX outbox_causation_idx ON gc.outbox (causation_id, published_at);

-- Seconds from `since` to `until`; 0 when `since` is later (a request time
-- ahead of our clock: clock skew, or an absurd time), never negative; NULL
-- when either is unknown (STRICT: greatest() alone would make that 0).
CREATE FUNCTION gc.elapsed_s(since timestamptz, until timestamptz) RETURNS float8
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT greatest(extract(epoch FROM until) - extract(epoch FROM since), 0)::float8
$$;

-- When a request that finishes now had its removals committed: now, if any
-- committed under its id (in this claim or in an earlier one cut short: its
-- events are in the outbox); NULL when none did.
CREATE FUNCTION gc.reclaimed_at(request_event_id text) RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$
    SELECT clock_timestamp()
    WHERE EXISTS (SELECT FROM gc.outbox WHERE causation_id = request_event_id)
$$;
