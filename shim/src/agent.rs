//! The connection to the guest agent: carapace-vmm's hybrid vsock (connect to the VM's Unix
//! socket, write `CONNECT <port>\n`, read `OK <port>\n`, then the stream is the agent's
//! ttrpc connection), retried until the agent's `Check` answers; and [`Agent`], the trait
//! over the per-container RPCs the shim's pod logic, watchers and stdio pumps send, which the
//! ttrpc client implements and unit tests fake.

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use carapace_protocol::agent as ag;
use carapace_protocol::agent::CheckRequest;
use carapace_protocol::agent_ttrpc::AgentServiceClient;
use protobuf::well_known_types::empty::Empty;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use ttrpc::context::Context;

use crate::error::{Result, ShimError};

/// A ttrpc context without a deadline (for RPCs that block until something happens).
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

/// A ttrpc context with a deadline.
pub fn ctx_timeout(d: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(d.as_nanos() as i64)
}

/// Opens one stream to `port` in the guest through the hybrid vsock socket. The socket's
/// directory may belong to the VMM (`vmm_user`), which could leave a link there to another
/// daemon's socket: only a socket itself is connected to. (This narrows the window, it does
/// not close it: connect(2) follows a link swapped in after the check, and no flag stops it.)
pub async fn open_stream(socket: &Path, port: u32) -> std::io::Result<UnixStream> {
    use std::os::unix::fs::FileTypeExt;
    if !std::fs::symlink_metadata(socket)?.file_type().is_socket() {
        return Err(std::io::Error::other(format!(
            "{} is not a socket",
            socket.display()
        )));
    }
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

/// Declares [`Agent`] and forwards each of its methods to the generated ttrpc client's method
/// of the same name and signature.
macro_rules! agent_rpcs {
    ($($(#[$doc:meta])* fn $name:ident($req:ty) -> $resp:ty;)*) => {
        /// The agent's per-container RPCs, with the generated client's signatures (a context
        /// carrying the deadline, the request, the agent's answer or ttrpc error). The
        /// sandbox-wide ones (Check, CreateSandbox, DestroySandbox, the network) are sent by
        /// [`crate::sandbox`] and [`crate::network`] on the client itself.
        #[async_trait]
        pub trait Agent: Send + Sync {
            $(
                $(#[$doc])*
                async fn $name(&self, ctx: Context, req: &$req) -> ttrpc::Result<$resp>;
            )*
        }

        #[async_trait]
        impl Agent for AgentServiceClient {
            $(
                async fn $name(&self, ctx: Context, req: &$req) -> ttrpc::Result<$resp> {
                    AgentServiceClient::$name(self, ctx, req).await
                }
            )*
        }
    };
}

agent_rpcs! {
    /// Creates a container (its init process created, not started).
    fn create_container(ag::CreateContainerRequest) -> Empty;
    /// Starts a created container's init process.
    fn start_container(ag::StartContainerRequest) -> Empty;
    /// Removes a container, killing what still runs in it.
    fn remove_container(ag::RemoveContainerRequest) -> Empty;
    /// Changes a container's resources.
    fn update_container(ag::UpdateContainerRequest) -> Empty;
    /// A container's statistics.
    fn stats_container(ag::StatsContainerRequest) -> ag::StatsContainerResponse;
    /// Freezes a container.
    fn pause_container(ag::PauseContainerRequest) -> Empty;
    /// Thaws a container.
    fn resume_container(ag::ResumeContainerRequest) -> Empty;
    /// Starts an exec process in a container.
    fn exec_process(ag::ExecProcessRequest) -> Empty;
    /// Signals a process (or every process of the container).
    fn signal_process(ag::SignalProcessRequest) -> Empty;
    /// Waits for a process to exit (a long poll).
    fn wait_process(ag::WaitProcessRequest) -> ag::WaitProcessResponse;
    /// The guest pids of a container's processes.
    fn list_processes(ag::ListProcessesRequest) -> ag::ListProcessesResponse;
    /// Writes to a process's stdin.
    fn write_stdin(ag::WriteStreamRequest) -> ag::WriteStreamResponse;
    /// Reads a process's stdout (a long poll).
    fn read_stdout(ag::ReadStreamRequest) -> ag::ReadStreamResponse;
    /// Reads a process's stderr (a long poll).
    fn read_stderr(ag::ReadStreamRequest) -> ag::ReadStreamResponse;
    /// Closes a process's stdin.
    fn close_stdin(ag::CloseStdinRequest) -> Empty;
    /// Resizes a process's terminal.
    fn tty_win_resize(ag::TtyWinResizeRequest) -> Empty;
    /// The next OOM kill in the guest (a long poll).
    fn get_oom_event(ag::GetOOMEventRequest) -> ag::OOMEvent;
}
