-- An event the broker can never take (larger than the producer's largest
-- request: say, a manifest whose media_type column holds megabytes) is set
-- aside with the reason, instead of stopping the relay on every start. It
-- stays in the outbox, never pruned, for an operator to read.
ALTER TABLE gc.outbox ADD COLUMN undeliverable text;

DROP INDEX gc.outbox_pending_idx;
CREATE INDEX outbox_pending_idx ON gc.outbox (id)
    WHERE published_at IS NULL AND undeliverable IS NULL;
