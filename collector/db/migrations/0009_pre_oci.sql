-- The ancestor's second tag model (CONTRACT §3.1): pre-OCI tags with lifetimes
-- in seconds pointing at a legacy image, their tag manifests, and the mapping
-- rows that tie them to the OCI model. Registries migrated from that
-- generation hold both models at once. As in 0001: real foreign keys, every
-- foreign-key column indexed (self-references included), IF NOT EXISTS so a
-- registry that has these tables already is adopted and only gains indexes.

CREATE TABLE IF NOT EXISTS repository_tag (
    id bigserial PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repository (id),
    image_id bigint NOT NULL REFERENCES image (id),
    name text NOT NULL,
    lifetime_start_ts bigint NOT NULL,
    lifetime_end_ts bigint,
    hidden boolean NOT NULL DEFAULT false,
    reversion boolean NOT NULL DEFAULT false,
    -- A link is not ownership: removing the target unlinks, it never blocks.
    linked_tag_id bigint REFERENCES repository_tag (id) ON DELETE SET NULL
);
CREATE INDEX IF NOT EXISTS repository_tag_image_idx ON repository_tag (image_id);
CREATE INDEX IF NOT EXISTS repository_tag_linked_tag_idx ON repository_tag (linked_tag_id)
    WHERE linked_tag_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS repository_tag_expiry_idx ON repository_tag (repository_id, lifetime_end_ts)
    WHERE lifetime_end_ts IS NOT NULL;
CREATE INDEX IF NOT EXISTS repository_tag_name_idx ON repository_tag (repository_id, name);

CREATE TABLE IF NOT EXISTS tag_manifest (
    id bigserial PRIMARY KEY,
    tag_id bigint NOT NULL REFERENCES repository_tag (id),
    digest text NOT NULL,
    json_data text NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS tag_manifest_tag_key ON tag_manifest (tag_id);

CREATE TABLE IF NOT EXISTS tag_manifest_to_manifest (
    id bigserial PRIMARY KEY,
    tag_manifest_id bigint NOT NULL REFERENCES tag_manifest (id),
    manifest_id bigint NOT NULL REFERENCES manifest (id),
    broken boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX IF NOT EXISTS tag_manifest_to_manifest_tag_manifest_key
    ON tag_manifest_to_manifest (tag_manifest_id);
CREATE INDEX IF NOT EXISTS tag_manifest_to_manifest_manifest_idx
    ON tag_manifest_to_manifest (manifest_id);

CREATE TABLE IF NOT EXISTS tag_to_repository_tag (
    id bigserial PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repository (id),
    tag_id bigint NOT NULL REFERENCES tag (id),
    repository_tag_id bigint NOT NULL REFERENCES repository_tag (id)
);
CREATE UNIQUE INDEX IF NOT EXISTS tag_to_repository_tag_tag_key ON tag_to_repository_tag (tag_id);
CREATE UNIQUE INDEX IF NOT EXISTS tag_to_repository_tag_repository_tag_key
    ON tag_to_repository_tag (repository_tag_id);
CREATE INDEX IF NOT EXISTS tag_to_repository_tag_repository_idx
    ON tag_to_repository_tag (repository_id);

CREATE TABLE IF NOT EXISTS tag_manifest_label (
    id bigserial PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repository (id),
    annotated_id bigint NOT NULL REFERENCES tag_manifest (id),
    label_id bigint NOT NULL REFERENCES label (id)
);
CREATE INDEX IF NOT EXISTS tag_manifest_label_annotated_idx ON tag_manifest_label (annotated_id);
CREATE INDEX IF NOT EXISTS tag_manifest_label_label_idx ON tag_manifest_label (label_id);
CREATE INDEX IF NOT EXISTS tag_manifest_label_repository_idx ON tag_manifest_label (repository_id);

CREATE TABLE IF NOT EXISTS tag_manifest_label_map (
    id bigserial PRIMARY KEY,
    tag_manifest_id bigint NOT NULL REFERENCES tag_manifest (id),
    manifest_id bigint REFERENCES manifest (id),
    label_id bigint NOT NULL REFERENCES label (id),
    tag_manifest_label_id bigint REFERENCES tag_manifest_label (id),
    manifest_label_id bigint REFERENCES manifest_label (id),
    broken_manifest boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS tag_manifest_label_map_tag_manifest_idx
    ON tag_manifest_label_map (tag_manifest_id);
CREATE INDEX IF NOT EXISTS tag_manifest_label_map_manifest_idx
    ON tag_manifest_label_map (manifest_id) WHERE manifest_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tag_manifest_label_map_label_idx ON tag_manifest_label_map (label_id);
CREATE INDEX IF NOT EXISTS tag_manifest_label_map_tag_manifest_label_idx
    ON tag_manifest_label_map (tag_manifest_label_id) WHERE tag_manifest_label_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tag_manifest_label_map_manifest_label_idx
    ON tag_manifest_label_map (manifest_label_id) WHERE manifest_label_id IS NOT NULL;

-- Requests for pre-OCI tags (legacy-tag-expired): the repository_tag and the
-- lifetime end (seconds) the request names.
ALTER TABLE gc.request
    ADD COLUMN repository_tag_id bigint,
    ADD COLUMN lifetime_end_ts bigint,
    DROP CONSTRAINT request_event_type_check,
    ADD CONSTRAINT request_event_type_check
        CHECK (event_type IN ('tag-expired', 'legacy-tag-expired', 'repo-deleted', 'repo-sweep')),
    ADD CONSTRAINT request_legacy_tag_check
        CHECK (event_type <> 'legacy-tag-expired'
               OR (repository_tag_id IS NOT NULL AND lifetime_end_ts IS NOT NULL));
