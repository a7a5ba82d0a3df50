//! `rdm up --demo`: simulated devices to manage, and the demo tenant's
//! devices pointing at them. Their ports are picked at each start, so the
//! devices' endpoints are set again each time.
//!
//! Each demo device has a simulated SNMP agent and is reachable through a
//! simulated XMiDT server (WebPA) under its XMiDT id; `demo-hg630` is a
//! simulated Huawei HG630 router; `demo-tr069-1` to `-3` are CPEs of a
//! simulated ACS (GenieACS NBI), the third offline; `demo-usp-1` and `-2`
//! are simulated USP agents on the MQTT broker at `RDM_USP_MQTT_URL`
//! (mqtt://127.0.0.1:1883 by default), when one answers there. Tenant
//! `mellophone-demo` signs its users in through a simulated Mellophone
//! server.
use anyhow::Context;
use rdm_kit::invoke::Backend;
use rdm_proto::inventory::{
    CreateDeviceRequest, IdentityProvider, ListDevicesRequest, LoginRequest, PutEndpointRequest,
    UpdateIdentityProviderRequest, auth_service_client::AuthServiceClient,
    device_service_client::DeviceServiceClient, put_endpoint_request,
    settings_service_client::SettingsServiceClient,
};
use rdm_proto::{
    hg630::Hg630Endpoint,
    mellophone::{MellophoneSettings, RoleRule},
    rdm::api::v1::HttpAuth,
    snmp::SnmpEndpoint,
    tr069::Tr069Endpoint,
    usp_v1::{UspEndpoint, UspMqtt},
    webpa::WebpaEndpoint,
};
use rdm_sims::{
    acs::{self, AcsSim, CpeSpec, Model},
    hg630::{self, Hg630Sim},
    mellophone::{self, MellophoneSim},
    snmp_agent::{self, SnmpAgent},
    usp_agent::{self, UspAgent},
    webpa::{self, WebpaSim},
};
use std::collections::HashMap;

/// The demo's devices: name, site label, where they are said to be, and
/// their XMiDT id.
const DEVICES: [(&str, &str, &str, &str); 2] = [
    ("demo-cpe-1", "ams", "Amsterdam, rack 1", "mac:112233445566"),
    ("demo-cpe-2", "lon", "London, cabinet 7", "mac:112233445567"),
];

/// The demo CPEs' bootstrap credentials on rdm's own ACS (the README's).
pub const CWMP_USER: &str = "demo-cpe";
pub const CWMP_PASSWORD: &str = "demo-cpe-password";

/// Tasks that stop when dropped (the demo CPEs' periodic informs).
struct Running(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The simulators the demo devices point at; they stop when dropped.
pub struct Sims {
    _cwmp: Running,
    _agents: Vec<SnmpAgent>,
    _webpa: WebpaSim,
    _router: Hg630Sim,
    _acs: AcsSim,
    _mellophone: MellophoneSim,
    _usp: Vec<UspAgent>,
}

type Devices = DeviceServiceClient<
    tonic::service::interceptor::InterceptedService<
        Backend,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>,
    >,
>;

/// The id of the demo device `request` names: the one there, or a new one.
async fn device_id(
    devices: &mut Devices,
    existing: &HashMap<String, String>,
    request: CreateDeviceRequest,
) -> anyhow::Result<String> {
    if let Some(id) = existing.get(&request.name) {
        return Ok(id.clone());
    }
    Ok(devices
        .create_device(request)
        .await?
        .into_inner()
        .device
        .context("a created device")?
        .id)
}

/// Simulated USP agents and the demo devices pointing at them: one that
/// is a WebSocket server (rdm connects to it), and two on the broker at
/// `RDM_USP_MQTT_URL` (none, said so, when no broker answers).
async fn usp_agents(
    devices: &mut Devices,
    existing: &HashMap<String, String>,
) -> anyhow::Result<Vec<UspAgent>> {
    let ws = usp_agent::serve_websocket("os::012345-DEMOWS000001").await?;
    let endpoint = UspEndpoint {
        transport: Some("websocket".into()),
        endpoint_id: Some(ws.endpoint_id.clone()),
        websocket_url: Some(ws.websocket_url.clone()),
        timeout_ms: 5000,
        ..Default::default()
    };
    let model = "simulated USP agent (WebSocket)";
    usp_device(
        devices,
        existing,
        "demo-usp-ws",
        "DEMOWS000001",
        model,
        endpoint,
    )
    .await?;
    let mut agents = vec![ws];
    let url = std::env::var("RDM_USP_MQTT_URL").unwrap_or("mqtt://127.0.0.1:1883".into());
    let parsed: url::Url = url.parse().context("RDM_USP_MQTT_URL")?;
    let (host, port) = (
        parsed.host_str().unwrap_or("127.0.0.1").to_owned(),
        parsed.port().unwrap_or(1883),
    );
    let reachable = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await;
    if !matches!(reachable, Ok(Ok(_))) {
        tracing::warn!(%url, "no MQTT broker answers at RDM_USP_MQTT_URL: the demo has no USP agents");
        println!(
            "demo: no MQTT broker at {url} (RDM_USP_MQTT_URL), so only the WebSocket USP agent"
        );
        return Ok(agents);
    }
    // Topics of this process's own: several demos may share the broker.
    let run = uuid::Uuid::new_v4().simple().to_string();
    // The agents' controller topic (where their notifications go) is this
    // demo's too.
    let controller_topic = format!("usp/controller/demo-{}", &run[..8]);
    let controller = std::env::var("RDM_USP_ENDPOINT_ID").unwrap_or("self::rdm".into());
    for i in 1..=2 {
        let endpoint_id = format!("os::012345-DEMO{i:08}");
        let topic = format!("usp/agent/demo-{i}-{}", &run[..8]);
        let agent = usp_agent::start(
            &host,
            port,
            &endpoint_id,
            &topic,
            &controller_topic,
            &controller,
        )
        .await?;
        let endpoint = UspEndpoint {
            transport: Some("mqtt".into()),
            endpoint_id: Some(endpoint_id),
            mqtt: Some(UspMqtt {
                broker_url: Some(url.clone()),
                agent_topic: Some(topic),
                controller_topic: Some(controller_topic.clone()),
                ..Default::default()
            }),
            timeout_ms: 5000,
            ..Default::default()
        };
        let (name, serial) = (format!("demo-usp-{i}"), format!("DEMO{i:08}"));
        usp_device(
            devices,
            existing,
            &name,
            &serial,
            "simulated USP agent",
            endpoint,
        )
        .await?;
        agents.push(agent);
    }
    tracing::info!(%url, "demo USP agents on the MQTT broker");
    Ok(agents)
}

/// The demo device `name` (made when missing) with `endpoint` as its usp
/// endpoint.
async fn usp_device(
    devices: &mut Devices,
    existing: &HashMap<String, String>,
    name: &str,
    serial: &str,
    model: &str,
    endpoint: UspEndpoint,
) -> anyhow::Result<()> {
    let request = CreateDeviceRequest {
        name: name.into(),
        manufacturer: "rdm".into(),
        model: model.into(),
        serial: serial.into(),
        labels: HashMap::from([("demo".into(), "true".into())]),
        ..Default::default()
    };
    let id = device_id(devices, existing, request).await?;
    devices
        .put_endpoint(PutEndpointRequest {
            device_id: id,
            settings: Some(put_endpoint_request::Settings::Usp(endpoint)),
        })
        .await?;
    Ok(())
}

/// `Bearer <token>` of a user of the demo, signed in.
async fn bearer(
    inventory: &Backend,
    tenant: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    let login = AuthServiceClient::new(inventory.clone())
        .login(LoginRequest {
            tenant: tenant.into(),
            username: username.into(),
            password: password.into(),
        })
        .await
        .with_context(|| format!("signing in as {tenant}/{username} (was its password changed?)"))?
        .into_inner();
    Ok(format!("Bearer {}", login.access_token).parse()?)
}

/// The demo Mellophone server's users: login, password, groups, whether
/// Mellophone lets them change others' passwords.
pub const MELLOPHONE_USERS: [(&str, &str, &str, bool); 3] = [
    ("alice", "alice-pw", "netops", true),
    ("bob", "bob-pw", "support", false),
    ("carol", "carol-pw", "", false),
];

/// Starts the demo's Mellophone server and makes it tenant
/// `mellophone-demo`'s identity provider: `netops` operators, `support`
/// viewers, alice an admin, carol (no group) refused.
async fn mellophone(inventory: &Backend) -> anyhow::Result<MellophoneSim> {
    let users = MELLOPHONE_USERS
        .iter()
        .enumerate()
        .map(|(i, (login, pw, groups, admin))| {
            mellophone::user(&[
                ("sid", &format!("sid-{}", i + 1)),
                ("login", login),
                ("pwd", pw),
                ("name", &format!("{login} (demo)")),
                ("email", &format!("{login}@mellophone.example")),
                ("groups", groups),
                ("admin", if *admin { "true" } else { "false" }),
            ])
        })
        .collect();
    let config = mellophone::Config::with_users(users);
    let sim = mellophone::start(([127, 0, 0, 1], 0).into(), config.clone()).await?;
    let bearer = bearer(inventory, "mellophone-demo", "admin", "demo").await?;
    let rule = |group: &str, login: &str, role: &str| RoleRule {
        group: group.into(),
        login: login.into(),
        role: role.into(),
    };
    SettingsServiceClient::with_interceptor(
        inventory.clone(),
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        },
    )
    .update_identity_provider(UpdateIdentityProviderRequest {
        identity_provider: Some(IdentityProvider {
            mellophone: Some(MellophoneSettings {
                base_url: Some(sim.base_url()),
                settings_token: Some(config.settings_token),
                user_manage_token: Some(config.user_manage_token),
                sign_in: true,
                roles: vec![
                    rule("netops", "", "operator"),
                    rule("support", "", "viewer"),
                    rule("", "alice", "admin"),
                ],
                ..Default::default()
            }),
        }),
    })
    .await?;
    tracing::info!(mellophone = %sim.addr, "tenant mellophone-demo signs in through a simulated Mellophone server");
    Ok(sim)
}

/// Starts a simulated SNMP agent per demo device and one XMiDT server for
/// all, and points each device's `snmp` and `webpa` endpoints at them.
pub async fn start(inventory: Backend, cwmp: Option<std::net::SocketAddr>) -> anyhow::Result<Sims> {
    let bearer = bearer(&inventory, "demo", "demo", "demo").await?;
    let mut devices: Devices = DeviceServiceClient::with_interceptor(
        inventory.clone(),
        Box::new(move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        }),
    );
    let existing: HashMap<String, String> = devices
        .list_devices(ListDevicesRequest {
            page_size: 100,
            name_prefix: "demo-".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .devices
        .into_iter()
        .map(|d| (d.name, d.id))
        .collect();
    let xmidt = webpa::Credentials::default();
    let sim_devices: Vec<(&str, &str, &str)> = DEVICES
        .iter()
        .map(|(name, _, _, id)| (*id, *name, "simulated home gateway"))
        .collect();
    let webpa_sim = webpa::start(([127, 0, 0, 1], 0).into(), xmidt.clone(), &sim_devices).await?;
    let mut agents = Vec::with_capacity(DEVICES.len());
    for (name, site, location, xmidt_id) in DEVICES {
        let agent = snmp_agent::start(([127, 0, 0, 1], 0).into(), name, location).await?;
        let request = CreateDeviceRequest {
            name: name.into(),
            manufacturer: "rdm".into(),
            model: "simulated home gateway".into(),
            address: "127.0.0.1".into(),
            labels: HashMap::from([("site".into(), site.into()), ("demo".into(), "true".into())]),
            ..Default::default()
        };
        let id = device_id(&mut devices, &existing, request).await?;
        let endpoint = SnmpEndpoint {
            host: Some("127.0.0.1".into()),
            port: agent.addr.port().into(),
            version: Some("2c".into()),
            community: Some("private".into()),
            ..Default::default()
        };
        let webpa = WebpaEndpoint {
            base_url: Some(webpa_sim.base_url()),
            device_id: Some(xmidt_id.into()),
            auth: Some(HttpAuth {
                r#type: Some("basic".into()),
                username: Some(xmidt.basic.0.clone()),
                password: Some(xmidt.basic.1.clone()),
                ..Default::default()
            }),
            timeout_ms: 5000,
            ..Default::default()
        };
        for settings in [
            put_endpoint_request::Settings::Snmp(endpoint),
            put_endpoint_request::Settings::Webpa(webpa),
        ] {
            devices
                .put_endpoint(PutEndpointRequest {
                    device_id: id.clone(),
                    settings: Some(settings),
                })
                .await?;
        }
        tracing::info!(device = name, agent = %agent.addr, xmidt = %webpa_sim.addr, "demo device with a simulated snmp agent and XMiDT server");
        agents.push(agent);
    }
    // The demo's HG630 router.
    let config = hg630::Config::default();
    let sim = hg630::start(([127, 0, 0, 1], 0).into(), config.clone()).await?;
    let name = "demo-hg630";
    let request = CreateDeviceRequest {
        name: name.into(),
        manufacturer: "Huawei".into(),
        model: "HG630 V2 (simulated)".into(),
        serial: config.serial.clone(),
        labels: HashMap::from([
            ("site".into(), "ams".into()),
            ("demo".into(), "true".into()),
        ]),
        ..Default::default()
    };
    let id = device_id(&mut devices, &existing, request).await?;
    let endpoint = Hg630Endpoint {
        base_url: Some(sim.base_url()),
        username: Some(config.username.clone()),
        password: Some(config.password.clone()),
        ..Default::default()
    };
    devices
        .put_endpoint(PutEndpointRequest {
            device_id: id,
            settings: Some(put_endpoint_request::Settings::Hg630(endpoint)),
        })
        .await?;
    tracing::info!(device = name, router = %sim.addr, "demo device with a simulated HG630 router");
    // Three CPEs of one simulated ACS, the third offline.
    let cpes = [
        CpeSpec::new("BM632w", "DEMO0001", Model::Tr181, true).tagged("ams"),
        CpeSpec::new("IGD-HG8245", "DEMO0002", Model::Tr098, true).tagged("lon"),
        CpeSpec::new("BM632w", "DEMO0003", Model::Tr181, false).tagged("ams"),
    ];
    let acs_sim = acs::start(([127, 0, 0, 1], 0).into(), &cpes).await?;
    let (user, password) = acs::credentials();
    for (i, cpe) in cpes.iter().enumerate() {
        let request = CreateDeviceRequest {
            name: format!("demo-tr069-{}", i + 1),
            manufacturer: "rdm".into(),
            model: format!("{} (simulated, TR-069)", cpe.product_class),
            serial: cpe.serial.clone(),
            labels: HashMap::from([("demo".into(), "true".into())]),
            ..Default::default()
        };
        let id = device_id(&mut devices, &existing, request).await?;
        let endpoint = Tr069Endpoint {
            base_url: Some(acs_sim.base_url()),
            device_id: Some(cpe.id()),
            auth: Some(HttpAuth {
                r#type: Some("basic".into()),
                username: Some(user.clone()),
                password: Some(password.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        devices
            .put_endpoint(PutEndpointRequest {
                device_id: id,
                settings: Some(put_endpoint_request::Settings::Tr069(endpoint)),
            })
            .await?;
    }
    tracing::info!(acs = %acs_sim.addr, "demo CPEs on a simulated ACS");
    let mellophone = mellophone(&inventory).await?;
    let usp = usp_agents(&mut devices, &existing).await?;
    let cwmp = match cwmp {
        Some(addr) => cwmp_cpes(&inventory, &mut devices, addr).await?,
        None => Running(Vec::new()),
    };
    Ok(Sims {
        _cwmp: cwmp,
        _agents: agents,
        _webpa: webpa_sim,
        _router: sim,
        _acs: acs_sim,
        _mellophone: mellophone,
        _usp: usp,
    })
}

/// Three CPEs (two TR-181, one TR-098) of rdm's own ACS: the demo tenant's
/// bootstrap credentials and auto-registration are set, each CPE
/// bootstraps (becoming `demo-cwmp-1` to `-3`), then informs every
/// PeriodicInformInterval rdm set.
async fn cwmp_cpes(
    inventory: &Backend,
    devices: &mut Devices,
    addr: std::net::SocketAddr,
) -> anyhow::Result<Running> {
    use rdm_sims::cwmp_cpe::{Cpe, CpeConfig};
    let bearer = bearer(inventory, "demo", "demo", "demo").await?;
    let mut settings = SettingsServiceClient::with_interceptor(
        inventory.clone(),
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        },
    );
    let mut current = settings
        .get_settings(rdm_proto::inventory::GetSettingsRequest {})
        .await?
        .into_inner()
        .settings
        .unwrap_or_default();
    let policy = current.tr069.get_or_insert_default();
    policy.cwmp_username = CWMP_USER.into();
    policy.cwmp_password = Some(CWMP_PASSWORD.into());
    policy.cwmp_auto_register_label = "demo=cwmp".into();
    policy.cwmp_periodic_inform_interval_s = 300;
    settings
        .update_settings(rdm_proto::inventory::UpdateSettingsRequest {
            settings: Some(current),
        })
        .await?;
    let url = format!("http://{addr}/cwmp/demo");
    let mut running = Vec::new();
    for i in 1..=3 {
        let mut config = CpeConfig::new(&url, &format!("DEMOCWMP{i}"), CWMP_USER, CWMP_PASSWORD);
        config.tr098 = i == 3;
        let cpe = Cpe::start(config).await?;
        cpe.inform("")
            .await
            .map_err(|e| anyhow::anyhow!("demo CPE {i}: {e}"))?;
        // Registered under its ACS id: the demo names it.
        let found = devices
            .list_devices(ListDevicesRequest {
                name_prefix: cpe.acs_id(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .devices;
        if let Some(device) = found.first() {
            devices
                .update_device(rdm_proto::inventory::UpdateDeviceRequest {
                    device_id: device.id.clone(),
                    name: format!("demo-cwmp-{i}"),
                    ..Default::default()
                })
                .await?;
        }
        running.push(tokio::spawn(async move {
            loop {
                let interval = cpe
                    .param(&format!(
                        "{}ManagementServer.PeriodicInformInterval",
                        if i == 3 {
                            "InternetGatewayDevice."
                        } else {
                            "Device."
                        }
                    ))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(300u64);
                tokio::time::sleep(std::time::Duration::from_secs(interval.max(10))).await;
                if let Err(e) = cpe.inform("2 PERIODIC").await {
                    tracing::info!(error = %e, "a demo CPE's periodic session failed");
                }
            }
        }));
    }
    tracing::info!(acs = %url, "demo CPEs on rdm's own ACS");
    Ok(Running(running))
}
