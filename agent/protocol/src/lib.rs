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

/// The vsock port of the agent's port forwarder, which carries CRI's PortForward into the
/// guest: the host opens a stream to it and writes [`forward_request`] (the pod's TCP port),
/// and from then on the stream is a connection to `127.0.0.1:<port>` in the pod's network
/// namespace in the guest, both ways, until either side closes it.
pub const FORWARD_VSOCK_PORT: u32 = 1025;

/// What the host writes first on a [`FORWARD_VSOCK_PORT`] stream: the TCP port, big-endian.
pub fn forward_request(port: u16) -> [u8; 2] {
    port.to_be_bytes()
}

/// The port of a [`forward_request`]; port 0 is refused (nothing listens there).
pub fn parse_forward_request(bytes: [u8; 2]) -> Option<u16> {
    Some(u16::from_be_bytes(bytes)).filter(|&p| p != 0)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_request_carries_its_port_and_port_zero_is_refused() {
        for port in [1, 80, 8080, 65535] {
            assert_eq!(parse_forward_request(forward_request(port)), Some(port));
        }
        assert_eq!(forward_request(0x1f90), [0x1f, 0x90]);
        assert_eq!(parse_forward_request([0, 0]), None);
    }
}
