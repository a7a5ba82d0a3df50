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
ALTER TABLE usp_auto_registrations ENABLE ROW LEVEL SECURITY;
ALTER TABLE usp_auto_registrations FORCE ROW LEVEL SECURITY;
CREATE POLICY usp_auto_registrations_tenant ON usp_auto_registrations
    USING (tenant_id = current_setting('app.tenant_id', true));
-- The platform scope finds the tenant of an onboarding secret.
CREATE POLICY usp_auto_registrations_platform ON usp_auto_registrations
    FOR SELECT USING (current_setting('app.platform', true) = 'on');
GRANT SELECT, INSERT, UPDATE, DELETE ON usp_auto_registrations TO rdm_app;
