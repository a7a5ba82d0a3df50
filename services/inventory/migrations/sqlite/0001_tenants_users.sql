-- Tenants, their users, and failed-login counters.
CREATE TABLE tenants (
    id           TEXT PRIMARY KEY,
    slug         TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    create_time  BIGINT NOT NULL,
    update_time  BIGINT NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    username      TEXT NOT NULL,
    display_name  TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    roles         TEXT NOT NULL,
    disabled      BIGINT NOT NULL DEFAULT 0,
    create_time   BIGINT NOT NULL,
    update_time   BIGINT NOT NULL,
    UNIQUE (tenant_id, username)
);

-- Keyed by tenant slug and user name whether or not they exist, so a
-- lock-out says nothing about which users exist.
CREATE TABLE login_throttle (
    key          TEXT PRIMARY KEY,
    failures     BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    locked_until BIGINT NOT NULL
);
