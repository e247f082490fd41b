-- OpenAI's Files API (issue 10): a tenant's uploaded files, the bytes in Postgres so every gateway replica
-- and every ingestion worker reads the same ones. The content is split in pieces (1 MiB each, the last
-- shorter) so no file needs one huge value in memory. Every row carries tenant_id; every query filters by it.

CREATE TABLE files (
    id          text PRIMARY KEY,              -- 'file-' + random url-safe characters
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    filename    text NOT NULL,
    purpose     text NOT NULL,
    bytes       bigint NOT NULL CHECK (bytes >= 0),
    sha256      bytea,                         -- of the whole content; for deduplicating ingestion later
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- Listing a tenant's files newest or oldest first, paged with `after` (created_at, id).
CREATE INDEX files_tenant_created_idx ON files (tenant_id, created_at, id);
CREATE INDEX files_tenant_sha256_idx ON files (tenant_id, sha256);

CREATE TABLE file_parts (
    file_id     text NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL,
    seq         integer NOT NULL CHECK (seq >= 0),
    data        bytea NOT NULL,
    PRIMARY KEY (file_id, seq)
);
