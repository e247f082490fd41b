-- Tenant LoRA adapters (issue 11): one row per adapter a tenant uploaded. The files live in the adapter store
-- (a folder every vLLM replica can read), content-addressed by `checksum`: two rows with the same bytes share
-- one folder, removed only when no row of any tenant names that checksum any more.
--
-- `name` is the tenant's (unique among its adapters that are not being deleted, so a name is free again as soon
-- as its delete starts); `engine_name` is what vLLM is told: random, opaque (neither tenant nor name in it) and
-- never reused, because vLLM may serve cached prompt blocks of an earlier adapter registered under a name.
-- Every change sends `NOTIFY tenantgate_adapters` (payload: the adapter id) so each gateway replica refreshes
-- its in-memory directory (adapters/directory.py).

CREATE TABLE adapters (
    id             text PRIMARY KEY,                  -- 'adapter-' + 24 lowercase hex
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name           text NOT NULL CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    base_model     text NOT NULL,
    engine_name    text NOT NULL UNIQUE,              -- 'tga-' + 32 hex, random, never reused
    checksum       text NOT NULL CHECK (checksum ~ '^sha256:[0-9a-f]{64}$'),  -- names the stored folder
    bytes          bigint NOT NULL CHECK (bytes > 0),
    rank           integer NOT NULL CHECK (rank > 0),
    target_modules text[] NOT NULL,
    status         text NOT NULL CHECK (status IN ('ready', 'failed', 'deleting')),
    last_error     jsonb,                             -- {"code": ..., "message": ...} when failed
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX adapters_tenant_name_idx ON adapters (tenant_id, name) WHERE status <> 'deleting';
CREATE INDEX adapters_tenant_created_idx ON adapters (tenant_id, created_at, id);
CREATE INDEX adapters_checksum_idx ON adapters (checksum);

-- The second wall, as on the retrieval tables (migration 0004): a tenant-scoped transaction (role
-- tenantgate_tenant) sees only its tenant's adapters. Unlike there, the owner is not subject to a policy (no
-- FORCE): the directory every gateway replica keeps loads all tenants' ready adapters, and whether a checksum is
-- still used is a question about every tenant's rows (adapter_checksum_users below).
GRANT SELECT, INSERT, UPDATE, DELETE ON adapters TO tenantgate_tenant;
ALTER TABLE adapters ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON adapters TO tenantgate_tenant
    USING (tenant_id = nullif(current_setting('tenantgate.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = nullif(current_setting('tenantgate.tenant_id', true), '')::uuid);

-- How many rows, of any tenant, name this checksum: run inside a tenant transaction (so as the owner, seeing
-- every row) after that transaction took the checksum's advisory lock. It answers a count only, never a row.
CREATE FUNCTION adapter_checksum_users(wanted text) RETURNS bigint
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT count(*) FROM adapters WHERE checksum = wanted $$;
REVOKE ALL ON FUNCTION adapter_checksum_users(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION adapter_checksum_users(text) TO tenantgate_tenant;

-- Platform secrets: one row. cache_salt_key is the HMAC key each tenant's vLLM `cache_salt` is derived from
-- (gateway/services/salts.py): 32 bytes from gen_random_uuid(), which draws from a strong random source
-- (random() and clock_timestamp() are guessable). Never sent anywhere.
CREATE TABLE platform_secrets (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    cache_salt_key bytea NOT NULL CHECK (length(cache_salt_key) = 32)
);
INSERT INTO platform_secrets (cache_salt_key)
    VALUES (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
