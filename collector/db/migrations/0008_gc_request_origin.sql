-- Where each request was read (topic, partition, offset), so that a request the
-- worker refuses when its turn comes (a repo-deleted whose repository was
-- unmarked since admission) still reaches the dead-letter topic with its
-- original position (CONTRACT §2.3). Null for requests admitted before.
ALTER TABLE gc.request
    ADD COLUMN record_topic text,
    ADD COLUMN record_partition integer,
    ADD COLUMN record_offset bigint;
