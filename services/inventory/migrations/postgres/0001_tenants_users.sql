-- Tenants, their users, and failed-login counters, with row-level security.
-- The services connect as rdm_app: no superuser, no BYPASSRLS, so every
-- query on a tenant table sees only what the policies allow.
-- Roles are cluster-wide and other databases may be migrating at the same
-- moment, so the role is touched only when it is missing or wrong.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rdm_app') THEN
        CREATE ROLE rdm_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- created by a concurrent migration of another database
END
$$;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'rdm_app' AND (rolsuper OR rolbypassrls)) THEN
        ALTER ROLE rdm_app NOSUPERUSER NOBYPASSRLS;
    END IF;
END
$$;

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
CREATE INDEX users_tenant ON users (tenant_id, id);

CREATE TABLE login_throttle (
    key          TEXT PRIMARY KEY,
    failures     BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    locked_until BIGINT NOT NULL
);

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;

-- A tenant sees its own row; platform administration sees all; a login
-- transaction sees (read-only) the one tenant whose slug was typed.
CREATE POLICY tenant_own ON tenants
    USING (id = current_setting('app.tenant_id', true));
CREATE POLICY tenant_platform ON tenants
    USING (current_setting('app.platform', true) = 'on');
CREATE POLICY tenant_login ON tenants FOR SELECT
    USING (slug = current_setting('app.login_slug', true));

CREATE POLICY user_tenant ON users
    USING (tenant_id = current_setting('app.tenant_id', true));

GRANT USAGE ON SCHEMA public TO rdm_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, users, login_throttle TO rdm_app;
