//! carapace-protocol: the ttrpc API between the carapace shim and the guest agent.
//!
//! The `.proto` files under `protos/` are the source of truth; `build.rs` generates the
//! messages and the async ttrpc client and server from them into `generated`. This file only
//! re-exports them under short names and holds the constants both sides agree on.

pub mod generated;
pub mod id;
pub mod status;

pub use generated::agent;
pub use generated::agent_ttrpc;
pub use generated::types;

/// The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Bumped on incompatible changes of `protos/agent.proto`; returned by `Version`.
pub const PROTOCOL_VERSION: u32 = 1;
