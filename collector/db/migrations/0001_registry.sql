-- The registry's metadata, modelled on Quay's (CONTRACT §3). The registry owns
-- these tables in production; this migration creates them for development,
-- tests and demos. Every link is a real foreign key: the KEY SHARE lock a
-- concurrent insert takes on the referenced row is what keeps a push from
-- linking an object the collector is deleting. Every foreign-key column is
-- indexed, or each deleted row would scan the referencing table.
-- IF NOT EXISTS throughout: on a registry that already has these tables, the
-- migration only adds the indexes garbage collection needs. That is why the
-- unique keys that lead with a foreign-key column are indexes of their own
-- rather than table constraints: they are the index of that column.

CREATE TABLE IF NOT EXISTS namespace (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    removed_tag_expiration_s bigint NOT NULL DEFAULT 1209600
);

CREATE TABLE IF NOT EXISTS repository (
    id bigserial PRIMARY KEY,
    namespace_id bigint NOT NULL REFERENCES namespace (id),
    name text NOT NULL,
    kind text NOT NULL DEFAULT 'image' CHECK (kind IN ('image', 'application')),
    state text NOT NULL DEFAULT 'normal'
        CHECK (state IN ('normal', 'read_only', 'marked_for_deletion'))
);
CREATE UNIQUE INDEX IF NOT EXISTS repository_namespace_name_key ON repository (namespace_id, name);
CREATE INDEX IF NOT EXISTS repository_marked_idx ON repository (id) WHERE state = 'marked_for_deletion';

CREATE TABLE IF NOT EXISTS blob (
    id bigserial PRIMARY KEY,
    digest text NOT NULL UNIQUE,
    size bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS blob_placement (
    id bigserial PRIMARY KEY,
    blob_id bigint NOT NULL REFERENCES blob (id),
    location text NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS blob_placement_blob_location_key ON blob_placement (blob_id, location);

CREATE TABLE IF NOT EXISTS uploaded_blob (
    id bigserial PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repository (id),
    blob_id bigint NOT NULL REFERENCES blob (id),
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS uploaded_blob_repository_idx ON uploaded_blob (repository_id, expires_at);
CREATE INDEX IF NOT EXISTS uploaded_blob_blob_idx ON uploaded_blob (blob_id, expires_at);

CREATE TABLE IF NOT EXISTS manifest (
    id bigserial PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repository (id),
    digest text NOT NULL,
    media_type text NOT NULL,
    manifest_bytes text NOT NULL DEFAULT '',
    subject_digest text
);
CREATE UNIQUE INDEX IF NOT EXISTS manifest_repository_digest_key ON manifest (repository_id, digest);
CREATE INDEX IF NOT EXISTS manifest_subject_idx ON manifest (repository_id, subject_digest)
    WHERE subject_digest IS NOT NULL;

CREATE TABLE IF NOT EXISTS manifest_blob (
    id bigserial PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repository (id),
    manifest_id bigint NOT NULL REFERENCES manifest (id),
    blob_id bigint NOT NULL REFERENCES blob (id)
);
CREATE UNIQUE INDEX IF NOT EXISTS manifest_blob_manifest_blob_key ON manifest_blob (manifest_id, blob_id);
CREATE INDEX IF NOT EXISTS manifest_blob_blob_idx ON manifest_blob (blob_id);
CREATE INDEX IF NOT EXISTS manifest_blob_repository_idx ON manifest_blob (repository_id);

CREATE TABLE IF NOT EXISTS manifest_child (
    id bigserial PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repository (id),
    manifest_id bigint NOT NULL REFERENCES manifest (id),
    child_manifest_id bigint NOT NULL REFERENCES manifest (id)
);
CREATE UNIQUE INDEX IF NOT EXISTS manifest_child_manifest_child_key ON manifest_child (manifest_id, child_manifest_id);
CREATE INDEX IF NOT EXISTS manifest_child_child_idx ON manifest_child (child_manifest_id);
CREATE INDEX IF NOT EXISTS manifest_child_repository_idx ON manifest_child (repository_id);

CREATE TABLE IF NOT EXISTS label (
    id bigserial PRIMARY KEY,
    key text NOT NULL,
    value text NOT NULL,
    media_type text NOT NULL DEFAULT 'text/plain',
    source_type text NOT NULL DEFAULT 'manifest'
);

CREATE TABLE IF NOT EXISTS manifest_label (
    id bigserial PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repository (id),
    manifest_id bigint NOT NULL REFERENCES manifest (id),
    label_id bigint NOT NULL REFERENCES label (id)
);
CREATE UNIQUE INDEX IF NOT EXISTS manifest_label_manifest_label_key ON manifest_label (manifest_id, label_id);
CREATE INDEX IF NOT EXISTS manifest_label_label_idx ON manifest_label (label_id);
CREATE INDEX IF NOT EXISTS manifest_label_repository_idx ON manifest_label (repository_id);

CREATE TABLE IF NOT EXISTS tag (
    id bigserial PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repository (id),
    manifest_id bigint NOT NULL REFERENCES manifest (id),
    name text NOT NULL,
    lifetime_start_ms bigint NOT NULL,
    lifetime_end_ms bigint,
    hidden boolean NOT NULL DEFAULT false,
    reversion boolean NOT NULL DEFAULT false,
    immutable boolean NOT NULL DEFAULT false,
    -- A link is not ownership: removing the target unlinks, it never blocks.
    linked_tag_id bigint REFERENCES tag (id) ON DELETE SET NULL
);
CREATE INDEX IF NOT EXISTS tag_manifest_idx ON tag (manifest_id);
CREATE INDEX IF NOT EXISTS tag_linked_tag_idx ON tag (linked_tag_id) WHERE linked_tag_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tag_expiry_idx ON tag (repository_id, lifetime_end_ms)
    WHERE lifetime_end_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS tag_name_idx ON tag (repository_id, name);
-- One alive tag per name, as in Quay.
CREATE UNIQUE INDEX IF NOT EXISTS tag_alive_name_idx ON tag (repository_id, name) WHERE lifetime_end_ms IS NULL;

CREATE TABLE IF NOT EXISTS image (
    id bigserial PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repository (id),
    docker_image_id text NOT NULL,
    storage_id bigint NOT NULL REFERENCES blob (id),
    parent_id bigint REFERENCES image (id)
);
CREATE UNIQUE INDEX IF NOT EXISTS image_repository_docker_image_key ON image (repository_id, docker_image_id);
CREATE INDEX IF NOT EXISTS image_storage_idx ON image (storage_id);
CREATE INDEX IF NOT EXISTS image_parent_idx ON image (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS derived_image_storage (
    id bigserial PRIMARY KEY,
    source_image_id bigint NOT NULL REFERENCES image (id),
    derivative_id bigint NOT NULL REFERENCES blob (id),
    transformation text NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS derived_image_storage_source_key ON derived_image_storage (source_image_id, transformation);
CREATE INDEX IF NOT EXISTS derived_image_storage_derivative_idx ON derived_image_storage (derivative_id);

CREATE TABLE IF NOT EXISTS manifest_legacy_image (
    id bigserial PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repository (id),
    manifest_id bigint NOT NULL REFERENCES manifest (id),
    image_id bigint NOT NULL REFERENCES image (id)
);
CREATE UNIQUE INDEX IF NOT EXISTS manifest_legacy_image_manifest_key
    ON manifest_legacy_image (manifest_id);
CREATE INDEX IF NOT EXISTS manifest_legacy_image_image_idx ON manifest_legacy_image (image_id);
CREATE INDEX IF NOT EXISTS manifest_legacy_image_repository_idx ON manifest_legacy_image (repository_id);

CREATE TABLE IF NOT EXISTS app_tag (
    id bigserial PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repository (id),
    name text NOT NULL,
    linked_tag_id bigint REFERENCES app_tag (id) ON DELETE SET NULL,
    lifetime_end_ms bigint
);
CREATE INDEX IF NOT EXISTS app_tag_repository_idx ON app_tag (repository_id);
CREATE INDEX IF NOT EXISTS app_tag_linked_tag_idx ON app_tag (linked_tag_id) WHERE linked_tag_id IS NOT NULL;
