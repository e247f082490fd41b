-- Core schema: tenants, API keys, the platform admin key, usage events and the audit log.
-- Timestamps are timestamptz; ids are uuids made by the application.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    public_id   text NOT NULL UNIQUE,          -- the lookup prefix, shown in listings
    secret_hash bytea NOT NULL,                -- SHA-256 of the whole key; the key itself is never stored
    role        text NOT NULL CHECK (role IN ('admin', 'user')),
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

-- The platform admin key when none is configured: generated on first start, only its hash kept.
CREATE TABLE platform_admin_key (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    secret_hash bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per API request, written in batches off the response path.
CREATE TABLE usage_events (
    id                bigserial PRIMARY KEY,
    created_at        timestamptz NOT NULL,     -- when the request arrived
    request_id        text NOT NULL,
    tenant_id         uuid NOT NULL,
    key_id            uuid NOT NULL,
    endpoint          text NOT NULL,            -- 'chat.completions' | 'completions' | 'embeddings'
    model             text NOT NULL,
    stream            boolean NOT NULL,
    status_code       integer NOT NULL,         -- HTTP status given, 499 when the client went away
    error_code        text,                     -- stable error code when the request failed
    prompt_tokens     integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    latency_ms        double precision NOT NULL,
    ttft_ms           double precision          -- time to first token, streams only
);
CREATE INDEX usage_events_tenant_time_idx ON usage_events (tenant_id, created_at);
CREATE INDEX usage_events_time_idx ON usage_events (created_at);

CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,        -- 'platform-admin', or 'key:<key id>' for a tenant admin
    action     text NOT NULL,        -- e.g. 'tenant.create', 'key.revoke'
    tenant_id  uuid,
    target     text,
    request_id text
);
CREATE INDEX audit_log_tenant_idx ON audit_log (tenant_id, created_at);
