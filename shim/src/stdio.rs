//! Standard streams of one process, pumped between containerd's fifos and the agent's
//! stream RPCs: ReadStdout/ReadStderr (long polls) into the stdout/stderr fifos, the stdin
//! fifo into WriteStdin, and CloseStdin once the stdin fifo reaches end of file.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carapace_protocol::agent::{CloseStdinRequest, ReadStreamRequest, WriteStreamRequest};
use carapace_protocol::agent_ttrpc::AgentServiceClient;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::agent::ctx;
use crate::error::{Result, ShimError};

/// Largest chunk asked of the agent per read.
const CHUNK: u32 = 64 * 1024;

/// containerd's stdio for a process.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// The stdin fifo (empty: none).
    pub stdin: String,
    /// The stdout fifo (empty: none).
    pub stdout: String,
    /// The stderr fifo (empty: none; unused with a terminal).
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

impl StdioPaths {
    /// Refuses stdio the shim cannot serve yet.
    pub fn validate(&self) -> Result<()> {
        for p in [&self.stdin, &self.stdout, &self.stderr] {
            if p.contains("://") && !p.starts_with("fifo://") {
                return Err(ShimError::Unimplemented(format!(
                    "stdio URI {p:?}: only fifos are supported (binary:// and file:// log URIs are not implemented)"
                )));
            }
        }
        Ok(())
    }
}

fn fifo_path(p: &str) -> PathBuf {
    PathBuf::from(p.strip_prefix("fifo://").unwrap_or(p))
}

/// The running pumps of one process.
pub struct Pumps {
    outputs: Mutex<Vec<JoinHandle<()>>>,
    stdin_fifo: Option<PathBuf>,
    stdin_task: Mutex<Option<JoinHandle<()>>>,
    stdin_closed: Arc<AtomicBool>,
}

/// Identifies the process to the agent.
#[derive(Clone)]
struct Target {
    client: AgentServiceClient,
    container_id: String,
    exec_id: String,
}

impl Pumps {
    /// Opens the fifos and starts pumping; the agent-side process must exist.
    pub fn start(
        client: &AgentServiceClient,
        container_id: &str,
        exec_id: &str,
        paths: &StdioPaths,
    ) -> Result<Self> {
        let t = Target {
            client: client.clone(),
            container_id: container_id.into(),
            exec_id: exec_id.into(),
        };
        let mut outputs = Vec::new();
        if !paths.stdout.is_empty() {
            outputs.push(pump_out(t.clone(), &fifo_path(&paths.stdout), false)?);
        }
        if !paths.stderr.is_empty() && !paths.terminal {
            outputs.push(pump_out(t.clone(), &fifo_path(&paths.stderr), true)?);
        }
        let stdin_closed = Arc::new(AtomicBool::new(false));
        let (stdin_fifo, stdin_task) = if paths.stdin.is_empty() {
            (None, None)
        } else {
            let fifo = fifo_path(&paths.stdin);
            let task = pump_in(t, fifo.clone(), stdin_closed.clone());
            (Some(fifo), Some(task))
        };
        Ok(Self {
            outputs: Mutex::new(outputs),
            stdin_fifo,
            stdin_task: Mutex::new(stdin_task),
            stdin_closed,
        })
    }

    /// Waits up to `timeout` for stdout and stderr to be drained to end of file (a
    /// background process still holding them is left behind), then stops them.
    pub async fn drain(&self, timeout: Duration) {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.outputs.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = tokio::time::Instant::now() + timeout;
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                log::warn!("an output stream was not drained in time; dropping it");
                t.abort();
            }
        }
    }

    /// containerd closed stdin (CloseIO): waits for the stdin pump to forward what was
    /// written and close the process's stdin.
    pub async fn close_stdin(&self, timeout: Duration) {
        let task = self
            .stdin_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut t) = task {
            if tokio::time::timeout(timeout, &mut t).await.is_err() {
                self.unblock_stdin();
                let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
            }
        }
    }

    /// Stops the stdin pump of an exited process: a reader still waiting for a writer in
    /// open(2) is released by opening and closing the write side.
    pub fn stop_stdin(&self) {
        self.stdin_closed.store(true, Ordering::SeqCst);
        self.unblock_stdin();
        if let Some(t) = self
            .stdin_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            t.abort();
        }
    }

    fn unblock_stdin(&self) {
        if let Some(fifo) = &self.stdin_fifo {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(fifo);
        }
    }
}

fn pump_out(t: Target, fifo: &Path, stderr: bool) -> Result<JoinHandle<()>> {
    // Opened read-write: never blocks on a missing reader and never fails with ENXIO.
    let mut out = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(fifo)
        .map_err(|e| ShimError::io(format!("opening {}", fifo.display()), e))?;
    let name = if stderr { "stderr" } else { "stdout" };
    Ok(tokio::spawn(async move {
        loop {
            let req = ReadStreamRequest {
                container_id: t.container_id.clone(),
                exec_id: t.exec_id.clone(),
                len: CHUNK,
                ..Default::default()
            };
            let r = if stderr {
                t.client.read_stderr(ctx(), &req).await
            } else {
                t.client.read_stdout(ctx(), &req).await
            };
            match r {
                Ok(r) if r.eof => break,
                Ok(r) => {
                    if let Err(e) = out.write_all(&r.data).await {
                        log::warn!(
                            "{}/{} {name}: writing the fifo: {e}",
                            t.container_id,
                            t.exec_id
                        );
                        break;
                    }
                }
                Err(e) => {
                    log::warn!("{}/{} {name}: {e}", t.container_id, t.exec_id);
                    break;
                }
            }
        }
        log::debug!("{}/{} {name} ended", t.container_id, t.exec_id);
    }))
}

fn pump_in(t: Target, fifo: PathBuf, closed: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    // open(2) of a fifo for reading blocks until a writer comes, and read(2) blocks:
    // a thread of its own, which ends at end of file.
    std::thread::spawn(move || {
        let mut f = match std::fs::File::open(&fifo) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("opening {}: {e}", fifo.display());
                return;
            }
        };
        let mut buf = vec![0u8; CHUNK as usize];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("reading {}: {e}", fifo.display());
                    break;
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            let req = WriteStreamRequest {
                container_id: t.container_id.clone(),
                exec_id: t.exec_id.clone(),
                data,
                ..Default::default()
            };
            if let Err(e) = t.client.write_stdin(ctx(), &req).await {
                log::warn!("{}/{} stdin: {e}", t.container_id, t.exec_id);
                return;
            }
        }
        if !closed.swap(true, Ordering::SeqCst) {
            let req = CloseStdinRequest {
                container_id: t.container_id.clone(),
                exec_id: t.exec_id.clone(),
                ..Default::default()
            };
            if let Err(e) = t.client.close_stdin(ctx(), &req).await {
                log::debug!("{}/{} CloseStdin: {e}", t.container_id, t.exec_id);
            }
        }
    })
}
