-- Which of `shares` claims running side by side takes a candidate (the engine's
-- fixpoint claims a kind several times at once in a registry-wide collection):
-- a repository's manifests and legacy images all in one share, since they hold
-- one another (lists and children, subjects and referrers, parent images) and
-- their deletes in different transactions deadlock on each other's foreign-key
-- checks; any other object by its id, so that a blob or label queued by many
-- manifests is held by one claim only, never waited for by another. The
-- remainder is made positive: any id a row may hold falls in some share.
CREATE FUNCTION gc.candidate_share(
    kind text, object_id bigint, repository_id bigint, shares integer
) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN abs(
    CASE WHEN kind IN ('manifest', 'image') THEN coalesce(repository_id, object_id)
         ELSE object_id END
    % shares
)::integer;
