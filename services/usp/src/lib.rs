//! rdm as a USP (TR-369) controller: Records over the MQTT 5 MTP. The
//! gRPC service, the WebSocket MTP and notifications build on these.
pub mod mqtt;
pub mod record;
