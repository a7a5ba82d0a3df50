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
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    device_id       TEXT NOT NULL,
    endpoint_id     TEXT NOT NULL,
    msg_id          TEXT NOT NULL,
    receive_time    BIGINT NOT NULL,
    notify          TEXT NOT NULL,
    UNIQUE (tenant_id, endpoint_id, msg_id)
);
CREATE INDEX usp_notifications_time ON usp_notifications (tenant_id, receive_time);

ALTER TABLE usp_subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE usp_subscriptions FORCE ROW LEVEL SECURITY;
CREATE POLICY usp_subscriptions_tenant ON usp_subscriptions
    USING (tenant_id = current_setting('app.tenant_id', true));
ALTER TABLE usp_notifications ENABLE ROW LEVEL SECURITY;
ALTER TABLE usp_notifications FORCE ROW LEVEL SECURITY;
CREATE POLICY usp_notifications_tenant ON usp_notifications
    USING (tenant_id = current_setting('app.tenant_id', true));
-- The platform scope prunes every tenant's old notifications.
CREATE POLICY usp_notifications_platform ON usp_notifications
    USING (current_setting('app.platform', true) = 'on');
GRANT SELECT, INSERT, UPDATE, DELETE ON usp_subscriptions, usp_notifications TO rdm_app;
