//! The SIGCHLD-driven reaper: collects every exited child (orphans included when PID 1) and
//! hands the exit status of registered processes to whoever waits for them.
//!
//! The agent runs on a single-threaded runtime, and libcontainer's own `waitpid` calls (for
//! its intermediate process) happen synchronously inside a request handler; the reaper task
//! only runs between handlers, so it never steals a status libcontainer waits for. A process
//! the agent starts is registered in the same synchronous section that created it, before the
//! reaper can run, so its status is never dropped as an orphan's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, or 128 + signal when killed by a signal.
    pub status: i32,
    /// The killing signal, 0 when the process exited.
    pub signal: u32,
    /// When the reaper collected it (within a SIGCHLD wake-up of the exit).
    pub at: SystemTime,
}

impl ExitStatus {
    fn from_wait(status: WaitStatus, at: SystemTime) -> Option<(Pid, Self)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((
                pid,
                Self {
                    status: code,
                    signal: 0,
                    at,
                },
            )),
            WaitStatus::Signaled(pid, sig, _) => Some((
                pid,
                Self {
                    status: 128 + sig as i32,
                    signal: sig as u32,
                    at,
                },
            )),
            _ => None,
        }
    }
}

/// The receiving side of one process's exit: `None` until it exits.
pub type ExitWatch = watch::Receiver<Option<ExitStatus>>;

/// Processes whose exit somebody waits for.
#[derive(Clone, Default)]
pub struct Reaper {
    waiting: Arc<Mutex<HashMap<Pid, watch::Sender<Option<ExitStatus>>>>>,
}

impl Reaper {
    /// Registers `pid` (a child of the agent); its exit status goes to the returned watch.
    pub fn register(&self, pid: Pid) -> ExitWatch {
        let (tx, rx) = watch::channel(None);
        self.lock().insert(pid, tx);
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Pid, watch::Sender<Option<ExitStatus>>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reaps every child that has exited so far.
    pub fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    if let Some((pid, exit)) = ExitStatus::from_wait(status, SystemTime::now()) {
                        if let Some(tx) = self.lock().remove(&pid) {
                            tracing::debug!(%pid, ?exit, "process exited");
                            tx.send_replace(Some(exit));
                        }
                    }
                }
                Err(Errno::EINTR) => {}
                Err(err) => {
                    tracing::warn!("waitpid failed: {err}");
                    return;
                }
            }
        }
    }

    /// Reaps on every SIGCHLD, forever.
    pub async fn run(self) -> std::io::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        loop {
            self.reap_all();
            sigchld.recv().await;
        }
    }
}
