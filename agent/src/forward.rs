//! The agent's port forwarder (CRI PortForward): a stream the host opens to
//! [`carapace_protocol::FORWARD_VSOCK_PORT`] names a TCP port and becomes a connection to
//! `127.0.0.1:<port>` in the pod's network namespace (the agent's own, which every container
//! of the pod shares), copied both ways until either side closes.
//!
//! What a stream can ask for is what a process of the pod can reach itself; only the host
//! (CID 2) is served, not a process of the guest.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY};

/// The host's vsock CID.
const HOST_CID: u32 = 2;

/// How long the host has to name the port, and a connection in the guest to be made.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Listens on the forwarder's vsock port and serves each stream the host opens.
pub async fn serve() -> std::io::Result<()> {
    let listener = VsockListener::bind(VsockAddr::new(
        VMADDR_CID_ANY,
        carapace_protocol::FORWARD_VSOCK_PORT,
    ))?;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("port forward: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if peer.cid() != HOST_CID {
            tracing::warn!(
                cid = peer.cid(),
                "port forward: refused a stream not from the host"
            );
            continue;
        }
        tokio::spawn(forward(stream));
    }
}

/// Reads the port, connects to it in the pod's network namespace and copies both ways. A
/// port nobody listens on closes the stream (the host's side then closes its connection, as
/// containerd does when its own dial fails).
async fn forward(mut stream: VsockStream) {
    let mut request = [0u8; 2];
    let port = match tokio::time::timeout(SETUP_TIMEOUT, stream.read_exact(&mut request)).await {
        Ok(Ok(_)) => match carapace_protocol::parse_forward_request(request) {
            Some(p) => p,
            None => {
                tracing::warn!("port forward: port 0 asked for");
                return;
            }
        },
        Ok(Err(e)) => {
            tracing::warn!("port forward: reading the port: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!("port forward: no port named within {SETUP_TIMEOUT:?}");
            return;
        }
    };
    let connected = tokio::time::timeout(
        SETUP_TIMEOUT,
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
    )
    .await;
    let mut tcp = match connected {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::info!(port, "port forward: connecting: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(port, "port forward: connecting timed out");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut stream, &mut tcp).await {
        Ok((to_guest, to_host)) => {
            tracing::info!(port, to_guest, to_host, "port forward: connection closed")
        }
        Err(e) => tracing::info!(port, "port forward: connection ended: {e}"),
    }
}
