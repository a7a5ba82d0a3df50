-- rdm's own ACS: the CPEs that call it, their cached parameters, the tasks
-- queued for them, the sessions in progress (any replica may take a
-- session's next request), the files it serves and the one-time download
-- tokens. Every row names its tenant; row-level security filters again.
CREATE TABLE cwmp_devices (
    tenant_id      TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    device_id      TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    acs_id         TEXT NOT NULL,
    manufacturer   TEXT NOT NULL,
    oui            TEXT NOT NULL,
    product_class  TEXT NOT NULL,
    serial_number  TEXT NOT NULL,
    -- Device. (TR-181) or InternetGatewayDevice. (TR-098)
    root           TEXT NOT NULL,
    cr_url         TEXT NOT NULL,
    -- rdm has set its connection request credentials and inform interval.
    bootstrapped   BIGINT NOT NULL,
    last_inform    BIGINT NOT NULL,
    last_events    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, device_id)
);

CREATE TABLE cwmp_parameters (
    tenant_id   TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    -- Objects end in '.'.
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    xsd_type    TEXT NOT NULL,
    -- 1 writable, 0 not, -1 not known yet.
    writable    BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, device_id, name),
    FOREIGN KEY (tenant_id, device_id) REFERENCES cwmp_devices ON DELETE CASCADE
);

CREATE TABLE cwmp_tasks (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL,
    -- The task as JSON ({"name": "getParameterValues", ...}).
    task        TEXT NOT NULL,
    -- QUEUED, RUNNING, DONE, FAULTED
    status      TEXT NOT NULL,
    -- Which RPC of the task is next (refreshObject takes two).
    step        BIGINT NOT NULL,
    session_id  TEXT NOT NULL,
    fault       TEXT NOT NULL,
    transfer    TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX cwmp_tasks_device ON cwmp_tasks (tenant_id, device_id, status, create_time);

CREATE TABLE cwmp_sessions (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    device_id   TEXT NOT NULL,
    ns          TEXT NOT NULL,
    -- The task whose RPC the CPE has, '' when none.
    task_id     TEXT NOT NULL,
    expire_time BIGINT NOT NULL
);

CREATE TABLE cwmp_files (
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    size         BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    -- Where it is, under the service's file directory.
    path         TEXT NOT NULL,
    create_time  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE cwmp_downloads (
    -- SHA-256 of the token in the URL.
    token_hash  TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    file_name   TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    used        BIGINT NOT NULL,
    expire_time BIGINT NOT NULL
);
