//! What the shim tracks of one process (a container's init or an exec): its stdio and
//! their opened destinations, its status, its exit (watched by Wait), and the lock that keeps its start event before its
//! exit event.

use std::sync::{Arc, Mutex};

use containerd_shim_protos::api::Status;
use tokio::sync::watch;

use crate::convert::Exit;
use crate::exec_id::ExecId;
use crate::output::Outputs;
use crate::stdio::{Pumps, StdioPaths};

/// One process of a container.
pub struct Proc {
    /// Its container.
    pub container_id: String,
    /// Which of its container's processes it is.
    pub exec_id: ExecId,
    /// containerd's stdio for it.
    pub stdio: StdioPaths,
    /// An exec's OCI Process JSON, sent to the agent at Start.
    pub exec_spec: Option<Vec<u8>>,
    /// Where its stdout and stderr go (closed, its logger stopped, at Delete).
    pub outputs: Arc<Outputs>,
    /// Held by Start while it starts the process and publishes the start event, and by the
    /// exit watcher while it publishes the exit: containerd must see start before exit.
    pub lifecycle: tokio::sync::Mutex<()>,
    status: Mutex<Status>,
    pumps: Mutex<Option<Arc<Pumps>>>,
    exit_tx: watch::Sender<Option<Exit>>,
}

impl Proc {
    /// A created process.
    pub fn new(
        container_id: &str,
        exec_id: ExecId,
        stdio: StdioPaths,
        exec_spec: Option<Vec<u8>>,
        outputs: Arc<Outputs>,
    ) -> Arc<Self> {
        Arc::new(Self {
            container_id: container_id.into(),
            exec_id,
            stdio,
            exec_spec,
            outputs,
            lifecycle: tokio::sync::Mutex::new(()),
            status: Mutex::new(Status::CREATED),
            pumps: Mutex::new(None),
            exit_tx: watch::channel(None).0,
        })
    }

    /// The id containerd's events name the process by: the exec id, or the container's.
    pub fn event_id(&self) -> &str {
        match &self.exec_id {
            ExecId::Init => &self.container_id,
            ExecId::Exec(id) => id,
        }
    }

    /// Its status.
    pub fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets its status (a stopped process stays stopped).
    pub fn set_status(&self, s: Status) {
        let mut cur = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if *cur != Status::STOPPED {
            *cur = s;
        }
    }

    /// Its exit, once it has exited.
    pub fn exit(&self) -> Option<Exit> {
        self.exit_tx.borrow().clone()
    }

    /// Records the exit and wakes every waiter.
    pub fn set_exited(&self, exit: Exit) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Status::STOPPED;
        self.exit_tx.send_replace(Some(exit));
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit_tx.subscribe();
        let exit = match rx.wait_for(Option::is_some).await {
            Ok(e) => e.clone(),
            // The sender lives in `self`: it cannot be dropped while we borrow it.
            Err(_) => None,
        };
        exit.unwrap_or_else(|| Exit::now(255))
    }

    /// Records the running stdio pumps.
    pub fn set_pumps(&self, p: Arc<Pumps>) {
        *self.pumps.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    /// The stdio pumps, once started.
    pub fn pumps(&self) -> Option<Arc<Pumps>> {
        self.pumps.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_the_recorded_exit() {
        let p = Proc::new(
            "c",
            ExecId::Init,
            StdioPaths::default(),
            None,
            Arc::new(Outputs::none()),
        );
        assert_eq!(p.status(), Status::CREATED);
        assert_eq!(p.event_id(), "c");
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait().await.status })
        };
        p.set_status(Status::RUNNING);
        p.set_exited(Exit::now(3));
        assert_eq!(waiter.await.unwrap(), 3);
        p.set_status(Status::RUNNING);
        assert_eq!(p.status(), Status::STOPPED, "stopped stays stopped");
    }
}
