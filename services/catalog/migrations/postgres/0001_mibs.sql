-- A tenant's own MIB modules (the standard set is compiled in), and its
-- uploads with what became of them. Row-level security as every tenant
-- table has it (the inventory's first migration creates rdm_app).
CREATE TABLE mib_modules (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    upload_id   TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE mib_uploads (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    -- an encoded rdm.catalog.v1.MibUpload, base64
    report      TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX mib_uploads_tenant ON mib_uploads (tenant_id, id);

ALTER TABLE mib_modules ENABLE ROW LEVEL SECURITY;
ALTER TABLE mib_modules FORCE ROW LEVEL SECURITY;
ALTER TABLE mib_uploads ENABLE ROW LEVEL SECURITY;
ALTER TABLE mib_uploads FORCE ROW LEVEL SECURITY;
CREATE POLICY mib_modules_tenant ON mib_modules
    USING (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY mib_uploads_tenant ON mib_uploads
    USING (tenant_id = current_setting('app.tenant_id', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON mib_modules, mib_uploads TO rdm_app;
