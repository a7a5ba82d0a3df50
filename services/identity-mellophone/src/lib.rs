//! rdm's identity-mellophone service: every call of a tenant's Mellophone
//! authentication server as gRPC and REST. The server's address and tokens
//! are the tenant's identity-provider settings, which the inventory keeps
//! sealed and opens only for this service acting for a caller; the address
//! passes the address policy before any connection. [`client`] is the
//! server's HTTP API, shared with the inventory's sign-in through Mellophone.
pub mod client;

use client::{Call, Server, Token};
use rdm_kit::{
    Error, ErrorCode, Result,
    address::HttpClients,
    auth::SigningKey,
    client::Forward,
    invoke::Backend,
    mesh::{Context, Spec, Started},
};
use rdm_proto::{
    inventory::{self as inv, settings_service_client::SettingsServiceClient},
    mellophone::{self as pb, MellophoneSettings, mellophone_service_server::MellophoneService},
};
use reqwest::Method;
use std::{sync::Arc, time::Duration};
use tonic::{Request, Response, Status};

pub const DOMAIN: &str = "mellophone";
/// The service's name: `rdm serve identity-mellophone`, its actor tokens.
const NAME: &str = "identity-mellophone";

/// The identity-mellophone service's own settings.
#[derive(clap::Args, Clone, Debug)]
#[group(id = "identity-mellophone")]
pub struct Args {
    /// How long to wait for a Mellophone reply when the tenant's settings
    /// give no timeout.
    #[arg(long, env = "RDM_MELLOPHONE_TIMEOUT_MS", default_value_t = 10_000)]
    pub mellophone_timeout_ms: u64,
}

/// The service as the mesh's registry lists it.
pub const SERVICE: Spec<Args> = Spec::new(NAME, "rdm.mellophone.v1", 50056, |args, context| {
    Box::pin(start(args, context))
});

async fn start(args: Args, context: Context) -> anyhow::Result<Started> {
    let service = Mellophone {
        inventory: context.inventory.clone(),
        service_key: context.service_key.clone(),
        clients: HttpClients::new(context.addresses.clone()),
        timeout: Duration::from_millis(args.mellophone_timeout_ms.max(1)),
    };
    let routes = tonic::service::Routes::new(
        pb::mellophone_service_server::MellophoneServiceServer::new(service),
    );
    Ok(Started {
        router: rdm_kit::server::guarded(routes, context.guard()),
        listeners: Vec::new(),
    })
}

/// The vetted server of `settings`, for a tenant allowed `allowed_cidrs`;
/// `timeout` when the settings give none.
pub async fn connect(
    clients: &HttpClients,
    settings: &MellophoneSettings,
    allowed_cidrs: &[String],
    timeout: Duration,
) -> Result<Server> {
    let (base, http) = clients
        .for_target(settings.base_url(), allowed_cidrs)
        .await
        .map_err(|e| e.with_meta("field", "identity_provider.mellophone.base_url"))?;
    Ok(Server {
        http,
        base,
        timeout: match settings.timeout_ms {
            0 => timeout,
            ms => Duration::from_millis(ms.into()),
        },
    })
}

struct Mellophone {
    inventory: Backend,
    service_key: Arc<SigningKey>,
    clients: HttpClients,
    timeout: Duration,
}

fn err(e: Error) -> Status {
    e.in_domain(DOMAIN).into()
}

/// A request's rules checked (a 400 naming the field), then its reply.
fn reply<T>(r: Result<T>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(err)
}

impl Mellophone {
    /// The caller's tenant's Mellophone server and its settings, for a
    /// request checked against its proto's rules.
    async fn open<T: prost::Message>(
        &self,
        req: &Request<T>,
        name: &str,
    ) -> Result<(Server, MellophoneSettings)> {
        let p = rdm_kit::rules::checked(req, &format!("rdm.mellophone.v1.{name}"))?;
        let forward = Forward::acting(NAME, &self.service_key, p, None)?;
        let opened = SettingsServiceClient::with_interceptor(self.inventory.clone(), forward)
            .open_identity_provider(inv::OpenIdentityProviderRequest {})
            .await
            .map_err(|s| Error::from_status(&s))?
            .into_inner();
        let Some(settings) = opened
            .identity_provider
            .and_then(|i| i.mellophone)
            .filter(|m| !m.base_url().is_empty())
        else {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                "this tenant has no Mellophone server: an admin sets one with PUT /v1/settings/identity-provider",
            ));
        };
        let server = connect(
            &self.clients,
            &settings,
            &opened.allowed_target_cidrs,
            self.timeout,
        )
        .await?;
        Ok((server, settings))
    }

    /// Sends one GET with `query` to `endpoint` for a checked request.
    async fn get<T: prost::Message>(
        &self,
        req: &Request<T>,
        name: &str,
        endpoint: &str,
        query: &[(&str, &str)],
    ) -> Result<String> {
        let (server, _) = self.open(req, name).await?;
        server.send(Call::get(&[endpoint], query)).await
    }

    /// A user-management call: the settings' user_manage_token, and `body`.
    async fn manage<T: prost::Message>(
        &self,
        req: &Request<T>,
        name: &str,
        method: Method,
        path: &[&str],
        body: Option<String>,
    ) -> Result<()> {
        let (server, settings) = self.open(req, name).await?;
        let token = Token::of("user_manage_token", settings.user_manage_token())?;
        server
            .send(Call {
                method,
                path,
                query: &[],
                token: Some(token),
                body: body.map(|b| ("application/xml", b)),
            })
            .await?;
        Ok(())
    }
}

/// A reply that must hold a user.
fn some_user(text: &str) -> Result<pb::User> {
    client::user(text)?
        .ok_or_else(|| Error::new(ErrorCode::UpstreamUnavailable, "Mellophone sent no user"))
}

#[tonic::async_trait]
impl MellophoneService for Mellophone {
    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let r = req.get_ref();
        let session_id = match r.session_id.as_str() {
            "" => uuid::Uuid::new_v4().simple().to_string(),
            given => given.to_owned(),
        };
        let query = [
            ("sesid", session_id.as_str()),
            ("login", &r.login),
            ("pwd", &r.password),
            ("gp", &r.group),
            ("ip", &r.ip),
        ];
        let sent = self.get(&req, "LoginRequest", "login", &query).await;
        reply(sent.map(|_| pb::LoginResponse { session_id }))
    }

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let query = [("sesid", req.get_ref().session_id.as_str())];
        let sent = self.get(&req, "LogoutRequest", "logout", &query).await;
        reply(sent.map(|_| pb::LogoutResponse {}))
    }

    async fn is_authenticated(
        &self,
        req: Request<pb::IsAuthenticatedRequest>,
    ) -> Result<Response<pb::IsAuthenticatedResponse>, Status> {
        let r = req.get_ref();
        let query = [("sesid", r.session_id.as_str()), ("ip", &r.ip)];
        let answer = match self
            .get(&req, "IsAuthenticatedRequest", "isauthenticated", &query)
            .await
        {
            Ok(text) => some_user(&text).map(|user| pb::IsAuthenticatedResponse {
                authenticated: true,
                user: Some(user),
                reason: String::new(),
            }),
            // Mellophone's 403 is its "no": an answer, not a failure.
            Err(e) if e.metadata.get("mellophone_status").map(String::as_str) == Some("403") => {
                Ok(pb::IsAuthenticatedResponse {
                    authenticated: false,
                    user: None,
                    reason: e.metadata.get("reason").cloned().unwrap_or_default(),
                })
            }
            Err(e) => Err(e),
        };
        reply(answer)
    }

    async fn check_credentials(
        &self,
        req: Request<pb::CheckCredentialsRequest>,
    ) -> Result<Response<pb::CheckCredentialsResponse>, Status> {
        let r = req.get_ref();
        let query = [("login", r.login.as_str()), ("pwd", &r.password)];
        let text = self
            .get(&req, "CheckCredentialsRequest", "checkcredentials", &query)
            .await;
        reply(
            text.and_then(|t| some_user(&t))
                .map(|user| pb::CheckCredentialsResponse { user: Some(user) }),
        )
    }

    async fn check_name(
        &self,
        req: Request<pb::CheckNameRequest>,
    ) -> Result<Response<pb::CheckNameResponse>, Status> {
        let r = req.get_ref();
        let query = [("sesid", r.session_id.as_str()), ("name", &r.name)];
        let text = self
            .get(&req, "CheckNameRequest", "checkname", &query)
            .await;
        reply(
            text.and_then(|t| client::user(&t))
                .map(|user| pb::CheckNameResponse {
                    found: user.is_some(),
                    user,
                }),
        )
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let r = req.get_ref();
        let query = [
            ("sesid", r.session_id.as_str()),
            ("oldpwd", &r.old_password),
            ("newpwd", &r.new_password),
        ];
        let sent = self
            .get(&req, "ChangePasswordRequest", "changepwd", &query)
            .await;
        reply(sent.map(|_| pb::ChangePasswordResponse {}))
    }

    async fn change_user_password(
        &self,
        req: Request<pb::ChangeUserPasswordRequest>,
    ) -> Result<Response<pb::ChangeUserPasswordResponse>, Status> {
        let r = req.get_ref();
        let query = [
            ("sesid", r.session_id.as_str()),
            ("username", &r.username),
            ("newpwd", &r.new_password),
        ];
        let sent = self
            .get(&req, "ChangeUserPasswordRequest", "changeuserpwd", &query)
            .await;
        reply(sent.map(|_| pb::ChangeUserPasswordResponse {}))
    }

    async fn change_app_session_id(
        &self,
        req: Request<pb::ChangeAppSessionIdRequest>,
    ) -> Result<Response<pb::ChangeAppSessionIdResponse>, Status> {
        let r = req.get_ref();
        let query = [
            ("oldsesid", r.old_session_id.as_str()),
            ("newsesid", &r.new_session_id),
        ];
        let sent = self
            .get(&req, "ChangeAppSessionIdRequest", "changeappsesid", &query)
            .await;
        reply(sent.map(|_| pb::ChangeAppSessionIdResponse {}))
    }

    async fn import_groups_providers(
        &self,
        req: Request<pb::ImportGroupsProvidersRequest>,
    ) -> Result<Response<pb::ImportGroupsProvidersResponse>, Status> {
        let text = self
            .get(
                &req,
                "ImportGroupsProvidersRequest",
                "importgroupsproviders",
                &[],
            )
            .await;
        reply(text.map(|t| pb::ImportGroupsProvidersResponse {
            groups: t.split_whitespace().map(str::to_owned).collect(),
        }))
    }

    async fn get_provider_list(
        &self,
        req: Request<pb::GetProviderListRequest>,
    ) -> Result<Response<pb::GetProviderListResponse>, Status> {
        let r = req.get_ref();
        let query = [
            ("login", r.login.as_str()),
            ("pwd", &r.password),
            ("gp", &r.group),
            ("ip", &r.ip),
        ];
        let text = self
            .get(&req, "GetProviderListRequest", "getproviderlist", &query)
            .await;
        reply(
            text.and_then(|t| client::providers(&t))
                .map(|providers| pb::GetProviderListResponse { providers }),
        )
    }

    async fn get_user_list(
        &self,
        req: Request<pb::GetUserListRequest>,
    ) -> Result<Response<pb::GetUserListResponse>, Status> {
        let run = async {
            let (server, settings) = self.open(&req, "GetUserListRequest").await?;
            let r = req.get_ref();
            let query = [
                ("gp", r.group.as_str()),
                ("ip", &r.ip),
                ("pid", &r.provider_id),
            ];
            let text = server
                .send(Call {
                    token: Some(Token::of(
                        "user_manage_token",
                        settings.user_manage_token(),
                    )?),
                    ..Call::get(&["getuserlist"], &query)
                })
                .await?;
            Ok(pb::GetUserListResponse {
                providers: client::user_lists(&text)?,
            })
        };
        reply(run.await)
    }

    async fn set_settings(
        &self,
        req: Request<pb::SetSettingsRequest>,
    ) -> Result<Response<pb::SetSettingsResponse>, Status> {
        let run = async {
            let (server, settings) = self.open(&req, "SetSettingsRequest").await?;
            let r = req.get_ref();
            let (lockout, attempts) = (
                r.lockout_time_minutes.to_string(),
                r.login_attempts_allowed.to_string(),
            );
            let query = [
                ("lockouttime", lockout.as_str()),
                ("loginattemptsallowed", &attempts),
            ];
            server
                .send(Call {
                    token: Some(Token::of("settings_token", settings.settings_token())?),
                    ..Call::get(&["setsettings"], &query)
                })
                .await?;
            Ok(pb::SetSettingsResponse {})
        };
        reply(run.await)
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let run = async {
            let user = req.get_ref().user.clone().unwrap_or_default();
            for (field, value) in [("user.sid", &user.sid), ("user.login", &user.login)] {
                if value.is_empty() {
                    return Err(Error::invalid(field, "a new user needs a sid and a login"));
                }
            }
            let xml = client::user_xml(&user)?;
            self.manage(
                &req,
                "CreateUserRequest",
                Method::POST,
                &["user", "create"],
                Some(xml),
            )
            .await?;
            Ok(pb::CreateUserResponse {})
        };
        reply(run.await)
    }

    async fn update_user(
        &self,
        req: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let run = async {
            let r = req.get_ref();
            let xml = client::user_xml(&r.user.clone().unwrap_or_default())?;
            let sid = r.sid.clone();
            self.manage(
                &req,
                "UpdateUserRequest",
                Method::POST,
                &["user", &sid],
                Some(xml),
            )
            .await?;
            Ok(pb::UpdateUserResponse {})
        };
        reply(run.await)
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let sid = req.get_ref().sid.clone();
        let done = self
            .manage(
                &req,
                "DeleteUserRequest",
                Method::DELETE,
                &["user", &sid],
                None,
            )
            .await;
        reply(done.map(|()| pb::DeleteUserResponse {}))
    }

    async fn set_state(
        &self,
        req: Request<pb::SetStateRequest>,
    ) -> Result<Response<pb::SetStateResponse>, Status> {
        let run = async {
            let (server, _) = self.open(&req, "SetStateRequest").await?;
            let r = req.get_ref();
            let query = [("sesid", r.session_id.as_str())];
            server
                .send(Call {
                    method: Method::POST,
                    body: Some(("text/plain; charset=utf-8", r.state.clone())),
                    ..Call::get(&["setstate"], &query)
                })
                .await?;
            Ok(pb::SetStateResponse {})
        };
        reply(run.await)
    }

    async fn get_state(
        &self,
        req: Request<pb::GetStateRequest>,
    ) -> Result<Response<pb::GetStateResponse>, Status> {
        let query = [("sesid", req.get_ref().session_id.as_str())];
        let state = self.get(&req, "GetStateRequest", "getstate", &query).await;
        reply(state.map(|state| pb::GetStateResponse { state }))
    }
}
