-- The audit trail (append-only for the app role on PostgreSQL; old rows go
-- through rdm_audit_prune, which only deletes what retention allows).
CREATE TABLE audit_events (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    time       BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    client_ip  TEXT NOT NULL,
    method     TEXT NOT NULL,
    target     TEXT NOT NULL,
    summary    TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    request_id TEXT NOT NULL
);
CREATE INDEX audit_tenant_time ON audit_events (tenant_id, time, id);
