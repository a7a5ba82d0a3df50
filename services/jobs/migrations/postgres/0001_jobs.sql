-- Jobs, what they produced and what happened to them, and the schedules
-- that submit them. Every row names its tenant: requests see their
-- tenant's rows only; the workers (the service on its own) work in the
-- platform scope, across tenants.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id          TEXT NOT NULL,
    method           TEXT NOT NULL,
    side_effects     BIGINT NOT NULL,
    request          TEXT NOT NULL,
    targets          TEXT NOT NULL,
    labels           TEXT NOT NULL,
    status           TEXT NOT NULL,
    priority         BIGINT NOT NULL,
    max_attempts     BIGINT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    timeout_ms       BIGINT NOT NULL,
    concurrency      BIGINT NOT NULL,
    idempotency_key  TEXT,
    schedule_id      TEXT NOT NULL DEFAULT '',
    run_after        BIGINT NOT NULL,
    create_time      BIGINT NOT NULL,
    start_time       BIGINT,
    finish_time      BIGINT,
    lease_owner      TEXT,
    lease_until      BIGINT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    items            BIGINT NOT NULL DEFAULT 0,
    devices_total    BIGINT NOT NULL DEFAULT 0,
    devices_done     BIGINT NOT NULL DEFAULT 0,
    devices_failed   BIGINT NOT NULL DEFAULT 0,
    error_kind       TEXT NOT NULL DEFAULT '',
    error_message    TEXT NOT NULL DEFAULT '',
    last_event       BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_queue ON jobs (priority DESC, run_after, id) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX jobs_tenant ON jobs (tenant_id, id);
CREATE INDEX jobs_finished ON jobs (finish_time) WHERE finish_time IS NOT NULL;

CREATE TABLE job_results (
    job_id        TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq           BIGINT NOT NULL,
    tenant_id     TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    item          TEXT NOT NULL,
    error_kind    TEXT NOT NULL,
    error_message TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE job_events (
    job_id    TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    id        BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    event     BYTEA NOT NULL,
    PRIMARY KEY (job_id, id)
);

CREATE TABLE job_schedules (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    cron          TEXT NOT NULL,
    time_zone     TEXT NOT NULL,
    job           TEXT NOT NULL,
    paused        BIGINT NOT NULL DEFAULT 0,
    missed        TEXT NOT NULL,
    next_fire     BIGINT NOT NULL,
    last_fire     BIGINT,
    last_job_id   TEXT NOT NULL DEFAULT '',
    create_time   BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX job_schedules_due ON job_schedules (next_fire) WHERE paused = 0;

ALTER TABLE jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE jobs FORCE ROW LEVEL SECURITY;
ALTER TABLE job_results ENABLE ROW LEVEL SECURITY;
ALTER TABLE job_results FORCE ROW LEVEL SECURITY;
ALTER TABLE job_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE job_events FORCE ROW LEVEL SECURITY;
ALTER TABLE job_schedules ENABLE ROW LEVEL SECURITY;
ALTER TABLE job_schedules FORCE ROW LEVEL SECURITY;
CREATE POLICY jobs_tenant ON jobs
    USING (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY job_results_tenant ON job_results
    USING (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY job_events_tenant ON job_events
    USING (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY job_schedules_tenant ON job_schedules
    USING (tenant_id = current_setting('app.tenant_id', true));
-- The workers, the schedules' clock and the pruning run for every tenant.
CREATE POLICY jobs_platform ON jobs
    USING (current_setting('app.platform', true) = 'on');
CREATE POLICY job_results_platform ON job_results
    USING (current_setting('app.platform', true) = 'on');
CREATE POLICY job_events_platform ON job_events
    USING (current_setting('app.platform', true) = 'on');
CREATE POLICY job_schedules_platform ON job_schedules
    USING (current_setting('app.platform', true) = 'on');
GRANT SELECT, INSERT, UPDATE, DELETE ON jobs, job_results, job_events, job_schedules TO rdm_app;

-- Every replica hears what it must act on, with no query of its own: 'q'
-- a job is queued, 'c:<id>' a cancel is asked for, 'e:<id>' a job has new
-- events (its watchers read them).
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'queued' AND (TG_OP = 'INSERT' OR OLD.status <> 'queued') THEN
        PERFORM pg_notify('rdm_jobs', 'q');
    END IF;
    IF NEW.cancel_requested = 1 AND (TG_OP = 'INSERT' OR OLD.cancel_requested = 0) THEN
        PERFORM pg_notify('rdm_jobs', 'c:' || NEW.id);
    END IF;
    IF TG_OP = 'INSERT' OR NEW.last_event <> OLD.last_event THEN
        PERFORM pg_notify('rdm_jobs', 'e:' || NEW.id);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_notify();
