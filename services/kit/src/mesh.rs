//! The service registry's types: what a service behind the gateway tells the
//! `rdm` binary about itself (name, proto package, port, settings, start), so
//! `rdm up`, `rdm serve <service>`, the gateway's backends, health names and
//! the in-process gRPC routing are all derived from one list.
use crate::{
    address::AddressPolicy,
    auth::{AccessTable, ApiKeys, SigningKey, Verifier},
    invoke::Backend,
    server::Guard,
};
use futures::future::BoxFuture;
use std::{marker::PhantomData, net::SocketAddr, sync::Arc};

/// What the mesh hands a service when it starts.
#[derive(Clone)]
pub struct Context {
    /// The inventory: in-process under `rdm up`, over gRPC under `rdm serve`.
    pub inventory: Backend,
    /// Checks callers' tokens (public keys only: no service but the
    /// inventory can sign a user token).
    pub verifier: Verifier,
    /// Signs this service's actor tokens, for internal RPCs it makes for a caller.
    pub service_key: Arc<SigningKey>,
    /// Where this service's state-changing calls are recorded.
    pub audit: crate::audit::Sink,
    /// The platform's address policy (rdm's own listeners included): every
    /// address a service connects to on a tenant's behalf passes it.
    pub addresses: AddressPolicy,
    /// Resolves when the process is asked to stop (SIGTERM): services sign
    /// out of what they hold open.
    pub shutdown: crate::server::Shutdown,
    /// `rdm up` (every service in one process, on loopback) rather than
    /// `rdm serve`: some defaults differ, such as listeners left off.
    pub all_in_one: bool,
    /// The database, for a service that keeps data of its own (`rdm up`:
    /// the inventory's SQLite file; `rdm serve`: RDM_DATABASE_URL, if set).
    pub database: Option<Database>,
    /// Under `rdm up`, where every service of this process answers gRPC: a
    /// service calls another there (under `rdm serve`, at the URL its
    /// settings give).
    pub mesh_url: Option<String>,
    /// Under `rdm serve`, the URL this process answers gRPC at when its
    /// listener has a specific address (not 0.0.0.0): how other replicas
    /// of the service may reach this one.
    pub own_url: Option<String>,
}

/// A service's database, and how its migrations run.
#[derive(Clone, Debug)]
pub struct Database {
    pub db: crate::db::Db,
    /// An owner's URL to run the service's migrations with at start (or
    /// SQLite's own); None: `rdm migrate` runs them.
    pub migrate_url: Option<String>,
}

impl Database {
    /// The database, migrated if this process may; an error names what is
    /// missing.
    pub async fn migrated(
        context: &Context,
        service: &str,
        migrations: &crate::db::Migrations,
    ) -> anyhow::Result<crate::db::Db> {
        let Some(database) = &context.database else {
            anyhow::bail!("RDM_DATABASE_URL is required for the {service} service");
        };
        if let Some(url) = &database.migrate_url {
            crate::db::Db::migrate(url, migrations).await?;
        }
        Ok(database.db.clone())
    }
}

impl Context {
    /// Target resolution through the inventory, for the `protocol` service.
    pub fn resolver(&self, protocol: &'static str) -> crate::targets::Inventory {
        crate::targets::Inventory {
            backend: self.inventory.clone(),
            service_key: self.service_key.clone(),
            protocol,
        }
    }

    /// The auth guard for a service without internal RPCs of its own.
    pub fn guard(&self) -> Guard {
        Guard {
            access: AccessTable::from_pool(rdm_proto::descriptor_pool()),
            verifier: self.verifier.clone(),
            actors: None,
            api_keys: Some(ApiKeys::new(self.inventory.clone())),
            audit: Some(self.audit.clone()),
        }
    }
}

/// A started service: its gRPC routes (guarded), and any other addresses it
/// listens on.
pub struct Started {
    pub router: axum::Router,
    /// Named extra listeners, such as `("snmp-traps", 127.0.0.1:10162)`.
    pub listeners: Vec<(&'static str, SocketAddr)>,
}

/// A service of the mesh, as the registry lists it.
pub trait Service: Sync {
    /// Its name: `rdm serve <name>`, the Deployment, `RDM_<NAME>_URL`.
    fn name(&self) -> &'static str;
    /// The proto package it serves (`rdm.snmp.v1`).
    fn package(&self) -> &'static str;
    /// Its port under `rdm serve`.
    fn port(&self) -> u16;
    /// Adds its own settings (flags and `RDM_*` variables) to a command.
    fn args(&self, command: clap::Command) -> clap::Command;
    /// It keeps data of its own: `rdm serve` gives it the database
    /// ([`Context::database`]).
    fn uses_database(&self) -> bool;
    /// Starts it with the settings parsed from `matches`.
    fn start(
        &self,
        matches: &clap::ArgMatches,
        context: Context,
    ) -> BoxFuture<'static, anyhow::Result<Started>>;
}

/// A [`Service`] from its settings type `A` and a start function: what each
/// service crate exports as `pub const SERVICE` (made with [`Spec::new`]).
pub struct Spec<A> {
    name: &'static str,
    package: &'static str,
    port: u16,
    start: fn(A, Context) -> BoxFuture<'static, anyhow::Result<Started>>,
    args: PhantomData<fn() -> A>,
    database: bool,
}

impl<A> Spec<A> {
    pub const fn new(
        name: &'static str,
        package: &'static str,
        port: u16,
        start: fn(A, Context) -> BoxFuture<'static, anyhow::Result<Started>>,
    ) -> Self {
        Self {
            name,
            package,
            port,
            start,
            args: PhantomData,
            database: false,
        }
    }

    /// A service that keeps data of its own in the database.
    pub const fn with_database(self) -> Self {
        Self {
            database: true,
            ..self
        }
    }
}

impl<A: clap::Args + clap::FromArgMatches> Service for Spec<A> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn package(&self) -> &'static str {
        self.package
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn args(&self, command: clap::Command) -> clap::Command {
        A::augment_args(command)
    }
    fn uses_database(&self) -> bool {
        self.database
    }
    fn start(
        &self,
        matches: &clap::ArgMatches,
        context: Context,
    ) -> BoxFuture<'static, anyhow::Result<Started>> {
        match A::from_arg_matches(matches) {
            Ok(args) => (self.start)(args, context),
            Err(e) => {
                let e = anyhow::anyhow!("settings of {}: {e}", self.name);
                Box::pin(async move { Err(e) })
            }
        }
    }
}
