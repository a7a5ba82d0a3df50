//! Target resolution: only a service acting for the caller gets a device's
//! secrets, and every address passes the address policy.
use rdm_kit::auth::{Principal, SigningKey, TokenPolicy, Verifier};
use rdm_proto::inventory::{
    ResolveTargetRequest, ResolveTargetsRequest, device_service_client::DeviceServiceClient,
    resolve_target_request::Target, resolved_target,
};
use rdm_tests::{TestMesh, on_both_stores};
use reqwest::StatusCode;
use serde_json::json;
use tonic::{Code, transport::Channel};

on_both_stores!(
    resolving_needs_a_service_acting_for_the_caller,
    every_target_passes_the_address_policy
);

fn principal(mesh: &TestMesh, token: &str) -> Principal {
    let key = mesh.signing_key();
    Verifier::new(&[key.public_jwk().clone()], &TokenPolicy::default())
        .unwrap()
        .verify(token)
        .unwrap()
}

fn service_key(mesh: &TestMesh) -> SigningKey {
    SigningKey::load_or_create(&mesh.data_dir.join("service-ed25519.pem")).unwrap()
}

async fn resolve(
    channel: Channel,
    token: &str,
    actor: Option<&str>,
    target: Target,
) -> Result<rdm_proto::inventory::ResolveTargetResponse, tonic::Status> {
    let mut req = tonic::Request::new(ResolveTargetRequest {
        protocol: "snmp".into(),
        target: Some(target),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(actor) = actor {
        req.metadata_mut()
            .insert("x-rdm-actor", actor.parse().unwrap());
    }
    DeviceServiceClient::new(channel)
        .resolve_target(req)
        .await
        .map(tonic::Response::into_inner)
}

/// ResolveTargets for `ids`: per id, the community or the error code.
async fn resolve_many(
    channel: Channel,
    token: &str,
    actor: Option<&str>,
    ids: &[&str],
) -> Result<Vec<String>, tonic::Status> {
    let mut req = tonic::Request::new(ResolveTargetsRequest {
        protocol: "snmp".into(),
        device_ids: ids.iter().map(|id| id.to_string()).collect(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(actor) = actor {
        req.metadata_mut()
            .insert("x-rdm-actor", actor.parse().unwrap());
    }
    let reply = DeviceServiceClient::new(channel)
        .resolve_targets(req)
        .await?
        .into_inner();
    Ok(reply
        .targets
        .into_iter()
        .map(|t| match t.result {
            Some(resolved_target::Result::Target(t)) => {
                let (_, config) = rdm_kit::endpoint::settings_json(&t.endpoint.unwrap()).unwrap();
                config["community"].as_str().unwrap_or_default().to_owned()
            }
            Some(resolved_target::Result::Error(e)) => e.code,
            None => "none".into(),
        })
        .collect())
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn resolving_needs_a_service_acting_for_the_caller(mesh: TestMesh) {
    let token = mesh.token("demo", "demo", "demo").await;
    let (_, device) = mesh
        .post(
            "/v1/devices",
            &token,
            json!({"name": "agent", "address": "127.0.0.1"}),
        )
        .await;
    let id = device["id"].as_str().unwrap().to_owned();
    let put = mesh
        .call(
            reqwest::Method::PUT,
            &format!("/v1/devices/{id}/endpoints/snmp"),
            Some(&token),
            Some(json!({"version": "2c", "community": "resolve-secret", "port": 11161})),
        )
        .await;
    assert_eq!(put.0, StatusCode::OK, "{}", put.1);
    let inventory = channel(mesh.inventory).await;
    let device_target = || Target::DeviceId(id.clone());

    let plain = resolve(inventory.clone(), &token, None, device_target())
        .await
        .unwrap_err();
    assert_eq!(
        plain.code(),
        Code::PermissionDenied,
        "a plain user token is refused: {plain:?}"
    );

    let me = principal(&mesh, &token);
    let actor = service_key(&mesh).actor_token("snmp", &me).unwrap();
    let resolved = resolve(inventory.clone(), &token, Some(&actor), device_target())
        .await
        .unwrap();
    let (_, config) = rdm_kit::endpoint::settings_json(&resolved.endpoint.unwrap()).unwrap();
    assert_eq!(
        config["community"], "resolve-secret",
        "the service gets the secret"
    );
    assert_eq!(
        (config["host"].as_str(), config["port"].as_f64()),
        (Some("127.0.0.1"), Some(11161.0))
    );

    // A service acting for a caller of another tenant, with this caller's token.
    let (_, other) = mesh.tenant_with_admin("targets-b").await;
    let other_actor = service_key(&mesh)
        .actor_token("snmp", &principal(&mesh, &other))
        .unwrap();
    let err = resolve(
        inventory.clone(),
        &token,
        Some(&other_actor),
        device_target(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // That other tenant's own caller and service cannot see this device.
    let err = resolve(
        inventory.clone(),
        &other,
        Some(&other_actor),
        device_target(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // An actor token from a key the inventory does not trust.
    let dir = tempfile::tempdir().unwrap();
    let stranger = SigningKey::load_or_create(&dir.path().join("k.pem"))
        .unwrap()
        .actor_token("snmp", &me)
        .unwrap();
    let err = resolve(inventory.clone(), &token, Some(&stranger), device_target())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Many at once: the same checks, an answer per id, nothing of another tenant.
    let plain = resolve_many(inventory.clone(), &token, None, &[&id])
        .await
        .unwrap_err();
    assert_eq!(plain.code(), Code::PermissionDenied, "{plain:?}");
    let (_, bare) = mesh
        .post("/v1/devices", &token, json!({"name": "bare"}))
        .await;
    let bare = bare["id"].as_str().unwrap();
    let results = resolve_many(
        inventory.clone(),
        &token,
        Some(&actor),
        &[&id, "missing", bare],
    )
    .await
    .unwrap();
    assert_eq!(results, ["resolve-secret", "NOT_FOUND", "NOT_FOUND"]);
    let err = resolve_many(inventory.clone(), &token, Some(&other_actor), &[&id])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let results = resolve_many(inventory.clone(), &other, Some(&other_actor), &[&id])
        .await
        .unwrap();
    assert_eq!(
        results,
        ["NOT_FOUND"],
        "another tenant's device is not found"
    );

    // The gateway does not expose it at all, with or without an actor token.
    let err = resolve(
        channel(mesh.gateway).await,
        &token,
        Some(&actor),
        device_target(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let openapi = mesh
        .http
        .get(mesh.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!openapi.contains("ResolveTarget"));
}

/// One policy for every target: the platform deny list (loopback,
/// link-local and metadata, ...) unless a platform admin allowed the network
/// to the tenant, and never rdm's own listeners. Checked when an address is
/// stored and again when it is resolved to connect.
async fn every_target_passes_the_address_policy(mesh: TestMesh) {
    let inventory = channel(mesh.inventory).await;
    let inline = |address: &str| {
        let settings = json!({"host": address, "version": "2c", "community": "c"});
        Target::Inline(rdm_proto::inventory::Endpoint {
            settings: Some(
                rdm_kit::endpoint::typed("snmp", settings.as_object().unwrap()).unwrap(),
            ),
            ..Default::default()
        })
    };
    let actor_for = |token: &str| {
        service_key(&mesh)
            .actor_token("snmp", &principal(&mesh, token))
            .unwrap()
    };

    // A new tenant: loopback and metadata refused, other networks allowed.
    let (tenant_id, token) = mesh.tenant_with_admin("policy-b").await;
    let actor = actor_for(&token);
    for (address, rule) in [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("[fd00:ec2::254]", "cloud metadata"),
    ] {
        let err = resolve(inventory.clone(), &token, Some(&actor), inline(address))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{address}: {err:?}");
        let (status, problem) = mesh
            .post(
                "/v1/devices",
                &token,
                json!({"name": format!("d-{rule}"), "address": address}),
            )
            .await;
        assert_eq!(
            (status, problem["rule"].as_str(), problem["field"].as_str()),
            (StatusCode::FORBIDDEN, Some(rule), Some("address")),
            "{address}: {problem}"
        );
    }
    let ok = resolve(inventory.clone(), &token, Some(&actor), inline("10.1.2.3"))
        .await
        .unwrap();
    assert_eq!(ok.address, "10.1.2.3");
    // Every host in endpoint settings, URLs included.
    let (_, device) = mesh
        .post(
            "/v1/devices",
            &token,
            json!({"name": "cpe", "address": "192.0.2.7"}),
        )
        .await;
    let id = device["id"].as_str().unwrap();
    for (protocol, body, field) in [
        (
            "snmp",
            json!({"host": "127.0.0.1", "version": "2c", "community": "c"}),
            "host",
        ),
        (
            "webpa",
            json!({"base_url": "http://169.254.169.254/latest", "device_id": "mac:1"}),
            "base_url",
        ),
        (
            "usp",
            json!({"endpoint_id": "os::1", "transport": "mqtt", "mqtt": {"broker_url": "mqtt://localhost:1883", "agent_topic": "usp/agent"}}),
            "mqtt.broker_url",
        ),
    ] {
        let (status, problem) = mesh
            .call(
                reqwest::Method::PUT,
                &format!("/v1/devices/{id}/endpoints/{protocol}"),
                Some(&token),
                Some(body),
            )
            .await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (StatusCode::FORBIDDEN, Some(field)),
            "{protocol}: {problem}"
        );
    }

    // The platform admin allows loopback: stored and resolved, to the IP.
    let (status, problem) = mesh
        .patch(
            &format!("/v1/tenants/{tenant_id}"),
            &mesh.admin_token().await,
            json!({"allowed_target_cidrs": ["10.0.0.0/33"]}),
        )
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("allowed_target_cidrs"))
    );
    mesh.allow_targets(&tenant_id, &["127.0.0.0/8"]).await;
    let (status, named) = mesh
        .post(
            "/v1/devices",
            &token,
            json!({"name": "named", "address": "localhost"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{named}");
    let named = named["id"].as_str().unwrap();
    let (status, _) = mesh
        .call(
            reqwest::Method::PUT,
            &format!("/v1/devices/{named}/endpoints/snmp"),
            Some(&token),
            Some(json!({"version": "2c", "community": "c"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let resolved = resolve(
        inventory.clone(),
        &token,
        Some(&actor),
        Target::DeviceId(named.into()),
    )
    .await
    .unwrap();
    assert_eq!(resolved.address, "127.0.0.1", "the vetted IP, not the name");
    assert_eq!(resolved.allowed_target_cidrs, ["127.0.0.0/8"]);
    // rdm's own ports stay refused, loopback allowed or not.
    let (status, problem) = mesh
        .call(
            reqwest::Method::PUT,
            &format!("/v1/devices/{named}/endpoints/webpa"),
            Some(&token),
            Some(json!({"base_url": format!("http://127.0.0.1:{}/v1", mesh.gateway.port()), "device_id": "mac:1"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("rdm's own listeners"),
        "{problem}"
    );

    // Allowed when stored, refused when resolved after the allowance is gone.
    mesh.allow_targets(&tenant_id, &[]).await;
    let err = resolve(
        inventory,
        &token,
        Some(&actor),
        Target::DeviceId(named.into()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("loopback"), "{err:?}");
}
