//! API keys for automation. A key (`rdm_<id>.<secret>`) is stored as the
//! SHA-256 of its secret: it has 256 bits of entropy, so a fast hash is as
//! safe as a slow one and costs a stranger's guess nothing to check. The
//! gateway and the services exchange a key for a short-lived access token
//! (`ExchangeApiKey`) whose session is `key:<id>`, so revoking a key reaches
//! every verifier the way a logout does.
use crate::{Inventory, err, reply, targets::normalize_cidrs};
use ipnet::IpNet;
use rdm_kit::{
    Error, Principal, Result, Role,
    auth::Claims,
    db::{Scope, now_millis, timestamp},
};
use rdm_proto::inventory::{self as pb, api_key_service_server::ApiKeyService};
use sha2::{Digest, Sha256};
use sqlx::FromRow;
use tonic::{Request, Response, Status};

/// The session id of a key's access tokens (revoked with the key).
pub(crate) fn key_session(id: &str) -> String {
    format!("key:{id}")
}

#[derive(FromRow)]
struct KeyRow {
    id: String,
    tenant_id: String,
    name: String,
    role: String,
    secret_hash: String,
    created_by: String,
    create_time: i64,
    expire_time: i64,
    allowed_cidrs: String,
    last_used_time: i64,
    revoke_time: i64,
}

const KEY_COLUMNS: &str = "id, tenant_id, name, role, secret_hash, created_by, create_time, \
                           expire_time, allowed_cidrs, last_used_time, revoke_time";

fn when(ms: i64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| timestamp(ms))
}

fn key_pb(row: KeyRow) -> pb::ApiKey {
    pb::ApiKey {
        id: row.id,
        name: row.name,
        role: row.role,
        created_by: row.created_by,
        create_time: when(row.create_time),
        expire_time: when(row.expire_time),
        allowed_cidrs: row
            .allowed_cidrs
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        last_used_time: when(row.last_used_time),
        revoke_time: when(row.revoke_time),
    }
}

fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn invalid_key() -> Error {
    Error::unauthenticated("invalid API key: unknown, revoked, expired or not allowed from here")
}

impl Inventory {
    async fn create_key(
        &self,
        p: &Principal,
        r: &pb::CreateApiKeyRequest,
    ) -> Result<pb::CreateApiKeyResponse> {
        let name = r.name.trim();
        if name.is_empty() || name.chars().count() > 100 || !rdm_kit::text::is_plain(name) {
            return Err(Error::invalid(
                "name",
                "name must be 1 to 100 printable characters",
            ));
        }
        let role: Role = r
            .role
            .parse()
            .map_err(|e: Error| e.with_meta("field", "role"))?;
        if role == Role::PlatformAdmin {
            return Err(Error::invalid(
                "role",
                "API keys are viewer, operator or admin",
            ));
        }
        if !p.has_role(role) {
            return Err(Error::permission_denied(format!(
                "you cannot create a key with the {} role",
                role.as_str()
            )));
        }
        let now = now_millis();
        let expire_time = match &r.expire_time {
            Some(t) => {
                let ms = t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000);
                if ms <= now {
                    return Err(Error::invalid("expire_time", "expire_time is in the past"));
                }
                ms
            }
            None => 0,
        };
        let cidrs =
            normalize_cidrs(&r.allowed_cidrs).map_err(|e| e.with_meta("field", "allowed_cidrs"))?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let secret = {
            use base64::Engine;
            use rand::RngCore;
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        };
        let mut tx = self.db().begin_write(Scope::of(p)).await?;
        let row: KeyRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "insert into api_keys (id, tenant_id, name, role, secret_hash, created_by, create_time, \
             expire_time, allowed_cidrs) values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning {KEY_COLUMNS}"
        )))
        .bind(&id)
        .bind(&p.tenant_id)
        .bind(name)
        .bind(role.as_str())
        .bind(secret_hash(&secret))
        .bind(&p.user_id)
        .bind(now)
        .bind(expire_time)
        .bind(&cidrs)
        .fetch_one(tx.conn())
        .await?;
        tx.commit().await?;
        tracing::info!(tenant_id = %p.tenant_id, key_id = %id, role = role.as_str(), by = %p.user_id, "api key created");
        Ok(pb::CreateApiKeyResponse {
            api_key: Some(key_pb(row)),
            secret: format!("rdm_{id}.{secret}"),
        })
    }

    async fn list_keys(&self, p: &Principal) -> Result<pb::ListApiKeysResponse> {
        let mut tx = self.db().begin(Scope::of(p)).await?;
        let rows: Vec<KeyRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {KEY_COLUMNS} from api_keys where tenant_id = $1 order by create_time desc, id limit 1000"
        )))
        .bind(&p.tenant_id)
        .fetch_all(tx.conn())
        .await?;
        Ok(pb::ListApiKeysResponse {
            api_keys: rows.into_iter().map(key_pb).collect(),
        })
    }

    async fn revoke_key(&self, p: &Principal, id: &str) -> Result<()> {
        let mut tx = self.db().begin_write(Scope::of(p)).await?;
        let done = sqlx::query(
            "update api_keys set revoke_time = $3 where tenant_id = $1 and id = $2 and revoke_time = 0",
        )
        .bind(&p.tenant_id)
        .bind(id)
        .bind(now_millis())
        .execute(tx.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!(
                "API key {id} not found (or already revoked)"
            )));
        }
        tx.commit().await?;
        self.publish(&[key_session(id)]);
        tracing::info!(tenant_id = %p.tenant_id, key_id = %id, by = %p.user_id, "api key revoked");
        Ok(())
    }

    /// An access token for a valid key used from `client`.
    pub(crate) async fn exchange_key(
        &self,
        key: &str,
        client: &str,
    ) -> Result<pb::ExchangeApiKeyResponse> {
        let (id, secret) = key
            .strip_prefix("rdm_")
            .and_then(|k| k.split_once('.'))
            .filter(|(id, s)| id.len() == 32 && !s.is_empty() && s.len() <= 64)
            .ok_or_else(invalid_key)?;
        let now = now_millis();
        let mut tx = self.db().begin_write(Scope::Platform).await?;
        let row: KeyRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {KEY_COLUMNS} from api_keys where id = $1"
        )))
        .bind(id)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(invalid_key)?;
        let allowed: Vec<IpNet> = rdm_kit::address::parse_allowed(&row.allowed_cidrs);
        let from_allowed = allowed.is_empty()
            || client
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| allowed.iter().any(|n| n.contains(&ip)));
        let valid = row.secret_hash == secret_hash(secret)
            && row.revoke_time == 0
            && (row.expire_time == 0 || row.expire_time > now)
            && from_allowed;
        if !valid {
            return Err(invalid_key());
        }
        sqlx::query("update api_keys set last_used_time = $2 where id = $1")
            .bind(id)
            .bind(now)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        let now_s = (now / 1000) as u64;
        let mut exp = now_s + self.config.token_ttl.as_secs();
        if row.expire_time > 0 {
            exp = exp.min((row.expire_time / 1000) as u64);
        }
        let claims = Claims {
            sub: key_session(&row.id),
            tid: row.tenant_id,
            roles: vec![row.role],
            iat: now_s,
            exp,
            iss: self.config.policy.issuer.clone(),
            aud: self.config.policy.audience.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            sid: key_session(&row.id),
        };
        Ok(pb::ExchangeApiKeyResponse {
            access_token: self.config.signing_key.sign(&claims)?,
            expires_in: exp.saturating_sub(now_s).try_into().unwrap_or(u32::MAX),
        })
    }

    /// Revokes every live key of a tenant being deleted, in `tx`; publish
    /// the result once `tx` has committed.
    pub(crate) async fn revoke_tenant_keys(
        &self,
        tx: &mut rdm_kit::db::TenantTx,
        tenant_id: &str,
    ) -> Result<Vec<String>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "update api_keys set revoke_time = $2 where tenant_id = $1 and revoke_time = 0 returning id",
        )
        .bind(tenant_id)
        .bind(now_millis())
        .fetch_all(tx.conn())
        .await?;
        Ok(ids.into_iter().map(|(id,)| key_session(&id)).collect())
    }

    /// Keys revoked after `since_ms`, as sessions for the verifiers.
    pub(crate) async fn revoked_keys_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>> {
        let mut tx = self.db().begin(Scope::Platform).await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "select id, revoke_time from api_keys where revoke_time > $1 order by revoke_time limit 10000",
        )
        .bind(since_ms.max(1))
        .fetch_all(tx.conn())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, at)| (key_session(&id), at))
            .collect())
    }
}

#[tonic::async_trait]
impl ApiKeyService for Inventory {
    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        reply(self.create_key(p, req.get_ref()).await)
    }

    async fn list_api_keys(
        &self,
        req: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        reply(self.list_keys(p).await)
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let id = &req.get_ref().api_key_id;
        reply(
            self.revoke_key(p, id)
                .await
                .map(|()| pb::RevokeApiKeyResponse {}),
        )
    }
}
