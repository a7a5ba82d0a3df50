-- A tenant's own data models (the standard one is compiled in): the XML
-- document each came from, parsed again when the catalog starts.
CREATE TABLE data_models (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
