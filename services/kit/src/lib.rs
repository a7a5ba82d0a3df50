//! rdm-kit: what every rdm service shares. Server bootstrap, the one error
//! enum, token verification and access rules, telemetry, storage and the
//! client-side interceptor for calls between services.
pub mod address;
pub mod audit;
pub mod auth;
pub mod client;
pub mod db;
pub mod endpoint;
pub mod error;
pub mod http;
pub mod invoke;
pub mod mesh;
pub mod rules;
pub mod secrets;
pub mod server;
pub mod targets;
pub mod telemetry;
pub mod text;

pub use auth::{Principal, Role};
pub use error::{Error, ErrorCode, Result};
