//! The rdm contract: generated messages and services for every package, and
//! the encoded descriptor set that feeds reflection, the gateway's
//! transcoder, OpenAPI and the auth layer's access rules.
// Generated oneofs hold their messages inline, as prost writes them.
#![allow(clippy::large_enum_variant)]
use prost_reflect::DescriptorPool;
use std::sync::LazyLock;

/// Every rdm .proto and its imports, as an encoded `FileDescriptorSet`.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rdm_descriptor.bin"));

/// The descriptor set decoded once.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        // Cannot fail: build.rs produced these bytes from protox's own output.
        DescriptorPool::decode(DESCRIPTOR_SET).expect("descriptor set built by build.rs decodes")
    });
    &POOL
}

include!(concat!(env!("OUT_DIR"), "/rdm_modules.rs"));

pub use rdm::catalog::v1 as catalog;
pub use rdm::hg630::v1 as hg630;
pub use rdm::inventory::v1 as inventory;
pub use rdm::jobs::v1 as jobs;
pub use rdm::mellophone::v1 as mellophone;
pub use rdm::snmp::v1 as snmp;
pub use rdm::tr069::v1 as tr069;
pub use rdm::usp::v1 as usp_v1;
pub use rdm::webpa::v1 as webpa;
/// The Broadband Forum's USP Msg (TR-369 1.4, `third_party/usp`).
pub use usp as usp_msg;
