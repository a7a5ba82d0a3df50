//! Calls from one service to another: the caller's token and trace context
//! go along, so the callee verifies the same principal and the trace goes on;
//! for internal RPCs, the calling service's actor token too.
use crate::{
    Result,
    auth::{ACTOR_HEADER, Principal, SigningKey},
    telemetry::TraceParent,
};
use tonic::{metadata::MetadataValue, service::Interceptor};

/// Adds `authorization`, `traceparent` and, when acting, the actor token to
/// every outgoing call.
#[derive(Clone)]
pub struct Forward {
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    traceparent: Option<MetadataValue<tonic::metadata::Ascii>>,
    actor: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Forward {
    /// `trace` left out: the trace of the request being served, if any.
    pub fn new(principal: Option<&Principal>, trace: Option<&TraceParent>) -> Self {
        let trace = trace.cloned().or_else(TraceParent::current);
        Self {
            authorization: principal.and_then(|p| format!("Bearer {}", p.bearer()).parse().ok()),
            traceparent: trace.and_then(|t| t.0.parse().ok()),
            actor: None,
        }
    }

    /// As `service` acting for `principal` (for internal RPCs such as the
    /// inventory's ResolveTarget), signed with the service's key.
    pub fn acting(
        service: &str,
        key: &SigningKey,
        principal: &Principal,
        trace: Option<&TraceParent>,
    ) -> Result<Self> {
        let token = key.actor_token(service, principal)?;
        Ok(Self {
            actor: token.parse().ok(),
            ..Self::new(Some(principal), trace)
        })
    }

    /// As `service` acting on its own for user `user_id` of `tenant_id`,
    /// with no token of the user's (for the inventory's `service` RPCs).
    pub fn service(
        service: &str,
        key: &SigningKey,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Self> {
        Ok(Self {
            actor: key
                .actor_token_for(service, tenant_id, user_id)?
                .parse()
                .ok(),
            ..Self::new(None, None)
        })
    }

    /// For the handler of `request`: its principal and trace context.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        Self::new(request.extensions().get(), request.extensions().get())
    }
}

impl Interceptor for Forward {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.authorization {
            request.metadata_mut().insert("authorization", v.clone());
        }
        if let Some(v) = &self.traceparent {
            request.metadata_mut().insert("traceparent", v.clone());
        }
        if let Some(v) = &self.actor {
            request.metadata_mut().insert(ACTOR_HEADER, v.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Claims, SigningKey, TokenPolicy, Verifier};

    #[test]
    fn forwards_the_callers_token_and_trace() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(&dir.path().join("k.pem")).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: "u".into(),
            tid: "t".into(),
            roles: vec!["viewer".into()],
            iat: now,
            exp: now + 60,
            iss: "rdm".into(),
            aud: "rdm".into(),
            jti: "j".into(),
            sid: "s".into(),
        };
        let token = key.sign(&claims).unwrap();
        let verifier = Verifier::new(&[key.public_jwk().clone()], &TokenPolicy::default()).unwrap();
        let principal = verifier.verify(&token).unwrap();
        let trace = TraceParent::new_root();
        let req = Forward::new(Some(&principal), Some(&trace))
            .call(tonic::Request::new(()))
            .unwrap();
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            &format!("Bearer {token}")
        );
        assert_eq!(req.metadata().get("traceparent").unwrap(), trace.0.as_str());
        let bare = Forward::new(None, None)
            .call(tonic::Request::new(()))
            .unwrap();
        assert!(bare.metadata().is_empty());
    }

    #[tokio::test]
    async fn calls_made_while_serving_a_request_carry_its_trace() {
        let trace = TraceParent::new_root();
        let sent = trace
            .clone()
            .serving(async {
                Forward::new(None, None)
                    .call(tonic::Request::new(()))
                    .unwrap()
            })
            .await;
        assert_eq!(
            sent.metadata().get("traceparent").unwrap(),
            trace.0.as_str()
        );
    }
}
