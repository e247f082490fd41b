-- OpenAI's Vector Stores (issue 10): stores, the files attached to them, file batches, and the chunks that
-- search reads (pgvector HNSW for meaning, a GIN full-text index for words). Every row carries tenant_id.
--
-- Row-level security is the second wall behind the application's own `WHERE tenant_id = ...`: every
-- tenant-scoped transaction runs as the role `tenantgate_tenant` (`SET LOCAL ROLE`, see
-- retrieval/tenancy.py), which owns nothing, cannot bypass RLS, and sees only the rows of the tenant named by
-- the transaction-local setting `tenantgate.tenant_id` (none when it is unset). The role connecting to the
-- database (the owner of the tables) keeps unscoped access for maintenance (migrations, the expiry sweep,
-- the job queue), unless it too scopes itself with the setting.

CREATE EXTENSION IF NOT EXISTS vector;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenantgate_tenant') THEN
        CREATE ROLE tenantgate_tenant NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
END
$$;
GRANT tenantgate_tenant TO CURRENT_USER;
GRANT USAGE ON SCHEMA public TO tenantgate_tenant;

CREATE TABLE vector_stores (
    id                 text PRIMARY KEY,                 -- 'vs_' + random url-safe characters
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name               text,
    description        text,
    metadata           jsonb NOT NULL DEFAULT '{}',      -- OpenAI's 16 string pairs
    expires_after_days integer CHECK (expires_after_days BETWEEN 1 AND 365),  -- anchor: last_active_at
    expires_at         timestamptz,                      -- last_active_at + expires_after_days
    last_active_at     timestamptz NOT NULL DEFAULT now(),
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vector_stores_tenant_created_idx ON vector_stores (tenant_id, created_at, id);
CREATE INDEX vector_stores_expires_idx ON vector_stores (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE vector_store_file_batches (
    id              text PRIMARY KEY,                    -- 'vsfb_' + random url-safe characters
    tenant_id       uuid NOT NULL,
    vector_store_id text NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    cancelled_at    timestamptz,                         -- status is derived from its files and this
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vector_store_file_batches_store_idx ON vector_store_file_batches (vector_store_id, created_at);

CREATE TABLE vector_store_files (
    vector_store_id   text NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    file_id           text NOT NULL REFERENCES files (id) ON DELETE CASCADE,  -- deleting the file detaches it
    tenant_id         uuid NOT NULL,
    batch_id          text REFERENCES vector_store_file_batches (id) ON DELETE SET NULL,
    status            text NOT NULL DEFAULT 'in_progress'
                      CHECK (status IN ('in_progress', 'completed', 'cancelled', 'failed')),
    last_error        jsonb,                             -- {"code": ..., "message": ...} when failed
    attributes        jsonb NOT NULL DEFAULT '{}',       -- up to 16 keys, string/number/boolean values
    chunking_strategy jsonb NOT NULL,                    -- as used: {"type": "static", "static": {...}}
    usage_bytes       bigint NOT NULL DEFAULT 0,         -- what its chunks take: text and vectors
    sha256            bytea,                             -- the file's, for embedding the same bytes once
    key_id            uuid,                              -- the key that attached it: ingestion is metered to it
    attempts          integer NOT NULL DEFAULT 0,        -- ingestion attempts started
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vector_store_id, file_id)
);
CREATE INDEX vector_store_files_store_created_idx ON vector_store_files (vector_store_id, created_at, file_id);
CREATE INDEX vector_store_files_file_idx ON vector_store_files (file_id);
CREATE INDEX vector_store_files_batch_idx ON vector_store_files (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX vector_store_files_dedup_idx ON vector_store_files (tenant_id, sha256) WHERE status = 'completed';
CREATE INDEX vector_store_files_pending_idx ON vector_store_files (updated_at) WHERE status = 'in_progress';

CREATE TABLE chunks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    vector_store_id text NOT NULL,
    file_id         text NOT NULL,
    chunk_index     integer NOT NULL CHECK (chunk_index >= 0),   -- position in the file, from 0
    text            text NOT NULL,
    tokens          integer NOT NULL CHECK (tokens > 0),          -- embedding-model tokens, specials excluded
    page            integer,                                      -- PDF page (from 1) where it starts
    heading         text,                                         -- the heading path it sits under
    char_start      integer NOT NULL,                             -- offsets in the extracted text
    char_end        integer NOT NULL,
    attributes      jsonb NOT NULL DEFAULT '{}',                  -- the vector store file's, for filters
    embedding       vector(384) NOT NULL,
    tsv             tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    FOREIGN KEY (vector_store_id, file_id) REFERENCES vector_store_files ON DELETE CASCADE,
    UNIQUE (vector_store_id, file_id, chunk_index)
);
CREATE INDEX chunks_embedding_idx ON chunks USING hnsw (embedding vector_cosine_ops);
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv);
CREATE INDEX chunks_tenant_store_idx ON chunks (tenant_id, vector_store_id);
-- A chunk stays in its row (up to 8 KB: the vector, 1.5 KB, never compressed or moved out; text and tsv
-- compressed first): an exact scan of a small store and the ranking of full-text candidates read no TOAST
-- table (measured on 10k chunks: an exact scan of 5,000 read 31,400 buffers with the vectors moved out,
-- 2,544 with them in the row, 4x faster).
ALTER TABLE chunks ALTER COLUMN embedding SET STORAGE PLAIN;
ALTER TABLE chunks SET (toast_tuple_target = 8160);

-- The second wall, on every tenant table of the retrieval package (files and file_parts too).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['files', 'file_parts', 'vector_stores', 'vector_store_file_batches',
                             'vector_store_files', 'chunks']
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO tenantgate_tenant', t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        -- The tenant role: the rows of the tenant its transaction named, nothing when it named none.
        EXECUTE format($p$
            CREATE POLICY tenant_rows ON %I TO tenantgate_tenant
            USING (tenant_id = nullif(current_setting('tenantgate.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = nullif(current_setting('tenantgate.tenant_id', true), '')::uuid)
        $p$, t);
        -- The owner: everything while unscoped (maintenance), one tenant once it names one.
        EXECUTE format($p$
            CREATE POLICY owner_rows ON %I TO CURRENT_USER
            USING (coalesce(current_setting('tenantgate.tenant_id', true), '') = ''
                   OR tenant_id = current_setting('tenantgate.tenant_id', true)::uuid)
        $p$, t);
    END LOOP;
END
$$;
GRANT USAGE ON SEQUENCE chunks_id_seq TO tenantgate_tenant;
