//! rdm's router-hg630 service: a Huawei HG630 router's web API as gRPC and
//! REST. Targets are a device of the caller's tenant or an inline
//! endpoint, both resolved by the inventory; the base URL's addresses are
//! vetted by the address policy before any connection. The router's
//! sessions are this service's ([`sessions`]): callers never sign in.
pub mod router;
mod sessions;

use rdm_kit::{
    Error, Principal, Result,
    address::HttpClients,
    mesh::{Context, Spec, Started},
    targets::{self, TargetRef},
};
use rdm_proto::{
    hg630::{self as pb, hg630_service_server::Hg630Service, target::Target as Which},
    inventory::endpoint::Settings,
};
use router::{Router, Scheme};
use serde_json::Value;
use sessions::{Key, Session, Sessions};
use sha2::Digest;
use std::{collections::HashMap, sync::Arc, time::Duration};
use tonic::{Request, Response, Status};

pub const DOMAIN: &str = "hg630";

/// The router-hg630 service's own settings.
#[derive(clap::Args, Clone, Debug)]
#[group(id = "router-hg630")]
pub struct Args {
    /// Seconds a router's shared session may go unused before rdm signs out
    /// of it (routers allow few sessions at once).
    #[arg(long, env = "RDM_HG630_IDLE_S", default_value_t = 60)]
    pub hg630_idle_s: u64,
}

/// The service as the mesh's registry lists it.
pub const SERVICE: Spec<Args> =
    Spec::new("router-hg630", "rdm.hg630.v1", 50054, |args, context| {
        Box::pin(start(args, context))
    });

async fn start(args: Args, context: Context) -> anyhow::Result<Started> {
    let hg630 = Hg630 {
        inventory: context.resolver(DOMAIN),
        clients: HttpClients::new(context.addresses.clone()),
        sessions: Sessions::new(Duration::from_secs(args.hg630_idle_s.max(1))),
    };
    // Sign out of every router at SIGTERM, while the servers drain.
    let sessions = hg630.sessions.clone();
    let shutdown = context.shutdown.clone();
    tokio::spawn(async move {
        shutdown.requested().await;
        sessions.close_all().await;
    });
    let routes =
        tonic::service::Routes::new(pb::hg630_service_server::Hg630ServiceServer::new(hg630));
    Ok(Started {
        router: rdm_kit::server::guarded(routes, context.guard()),
        listeners: Vec::new(),
    })
}

struct Hg630 {
    inventory: targets::Inventory,
    clients: HttpClients,
    sessions: Sessions,
}

fn err(e: Error) -> Status {
    e.in_domain(DOMAIN).into()
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Hg630 {
    /// The shared session of the router a request names.
    async fn session<T>(
        &self,
        req: &Request<T>,
        target: Option<&pb::Target>,
    ) -> Result<Arc<Session>> {
        let p = Principal::of(req)?;
        let target = match target.and_then(|t| t.target.as_ref()) {
            Some(Which::DeviceId(id)) => TargetRef::Device(id.clone()),
            Some(Which::Endpoint(e)) => TargetRef::Inline(Box::new(Settings::Hg630(e.clone()))),
            None => {
                return Err(Error::invalid(
                    "target",
                    "name a device_id or an inline endpoint",
                ));
            }
        };
        let resolved = self.inventory.resolve(p, target).await?;
        let Some(Settings::Hg630(endpoint)) = resolved.endpoint.and_then(|e| e.settings) else {
            return Err(Error::internal(
                "reading a resolved endpoint",
                "no HG630 settings",
            ));
        };
        let (url, http) = self
            .clients
            .for_target(endpoint.base_url(), &resolved.allowed_target_cidrs)
            .await?;
        let scheme = match endpoint.password_scheme() {
            "legacy" => Scheme::Legacy,
            _ => Scheme::Current,
        };
        let username = Some(endpoint.username())
            .filter(|u| !u.is_empty())
            .unwrap_or("admin");
        let key = Key {
            tenant_id: p.tenant_id.clone(),
            origin: url.origin().ascii_serialization(),
            username: username.to_owned(),
            password_digest: sha2::Sha256::digest(endpoint.password().as_bytes()).into(),
            scheme,
        };
        let router = Router {
            http,
            base: key.origin.clone(),
            timeout: match endpoint.timeout_ms {
                0 => DEFAULT_TIMEOUT,
                ms => Duration::from_millis(ms.into()),
            },
        };
        Ok(self.sessions.get(key, endpoint.password(), router))
    }

    async fn read<T>(
        &self,
        req: &Request<T>,
        target: Option<&pb::Target>,
        path: &str,
    ) -> Result<Value> {
        self.session(req, target).await?.read(path).await
    }
}

/// A reply's field as text, whatever JSON type the firmware used.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A count or rate, whatever JSON type the firmware used (negative or
/// unreadable: 0).
fn number(v: &Value) -> u32 {
    let f = match v {
        Value::String(s) => s.trim().parse::<f64>().unwrap_or(0.0),
        v => v.as_f64().unwrap_or(0.0),
    };
    f.clamp(0.0, f64::from(u32::MAX)) as u32
}

fn decimal(v: &Value) -> f64 {
    match v {
        Value::String(s) => s.trim().parse().unwrap_or(0.0),
        v => v.as_f64().unwrap_or(0.0),
    }
}

fn flag(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.trim(), "1" | "true" | "True" | "Enable" | "enable"),
        v => v.as_u64().is_some_and(|n| n != 0),
    }
}

/// Every field of `v` not in `known`, as text: nothing the router sends is
/// dropped.
fn other(v: &Value, known: &[&str]) -> HashMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), text(v)))
        .collect()
}

/// A list reply (some firmware wraps a single object).
fn items(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.clone(),
        Value::Object(_) => vec![v.clone()],
        _ => Vec::new(),
    }
}

fn level(n: i32) -> pb::UserLevel {
    pb::UserLevel::try_from(n).unwrap_or(pb::UserLevel::Unspecified)
}

fn dsl_status(text: &str) -> pb::DslStatus {
    match text.to_ascii_lowercase().replace([' ', '_'], "").as_str() {
        "up" | "showtime" => pb::DslStatus::Up,
        "initializing" | "training" | "handshaking" => pb::DslStatus::Initializing,
        "nosignal" => pb::DslStatus::NoSignal,
        "down" | "disabled" | "error" => pb::DslStatus::Down,
        _ => pb::DslStatus::Unspecified,
    }
}

#[tonic::async_trait]
impl Hg630Service for Hg630 {
    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let session = self
            .session(&req, req.get_ref().target.as_ref())
            .await
            .map_err(err)?;
        let (login, now) = session.login().await.map_err(err)?;
        Ok(Response::new(pb::LoginResponse {
            level: level(login.level).into(),
            is_first: login.is_first,
            is_wizard: login.is_wizard,
            signed_in_now: now,
        }))
    }

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let session = self
            .session(&req, req.get_ref().target.as_ref())
            .await
            .map_err(err)?;
        Ok(Response::new(pb::LogoutResponse {
            was_logged_in: session.logout().await,
        }))
    }

    async fn is_logged_in(
        &self,
        req: Request<pb::IsLoggedInRequest>,
    ) -> Result<Response<pb::IsLoggedInResponse>, Status> {
        let session = self
            .session(&req, req.get_ref().target.as_ref())
            .await
            .map_err(err)?;
        Ok(Response::new(pb::IsLoggedInResponse {
            logged_in: session.is_logged_in().await.map_err(err)?,
        }))
    }

    async fn get_user_level(
        &self,
        req: Request<pb::GetUserLevelRequest>,
    ) -> Result<Response<pb::GetUserLevelResponse>, Status> {
        let session = self
            .session(&req, req.get_ref().target.as_ref())
            .await
            .map_err(err)?;
        let reply = session
            .read("/api/system/getuserlevel")
            .await
            .map_err(err)?;
        Ok(Response::new(pb::GetUserLevelResponse {
            level: level(session.level().await).into(),
            is_admin: flag(&reply["isadmin"]),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let session = self
            .session(&req, req.get_ref().target.as_ref())
            .await
            .map_err(err)?;
        let interval = session.heartbeat().await.map_err(err)?;
        Ok(Response::new(pb::HeartbeatResponse {
            interval_ms: interval.as_millis() as u32,
        }))
    }

    async fn get_device_info(
        &self,
        req: Request<pb::GetDeviceInfoRequest>,
    ) -> Result<Response<pb::GetDeviceInfoResponse>, Status> {
        let v = self
            .read(
                &req,
                req.get_ref().target.as_ref(),
                "/api/system/deviceinfo",
            )
            .await
            .map_err(err)?;
        Ok(Response::new(pb::GetDeviceInfoResponse {
            device_name: text(&v["DeviceName"]),
            serial_number: text(&v["SerialNumber"]),
            manufacturer_oui: text(&v["ManufacturerOUI"]),
            software_version: text(&v["SoftwareVersion"]),
            hardware_version: text(&v["HardwareVersion"]),
            uptime_s: number(&v["UpTime"]),
            other: other(
                &v,
                &[
                    "DeviceName",
                    "SerialNumber",
                    "ManufacturerOUI",
                    "SoftwareVersion",
                    "HardwareVersion",
                    "UpTime",
                ],
            ),
        }))
    }

    async fn get_dsl_info(
        &self,
        req: Request<pb::GetDslInfoRequest>,
    ) -> Result<Response<pb::GetDslInfoResponse>, Status> {
        let v = self
            .read(&req, req.get_ref().target.as_ref(), "/api/ntwk/dslinfo")
            .await
            .map_err(err)?;
        let status_text = text(&v["Status"]);
        Ok(Response::new(pb::GetDslInfoResponse {
            status: dsl_status(&status_text).into(),
            status_text,
            modulation: text(&v["Modulation"]),
            down_rate_kbps: number(&v["DownCurrRate"]),
            up_rate_kbps: number(&v["UpCurrRate"]),
            down_max_rate_kbps: number(&v["DownMaxRate"]),
            up_max_rate_kbps: number(&v["UpMaxRate"]),
            down_margin_db: decimal(&v["DownMargin"]),
            up_margin_db: decimal(&v["UpMargin"]),
            down_attenuation_db: decimal(&v["DownAttenuation"]),
            up_attenuation_db: decimal(&v["UpAttenuation"]),
            uptime_s: number(&v["ShowtimeStart"]),
            other: other(
                &v,
                &[
                    "Status",
                    "Modulation",
                    "DownCurrRate",
                    "UpCurrRate",
                    "DownMaxRate",
                    "UpMaxRate",
                    "DownMargin",
                    "UpMargin",
                    "DownAttenuation",
                    "UpAttenuation",
                    "ShowtimeStart",
                ],
            ),
        }))
    }

    async fn get_wan_info(
        &self,
        req: Request<pb::GetWanInfoRequest>,
    ) -> Result<Response<pb::GetWanInfoResponse>, Status> {
        let v = self
            .read(&req, req.get_ref().target.as_ref(), "/api/ntwk/wan")
            .await
            .map_err(err)?;
        let connections = items(&v)
            .iter()
            .map(|c| pb::WanConnection {
                name: text(&c["Name"]),
                status: text(&c["Status"]),
                connection_type: text(&c["ConnectionType"]),
                ipv4_address: text(&c["IPv4Addr"]),
                ipv4_gateway: text(&c["IPv4Gateway"]),
                dns_servers: text(&c["IPv4DnsServers"])
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                uptime_s: number(&c["Uptime"]),
                other: other(
                    c,
                    &[
                        "Name",
                        "Status",
                        "ConnectionType",
                        "IPv4Addr",
                        "IPv4Gateway",
                        "IPv4DnsServers",
                        "Uptime",
                    ],
                ),
            })
            .collect();
        Ok(Response::new(pb::GetWanInfoResponse { connections }))
    }

    async fn list_hosts(
        &self,
        req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let v = self
            .read(&req, req.get_ref().target.as_ref(), "/api/system/HostInfo")
            .await
            .map_err(err)?;
        let hosts = items(&v)
            .iter()
            .map(|h| pb::Host {
                host_name: text(&h["HostName"]),
                ip_address: text(&h["IPAddress"]),
                mac_address: text(&h["MACAddress"]),
                active: flag(&h["Active"]),
                interface_type: text(&h["InterfaceType"]),
                lease_time_remaining_s: number(&h["LeaseTimeRemaining"]),
            })
            .collect();
        Ok(Response::new(pb::ListHostsResponse { hosts }))
    }

    async fn get_wlan(
        &self,
        req: Request<pb::GetWlanRequest>,
    ) -> Result<Response<pb::GetWlanResponse>, Status> {
        let target = req.get_ref().target.as_ref();
        let basic = self
            .read(&req, target, "/api/ntwk/WlanBasic")
            .await
            .map_err(err)?;
        let radio = self
            .read(&req, target, "/api/ntwk/wlanradio")
            .await
            .map_err(err)?;
        let networks = items(&basic)
            .iter()
            .map(|n| pb::WlanBasic {
                ssid: text(&n["WifiSsid"]),
                enabled: flag(&n["WifiEnable"]),
                security_mode: text(&n["BeaconType"]),
                ssid_broadcast: !flag(&n["WifiHideBroadcast"]),
            })
            .collect();
        Ok(Response::new(pb::GetWlanResponse {
            networks,
            radio: Some(pb::WlanRadio {
                enabled: flag(&radio["WifiEnable"]),
                channel: number(&radio["WifiChannel"]),
                auto_channel: flag(&radio["WifiAutoChannel"]),
                standard: text(&radio["WifiMode"]),
                transmit_power_percent: number(&radio["WifiTransmitPower"]),
                other: other(
                    &radio,
                    &[
                        "WifiEnable",
                        "WifiChannel",
                        "WifiAutoChannel",
                        "WifiMode",
                        "WifiTransmitPower",
                    ],
                ),
            }),
        }))
    }

    async fn get_lan_info(
        &self,
        req: Request<pb::GetLanInfoRequest>,
    ) -> Result<Response<pb::GetLanInfoResponse>, Status> {
        let v = self
            .read(&req, req.get_ref().target.as_ref(), "/api/ntwk/lan_info")
            .await
            .map_err(err)?;
        Ok(Response::new(pb::GetLanInfoResponse {
            ip_address: text(&v["IPInterfaceIPAddress"]),
            subnet_mask: text(&v["IPInterfaceSubnetMask"]),
            dhcp_server_enabled: flag(&v["DHCPServerEnable"]),
            dhcp_min_address: text(&v["MinAddress"]),
            dhcp_max_address: text(&v["MaxAddress"]),
            other: other(
                &v,
                &[
                    "IPInterfaceIPAddress",
                    "IPInterfaceSubnetMask",
                    "DHCPServerEnable",
                    "MinAddress",
                    "MaxAddress",
                ],
            ),
        }))
    }

    async fn get_device_count(
        &self,
        req: Request<pb::GetDeviceCountRequest>,
    ) -> Result<Response<pb::GetDeviceCountResponse>, Status> {
        let v = self
            .read(
                &req,
                req.get_ref().target.as_ref(),
                "/api/system/device_count",
            )
            .await
            .map_err(err)?;
        Ok(Response::new(pb::GetDeviceCountResponse {
            active: number(&v["ActiveDeviceNumbers"]),
            ethernet: number(&v["LanActiveNumber"]),
            wireless: number(&v["WlanActiveNumber"]),
        }))
    }

    async fn diagnose_internet(
        &self,
        req: Request<pb::DiagnoseInternetRequest>,
    ) -> Result<Response<pb::DiagnoseInternetResponse>, Status> {
        let v = self
            .read(
                &req,
                req.get_ref().target.as_ref(),
                "/api/system/diagnose_internet",
            )
            .await
            .map_err(err)?;
        Ok(Response::new(pb::DiagnoseInternetResponse {
            connected: text(&v["ConnectionStatus"]).eq_ignore_ascii_case("connected"),
            result: text(&v["DiagnoseResult"]),
            other: other(&v, &["ConnectionStatus", "DiagnoseResult"]),
        }))
    }

    async fn reboot(
        &self,
        req: Request<pb::RebootRequest>,
    ) -> Result<Response<pb::RebootResponse>, Status> {
        let session = self
            .session(&req, req.get_ref().target.as_ref())
            .await
            .map_err(err)?;
        session
            .write("/api/service/reboot.cgi", None)
            .await
            .map_err(err)?;
        // The router forgets every session as it goes down.
        session.forget_all().await;
        tracing::info!("hg630 reboot");
        Ok(Response::new(pb::RebootResponse {}))
    }
}
