-- Who made each subscription: at start every replica reaches the brokers
-- of the subscribed agents as that user, so their notifications are taken
-- before any request is made.
ALTER TABLE usp_subscriptions ADD COLUMN user_id TEXT NOT NULL DEFAULT '';
CREATE POLICY usp_subscriptions_platform ON usp_subscriptions
    FOR SELECT USING (current_setting('app.platform', true) = 'on');
