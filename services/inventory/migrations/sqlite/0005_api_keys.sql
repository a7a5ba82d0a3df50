-- API keys: a SHA-256 of the secret (a high-entropy key needs no slow hash),
-- the role and limits. Revoked keys stay listed; rows outlive their tenant
-- (revoked with it) so the verifiers learn of them like revoked sessions.
CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    name           TEXT NOT NULL,
    role           TEXT NOT NULL,
    secret_hash    TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    create_time    BIGINT NOT NULL,
    expire_time    BIGINT NOT NULL DEFAULT 0,
    allowed_cidrs  TEXT NOT NULL DEFAULT '',
    last_used_time BIGINT NOT NULL DEFAULT 0,
    revoke_time    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, create_time);
CREATE INDEX api_keys_revoked ON api_keys (revoke_time);
