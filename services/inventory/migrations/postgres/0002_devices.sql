-- Devices, their labels (a table of their own so selectors are plain SQL on
-- both back-ends) and one endpoint per protocol. `secrets` holds only
-- ciphertexts.
CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    serial       TEXT NOT NULL DEFAULT '',
    manufacturer TEXT NOT NULL DEFAULT '',
    model        TEXT NOT NULL DEFAULT '',
    firmware     TEXT NOT NULL DEFAULT '',
    notes        TEXT NOT NULL DEFAULT '',
    address      TEXT NOT NULL DEFAULT '',
    create_time  BIGINT NOT NULL,
    update_time  BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE device_labels (
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (device_id, key)
);
CREATE INDEX device_labels_kv ON device_labels (tenant_id, key, value);

CREATE TABLE endpoints (
    tenant_id   TEXT NOT NULL,
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    protocol    TEXT NOT NULL,
    config      TEXT NOT NULL,
    secrets     TEXT NOT NULL,
    update_time BIGINT NOT NULL,
    PRIMARY KEY (device_id, protocol)
);

ALTER TABLE devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE devices FORCE ROW LEVEL SECURITY;
ALTER TABLE device_labels ENABLE ROW LEVEL SECURITY;
ALTER TABLE device_labels FORCE ROW LEVEL SECURITY;
ALTER TABLE endpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE endpoints FORCE ROW LEVEL SECURITY;

CREATE POLICY device_tenant ON devices
    USING (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY device_label_tenant ON device_labels
    USING (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY endpoint_tenant ON endpoints
    USING (tenant_id = current_setting('app.tenant_id', true));
-- Re-encrypting every secret under a new key is platform work.
CREATE POLICY endpoint_platform ON endpoints
    USING (current_setting('app.platform', true) = 'on');

GRANT SELECT, INSERT, UPDATE, DELETE ON devices, device_labels, endpoints TO rdm_app;
