//! A tenant's identity provider (its Mellophone server): kept with the
//! tenant, tokens sealed and never shown, opened only for the
//! identity-mellophone service acting for a caller; and sign-in through it,
//! where rdm checks the password at Mellophone and issues its own tokens.
use crate::{
    BAD_LOGIN, Inventory, store,
    store::{NewUser, TenantRow, UserRow},
    throttle::Attempt,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use prost::Message;
use rdm_identity_mellophone::client::{self as mellophone, Call};
use rdm_kit::{Error, ErrorCode, Principal, Result, auth::Role, db::Scope};
use rdm_proto::{inventory as pb, mellophone::MellophoneSettings};
use std::time::Duration;

/// The password hash of a user who signs in through Mellophone: no
/// password matches it, so such a user never signs in locally.
pub(crate) const MELLOPHONE_USER: &str = "mellophone";
/// How long sign-in waits for Mellophone when the settings give no timeout.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a token is sealed: bound to its tenant and field.
fn place(tenant_id: &str, field: &str) -> String {
    format!("tenant/{tenant_id}/identity-provider/mellophone.{field}")
}

/// The tokens of Mellophone settings: (field, value, held marker).
fn tokens(
    m: &mut MellophoneSettings,
) -> [(&'static str, &mut Option<String>, &mut Option<bool>); 2] {
    [
        (
            "settings_token",
            &mut m.settings_token,
            &mut m.settings_token_set,
        ),
        (
            "user_manage_token",
            &mut m.user_manage_token,
            &mut m.user_manage_token_set,
        ),
    ]
}

/// The identity provider as stored (tokens sealed); none when "".
pub(crate) fn decode(stored: &str) -> Result<pb::IdentityProvider> {
    let bytes = STANDARD
        .decode(stored)
        .map_err(|e| Error::internal("reading the identity provider", e))?;
    pb::IdentityProvider::decode(bytes.as_slice())
        .map_err(|e| Error::internal("reading the identity provider", e))
}

/// The identity provider as replies show it: tokens out, `_set` markers in.
fn shown(mut idp: pb::IdentityProvider) -> pb::IdentityProvider {
    if let Some(m) = idp.mellophone.as_mut() {
        for (_, token, held) in tokens(m) {
            *held = Some(token.take().is_some_and(|t| !t.is_empty()));
        }
    }
    idp
}

/// Checks what the proto's rules cannot say: each role rule names exactly
/// one of a group and a login.
fn check(idp: &pb::IdentityProvider) -> Result<()> {
    let Some(m) = &idp.mellophone else {
        return Ok(());
    };
    for (i, rule) in m.roles.iter().enumerate() {
        if rule.group.is_empty() == rule.login.is_empty() {
            return Err(Error::invalid(
                format!("mellophone.roles[{i}]"),
                "a role rule names exactly one of group and login",
            ));
        }
    }
    Ok(())
}

/// The highest role the rules give `user` (signed in as `login`).
fn mapped_role(
    m: &MellophoneSettings,
    login: &str,
    user: &rdm_proto::mellophone::User,
) -> Option<Role> {
    let attribute = match m.group_attribute.as_str() {
        "" => "groups",
        a => a,
    };
    let groups: Vec<&str> = user
        .attributes
        .get(attribute)
        .map(|g| {
            g.split([',', ';', ' '])
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .collect()
        })
        .unwrap_or_default();
    m.roles
        .iter()
        .filter(|r| {
            (!r.login.is_empty() && r.login == login)
                || (!r.group.is_empty() && groups.contains(&r.group.as_str()))
        })
        .filter_map(|r| r.role.parse().ok())
        .max()
}

impl Inventory {
    async fn tenant_of(&self, p: &Principal) -> Result<TenantRow> {
        let mut tx = self.db().begin(Scope::of(p)).await?;
        store::token_tenant(&mut tx, &p.tenant_id).await
    }

    pub(crate) async fn get_identity_provider(
        &self,
        p: &Principal,
    ) -> Result<pb::IdentityProvider> {
        Ok(shown(decode(&self.tenant_of(p).await?.identity_provider)?))
    }

    /// The tenant's identity provider with its tokens opened, and its
    /// allowed networks.
    pub(crate) async fn open_identity_provider(
        &self,
        p: &Principal,
    ) -> Result<pb::OpenIdentityProviderResponse> {
        let tenant = self.tenant_of(p).await?;
        let mut idp = decode(&tenant.identity_provider)?;
        if let Some(m) = idp.mellophone.as_mut() {
            for (field, token, _) in tokens(m) {
                if let Some(sealed) = token.as_mut() {
                    *sealed = self
                        .config
                        .keyring
                        .open(sealed, &place(&tenant.id, field))?;
                }
            }
        }
        Ok(pb::OpenIdentityProviderResponse {
            identity_provider: Some(idp),
            allowed_target_cidrs: split_cidrs(&tenant.inline_cidrs),
        })
    }

    /// Replaces the identity provider: new tokens sealed, tokens left out
    /// kept, `_set: false` forgetting one.
    pub(crate) async fn update_identity_provider(
        &self,
        p: &Principal,
        mut idp: pb::IdentityProvider,
    ) -> Result<pb::IdentityProvider> {
        check(&idp)?;
        let mut tx = self.db().begin_write(Scope::of(p)).await?;
        let mut tenant = store::token_tenant(&mut tx, &p.tenant_id).await?;
        let mut stored = decode(&tenant.identity_provider)?
            .mellophone
            .unwrap_or_default();
        if let Some(m) = idp.mellophone.as_mut() {
            let url: url::Url = m
                .base_url()
                .parse()
                .map_err(|_| Error::invalid("mellophone.base_url", "not a URL"))?;
            let allowed = rdm_kit::address::parse_allowed(&tenant.inline_cidrs);
            self.vet_stored(
                "mellophone.base_url",
                url.host_str().unwrap_or_default(),
                url.port_or_known_default().unwrap_or(0),
                &allowed,
            )?;
            for ((field, token, held), (_, old, _)) in
                tokens(m).into_iter().zip(tokens(&mut stored))
            {
                match token.take().filter(|t| !t.is_empty()) {
                    Some(new) => {
                        *token = Some(self.config.keyring.seal(&new, &place(&tenant.id, field))?)
                    }
                    None if *held == Some(false) => {}
                    None => *token = old.take(),
                }
                *held = None;
            }
        }
        tenant.identity_provider = match &idp.mellophone {
            Some(_) => STANDARD.encode(idp.encode_to_vec()),
            None => String::new(),
        };
        store::update_tenant(&mut tx, &tenant).await?;
        tx.commit().await?;
        tracing::info!(tenant_id = %p.tenant_id, user_id = %p.user_id, "identity provider changed");
        Ok(shown(idp))
    }

    /// Signs `username` of `tenant` in through its Mellophone server: the
    /// password checked there (checkcredentials), the role from the
    /// tenant's mapping, rdm's own tokens issued for a user kept in step
    /// with Mellophone's. The attempt was counted by the throttle already.
    pub(crate) async fn mellophone_login(
        &self,
        tenant: TenantRow,
        settings: MellophoneSettings,
        username: &str,
        password: &str,
        attempt: &Attempt,
    ) -> Result<pb::LoginResponse> {
        let down = |e: Error| {
            Error::new(
                ErrorCode::Unavailable,
                format!(
                    "the tenant's identity provider cannot check passwords now: {}",
                    e.message
                ),
            )
        };
        let server = rdm_identity_mellophone::connect(
            &self.idp,
            &settings,
            &split_cidrs(&tenant.inline_cidrs),
            SIGN_IN_TIMEOUT,
        )
        .await
        .map_err(down)?;
        let query = [("login", username), ("pwd", password)];
        let checked = server.send(Call::get(&["checkcredentials"], &query)).await;
        let user = match checked.and_then(|text| mellophone::user(&text)) {
            Ok(Some(user)) => user,
            Ok(None) => {
                return Err(down(Error::internal(
                    "checking a password",
                    "Mellophone sent no user",
                )));
            }
            Err(e) => {
                let kind = e.metadata.get("mellophone_error").map(String::as_str);
                return Err(match kind {
                    Some("locked_out") => {
                        self.config.throttle.failed(attempt, &tenant.slug);
                        Error::new(
                            ErrorCode::TooManyRequests,
                            format!(
                                "the tenant's identity provider has locked this user out: {}",
                                e.metadata.get("reason").map_or("", String::as_str)
                            ),
                        )
                    }
                    Some("bad_credentials" | "bad_session" | "permission_denied" | "not_found") => {
                        self.config.throttle.failed(attempt, &tenant.slug);
                        Error::unauthenticated(BAD_LOGIN)
                    }
                    // Down, unreachable, lying: no password was checked.
                    _ => {
                        let mut tx = self
                            .db()
                            .begin_write(Scope::Login { slug: &tenant.slug })
                            .await?;
                        self.config.throttle.not_checked(&mut tx, attempt).await?;
                        tx.commit().await?;
                        tracing::warn!(tenant = %tenant.slug, error = %e.message, "identity provider unavailable at sign-in");
                        down(e)
                    }
                });
            }
        };
        let mut tx = self
            .db()
            .begin_write(Scope::Login { slug: &tenant.slug })
            .await?;
        self.config.throttle.succeeded(&mut tx, attempt).await?;
        let Some(role) = mapped_role(&settings, username, &user) else {
            tx.commit().await?;
            tracing::info!(tenant = %tenant.slug, "Mellophone sign-in refused: no role mapped");
            return Err(Error::permission_denied(
                "this Mellophone account has no rdm role in this tenant: its admin maps groups or logins to roles",
            ));
        };
        tx.enter_tenant(&tenant.id).await?;
        let user = self
            .mellophone_user(&mut tx, &tenant, username, &user.name, role)
            .await?;
        let tokens = self.open_session(&mut tx, &user).await?;
        tx.commit().await?;
        tracing::info!(tenant = %tenant.slug, user_id = %user.id, role = role.as_str(), "login through Mellophone");
        Ok(tokens)
    }

    /// The rdm user standing for a Mellophone account, created at its first
    /// sign-in and given the mapped role at each.
    async fn mellophone_user(
        &self,
        tx: &mut rdm_kit::db::TenantTx,
        tenant: &TenantRow,
        username: &str,
        name: &str,
        role: Role,
    ) -> Result<UserRow> {
        match store::user_by_name(tx, &tenant.id, username).await? {
            Some(user) if user.disabled != 0 => Err(Error::permission_denied(
                "this user is disabled in rdm: a tenant admin enables it again",
            )),
            Some(mut user) => {
                user.roles = role.as_str().to_owned();
                user.display_name = name.to_owned();
                store::update_user(tx, &user).await
            }
            None => {
                store::insert_user(
                    tx,
                    NewUser {
                        tenant_id: &tenant.id,
                        username,
                        display_name: name,
                        password_hash: MELLOPHONE_USER,
                        roles: role.as_str(),
                    },
                )
                .await
            }
        }
    }
}

/// Stored CIDRs as a list.
fn split_cidrs(stored: &str) -> Vec<String> {
    stored
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdm_proto::mellophone::{RoleRule, User};

    fn rule(group: &str, login: &str, role: &str) -> RoleRule {
        RoleRule {
            group: group.into(),
            login: login.into(),
            role: role.into(),
        }
    }

    #[test]
    fn the_highest_matching_role_wins_and_no_match_is_none() {
        let m = MellophoneSettings {
            roles: vec![
                rule("eng", "", "operator"),
                rule("", "ann", "admin"),
                rule("ops", "", "viewer"),
            ],
            ..Default::default()
        };
        let mut user = User::default();
        user.attributes.insert("groups".into(), "ops; eng".into());
        assert_eq!(mapped_role(&m, "bob", &user), Some(Role::Operator));
        assert_eq!(mapped_role(&m, "ann", &user), Some(Role::Admin));
        assert_eq!(mapped_role(&m, "bob", &User::default()), None);
        let other = MellophoneSettings {
            group_attribute: "memberOf".into(),
            ..m
        };
        assert_eq!(mapped_role(&other, "bob", &user), None);
    }

    #[test]
    fn replies_never_show_tokens() {
        let idp = pb::IdentityProvider {
            mellophone: Some(MellophoneSettings {
                settings_token: Some("sealed".into()),
                ..Default::default()
            }),
        };
        let m = shown(idp).mellophone.unwrap();
        assert_eq!((m.settings_token, m.settings_token_set), (None, Some(true)));
        assert_eq!(
            (m.user_manage_token, m.user_manage_token_set),
            (None, Some(false))
        );
    }

    #[test]
    fn a_role_rule_names_a_group_or_a_login() {
        for (group, login) in [("", ""), ("g", "l")] {
            let idp = pb::IdentityProvider {
                mellophone: Some(MellophoneSettings {
                    roles: vec![rule(group, login, "viewer")],
                    ..Default::default()
                }),
            };
            assert_eq!(
                check(&idp).unwrap_err().field(),
                Some("mellophone.roles[0]")
            );
        }
    }
}
