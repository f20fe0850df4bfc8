-- Refinements of the gc schema found while measuring and relaying.

-- A registry-wide collection claims candidates of a kind in id order,
-- whatever their repository.
CREATE INDEX candidate_claim_any_idx ON gc.candidate (kind, id);

-- json, not jsonb: the relay publishes the very text the engine wrote
-- (jsonb would re-serialise it, reordering keys).
ALTER TABLE gc.outbox ALTER COLUMN event TYPE json USING event::json;

-- The expiry rule of CONTRACT §2.1/§3 in one place: a tag is due once its
-- lifetime ended at least its namespace's time-machine window ago, unless it
-- is immutable. A plain SQL expression, inlined by the planner.
CREATE FUNCTION gc.tag_is_due(
    lifetime_end_ms bigint, immutable boolean, window_s bigint, now_ms bigint
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN lifetime_end_ms IS NOT NULL
    AND NOT immutable
    AND lifetime_end_ms + window_s * 1000 <= now_ms;
