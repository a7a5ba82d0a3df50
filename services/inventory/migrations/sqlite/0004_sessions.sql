-- Sign-in sessions: each login is one, with a rotating refresh token (stored
-- as its SHA-256). Access tokens name their session (`sid`); revoking a
-- session (logout, or a change to its user or tenant) ends every token of
-- it. Rows outlive their user and tenant: a revoked session is what the
-- verifiers are told to refuse.
CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    refresh_hash TEXT NOT NULL UNIQUE,
    create_time  INTEGER NOT NULL,
    expire_time  INTEGER NOT NULL,
    revoke_time  INTEGER
);
CREATE INDEX sessions_user ON sessions (tenant_id, user_id);
CREATE INDEX sessions_revoked ON sessions (revoke_time);
