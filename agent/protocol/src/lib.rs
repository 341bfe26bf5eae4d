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

/// The guest directory under which the agent keeps the pod's memory-backed volumes, one tmpfs
/// per name, made on first use and shared by every container of the pod: `shm` is the pod's
/// `/dev/shm`, `empty-dir-<volume>` a Kubernetes emptyDir of medium Memory. The shim points a
/// container mount's source at `POD_MEMORY_DIR/<name>` for such a volume instead of sharing
/// the host's tmpfs, so the pod's shared memory lives in guest memory.
pub const POD_MEMORY_DIR: &str = "/run/carapace/pod-memory";

/// Whether `name` may name a pod-memory volume (a directory of [`POD_MEMORY_DIR`]): 1 to 80
/// of `[a-z0-9.-]`, not starting with a dot. Both sides check it.
pub fn is_pod_memory_name(name: &str) -> bool {
    (1..=80).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}
