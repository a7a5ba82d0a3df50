//! rdm gateway: one port that serves every RPC as REST/JSON (transcoded by
//! the `google.api.http` annotations) and as gRPC (proxied by service name),
//! checks bearer tokens for both, and publishes OpenAPI and Swagger UI.
//! It knows no service by hand: routes, access rules and schemas all come
//! from the descriptor set.
mod openapi;
mod routes;
mod transcode;

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, Method, header},
    middleware::from_fn,
    response::{IntoResponse, Response},
    routing::get,
};
use rdm_kit::{
    Error, ErrorCode,
    auth::{ACTOR_HEADER, Access, AccessTable, ApiKeys, Verifier},
    invoke::Backend,
    server::grpc_error,
};
use std::{collections::HashMap, sync::Arc};
use tower::{Layer, ServiceExt};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
};

pub use openapi::document as openapi_document;

/// Gateway settings.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Largest REST request body, in bytes.
    #[arg(long, env = "RDM_BODY_LIMIT", default_value_t = 1 << 20)]
    pub body_limit: usize,
    /// Largest file a REST call takes as its body (a MIB archive, a data
    /// model's XML), in bytes.
    #[arg(long, env = "RDM_UPLOAD_LIMIT", default_value_t = 32 << 20)]
    pub upload_limit: usize,
    /// Browser origins allowed by CORS, comma-separated ("*" for any).
    #[arg(long, env = "RDM_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            body_limit: 1 << 20,
            upload_limit: 32 << 20,
            cors_origins: Vec::new(),
        }
    }
}

pub(crate) struct Gateway {
    bindings: Vec<routes::Binding>,
    /// By proto package (`rdm.inventory.v1`).
    backends: HashMap<String, Backend>,
    access: AccessTable,
    verifier: Verifier,
    api_keys: ApiKeys,
    body_limit: usize,
    upload_limit: usize,
    openapi: String,
}

impl Gateway {
    fn backend(&self, package: &str) -> Result<Backend, Error> {
        self.backends.get(package).cloned().ok_or_else(|| {
            Error::new(
                ErrorCode::Unavailable,
                format!("no backend serves {package}"),
            )
        })
    }
}

/// The gateway's router; `backends` maps proto packages to the services
/// that serve them.
pub fn router(
    config: &Config,
    backends: HashMap<String, Backend>,
    verifier: Verifier,
    api_keys: ApiKeys,
) -> anyhow::Result<Router> {
    let pool = rdm_proto::descriptor_pool();
    let access = AccessTable::from_pool(pool);
    let exposed = |rpc: &prost_reflect::MethodDescriptor| {
        let path = format!("/{}/{}", rpc.parent_service().full_name(), rpc.name());
        !access.get(&path).is_some_and(Access::internal)
    };
    let bindings = routes::bindings(pool, exposed).map_err(anyhow::Error::msg)?;
    let openapi = serde_json::to_string_pretty(&openapi::document())?;
    let gateway = Arc::new(Gateway {
        bindings,
        backends,
        access,
        verifier,
        api_keys,
        body_limit: config.body_limit,
        upload_limit: config.upload_limit,
        openapi,
    });
    let docs = swagger_ui_dist::generate_routes(swagger_ui_dist::ApiDefinition {
        uri_prefix: "/docs",
        api_definition: swagger_ui_dist::OpenApiSource::Uri("/openapi.json"),
        title: Some("rdm API"),
    });
    let inner = Router::new()
        .route("/openapi.json", get(serve_openapi))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(dispatch)
        .with_state(gateway)
        .merge(docs)
        .layer(from_fn(rdm_kit::telemetry::observe));
    // Browsers' gRPC (gRPC-Web, binary or base64 text) becomes gRPC first;
    // everything else goes on as it came (tonic-web refuses HTTP/1.1 that
    // is not gRPC-Web).
    let web = tonic_web::GrpcWebLayer::new().layer(inner.clone());
    let steer = tower::service_fn(move |req: Request| {
        let (inner, web) = (inner.clone(), web.clone());
        async move {
            let grpc_web = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("application/grpc-web"));
            let response = if grpc_web {
                web.oneshot(req).await.into_response()
            } else {
                inner.oneshot(req).await.into_response()
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut router = Router::new()
        .fallback_service(steer)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    if let Some(cors) = cors(&config.cors_origins)? {
        router = router.layer(cors);
    }
    Ok(router)
}

fn cors(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    let origins: Vec<&String> = origins.iter().filter(|o| !o.trim().is_empty()).collect();
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o.trim() == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .map(|o| HeaderValue::from_str(o.trim()))
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                "traceparent".parse()?,
                "x-request-id".parse()?,
                // gRPC-Web clients send these.
                "x-grpc-web".parse()?,
                "x-user-agent".parse()?,
                "grpc-timeout".parse()?,
            ])
            .expose_headers([
                "x-request-id".parse()?,
                "grpc-status".parse()?,
                "grpc-message".parse()?,
                "grpc-status-details-bin".parse()?,
            ]),
    ))
}

async fn serve_openapi(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        gw.openapi.clone(),
    )
        .into_response()
}

async fn dispatch(State(gw): State<Arc<Gateway>>, mut req: Request) -> Response {
    let grpc = rdm_kit::server::is_grpc(req.headers());
    // The client's address is the connection's: never one a client claims.
    req.headers_mut().remove(rdm_kit::server::CLIENT_IP_HEADER);
    if let Err(err) = rdm_kit::server::exchange_api_key(&gw.api_keys, &mut req).await {
        return if grpc {
            grpc_error(err)
        } else {
            transcode::problem(&err, transcode::request_id(req.headers()).as_deref())
        };
    }
    if grpc {
        proxy(&gw, req).await
    } else {
        transcode::handle(&gw, req).await
    }
}

/// Forwards a gRPC call to the service that owns it, after the same token
/// check as REST. Internal RPCs are not reachable from outside.
async fn proxy(gw: &Gateway, mut req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let service = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    // The access table knows every rdm method; internal ones are not ours to route.
    let (Some(service), Some(access)) = (
        rdm_proto::descriptor_pool().get_service_by_name(service),
        gw.access.get(&path),
    ) else {
        return grpc_error(Error::new(
            ErrorCode::Unimplemented,
            format!("unknown method {path}"),
        ));
    };
    if access.internal() {
        return grpc_error(Error::new(
            ErrorCode::Unimplemented,
            format!("unknown method {path}"),
        ));
    }
    // Actor tokens are minted inside the mesh, never accepted from outside,
    // and the client's address is the one this connection comes from.
    req.headers_mut().remove(ACTOR_HEADER);
    if let Some(ip) = rdm_kit::server::peer_ip(req.extensions()).and_then(|ip| ip.parse().ok()) {
        req.headers_mut()
            .insert(rdm_kit::server::CLIENT_IP_HEADER, ip);
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(err) = gw
        .access
        .authorize(&gw.verifier, &path, authorization, None)
    {
        return grpc_error(err);
    }
    let backend = match gw.backend(service.package_name()) {
        Ok(b) => b,
        Err(err) => return grpc_error(err),
    };
    match backend.oneshot(req.map(tonic::body::Body::new)).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => grpc_error(Error::new(
            ErrorCode::Unavailable,
            format!("backend call failed: {e}"),
        )),
    }
}
