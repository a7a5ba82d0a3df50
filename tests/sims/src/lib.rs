//! Simulators of the peers rdm talks to, written from the protocol
//! descriptions (see PEERS.md), never from rdm's own clients: for tests
//! where no real peer can run here, and for `rdm up --demo`.
pub mod acs;
pub mod cwmp_cpe;
pub mod hg630;
pub mod mellophone;
pub mod snmp_agent;
pub mod usp_agent;
pub mod webpa;
