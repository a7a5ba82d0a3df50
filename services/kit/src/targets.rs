//! A protocol service's side of target resolution: a request names a device
//! of the caller's tenant or gives settings inline, and the inventory (acting
//! for the caller, with this service's actor token) answers with the
//! endpoint, its secrets opened, and the host vetted by the address policy.
use crate::{
    Error, ErrorCode, Principal, Result, auth::SigningKey, client::Forward, invoke::Backend,
};
use rdm_proto::inventory::{
    self as inv, device_service_client::DeviceServiceClient, endpoint::Settings,
    resolve_target_request,
};
use std::sync::Arc;

/// What a request names: one of the tenant's devices, or settings inline.
pub enum TargetRef {
    Device(String),
    Inline(Box<Settings>),
    /// The device whose usp endpoint names this agent endpoint id.
    UspAgent(String),
}

/// The inventory as a protocol service reaches it.
#[derive(Clone)]
pub struct Inventory {
    pub backend: Backend,
    /// Signs this service's actor tokens for the inventory's internal RPCs.
    pub service_key: Arc<SigningKey>,
    /// The service's name in its actor tokens, and the protocol it resolves.
    pub protocol: &'static str,
}

impl Inventory {
    fn client(
        &self,
        p: &Principal,
    ) -> Result<
        DeviceServiceClient<tonic::service::interceptor::InterceptedService<Backend, Forward>>,
    > {
        let forward = Forward::acting(self.protocol, &self.service_key, p, None)?;
        Ok(DeviceServiceClient::with_interceptor(
            self.backend.clone(),
            forward,
        ))
    }

    /// The endpoint a request names, for `p`'s tenant. Errors in inline
    /// settings name their field under `target.endpoint`.
    pub async fn resolve(
        &self,
        p: &Principal,
        target: TargetRef,
    ) -> Result<inv::ResolveTargetResponse> {
        let inline = matches!(target, TargetRef::Inline(_));
        let target = match target {
            TargetRef::Device(id) => resolve_target_request::Target::DeviceId(id),
            TargetRef::Inline(settings) => resolve_target_request::Target::Inline(inv::Endpoint {
                protocol: self.protocol.to_owned(),
                settings: Some(*settings),
                ..Default::default()
            }),
            TargetRef::UspAgent(id) => resolve_target_request::Target::UspEndpointId(id),
        };
        let reply = self
            .client(p)?
            .resolve_target(inv::ResolveTargetRequest {
                protocol: self.protocol.to_owned(),
                target: Some(target),
            })
            .await
            .map_err(|s| Error::from_status(&s));
        match reply {
            Ok(reply) => Ok(reply.into_inner()),
            Err(e) if inline => Err(in_target(e)),
            Err(e) => Err(e),
        }
    }

    /// User `user_id` of `tenant_id` as a caller, with the roles they have
    /// now (a one-minute token the inventory issues to this service), for
    /// work done for a user who is not calling.
    pub async fn user(
        &self,
        verifier: &crate::auth::Verifier,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Principal> {
        let forward = Forward::service(self.protocol, &self.service_key, tenant_id, user_id)?;
        let mut client =
            rdm_proto::inventory::auth_service_client::AuthServiceClient::with_interceptor(
                self.backend.clone(),
                forward,
            );
        let token = client
            .issue_user_token(inv::IssueUserTokenRequest {})
            .await
            .map_err(|s| Error::from_status(&s))?
            .into_inner()
            .access_token;
        verifier.verify(&token)
    }

    /// Many devices of `p`'s tenant, the inventory's answer for each, in
    /// order: one call per thousand.
    pub async fn resolve_devices(
        &self,
        p: &Principal,
        ids: &[String],
    ) -> Result<Vec<Result<inv::ResolveTargetResponse>>> {
        let mut client = self.client(p)?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            let reply = client
                .resolve_targets(inv::ResolveTargetsRequest {
                    protocol: self.protocol.to_owned(),
                    device_ids: chunk.to_vec(),
                })
                .await
                .map_err(|s| Error::from_status(&s))?
                .into_inner();
            if reply.targets.len() != chunk.len() {
                return Err(Error::internal(
                    "resolving devices",
                    format!(
                        "{} results for {} devices",
                        reply.targets.len(),
                        chunk.len()
                    ),
                ));
            }
            for resolved in reply.targets {
                out.push(match resolved.result {
                    Some(inv::resolved_target::Result::Target(t)) => Ok(t),
                    Some(inv::resolved_target::Result::Error(e)) => {
                        let code = ErrorCode::from_reason(&e.code);
                        Err(Error::new(code.unwrap_or(ErrorCode::Internal), e.message))
                    }
                    None => Err(Error::internal("resolving devices", "an empty result")),
                });
            }
        }
        Ok(out)
    }
}

/// Field names of an inline endpoint are reported under `target.endpoint`.
fn in_target(mut e: Error) -> Error {
    if let Some(field) = e.metadata.get_mut("field") {
        *field = format!("target.endpoint.{field}");
    }
    e
}
