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
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY api_key_tenant ON api_keys
    USING (tenant_id = current_setting('app.tenant_id', true));
-- A key arrives alone: finding it (by id) and listing revoked keys for the
-- verifiers is platform work.
CREATE POLICY api_key_platform ON api_keys
    USING (current_setting('app.platform', true) = 'on');
GRANT SELECT, INSERT, UPDATE, DELETE ON api_keys TO rdm_app;
