-- A tenant's own data models (the standard one is compiled in): the XML
-- document each came from, parsed again when the catalog starts.
CREATE TABLE data_models (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

ALTER TABLE data_models ENABLE ROW LEVEL SECURITY;
ALTER TABLE data_models FORCE ROW LEVEL SECURITY;
CREATE POLICY data_models_tenant ON data_models
    USING (tenant_id = current_setting('app.tenant_id', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON data_models TO rdm_app;
