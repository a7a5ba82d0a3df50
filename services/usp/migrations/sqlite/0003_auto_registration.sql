-- The tenants that register their new agents themselves: the label their
-- devices get, the admin they are created as, and the hash of the secret
-- in the tenant's onboarding topic and path (which name the tenant).
CREATE TABLE usp_auto_registrations (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    label       TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL,
    update_time BIGINT NOT NULL
);
