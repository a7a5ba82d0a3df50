//! rdm inventory service: tenants, users, sign-in and token issuing. Devices,
//! endpoints and credentials join it later; everything here is per tenant
//! and every query runs in a `TenantTx`.
mod api_keys;
mod audit;
pub use audit::{DbAudit, record_platform_event};
mod device_store;
mod devices;
mod endpoints;
mod identity;
mod targets;
pub use devices::reseal_secrets;
mod password;
mod sessions;
mod settings;
mod store;
mod throttle;

use futures::Stream;
use rdm_kit::{
    Error, ErrorCode, Principal, Result, Role,
    auth::{SigningKey, TokenPolicy},
    db::{Db, Migrations, Scope, mask_paths, now_millis, page, timestamp},
    server::Guard,
};
use rdm_proto::inventory::{
    self as pb,
    auth_service_server::{AuthService, AuthServiceServer},
    tenant_service_server::{TenantService, TenantServiceServer},
    user_service_server::{UserService, UserServiceServer},
};
use std::{pin::Pin, sync::Arc, time::Duration};
use store::{NewUser, TenantRow, UserRow};
use tonic::{Request, Response, Status};

const DOMAIN: &str = "rdm.inventory";
/// The platform's own tenant; its admins manage every other tenant.
pub const SYSTEM_TENANT: &str = "system";

pub static MIGRATIONS: Migrations = Migrations {
    sqlite: &sqlx::migrate!("./migrations/sqlite"),
    postgres: &sqlx::migrate!("./migrations/postgres"),
};

pub use throttle::LoginThrottle;

pub struct Config {
    pub db: Db,
    pub signing_key: Arc<SigningKey>,
    pub policy: TokenPolicy,
    pub token_ttl: Duration,
    pub throttle: LoginThrottle,
    /// Seals endpoint secrets.
    pub keyring: rdm_kit::secrets::Keyring,
    /// Vets every address a tenant stores or targets.
    pub addresses: rdm_kit::address::AddressPolicy,
    /// How long a refresh token (a sign-in session) lasts.
    pub refresh_ttl: Duration,
    /// Revoked sessions, shared with this process's token verifiers.
    pub revocations: rdm_kit::auth::Revocations,
    /// How long audit events are kept.
    pub audit_retention: Duration,
}

struct Inventory {
    config: Config,
    /// Vetted clients for tenants' identity providers (sign-in through
    /// Mellophone).
    idp: rdm_kit::address::HttpClients,
}

type Shared = Arc<Inventory>;

/// The inventory's gRPC services behind the auth guard, once the sessions
/// revoked while it was down are loaded into `config.revocations`.
pub async fn service(config: Config, guard: Guard) -> Result<axum::Router> {
    audit::prune_every_hour(config.db.clone(), config.audit_retention);
    let idp = rdm_kit::address::HttpClients::new(config.addresses.clone());
    let shared: Shared = Arc::new(Inventory { config, idp });
    shared.load_revocations().await?;
    let routes = tonic::service::Routes::new(AuthServiceServer::from_arc(shared.clone()))
        .add_service(TenantServiceServer::from_arc(shared.clone()))
        .add_service(UserServiceServer::from_arc(shared.clone()))
        .add_service(pb::audit_service_server::AuditServiceServer::from_arc(
            shared.clone(),
        ))
        .add_service(pb::api_key_service_server::ApiKeyServiceServer::from_arc(
            shared.clone(),
        ))
        .add_service(pb::settings_service_server::SettingsServiceServer::from_arc(shared.clone()))
        .add_service(
            rdm_proto::inventory::device_service_server::DeviceServiceServer::from_arc(shared),
        );
    Ok(rdm_kit::server::guarded(routes, guard))
}

/// What `bootstrap` created that the operator must be told once.
#[derive(Debug, Default)]
pub struct Bootstrapped {
    /// The platform admin's password, when it was generated now.
    pub generated_admin_password: Option<String>,
}

impl Bootstrapped {
    /// Tells the operator, once, the password that was generated.
    pub fn report(&self) {
        if let Some(password) = &self.generated_admin_password {
            println!(
                "created platform admin: tenant \"system\", user \"admin\", password \"{password}\" \
                 (shown once; set RDM_ADMIN_PASSWORD to choose it)"
            );
        }
    }
}

/// Makes sure the system tenant and its `admin` exist (password from
/// `admin_password`, or generated and returned), and with `demo` the `demo`
/// tenant with user `demo` / `demo` (admin).
pub async fn bootstrap(db: &Db, admin_password: Option<&str>, demo: bool) -> Result<Bootstrapped> {
    let generated = admin_password.is_none().then(password::generate);
    let password = admin_password.or(generated.as_deref()).unwrap_or_default();
    let created = ensure_user(
        db,
        SYSTEM_TENANT,
        "System",
        "admin",
        password,
        Role::PlatformAdmin,
    )
    .await?;
    if demo {
        ensure_user(db, "demo", "Demo", "demo", "demo", Role::Admin).await?;
        // Its other users sign in through the demo's Mellophone server.
        ensure_user(
            db,
            "mellophone-demo",
            "Mellophone demo",
            "admin",
            "demo",
            Role::Admin,
        )
        .await?;
        // The demo tenants may name loopback targets, nothing else.
        let mut tx = db.begin_write(Scope::Platform).await?;
        for slug in ["demo", "mellophone-demo"] {
            if let Some(mut demo) = store::tenant_by_slug(&mut tx, slug).await?
                && demo.inline_cidrs.is_empty()
            {
                demo.inline_cidrs = "127.0.0.0/8,::1/128".into();
                store::update_tenant(&mut tx, &demo).await?;
            }
        }
        tx.commit().await?;
    }
    Ok(Bootstrapped {
        generated_admin_password: generated.filter(|_| created),
    })
}

/// Creates tenant `slug` and its user if missing; true when the user was created.
async fn ensure_user(
    db: &Db,
    slug: &str,
    display_name: &str,
    username: &str,
    password: &str,
    role: Role,
) -> Result<bool> {
    let mut tx = db.begin_write(Scope::Platform).await?;
    let tenant = match store::tenant_by_slug(&mut tx, slug).await? {
        Some(t) => t,
        None => store::insert_tenant(&mut tx, slug, display_name).await?,
    };
    tx.commit().await?;
    let mut tx = db
        .begin_write(Scope::Tenant {
            tenant_id: &tenant.id,
            user_id: "",
        })
        .await?;
    if store::user_by_name(&mut tx, &tenant.id, username)
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let hash = password::hash(password.to_owned()).await?;
    store::insert_user(
        &mut tx,
        NewUser {
            tenant_id: &tenant.id,
            username,
            display_name: "",
            password_hash: &hash,
            roles: role.as_str(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

fn tenant_pb(row: TenantRow) -> pb::Tenant {
    pb::Tenant {
        id: row.id,
        slug: row.slug,
        display_name: row.display_name,
        create_time: Some(timestamp(row.create_time)),
        update_time: Some(timestamp(row.update_time)),
        allowed_target_cidrs: row
            .inline_cidrs
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

fn user_pb(row: UserRow) -> pb::User {
    pb::User {
        id: row.id,
        tenant_id: row.tenant_id,
        username: row.username,
        display_name: row.display_name,
        roles: row.roles.split_whitespace().map(str::to_owned).collect(),
        disabled: row.disabled != 0,
        create_time: Some(timestamp(row.create_time)),
        update_time: Some(timestamp(row.update_time)),
    }
}

fn valid_slug(slug: &str) -> Result<()> {
    let ok = (2..=63).contains(&slug.len())
        && slug.starts_with(|c: char| c.is_ascii_lowercase())
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        return Ok(());
    }
    Err(Error::invalid(
        "slug",
        "slug must be 2-63 characters of a-z, 0-9 and '-', starting with a letter",
    ))
}

fn valid_username(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if ok {
        return Ok(());
    }
    Err(Error::invalid(
        "username",
        "username must be 1-64 characters of letters, digits and ._@-",
    ))
}

fn valid_display_name(field: &str, name: &str) -> Result<()> {
    if name.chars().count() > 200 || !rdm_kit::text::is_plain(name) {
        return Err(Error::invalid(
            field,
            format!(
                "{field} must be at most 200 printable characters (no invisible or direction-changing ones)"
            ),
        ));
    }
    Ok(())
}

fn valid_password(password: &str) -> Result<()> {
    if !(8..=1024).contains(&password.len()) {
        return Err(Error::invalid(
            "password",
            "password must be 8 to 1024 bytes long",
        ));
    }
    Ok(())
}

/// Parses the roles a caller asks to grant: known names, at least one, and
/// none above what `granter` may grant. platform-admin exists only in the
/// system tenant.
fn grantable_roles(roles: &[String], granter: &Principal, tenant_slug: &str) -> Result<String> {
    if roles.is_empty() {
        return Err(Error::invalid("roles", "a user needs at least one role"));
    }
    let mut parsed: Vec<Role> = roles.iter().map(|r| r.parse()).collect::<Result<_>>()?;
    parsed.sort();
    parsed.dedup();
    if let Some(too_high) = parsed.iter().find(|r| !granter.has_role(**r)) {
        return Err(Error::permission_denied(format!(
            "you cannot grant the {} role",
            too_high.as_str()
        )));
    }
    if parsed.contains(&Role::PlatformAdmin) && tenant_slug != SYSTEM_TENANT {
        return Err(Error::invalid(
            "roles",
            "platform-admin exists only in the system tenant",
        ));
    }
    Ok(parsed
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" "))
}

/// A handler's result as tonic wants it.
fn reply<T>(result: Result<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(err)
}

fn err(e: Error) -> Status {
    e.in_domain(DOMAIN).into()
}

const BAD_LOGIN: &str = "invalid tenant, username or password";

/// The caller's address: as the gateway saw it (`x-rdm-client-ip`, which it
/// sets on every call, replacing any a client sent), else the peer of a
/// direct gRPC call.
fn client_address<T>(req: &Request<T>) -> String {
    req.metadata()
        .get(rdm_kit::server::CLIENT_IP_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<std::net::IpAddr>().ok())
        .or_else(|| req.remote_addr().map(|a| a.ip()))
        .map(|ip| ip.to_canonical().to_string())
        .unwrap_or_else(|| "unknown".into())
}

impl Inventory {
    fn db(&self) -> &Db {
        &self.config.db
    }

    /// Signs a user in from `client` (the caller's address, for throttling).
    async fn login(&self, req: pb::LoginRequest, client: &str) -> Result<pb::LoginResponse> {
        let slug = req.tenant.trim().to_ascii_lowercase();
        let username = req.username.trim();
        for (field, value) in [
            ("tenant", slug.as_str()),
            ("username", username),
            ("password", &req.password),
        ] {
            if value.is_empty() || value.len() > 1024 {
                return Err(Error::invalid(
                    field,
                    format!("{field} is required (at most 1024 bytes)"),
                ));
            }
        }
        let attempt = self.config.throttle.attempt(&slug, username, client);
        let now = now_millis();
        // Counted before the password is checked: parallel guesses cannot
        // outrun the limit, and refused ones cost no hashing.
        let mut tx = self.db().begin_write(Scope::Login { slug: &slug }).await?;
        self.config.throttle.admit(&mut tx, &attempt, now).await?;
        tx.commit().await?;
        let mut tx = self.db().begin(Scope::Login { slug: &slug }).await?;
        let tenant = store::tenant_by_slug(&mut tx, &slug).await?;
        let mut user = None;
        if let Some(tenant) = &tenant {
            tx.enter_tenant(&tenant.id).await?;
            user = store::user_by_name(&mut tx, &tenant.id, username).await?;
        }
        // Let go of the connection: the hash check below is slow.
        drop(tx);
        // Users who sign in through Mellophone have no local password.
        let user = user.filter(|u| u.password_hash != identity::MELLOPHONE_USER);
        if let Some(tenant) = tenant.as_ref().filter(|_| user.is_none()) {
            let idp = identity::decode(&tenant.identity_provider)?;
            if let Some(m) = idp.mellophone.filter(|m| m.sign_in) {
                let tenant = tenant.clone();
                return self
                    .mellophone_login(tenant, m, username, &req.password, &attempt)
                    .await;
            }
        }
        let user = tenant.zip(user);
        // Unknown tenants and users cost one hash check too: equal timing.
        let hash = user.as_ref().map(|(_, u)| u.password_hash.clone());
        let matches = password::verify(req.password, hash).await?;
        let user = user.filter(|(_, u)| matches && u.disabled == 0);
        let Some((tenant, user)) = user else {
            self.config.throttle.failed(&attempt, &slug);
            return Err(Error::unauthenticated(BAD_LOGIN));
        };
        let mut tx = self.db().begin_write(Scope::Login { slug: &slug }).await?;
        self.config.throttle.succeeded(&mut tx, &attempt).await?;
        tx.enter_tenant(&tenant.id).await?;
        let tokens = self.open_session(&mut tx, &user).await?;
        tx.commit().await?;
        tracing::info!(tenant = %tenant.slug, user_id = %user.id, "login");
        Ok(tokens)
    }

    async fn me(&self, p: &Principal) -> Result<pb::GetMeResponse> {
        let mut tx = self.db().begin(Scope::of(p)).await?;
        if let Some(key) = p.user_id.strip_prefix("key:") {
            // An API key: its name and role.
            let tenant = store::tenant_by_id(&mut tx, &p.tenant_id)
                .await?
                .ok_or_else(|| Error::unauthenticated("the tenant of this key no longer exists"))?;
            return Ok(pb::GetMeResponse {
                user_id: p.user_id.clone(),
                username: format!("api key {key}"),
                tenant_id: p.tenant_id.clone(),
                tenant_slug: tenant.slug,
                roles: p.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            });
        }
        let me = store::me(&mut tx, &p.tenant_id, &p.user_id)
            .await?
            .ok_or_else(|| Error::unauthenticated("the user of this token no longer exists"))?;
        Ok(pb::GetMeResponse {
            user_id: p.user_id.clone(),
            username: me.username,
            tenant_id: p.tenant_id.clone(),
            tenant_slug: me.slug,
            roles: me.roles.split_whitespace().map(str::to_owned).collect(),
        })
    }

    async fn tenant(&self, id: &str) -> Result<TenantRow> {
        let mut tx = self.db().begin(Scope::Platform).await?;
        store::tenant_by_id(&mut tx, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("tenant {id} not found")))
    }

    /// Creates a user in `tenant` for `granter`.
    async fn create_user(
        &self,
        granter: &Principal,
        tenant: &TenantRow,
        username: &str,
        password: String,
        roles: &[String],
        display_name: &str,
    ) -> Result<pb::User> {
        valid_username(username)?;
        valid_password(&password)?;
        valid_display_name("display_name", display_name)?;
        let roles = grantable_roles(roles, granter, &tenant.slug)?;
        let hash = password::hash(password).await?;
        let mut tx = self
            .db()
            .begin_write(Scope::Tenant {
                tenant_id: &tenant.id,
                user_id: &granter.user_id,
            })
            .await?;
        let row = store::insert_user(
            &mut tx,
            NewUser {
                tenant_id: &tenant.id,
                username,
                display_name,
                password_hash: &hash,
                roles: &roles,
            },
        )
        .await
        .map_err(|e| match e.code {
            ErrorCode::AlreadyExists => Error::new(
                ErrorCode::AlreadyExists,
                format!("user {username:?} already exists"),
            ),
            _ => e,
        })?;
        tx.commit().await?;
        tracing::info!(tenant_id = %tenant.id, user_id = %row.id, by = %granter.user_id, "user created");
        Ok(user_pb(row))
    }
}

#[tonic::async_trait]
impl AuthService for Inventory {
    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let client = client_address(&req);
        reply(Inventory::login(self, req.into_inner(), &client).await)
    }

    async fn refresh(
        &self,
        req: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let tokens = Inventory::refresh(self, req.get_ref().refresh_token.trim()).await;
        reply(tokens.map(|t| pb::RefreshResponse {
            access_token: t.access_token,
            token_type: t.token_type,
            expires_in: t.expires_in,
            refresh_token: t.refresh_token,
            refresh_expires_in: t.refresh_expires_in,
        }))
    }

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        reply(
            Inventory::logout(self, p)
                .await
                .map(|()| pb::LogoutResponse {}),
        )
    }

    async fn issue_user_token(
        &self,
        req: Request<pb::IssueUserTokenRequest>,
    ) -> Result<Response<pb::IssueUserTokenResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        reply(self.user_token(p).await)
    }

    async fn exchange_api_key(
        &self,
        req: Request<pb::ExchangeApiKeyRequest>,
    ) -> Result<Response<pb::ExchangeApiKeyResponse>, Status> {
        let client = client_address(&req);
        reply(
            self.exchange_key(req.get_ref().api_key.trim(), &client)
                .await,
        )
    }

    async fn list_revoked_sessions(
        &self,
        req: Request<pb::ListRevokedSessionsRequest>,
    ) -> Result<Response<pb::ListRevokedSessionsResponse>, Status> {
        reply(self.revoked_since(req.get_ref().since_ms).await)
    }

    async fn get_jwks(
        &self,
        _: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let jwk = self.config.signing_key.public_jwk();
        let json = serde_json_value(jwk);
        let field = |name: &str| {
            json.get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        Ok(Response::new(pb::GetJwksResponse {
            keys: vec![pb::Jwk {
                kty: field("kty"),
                crv: field("crv"),
                x: field("x"),
                kid: field("kid"),
                alg: field("alg"),
                r#use: field("use"),
            }],
        }))
    }

    async fn get_me(
        &self,
        req: Request<pb::GetMeRequest>,
    ) -> Result<Response<pb::GetMeResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        reply(self.me(p).await)
    }
}

fn serde_json_value(jwk: &jsonwebtoken::jwk::Jwk) -> serde_json::Value {
    serde_json::to_value(jwk).unwrap_or_default()
}

#[tonic::async_trait]
impl TenantService for Inventory {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let r = req.get_ref();
        let run = async {
            valid_slug(&r.slug)?;
            valid_display_name("display_name", &r.display_name)?;
            let display_name = if r.display_name.is_empty() {
                &r.slug
            } else {
                &r.display_name
            };
            let mut tx = self.db().begin_write(Scope::Platform).await?;
            let row = store::insert_tenant(&mut tx, &r.slug, display_name)
                .await
                .map_err(|e| match e.code {
                    ErrorCode::AlreadyExists => Error::new(
                        ErrorCode::AlreadyExists,
                        format!("tenant slug {:?} is taken", r.slug),
                    ),
                    _ => e,
                })?;
            tx.commit().await?;
            tracing::info!(tenant_id = %row.id, slug = %row.slug, "tenant created");
            Ok(pb::CreateTenantResponse {
                tenant: Some(tenant_pb(row)),
            })
        };
        reply(run.await)
    }

    async fn get_tenant(
        &self,
        req: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        let row = self.tenant(&req.get_ref().tenant_id).await.map_err(err)?;
        Ok(Response::new(pb::GetTenantResponse {
            tenant: Some(tenant_pb(row)),
        }))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let r = req.get_ref();
        let run = async {
            let size = page::size(r.page_size)?;
            let after = page::decode(&r.page_token)?;
            let mut tx = self.db().begin(Scope::Platform).await?;
            let rows = store::list_tenants(&mut tx, &r.slug_prefix, &after, size + 1).await?;
            let (rows, next_page_token) = page::finish(rows, size, |t| &t.slug);
            Ok(pb::ListTenantsResponse {
                tenants: rows.into_iter().map(tenant_pb).collect(),
                next_page_token,
            })
        };
        reply(run.await)
    }

    async fn update_tenant(
        &self,
        req: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::UpdateTenantResponse>, Status> {
        let r = req.get_ref();
        let run = async {
            let paths = mask_paths(
                r.update_mask.as_ref(),
                &[
                    ("display_name", !r.display_name.is_empty()),
                    ("allowed_target_cidrs", !r.allowed_target_cidrs.is_empty()),
                ],
            );
            let mut tx = self.db().begin_write(Scope::Platform).await?;
            let mut row = store::tenant_by_id(&mut tx, &r.tenant_id)
                .await?
                .ok_or_else(|| Error::not_found(format!("tenant {} not found", r.tenant_id)))?;
            for path in &paths {
                match path.as_str() {
                    "display_name" => {
                        valid_display_name("display_name", &r.display_name)?;
                        if r.display_name.is_empty() {
                            return Err(Error::invalid(
                                "display_name",
                                "display_name must not be empty",
                            ));
                        }
                        row.display_name = r.display_name.clone();
                    }
                    "allowed_target_cidrs" => {
                        row.inline_cidrs = targets::normalize_cidrs(&r.allowed_target_cidrs)?
                    }
                    other => {
                        return Err(Error::invalid(
                            "update_mask",
                            format!("update_mask names unknown field {other:?}"),
                        ));
                    }
                }
            }
            let row = store::update_tenant(&mut tx, &row)
                .await?
                .ok_or_else(|| Error::not_found(format!("tenant {} not found", r.tenant_id)))?;
            tx.commit().await?;
            Ok(pb::UpdateTenantResponse {
                tenant: Some(tenant_pb(row)),
            })
        };
        reply(run.await)
    }

    async fn delete_tenant(
        &self,
        req: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::DeleteTenantResponse>, Status> {
        let id = &req.get_ref().tenant_id;
        let run = async {
            let tenant = self.tenant(id).await?;
            if tenant.slug == SYSTEM_TENANT {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    "the system tenant cannot be deleted",
                ));
            }
            let mut tx = self.db().begin_write(Scope::Platform).await?;
            let mut revoked = self.revoke_user_sessions(&mut tx, id, "").await?;
            revoked.extend(self.revoke_tenant_keys(&mut tx, id).await?);
            store::delete_tenant(&mut tx, id).await?;
            tx.commit().await?;
            self.publish(&revoked);
            tracing::info!(tenant_id = %id, sessions_revoked = revoked.len(), "tenant deleted");
            Ok(pb::DeleteTenantResponse {})
        };
        reply(run.await)
    }

    async fn create_tenant_user(
        &self,
        req: Request<pb::CreateTenantUserRequest>,
    ) -> Result<Response<pb::CreateTenantUserResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        let run = async {
            let tenant = self.tenant(&r.tenant_id).await?;
            let user = self
                .create_user(
                    p,
                    &tenant,
                    &r.username,
                    r.password.clone(),
                    &r.roles,
                    &r.display_name,
                )
                .await?;
            Ok(pb::CreateTenantUserResponse { user: Some(user) })
        };
        reply(run.await)
    }
}

type UserStream = Pin<Box<dyn Stream<Item = Result<pb::ExportUsersResponse, Status>> + Send>>;

#[tonic::async_trait]
impl UserService for Inventory {
    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        let run = async {
            let mut tx = self.db().begin(Scope::of(p)).await?;
            let tenant = store::token_tenant(&mut tx, &p.tenant_id).await?;
            drop(tx);
            let user = self
                .create_user(
                    p,
                    &tenant,
                    &r.username,
                    r.password.clone(),
                    &r.roles,
                    &r.display_name,
                )
                .await?;
            Ok(pb::CreateUserResponse { user: Some(user) })
        };
        reply(run.await)
    }

    async fn get_user(
        &self,
        req: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let id = &req.get_ref().user_id;
        let run = async {
            let mut tx = self.db().begin(Scope::of(p)).await?;
            let row = store::user_by_id(&mut tx, &p.tenant_id, id)
                .await?
                .ok_or_else(|| Error::not_found(format!("user {id} not found")))?;
            Ok(pb::GetUserResponse {
                user: Some(user_pb(row)),
            })
        };
        reply(run.await)
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        let run = async {
            let size = page::size(r.page_size)?;
            let after = page::decode(&r.page_token)?;
            if !r.role.is_empty() {
                r.role
                    .parse::<Role>()
                    .map_err(|e| Error::invalid("role", e.message))?;
            }
            let mut tx = self.db().begin(Scope::of(p)).await?;
            let rows = store::list_users(
                &mut tx,
                &p.tenant_id,
                &r.username_prefix,
                &r.role,
                &after,
                size + 1,
            )
            .await?;
            let (rows, next_page_token) = page::finish(rows, size, |u| &u.id);
            Ok(pb::ListUsersResponse {
                users: rows.into_iter().map(user_pb).collect(),
                next_page_token,
            })
        };
        reply(run.await)
    }

    async fn update_user(
        &self,
        req: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        let run = async {
            let paths = mask_paths(
                r.update_mask.as_ref(),
                &[
                    ("display_name", !r.display_name.is_empty()),
                    ("password", !r.password.is_empty()),
                    ("roles", !r.roles.is_empty()),
                    ("disabled", r.disabled),
                ],
            );
            let mut tx = self.db().begin_write(Scope::of(p)).await?;
            let mut row = store::user_by_id(&mut tx, &p.tenant_id, &r.user_id)
                .await?
                .ok_or_else(|| Error::not_found(format!("user {} not found", r.user_id)))?;
            let tenant = store::token_tenant(&mut tx, &p.tenant_id).await?;
            for path in &paths {
                match path.as_str() {
                    "display_name" => {
                        valid_display_name("display_name", &r.display_name)?;
                        row.display_name = r.display_name.clone();
                    }
                    "password" => {
                        valid_password(&r.password)?;
                        row.password_hash = password::hash(r.password.clone()).await?;
                    }
                    "roles" => row.roles = grantable_roles(&r.roles, p, &tenant.slug)?,
                    "disabled" => {
                        if r.disabled && row.id == p.user_id {
                            return Err(Error::new(
                                ErrorCode::FailedPrecondition,
                                "you cannot disable your own user",
                            ));
                        }
                        row.disabled = i64::from(r.disabled);
                    }
                    other => {
                        return Err(Error::invalid(
                            "update_mask",
                            format!("update_mask names unknown field {other:?}"),
                        ));
                    }
                }
            }
            let row = store::update_user(&mut tx, &row).await?;
            // Anything that takes access away ends the user's sessions.
            let revoke = paths
                .iter()
                .any(|p| p == "password" || p == "roles" || (p == "disabled" && r.disabled));
            let revoked = if revoke {
                self.revoke_user_sessions(&mut tx, &row.tenant_id, &row.id)
                    .await?
            } else {
                Vec::new()
            };
            tx.commit().await?;
            self.publish(&revoked);
            Ok(pb::UpdateUserResponse {
                user: Some(user_pb(row)),
            })
        };
        reply(run.await)
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let id = &req.get_ref().user_id;
        let run = async {
            if *id == p.user_id {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    "you cannot delete your own user",
                ));
            }
            let mut tx = self.db().begin_write(Scope::of(p)).await?;
            if !store::delete_user(&mut tx, &p.tenant_id, id).await? {
                return Err(Error::not_found(format!("user {id} not found")));
            }
            let revoked = self.revoke_user_sessions(&mut tx, &p.tenant_id, id).await?;
            tx.commit().await?;
            self.publish(&revoked);
            Ok(pb::DeleteUserResponse {})
        };
        reply(run.await)
    }

    type ExportUsersStream = UserStream;

    async fn export_users(
        &self,
        req: Request<pb::ExportUsersRequest>,
    ) -> Result<Response<UserStream>, Status> {
        let p = Principal::of(&req).map_err(err)?.clone();
        let prefix = req.into_inner().username_prefix;
        let db = self.db().clone();
        let stream = async_stream::try_stream! {
            let mut after = String::new();
            loop {
                let mut tx = db.begin(Scope::of(&p)).await.map_err(err)?;
                let rows = store::list_users(&mut tx, &p.tenant_id, &prefix, "", &after, 500).await.map_err(err)?;
                drop(tx);
                let Some(last) = rows.last() else { break };
                after = last.id.clone();
                let full = rows.len() == 500;
                for row in rows {
                    yield pb::ExportUsersResponse { user: Some(user_pb(row)) };
                }
                if !full { break }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_usernames_are_checked() {
        assert!(valid_slug("acme-2").is_ok());
        for bad in ["A", "a", "-ab", "ab_c", "Acme", &"a".repeat(64)] {
            assert_eq!(valid_slug(bad).unwrap_err().field(), Some("slug"), "{bad}");
        }
        assert!(valid_username("alice.o@x-y").is_ok());
        assert!(valid_username("al ice").is_err());
    }
}
