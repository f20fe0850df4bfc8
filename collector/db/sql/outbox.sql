-- name: insert
-- Write removal events in the deleting transaction.
-- $1 uuid[] event ids, $2 text[] types, $3 text[] keys, $4 text[] event JSON (parallel)
INSERT INTO gc.outbox (event_id, event_type, key, event)
SELECT event_id, event_type, key, event::jsonb
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS e (event_id, event_type, key, event)
