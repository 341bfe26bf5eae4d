//! The connection to the guest agent: carapace-vmm's hybrid vsock (connect to the VM's Unix
//! socket, write `CONNECT <port>\n`, read `OK <port>\n`, then the stream is the agent's
//! ttrpc connection), retried until the agent's `Check` answers.

use std::path::Path;
use std::time::{Duration, Instant};

use carapace_protocol::agent::CheckRequest;
use carapace_protocol::agent_ttrpc::AgentServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::{Result, ShimError};

/// A ttrpc context without a deadline (for RPCs that block until something happens).
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

/// A ttrpc context with a deadline.
pub fn ctx_timeout(d: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(d.as_nanos() as i64)
}

/// Opens one stream to `port` in the guest through the hybrid vsock socket.
async fn open_stream(socket: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Read the answer a byte at a time: what follows the newline is the agent's.
    let mut line = Vec::new();
    loop {
        let b = s.read_u8().await?;
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > 64 {
            return Err(std::io::Error::other("over-long answer to CONNECT"));
        }
    }
    let line = String::from_utf8_lossy(&line);
    if !line.starts_with("OK ") {
        return Err(std::io::Error::other(format!(
            "CONNECT {port} answered {line:?}"
        )));
    }
    Ok(s)
}

/// Connects to the agent, retrying until its `Check` answers or `timeout` passes. `alive`
/// tells whether the VMM still runs (no use waiting for a dead VM).
pub async fn connect(
    socket: &Path,
    timeout: Duration,
    alive: impl Fn() -> bool,
) -> Result<AgentServiceClient> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("never tried");
    while Instant::now() < deadline {
        if !alive() {
            return Err(ShimError::Internal(format!(
                "the VM ended before its agent answered (last: {last})"
            )));
        }
        match open_stream(socket, carapace_protocol::AGENT_VSOCK_PORT).await {
            Ok(stream) => {
                let client = AgentServiceClient::new(ttrpc::r#async::Client::new(stream.into()));
                match client
                    .check(ctx_timeout(Duration::from_secs(5)), &CheckRequest::new())
                    .await
                {
                    Ok(r) if r.serving => return Ok(client),
                    Ok(_) => last = "Check answered not serving".into(),
                    Err(e) => last = format!("Check: {e}"),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(ShimError::Internal(format!(
        "the agent did not answer within {} s (last: {last})",
        timeout.as_secs()
    )))
}
