-- A tenant's own MIB modules (the standard set is compiled in), and its
-- uploads with what became of them.
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
