//! The gRPC side: the gateway port speaks gRPC with the same token checks,
//! reflection lists every service, health follows the shutdown sequence.
use rdm_proto::inventory::{
    GetMeRequest, LoginRequest, auth_service_client::AuthServiceClient,
    user_service_client::UserServiceClient,
};
use rdm_tests::{ADMIN_PASSWORD, PgDatabase, SendJson, Store, TestMesh, spawn_serve, wait_for};
use std::time::{Duration, Instant};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

async fn list_services_v1(channel: Channel) -> Vec<String> {
    use v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("{reply:?}")
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service_on_gateway_and_service_ports() {
    let mesh = TestMesh::start(Store::Sqlite).await;
    for addr in [mesh.gateway, mesh.inventory] {
        let names = list_services_v1(channel(addr).await).await;
        for want in [
            "rdm.inventory.v1.AuthService",
            "rdm.inventory.v1.TenantService",
            "rdm.inventory.v1.UserService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{addr}: {want} missing from {names:?}"
            );
        }
    }
    // The gateway answers health for every service it routes.
    for service in ["rdm.inventory.v1.DeviceService", "rdm.snmp.v1.SnmpService"] {
        assert_eq!(
            health(channel(mesh.gateway).await, service).await.unwrap(),
            ServingStatus::Serving,
            "{service}"
        );
    }
    // v1alpha, which older grpcurl versions use, answers too, with file descriptors.
    use v1alpha::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel(mesh.gateway).await);
    // A service, and the error details a failed call carries, decode
    // through reflection.
    for symbol in ["rdm.inventory.v1.AuthService", "google.rpc.ErrorInfo"] {
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        let mut replies = client
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.message().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = reply.message_response else {
            panic!("{symbol}: {reply:?}")
        };
        assert!(!files.file_descriptor_proto.is_empty(), "{symbol}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_the_gateway_checks_tokens_like_rest() {
    let mesh = TestMesh::start(Store::Sqlite).await;
    let gw = channel(mesh.gateway).await;
    let mut auth = AuthServiceClient::new(gw.clone());
    let login = auth
        .login(LoginRequest {
            tenant: "demo".into(),
            username: "demo".into(),
            password: "demo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let me = auth
        .get_me(bearer(GetMeRequest {}, &login.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.username.as_str(), me.tenant_slug.as_str()),
        ("demo", "demo")
    );

    let err = auth.get_me(GetMeRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = auth
        .get_me(bearer(GetMeRequest {}, "not.a.token"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let bad = auth
        .login(LoginRequest {
            tenant: "demo".into(),
            username: "demo".into(),
            password: "wrong".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated);
    // Errors carry google.rpc.ErrorInfo with the reason and domain.
    let err = UserServiceClient::new(gw)
        .get_user(bearer(
            rdm_proto::inventory::GetUserRequest {
                user_id: "nope".into(),
            },
            &login.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let info = rdm_kit::Error::from_status(&err);
    assert_eq!(
        (info.code, info.domain.as_ref()),
        (rdm_kit::ErrorCode::NotFound, "rdm.inventory")
    );

    // The service's own port verifies tokens itself.
    let mut direct = AuthServiceClient::new(channel(mesh.inventory).await);
    assert_eq!(
        direct.get_me(GetMeRequest {}).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        direct
            .get_me(bearer(GetMeRequest {}, &login.access_token))
            .await
            .unwrap()
            .into_inner()
            .user_id,
        me.user_id
    );
}

async fn health(channel: Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(reply.into_inner().status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_health_not_serving_then_exits_within_the_drain_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let served = spawn_serve(
        "inventory",
        &[
            (
                "RDM_DATABASE_URL",
                format!("sqlite:{}", dir.path().join("inv.db").display()),
            ),
            ("RDM_JWT_KEY_FILE", token_key(dir.path())),
            ("RDM_SHUTDOWN_DELAY_MS", "1500".into()),
            ("RDM_DRAIN_TIMEOUT_MS", "2000".into()),
        ],
    )
    .await;
    let ch = wait_for(served.addr).await;
    let mut child = served.child;
    assert_eq!(
        health(ch.clone(), "").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        health(ch.clone(), "rdm.inventory.v1.AuthService")
            .await
            .unwrap(),
        ServingStatus::Serving
    );

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let signalled = Instant::now();
    let mut saw_not_serving = false;
    while signalled.elapsed() < Duration::from_millis(1200) {
        if health(ch.clone(), "").await.ok() == Some(ServingStatus::NotServing) {
            saw_not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        saw_not_serving,
        "health never said NOT_SERVING after SIGTERM"
    );
    // Still answering during the delay: in-flight and new calls are not cut.
    let login = AuthServiceClient::new(ch)
        .login(LoginRequest {
            tenant: "system".into(),
            username: "admin".into(),
            password: ADMIN_PASSWORD.into(),
        })
        .await;
    assert!(login.is_ok(), "{login:?}");
    let status = tokio::time::timeout(Duration::from_millis(1500 + 2000 + 3000), child.wait())
        .await
        .expect("exits within shutdown delay + drain deadline")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// The Kubernetes shape: the inventory and the gateway as separate processes
/// on PostgreSQL; the gateway holds no key and fetches the JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_inventory_and_gateway_as_separate_processes() {
    let pg = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let inventory = spawn_serve(
        "inventory",
        &[
            ("RDM_DATABASE_URL", pg.app_url.clone()),
            ("RDM_DATABASE_ADMIN_URL", pg.admin_url.clone()),
            ("RDM_JWT_KEY_FILE", token_key(dir.path())),
        ],
    )
    .await;
    let gateway = spawn_serve(
        "gateway",
        &[("RDM_INVENTORY_URL", format!("http://{}", inventory.addr))],
    )
    .await;
    let channel = wait_for(gateway.addr).await;

    let http = reqwest::Client::new();
    let base = gateway.url("");
    let login: serde_json::Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({"tenant": "system", "username": "admin", "password": ADMIN_PASSWORD}))
        .send_json()
        .await;
    let token = login["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{login}"));
    let me = http
        .get(format!("{base}/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), reqwest::StatusCode::OK);
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(
        (me["tenant_slug"].as_str(), me["roles"][0].as_str()),
        (Some("system"), Some("platform-admin"))
    );
    let forged = http
        .get(format!("{base}/v1/me"))
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), reqwest::StatusCode::UNAUTHORIZED);
    // And the same through gRPC on the gateway port.
    let mut auth = AuthServiceClient::new(channel);
    assert_eq!(
        auth.get_me(bearer(GetMeRequest {}, token))
            .await
            .unwrap()
            .into_inner()
            .username,
        "admin"
    );
}

/// A token signing key file, made as an operator makes one before `serve`.
fn token_key(dir: &std::path::Path) -> String {
    let path = dir.join("jwt.pem");
    rdm_kit::auth::SigningKey::load_or_create(&path).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_to_invent_a_missing_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-key.pem");
    for role in ["inventory", "snmp"] {
        let var = if role == "inventory" {
            "RDM_JWT_KEY_FILE"
        } else {
            "RDM_SERVICE_KEY_FILE"
        };
        let out = tokio::process::Command::new(rdm_tests::rdm_binary())
            .args(["serve", role, "--listen", "127.0.0.1:0"])
            .env(var, &missing)
            .env(
                "RDM_DATABASE_URL",
                format!("sqlite:{}", dir.path().join("inv.db").display()),
            )
            .env("RDM_SECRET_KEY", rdm_kit::secrets::generate_key())
            .env("RDM_LOG", "error")
            .output()
            .await
            .unwrap();
        assert!(
            !out.status.success(),
            "{role} with a made-up key would reject every token or actor"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no-such-key.pem"),
            "{role}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!missing.exists(), "no key was created");
    }
}

/// A gRPC-Web frame: flag, big-endian length, message.
fn grpc_web_frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Browsers call gRPC through the gateway port as gRPC-Web (HTTP/1.1, the
/// status in a trailer frame of the body), with the same token check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_through_the_gateway() {
    use prost::Message;
    let mesh = TestMesh::start(Store::Sqlite).await;
    let token = mesh.token("demo", "demo", "demo").await;
    let call = |token: Option<&str>| {
        let mut req = mesh
            .http
            .post(mesh.url("/rdm.inventory.v1.AuthService/GetMe"))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(grpc_web_frame(
                0,
                &rdm_proto::inventory::GetMeRequest {}.encode_to_vec(),
            ));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send()
    };
    let resp = call(Some(&token)).await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc-web"),
        "{:?}",
        resp.headers()
    );
    let body = resp.bytes().await.unwrap();
    // A message frame, then the trailers frame (flag 0x80).
    assert_eq!(body[0], 0, "a message first");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let me = rdm_proto::inventory::GetMeResponse::decode(&body[5..5 + len]).unwrap();
    assert_eq!(me.username, "demo");
    let trailers = String::from_utf8_lossy(&body[5 + len + 5..]).to_lowercase();
    assert_eq!(body[5 + len], 0x80, "then the trailers");
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // No token: UNAUTHENTICATED, as over gRPC.
    let resp = call(None).await.unwrap();
    let status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.bytes().await.unwrap();
    let in_body = String::from_utf8_lossy(&body).to_lowercase();
    assert!(
        status.as_deref() == Some("16") || in_body.contains("grpc-status:16"),
        "{status:?} {in_body}"
    );
}
