-- Wake the relay as soon as removal events are committed. NOTIFY only wakes:
-- the relay also polls, and polling is what guarantees progress. One
-- notification per statement (and PostgreSQL folds identical notifications
-- of one transaction into one), delivered at commit.
CREATE FUNCTION gc.outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gc_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify
AFTER INSERT ON gc.outbox
FOR EACH STATEMENT EXECUTE FUNCTION gc.outbox_notify();
