//! Sign-in sessions. Each login opens one: short-lived access tokens name it
//! (`sid`) and a rotating refresh token renews them. Logout, and any change
//! that takes access away (a user disabled, deleted, demoted or given a new
//! password; a tenant deleted), revokes sessions: this process's verifiers
//! refuse their tokens at once, other processes within a poll of
//! `ListRevokedSessions`.
use crate::{Inventory, store::UserRow};
use base64::Engine;
use rdm_kit::{
    Error, Principal, Result,
    auth::Claims,
    db::{Scope, TenantTx, now_millis},
};
use rdm_proto::inventory as pb;
use sha2::{Digest, Sha256};
use sqlx::Row;

/// How long a token issued for a user a service acts for is valid.
const SERVICE_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// At most this many revoked sessions a call (the rest come next poll).
const REVOKED_PAGE: i64 = 10_000;

fn refresh_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_refresh_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "rdm_rt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn expired_refresh() -> Error {
    Error::unauthenticated("refresh token is invalid, used, expired or signed out: sign in again")
}

impl Inventory {
    /// Opens a session for a user who just proved who they are, in `tx`;
    /// returns the tokens to hand out.
    pub(crate) async fn open_session(
        &self,
        tx: &mut TenantTx,
        user: &UserRow,
    ) -> Result<pb::LoginResponse> {
        let (id, refresh) = (uuid::Uuid::new_v4().to_string(), new_refresh_token());
        let now = now_millis();
        sqlx::query(
            "insert into sessions (id, tenant_id, user_id, refresh_hash, create_time, expire_time) \
             values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(&user.tenant_id)
        .bind(&user.id)
        .bind(refresh_hash(&refresh))
        .bind(now)
        .bind(now + self.config.refresh_ttl.as_millis() as i64)
        .execute(tx.conn())
        .await?;
        self.tokens(&id, user, refresh)
    }

    /// An access token for `user` in session `sid`, with `refresh`.
    fn tokens(&self, sid: &str, user: &UserRow, refresh: String) -> Result<pb::LoginResponse> {
        let ttl = self.config.token_ttl;
        Ok(pb::LoginResponse {
            access_token: self.tokens_for(sid, user, ttl)?,
            token_type: "Bearer".into(),
            expires_in: ttl.as_secs().try_into().unwrap_or(u32::MAX),
            refresh_token: refresh,
            refresh_expires_in: self
                .config
                .refresh_ttl
                .as_secs()
                .try_into()
                .unwrap_or(u32::MAX),
        })
    }

    /// A signed access token for `user` in session `sid`, valid for `ttl`.
    fn tokens_for(&self, sid: &str, user: &UserRow, ttl: std::time::Duration) -> Result<String> {
        let now_s = (now_millis() / 1000) as u64;
        let ttl = ttl.as_secs();
        let claims = Claims {
            sub: user.id.clone(),
            tid: user.tenant_id.clone(),
            roles: user.roles.split_whitespace().map(str::to_owned).collect(),
            iat: now_s,
            exp: now_s + ttl,
            iss: self.config.policy.issuer.clone(),
            aud: self.config.policy.audience.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            sid: sid.to_owned(),
        };
        self.config.signing_key.sign(&claims)
    }

    /// A one-minute token for `p` (a user a service acts for), with the
    /// user's roles as they are now; none for a disabled or deleted user.
    pub(crate) async fn user_token(&self, p: &Principal) -> Result<pb::IssueUserTokenResponse> {
        let mut tx = self
            .db()
            .begin(Scope::Tenant {
                tenant_id: &p.tenant_id,
                user_id: &p.user_id,
            })
            .await?;
        let user = crate::store::user_by_id(&mut tx, &p.tenant_id, &p.user_id).await?;
        let Some(user) = user.filter(|u| u.disabled == 0) else {
            return Err(Error::permission_denied(format!(
                "user {} of tenant {} is disabled or deleted: nothing runs for them",
                p.user_id, p.tenant_id
            )));
        };
        let sid = format!("service-{}", uuid::Uuid::new_v4());
        let token = self.tokens_for(&sid, &user, SERVICE_TOKEN_TTL)?;
        Ok(pb::IssueUserTokenResponse {
            access_token: token,
            expires_in: SERVICE_TOKEN_TTL.as_secs() as u32,
        })
    }

    /// Swaps a refresh token for new tokens; the old refresh token is spent.
    /// The roles are read again: the new token says what the user may do now.
    pub(crate) async fn refresh(&self, token: &str) -> Result<pb::LoginResponse> {
        if token.is_empty() || token.len() > 256 {
            return Err(Error::invalid("refresh_token", "refresh_token is required"));
        }
        let next = new_refresh_token();
        let now = now_millis();
        let mut tx = self.db().begin_write(Scope::Platform).await?;
        let row = sqlx::query(
            "update sessions set refresh_hash = $1 \
             where refresh_hash = $2 and revoke_time is null and expire_time > $3 \
             returning id, tenant_id, user_id",
        )
        .bind(refresh_hash(&next))
        .bind(refresh_hash(token))
        .bind(now)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(expired_refresh)?;
        let (sid, tenant_id, user_id): (String, String, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        tx.enter_tenant(&tenant_id).await?;
        let user = crate::store::user_by_id(&mut tx, &tenant_id, &user_id).await?;
        let Some(user) = user.filter(|u| u.disabled == 0) else {
            return Err(expired_refresh());
        };
        tx.commit().await?;
        self.tokens(&sid, &user, next)
    }

    /// Signs the caller out: their session ends everywhere.
    pub(crate) async fn logout(&self, p: &Principal) -> Result<()> {
        if p.session_id.is_empty() {
            return Ok(());
        }
        let mut tx = self.db().begin_write(Scope::Platform).await?;
        let revoked = self
            .revoke_sessions(
                &mut tx,
                "tenant_id = $1 and id = $2",
                &p.tenant_id,
                &p.session_id,
            )
            .await?;
        tx.commit().await?;
        self.publish(&revoked);
        tracing::info!(tenant_id = %p.tenant_id, user_id = %p.user_id, "logout");
        Ok(())
    }

    /// Revokes every live session of a user (`user_id`), or of a whole
    /// tenant (`user_id` empty), in `tx`. Call [`Inventory::publish`] with
    /// the result once `tx` has committed.
    pub(crate) async fn revoke_user_sessions(
        &self,
        tx: &mut TenantTx,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Vec<String>> {
        let filter = if user_id.is_empty() {
            "tenant_id = $1 and $2 = ''"
        } else {
            "tenant_id = $1 and user_id = $2"
        };
        self.revoke_sessions(tx, filter, tenant_id, user_id).await
    }

    async fn revoke_sessions(
        &self,
        tx: &mut TenantTx,
        filter: &'static str,
        a: &str,
        b: &str,
    ) -> Result<Vec<String>> {
        let sql = format!(
            "update sessions set revoke_time = $3 where {filter} and revoke_time is null returning id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(a)
            .bind(b)
            .bind(now_millis())
            .fetch_all(tx.conn())
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(Error::from))
            .collect()
    }

    /// Until when a session revoked now may still have live access tokens.
    fn revoked_until(&self, revoke_ms: i64) -> u64 {
        (revoke_ms / 1000) as u64 + self.config.token_ttl.as_secs() + 60
    }

    /// Tells this process's verifiers (all of them under `rdm up`) at once.
    pub(crate) fn publish(&self, sessions: &[String]) {
        let until = self.revoked_until(now_millis());
        for sid in sessions {
            self.config.revocations.revoke(sid, until);
        }
    }

    /// Sessions revoked after `since_ms` whose tokens may still be alive.
    pub(crate) async fn revoked_since(
        &self,
        since_ms: i64,
    ) -> Result<pb::ListRevokedSessionsResponse> {
        let now = now_millis();
        let oldest_alive = now - (self.config.token_ttl.as_millis() as i64 + 60_000);
        let mut tx = self.db().begin(Scope::Platform).await?;
        let rows = sqlx::query(
            "select id, revoke_time from sessions where revoke_time > $1 \
             order by revoke_time limit $2",
        )
        .bind(since_ms.max(oldest_alive))
        .bind(REVOKED_PAGE)
        .fetch_all(tx.conn())
        .await?;
        drop(tx);
        let mut revoked = Vec::with_capacity(rows.len());
        for row in &rows {
            revoked.push((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?));
        }
        // A full page: the next poll starts where it ended. Otherwise up to a
        // moment ago: a revocation committing right now carries a time
        // before `now` and must not be skipped next poll.
        let as_of_ms = match revoked.last() {
            Some((_, at)) if revoked.len() as i64 >= REVOKED_PAGE => *at,
            _ => now - 5_000,
        };
        // API keys are sessions too (`key:<id>`).
        revoked.extend(self.revoked_keys_since(since_ms.max(oldest_alive)).await?);
        let sessions = revoked
            .into_iter()
            .map(|(id, at)| pb::RevokedSession {
                session_id: id,
                until: self.revoked_until(at),
            })
            .collect();
        Ok(pb::ListRevokedSessionsResponse { sessions, as_of_ms })
    }

    /// Loads the sessions revoked while this process was down.
    pub(crate) async fn load_revocations(&self) -> Result<()> {
        let reply = self.revoked_since(0).await?;
        for s in reply.sessions {
            self.config.revocations.revoke(&s.session_id, s.until);
        }
        Ok(())
    }
}
