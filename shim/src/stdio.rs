//! Standard streams of one process, pumped between containerd's side and the agent's stream
//! RPCs: ReadStdout/ReadStderr (long polls) into the stdout/stderr destinations (fifos, a
//! file or a logger: see `output`), the stdin fifo into WriteStdin, and CloseStdin once the
//! stdin fifo reaches end of file.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carapace_protocol::agent::{CloseStdinRequest, ReadStreamRequest, WriteStreamRequest};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::agent::{ctx, Agent};
use crate::error::{Result, ShimError};
use crate::exec_id::ExecId;
use crate::output::{fifo_path, Destination, Outputs, Writer};

/// Largest chunk asked of the agent per read.
const CHUNK: u32 = 64 * 1024;

/// containerd's stdio for a process.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// The stdin fifo (empty: none).
    pub stdin: String,
    /// The stdout fifo or log URI (empty: none).
    pub stdout: String,
    /// The stderr fifo (empty: none; unused with a terminal or a log URI).
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

impl StdioPaths {
    /// Where stdout and stderr go; refuses a stdin that is not a fifo and unknown schemes.
    pub fn destination(&self) -> Result<Destination> {
        if self.stdin.contains("://") && !self.stdin.starts_with("fifo://") {
            return Err(ShimError::InvalidArgument(format!(
                "stdin URI {:?}: stdin can only be a fifo",
                self.stdin
            )));
        }
        Destination::parse(&self.stdout, &self.stderr)
    }
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
    client: Arc<dyn Agent>,
    container_id: String,
    exec_id: String,
}

impl Pumps {
    /// Starts pumping into `outputs` (opened beforehand); the agent-side process must exist.
    pub fn start(
        client: &Arc<dyn Agent>,
        container_id: &str,
        exec_id: &ExecId,
        paths: &StdioPaths,
        outputs: &Outputs,
    ) -> Self {
        let t = Target {
            client: client.clone(),
            container_id: container_id.into(),
            exec_id: exec_id.wire().into(),
        };
        let (stdout, stderr) = outputs.take();
        let mut tasks = Vec::new();
        if let Some(w) = stdout {
            tasks.push(pump_out(t.clone(), w, false));
        }
        if let Some(w) = stderr {
            tasks.push(pump_out(t.clone(), w, true));
        }
        let stdin_closed = Arc::new(AtomicBool::new(false));
        let (stdin_fifo, stdin_task) = match fifo_path(&paths.stdin) {
            None => (None, None),
            Some(fifo) => {
                let task = pump_in(t, fifo.clone(), stdin_closed.clone());
                (Some(fifo), Some(task))
            }
        };
        Self {
            outputs: Mutex::new(tasks),
            stdin_fifo,
            stdin_task: Mutex::new(stdin_task),
            stdin_closed,
        }
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

fn pump_out(t: Target, mut out: Writer, stderr: bool) -> JoinHandle<()> {
    let name = if stderr { "stderr" } else { "stdout" };
    tokio::spawn(async move {
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
                    // flush: a file's writes complete in the background until flushed.
                    let written = match out.write_all(&r.data).await {
                        Ok(()) => out.flush().await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = written {
                        log::warn!(
                            "{}/{} {name}: writing the output: {e}",
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
    })
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
