//! `rdm up --demo`: simulated devices to manage, and the demo tenant's
//! devices pointing at them. Their ports are picked at each start, so the
//! devices' endpoints are set again each time.
use anyhow::Context;
use rdm_kit::invoke::Backend;
use rdm_proto::inventory::{
    CreateDeviceRequest, ListDevicesRequest, LoginRequest, PutEndpointRequest,
    auth_service_client::AuthServiceClient, device_service_client::DeviceServiceClient,
    put_endpoint_request,
};
use rdm_proto::snmp::SnmpEndpoint;
use rdm_sims::snmp_agent::{self, SnmpAgent};
use std::collections::HashMap;

/// The demo's devices: name, site label, and where they are said to be.
const DEVICES: [(&str, &str, &str); 2] = [
    ("demo-cpe-1", "ams", "Amsterdam, rack 1"),
    ("demo-cpe-2", "lon", "London, cabinet 7"),
];

/// Starts a simulated SNMP agent per demo device and points each device's
/// `snmp` endpoint at its agent. The agents stop when dropped.
pub async fn start(inventory: Backend) -> anyhow::Result<Vec<SnmpAgent>> {
    let login = AuthServiceClient::new(inventory.clone())
        .login(LoginRequest {
            tenant: "demo".into(),
            username: "demo".into(),
            password: "demo".into(),
        })
        .await
        .context("signing in as the demo user (was its password changed?)")?
        .into_inner();
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", login.access_token).parse()?;
    let mut devices =
        DeviceServiceClient::with_interceptor(inventory, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        });
    let existing: HashMap<String, String> = devices
        .list_devices(ListDevicesRequest {
            page_size: 100,
            name_prefix: "demo-cpe-".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .devices
        .into_iter()
        .map(|d| (d.name, d.id))
        .collect();
    let mut agents = Vec::with_capacity(DEVICES.len());
    for (name, site, location) in DEVICES {
        let agent = snmp_agent::start(([127, 0, 0, 1], 0).into(), name, location).await?;
        let id = match existing.get(name) {
            Some(id) => id.clone(),
            None => {
                let created = devices
                    .create_device(CreateDeviceRequest {
                        name: name.into(),
                        manufacturer: "rdm".into(),
                        model: "simulated home gateway".into(),
                        address: "127.0.0.1".into(),
                        labels: HashMap::from([
                            ("site".into(), site.into()),
                            ("demo".into(), "true".into()),
                        ]),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                created.device.context("a created device")?.id
            }
        };
        let endpoint = SnmpEndpoint {
            host: Some("127.0.0.1".into()),
            port: agent.addr.port().into(),
            version: Some("2c".into()),
            community: Some("private".into()),
            ..Default::default()
        };
        devices
            .put_endpoint(PutEndpointRequest {
                device_id: id,
                settings: Some(put_endpoint_request::Settings::Snmp(endpoint)),
            })
            .await?;
        tracing::info!(device = name, agent = %agent.addr, "demo device with a simulated snmp agent");
        agents.push(agent);
    }
    Ok(agents)
}
