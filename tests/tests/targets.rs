//! Target resolution: only a service acting for the caller gets a device's
//! secrets, and inline addresses follow the tenant's allow-list.
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
    inline_targets_follow_the_tenant_allow_list
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
                let config = rdm_kit::endpoint::structs::to_json(&t.config.unwrap());
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
    let config = rdm_kit::endpoint::structs::to_json(&resolved.config.unwrap());
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

async fn inline_targets_follow_the_tenant_allow_list(mesh: TestMesh) {
    let token = mesh.token("demo", "demo", "demo").await;
    let actor = service_key(&mesh)
        .actor_token("snmp", &principal(&mesh, &token))
        .unwrap();
    let inventory = channel(mesh.inventory).await;
    let inline = |address: &str| Target::InlineAddress(address.to_owned());

    let ok = resolve(inventory.clone(), &token, Some(&actor), inline("127.0.0.1"))
        .await
        .unwrap();
    assert_eq!(ok.address, "127.0.0.1");
    let named = resolve(inventory.clone(), &token, Some(&actor), inline("localhost"))
        .await
        .unwrap();
    assert!(
        named.address == "127.0.0.1" || named.address == "::1",
        "{}",
        named.address
    );
    let err = resolve(inventory.clone(), &token, Some(&actor), inline("10.1.2.3"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "the demo allows loopback only: {err:?}"
    );

    // A new tenant has inline targets off until the platform admin opens some.
    let (tenant_id, other) = mesh.tenant_with_admin("inline-b").await;
    let other_actor = service_key(&mesh)
        .actor_token("snmp", &principal(&mesh, &other))
        .unwrap();
    let err = resolve(
        inventory.clone(),
        &other,
        Some(&other_actor),
        inline("127.0.0.1"),
    )
    .await
    .unwrap_err();
    assert!(
        err.code() == Code::PermissionDenied && err.message().contains("off"),
        "{err:?}"
    );
    let admin = mesh.admin_token().await;
    let (status, problem) = mesh
        .patch(
            &format!("/v1/tenants/{tenant_id}"),
            &admin,
            json!({"inline_target_cidrs": ["10.0.0.0/33"]}),
        )
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("inline_target_cidrs"))
    );
    let (status, tenant) = mesh
        .patch(
            &format!("/v1/tenants/{tenant_id}"),
            &admin,
            json!({"inline_target_cidrs": ["10.0.0.0/8"]}),
        )
        .await;
    assert_eq!(
        (status, &tenant["inline_target_cidrs"]),
        (StatusCode::OK, &json!(["10.0.0.0/8"])),
        "{tenant}"
    );
    let ok = resolve(
        inventory.clone(),
        &other,
        Some(&other_actor),
        inline("10.1.2.3"),
    )
    .await
    .unwrap();
    assert_eq!(ok.address, "10.1.2.3");
    let err = resolve(inventory, &other, Some(&other_actor), inline("127.0.0.1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}
