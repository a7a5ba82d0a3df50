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
