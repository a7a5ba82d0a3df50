-- The subscriptions rdm made on tenants' agents (each a
-- Device.LocalAgent.Subscription.{i}. on the agent, under the ID rdm gave
-- it), and the notifications they brought, kept for a while.
CREATE TABLE usp_subscriptions (
    tenant_id      TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    id             TEXT NOT NULL,
    device_id      TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    endpoint_id    TEXT NOT NULL,
    notif_type     TEXT NOT NULL,
    reference_list TEXT NOT NULL,
    notif_retry    BIGINT NOT NULL,
    obj_path       TEXT NOT NULL,
    create_time    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE usp_notifications (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    device_id       TEXT NOT NULL,
    endpoint_id     TEXT NOT NULL,
    msg_id          TEXT NOT NULL,
    receive_time    BIGINT NOT NULL,
    notify          TEXT NOT NULL,
    UNIQUE (tenant_id, endpoint_id, msg_id)
);
CREATE INDEX usp_notifications_time ON usp_notifications (tenant_id, receive_time);
