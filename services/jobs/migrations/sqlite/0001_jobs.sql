-- Jobs, what they produced and what happened to them, and the schedules
-- that submit them. Every row names its tenant: requests see their
-- tenant's rows only; the workers (the service on its own) work in the
-- platform scope, across tenants.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id          TEXT NOT NULL,
    method           TEXT NOT NULL,
    side_effects     INTEGER NOT NULL,
    request          TEXT NOT NULL,
    targets          TEXT NOT NULL,
    labels           TEXT NOT NULL,
    status           TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    timeout_ms       INTEGER NOT NULL,
    concurrency      INTEGER NOT NULL,
    idempotency_key  TEXT,
    schedule_id      TEXT NOT NULL DEFAULT '',
    run_after        INTEGER NOT NULL,
    create_time      INTEGER NOT NULL,
    start_time       INTEGER,
    finish_time      INTEGER,
    lease_owner      TEXT,
    lease_until      INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    items            INTEGER NOT NULL DEFAULT 0,
    devices_total    INTEGER NOT NULL DEFAULT 0,
    devices_done     INTEGER NOT NULL DEFAULT 0,
    devices_failed   INTEGER NOT NULL DEFAULT 0,
    error_kind       TEXT NOT NULL DEFAULT '',
    error_message    TEXT NOT NULL DEFAULT '',
    last_event       INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_queue ON jobs (priority DESC, run_after, id) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX jobs_tenant ON jobs (tenant_id, id);
CREATE INDEX jobs_finished ON jobs (finish_time) WHERE finish_time IS NOT NULL;

CREATE TABLE job_results (
    job_id        TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    tenant_id     TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    item          TEXT NOT NULL,
    error_kind    TEXT NOT NULL,
    error_message TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE job_events (
    job_id    TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    id        INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    event     BLOB NOT NULL,
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
    paused        INTEGER NOT NULL DEFAULT 0,
    missed        TEXT NOT NULL,
    next_fire     INTEGER NOT NULL,
    last_fire     INTEGER,
    last_job_id   TEXT NOT NULL DEFAULT '',
    create_time   INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX job_schedules_due ON job_schedules (next_fire) WHERE paused = 0;

