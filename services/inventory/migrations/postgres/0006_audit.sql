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
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_tenant ON audit_events
    USING (tenant_id = current_setting('app.tenant_id', true));
-- Only the prune function (run as the owner) deletes; FORCE applies RLS to
-- the owner too.
CREATE POLICY audit_prune ON audit_events FOR DELETE
    USING (current_user <> 'rdm_app');
-- Insert and read only: no row can be changed or removed by the app.
GRANT SELECT, INSERT ON audit_events TO rdm_app;
-- Retention: deletes rows older than the cutoff, as the owner, and nothing else.
CREATE FUNCTION rdm_audit_prune(cutoff BIGINT) RETURNS BIGINT
LANGUAGE sql SECURITY DEFINER SET search_path = public AS $$
    WITH gone AS (DELETE FROM audit_events WHERE time < cutoff RETURNING 1)
    SELECT count(*) FROM gone;
$$;
REVOKE ALL ON FUNCTION rdm_audit_prune(BIGINT) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rdm_audit_prune(BIGINT) TO rdm_app;
