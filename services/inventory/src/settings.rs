//! A tenant's own settings, which its admins change and every resolved
//! target carries to the protocol services (the TR-069 ACS device query).
use crate::{Inventory, reply, store};
use base64::{Engine, engine::general_purpose::STANDARD};
use prost::Message;
use rdm_kit::db::Scope;
use rdm_kit::{Error, Principal, Result};
use rdm_proto::inventory::{self as pb, settings_service_server::SettingsService};
use tonic::{Request, Response, Status};

/// The largest ACS device query a tenant may set.
const MAX_QUERY: usize = 4096;

/// Settings as stored: an encoded `TenantSettings`, base64 ("" = defaults).
pub(crate) fn decode(stored: &str) -> Result<pb::TenantSettings> {
    let bytes = STANDARD
        .decode(stored)
        .map_err(|e| Error::internal("reading tenant settings", e))?;
    pb::TenantSettings::decode(bytes.as_slice())
        .map_err(|e| Error::internal("reading tenant settings", e))
}

fn encode(settings: &pb::TenantSettings) -> String {
    STANDARD.encode(settings.encode_to_vec())
}

/// Where a tenant's CWMP bootstrap password is sealed.
fn cwmp_place(tenant_id: &str) -> String {
    format!("{tenant_id}/settings/tr069.cwmp_password")
}

/// Settings as replies show them: the bootstrap password as
/// `cwmp_password_set`, never itself.
pub(crate) fn shown(mut settings: pb::TenantSettings) -> pb::TenantSettings {
    if let Some(t) = settings.tr069.as_mut() {
        t.cwmp_password_set = Some(!t.cwmp_password().is_empty());
        t.cwmp_password = None;
    }
    settings
}

impl Inventory {
    /// New settings to store: a bootstrap password given is sealed, one
    /// left out keeps the stored one (unless `cwmp_password_set: false`).
    fn sealed(
        &self,
        tenant_id: &str,
        mut new: pb::TenantSettings,
        stored: &pb::TenantSettings,
    ) -> Result<pb::TenantSettings> {
        let kept = stored.tr069.as_ref().and_then(|t| t.cwmp_password.clone());
        if let Some(t) = new.tr069.as_mut() {
            t.cwmp_password = match (t.cwmp_password(), t.cwmp_password_set) {
                ("", Some(false)) => None,
                ("", _) => kept,
                (given, _) => Some(self.config.keyring.seal(given, &cwmp_place(tenant_id))?),
            };
            t.cwmp_password_set = None;
        }
        Ok(new)
    }

    /// The tenant's TR-069 policy with its bootstrap password opened.
    pub(crate) fn opened_policy(
        &self,
        tenant_id: &str,
        settings: pb::TenantSettings,
    ) -> Result<rdm_proto::tr069::Tr069Policy> {
        let mut policy = settings.tr069.unwrap_or_default();
        if let Some(sealed) = policy.cwmp_password.as_deref().filter(|s| !s.is_empty()) {
            policy.cwmp_password = Some(self.config.keyring.open(sealed, &cwmp_place(tenant_id))?);
        }
        Ok(policy)
    }
}

/// Refuses settings a protocol service could not use: an ACS device query
/// must be a JSON object.
fn check(settings: &pb::TenantSettings) -> Result<()> {
    let rules = rdm_kit::endpoint::dynamic(settings, "rdm.inventory.v1.TenantSettings")?;
    rdm_kit::rules::check(&rules, "")?;
    let query = settings
        .tr069
        .as_ref()
        .map_or("", |t| t.acs_device_query.as_str());
    if query.is_empty() {
        return Ok(());
    }
    let field = "tr069.acs_device_query";
    if query.len() > MAX_QUERY {
        return Err(Error::invalid(field, format!("at most {MAX_QUERY} bytes")));
    }
    match serde_json::from_str::<serde_json::Value>(query) {
        Ok(serde_json::Value::Object(o)) if !o.is_empty() => Ok(()),
        _ => Err(Error::invalid(
            field,
            "an ACS query is a non-empty JSON object, such as {\"_tags\":\"acme\"}",
        )),
    }
}

#[tonic::async_trait]
impl SettingsService for Inventory {
    async fn get_settings(
        &self,
        req: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::GetSettingsResponse>, Status> {
        let run = async {
            let p = Principal::of(&req)?;
            let mut tx = self.db().begin(Scope::of(p)).await?;
            let tenant = store::token_tenant(&mut tx, &p.tenant_id).await?;
            Ok(pb::GetSettingsResponse {
                settings: Some(shown(decode(&tenant.settings)?)),
            })
        };
        reply(run.await)
    }

    async fn update_settings(
        &self,
        req: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::UpdateSettingsResponse>, Status> {
        let run = async {
            let p = Principal::of(&req)?;
            let settings = req.get_ref().settings.clone().unwrap_or_default();
            check(&settings)?;
            let mut tx = self.db().begin_write(Scope::of(p)).await?;
            let mut tenant = store::token_tenant(&mut tx, &p.tenant_id).await?;
            let settings = self.sealed(&p.tenant_id, settings, &decode(&tenant.settings)?)?;
            tenant.settings = encode(&settings);
            store::update_tenant(&mut tx, &tenant).await?;
            tx.commit().await?;
            tracing::info!(tenant_id = %p.tenant_id, user_id = %p.user_id, "tenant settings changed");
            Ok(pb::UpdateSettingsResponse {
                settings: Some(shown(settings)),
            })
        };
        reply(run.await)
    }

    async fn get_identity_provider(
        &self,
        req: Request<pb::GetIdentityProviderRequest>,
    ) -> Result<Response<pb::GetIdentityProviderResponse>, Status> {
        let run = async {
            let p = Principal::of(&req)?;
            Ok(pb::GetIdentityProviderResponse {
                identity_provider: Some(self.get_identity_provider(p).await?),
            })
        };
        reply(run.await)
    }

    async fn update_identity_provider(
        &self,
        req: Request<pb::UpdateIdentityProviderRequest>,
    ) -> Result<Response<pb::UpdateIdentityProviderResponse>, Status> {
        let run = async {
            let p = Principal::of(&req)?;
            let idp = req.get_ref().identity_provider.clone().unwrap_or_default();
            let rules = rdm_kit::endpoint::dynamic(&idp, "rdm.inventory.v1.IdentityProvider")?;
            rdm_kit::rules::check(&rules, "")?;
            Ok(pb::UpdateIdentityProviderResponse {
                identity_provider: Some(self.update_identity_provider(p, idp).await?),
            })
        };
        reply(run.await)
    }

    async fn open_identity_provider(
        &self,
        req: Request<pb::OpenIdentityProviderRequest>,
    ) -> Result<Response<pb::OpenIdentityProviderResponse>, Status> {
        let run = async { self.open_identity_provider(Principal::of(&req)?).await };
        reply(run.await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdm_proto::tr069::Tr069Policy;

    fn with_query(q: &str) -> pb::TenantSettings {
        pb::TenantSettings {
            tr069: Some(Tr069Policy {
                acs_device_query: q.into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn settings_round_trip_and_empty_is_the_default() {
        assert_eq!(decode("").unwrap(), pb::TenantSettings::default());
        let s = with_query(r#"{"_tags":"acme"}"#);
        assert_eq!(decode(&encode(&s)).unwrap(), s);
    }

    #[test]
    fn an_acs_query_must_be_a_json_object() {
        assert!(check(&with_query(r#"{"_tags":"acme"}"#)).is_ok());
        for bad in ["[1]", "acme", "{}", "{\"a\":"] {
            let e = check(&with_query(bad)).unwrap_err();
            assert_eq!(e.field(), Some("tr069.acs_device_query"), "{bad}");
        }
    }
}
