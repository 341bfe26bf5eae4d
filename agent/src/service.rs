//! The ttrpc `AgentService`: every handler has the same shape (trace, validate, do, map the
//! error to its ttrpc code) and delegates to `container`, `sandbox`, `cgroup` and `network`.

use std::sync::Arc;

use async_trait::async_trait;
use carapace_protocol::agent::*;
use carapace_protocol::agent_ttrpc::AgentService;
use carapace_protocol::types::Interface;
use protobuf::well_known_types::empty::Empty;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::MessageField;
use tokio::sync::{mpsc, Mutex};
use ttrpc::r#async::TtrpcContext;

use crate::container::Containers;
use crate::error::AgentError;
use crate::network::{self, Netlink};
use crate::process::{self, Process};

type TResult<T> = ttrpc::Result<T>;

/// The agent's service state.
pub struct Agent {
    /// The pod's containers.
    pub containers: Arc<Containers>,
    /// OOM kills, by container id, in the order they happened.
    pub oom_rx: Mutex<mpsc::UnboundedReceiver<String>>,
    /// The rtnetlink connection that configures the pod's network.
    pub net: Netlink,
    /// True when the agent is PID 1 of a VM (DestroySandbox then ends the VM).
    pub is_init: bool,
}

fn done<T>(what: &str, r: Result<T, AgentError>) -> TResult<T> {
    carapace_protocol::status::respond(
        r,
        |e| tracing::warn!(code = ?e.code(), "{what} failed: {}", e.message()),
    )
}

async fn read_stream(
    p: Arc<Process>,
    stderr: bool,
    len: u32,
) -> Result<ReadStreamResponse, AgentError> {
    let stream = if stderr {
        p.stdio.stderr.clone()
    } else {
        p.stdio.stdout.clone()
    };
    let mut r = ReadStreamResponse::new();
    match stream {
        None => r.eof = true,
        Some(s) => match process::read(&s, len as usize).await? {
            Some(data) => r.data = data,
            None => r.eof = true,
        },
    }
    Ok(r)
}

#[async_trait]
impl AgentService for Agent {
    async fn check(&self, _: &TtrpcContext, _: CheckRequest) -> TResult<CheckResponse> {
        Ok(CheckResponse {
            serving: true,
            ..Default::default()
        })
    }

    async fn version(&self, _: &TtrpcContext, _: VersionRequest) -> TResult<VersionResponse> {
        Ok(VersionResponse {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: carapace_protocol::PROTOCOL_VERSION,
            ..Default::default()
        })
    }

    async fn get_guest_details(
        &self,
        _: &TtrpcContext,
        _: GetGuestDetailsRequest,
    ) -> TResult<GuestDetails> {
        Ok(crate::sandbox::guest_details())
    }

    async fn create_sandbox(&self, _: &TtrpcContext, req: CreateSandboxRequest) -> TResult<Empty> {
        tracing::info!(sandbox = req.sandbox_id, "CreateSandbox");
        let dir = self.containers.state_dir().join("sandbox");
        let files = done(
            "CreateSandbox",
            crate::sandbox::create(&req, &dir, self.is_init),
        )?;
        self.containers.set_sandbox(files);
        Ok(Empty::new())
    }

    async fn destroy_sandbox(&self, _: &TtrpcContext, _: DestroySandboxRequest) -> TResult<Empty> {
        tracing::info!("DestroySandbox");
        for id in self.containers.ids() {
            if let Err(e) = self.containers.remove(&id).await {
                tracing::warn!(id, "removing at DestroySandbox: {}", e.message());
            }
        }
        let is_init = self.is_init;
        // Answer first, then end the VM (or, on a host, the agent).
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if is_init {
                crate::init::power_off();
            }
            std::process::exit(0);
        });
        Ok(Empty::new())
    }

    async fn update_interface(
        &self,
        _: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> TResult<Interface> {
        let i = req.interface.into_option().unwrap_or_default();
        tracing::info!(name = i.name, hw_addr = i.hw_addr, "UpdateInterface");
        let r = async {
            let plan = network::plan_interface(&i)?;
            self.net.update_interface(&plan).await
        };
        done("UpdateInterface", r.await)
    }

    async fn update_routes(&self, _: &TtrpcContext, req: UpdateRoutesRequest) -> TResult<Routes> {
        tracing::info!(routes = req.routes.len(), "UpdateRoutes");
        let r = async {
            let plans = network::plan_routes(&req.routes)?;
            self.net.update_routes(&plans).await
        };
        let routes = done("UpdateRoutes", r.await)?;
        Ok(Routes {
            routes,
            ..Default::default()
        })
    }

    async fn add_arp_neighbors(
        &self,
        _: &TtrpcContext,
        req: AddArpNeighborsRequest,
    ) -> TResult<Empty> {
        tracing::info!(neighbors = req.neighbors.len(), "AddArpNeighbors");
        let r = async {
            let plans = network::plan_neighbors(&req.neighbors)?;
            self.net.add_neighbors(&plans).await
        };
        done("AddArpNeighbors", r.await)?;
        Ok(Empty::new())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> TResult<Empty> {
        tracing::info!(id = req.container_id, "CreateContainer");
        let shared = (!req.shared_namespaces.is_empty()).then_some((
            req.share_namespaces_of.as_str(),
            req.shared_namespaces.as_slice(),
        ));
        done(
            "CreateContainer",
            self.containers
                .create(&req.container_id, &req.oci_spec, &req.rootfs, shared),
        )?;
        Ok(Empty::new())
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: StartContainerRequest,
    ) -> TResult<Empty> {
        tracing::info!(id = req.container_id, "StartContainer");
        done("StartContainer", self.containers.start(&req.container_id))?;
        Ok(Empty::new())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> TResult<Empty> {
        tracing::info!(id = req.container_id, "RemoveContainer");
        done(
            "RemoveContainer",
            self.containers.remove(&req.container_id).await,
        )?;
        Ok(Empty::new())
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> TResult<Empty> {
        tracing::info!(id = req.container_id, "UpdateContainer");
        done(
            "UpdateContainer",
            self.containers.update(&req.container_id, &req.resources),
        )?;
        Ok(Empty::new())
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> TResult<StatsContainerResponse> {
        done("StatsContainer", self.containers.stats(&req.container_id))
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> TResult<Empty> {
        tracing::info!(id = req.container_id, "PauseContainer");
        done(
            "PauseContainer",
            self.containers.pause(&req.container_id, true),
        )?;
        Ok(Empty::new())
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> TResult<Empty> {
        tracing::info!(id = req.container_id, "ResumeContainer");
        done(
            "ResumeContainer",
            self.containers.pause(&req.container_id, false),
        )?;
        Ok(Empty::new())
    }

    async fn exec_process(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TResult<Empty> {
        tracing::info!(id = req.container_id, exec = req.exec_id, "ExecProcess");
        done(
            "ExecProcess",
            self.containers
                .exec(&req.container_id, &req.exec_id, &req.process),
        )?;
        Ok(Empty::new())
    }

    async fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> TResult<Empty> {
        tracing::info!(
            id = req.container_id,
            exec = req.exec_id,
            signal = req.signal,
            all = req.all,
            "SignalProcess"
        );
        done(
            "SignalProcess",
            self.containers
                .signal(&req.container_id, &req.exec_id, req.signal, req.all),
        )?;
        Ok(Empty::new())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> TResult<WaitProcessResponse> {
        let status = done(
            "WaitProcess",
            self.containers.wait(&req.container_id, &req.exec_id).await,
        )?;
        Ok(WaitProcessResponse {
            exit_status: status.status,
            signal: status.signal,
            exited_at: MessageField::some(Timestamp::from(status.at)),
            ..Default::default()
        })
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> TResult<ListProcessesResponse> {
        tracing::debug!(id = req.container_id, "ListProcesses");
        let pids = done(
            "ListProcesses",
            self.containers.processes(&req.container_id),
        )?;
        Ok(ListProcessesResponse {
            pids,
            ..Default::default()
        })
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> TResult<WriteStreamResponse> {
        let r = async {
            let p = self.containers.process(&req.container_id, &req.exec_id)?;
            let stdin = p
                .stdio
                .stdin
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let stdin =
                stdin.ok_or_else(|| AgentError::FailedPrecondition("stdin is closed".into()))?;
            process::write_all(&stdin, &req.data).await
        };
        let len = done("WriteStdin", r.await)?;
        Ok(WriteStreamResponse {
            len: len as u32,
            ..Default::default()
        })
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> TResult<ReadStreamResponse> {
        let p = done(
            "ReadStdout",
            self.containers.process(&req.container_id, &req.exec_id),
        )?;
        done("ReadStdout", read_stream(p, false, req.len).await)
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> TResult<ReadStreamResponse> {
        let p = done(
            "ReadStderr",
            self.containers.process(&req.container_id, &req.exec_id),
        )?;
        done("ReadStderr", read_stream(p, true, req.len).await)
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: CloseStdinRequest) -> TResult<Empty> {
        let p = done(
            "CloseStdin",
            self.containers.process(&req.container_id, &req.exec_id),
        )?;
        // For a pty the master stays open for output; the slave sees EOF only via ^D, which
        // is what a terminal user would type, so write it.
        if let Some(pty) = p.stdio.pty.clone() {
            done("CloseStdin", process::write_all(&pty, &[4]).await)?;
        }
        p.stdio
            .stdin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        Ok(Empty::new())
    }

    async fn tty_win_resize(&self, _: &TtrpcContext, req: TtyWinResizeRequest) -> TResult<Empty> {
        let r = (|| {
            let p = self.containers.process(&req.container_id, &req.exec_id)?;
            let pty = p.stdio.pty.clone().ok_or_else(|| {
                AgentError::FailedPrecondition("the process has no terminal".into())
            })?;
            let rows = u16::try_from(req.rows)
                .map_err(|_| AgentError::InvalidArgument("rows out of range".into()))?;
            let cols = u16::try_from(req.columns)
                .map_err(|_| AgentError::InvalidArgument("columns out of range".into()))?;
            process::resize(&pty, rows, cols)
        })();
        done("TtyWinResize", r)?;
        Ok(Empty::new())
    }

    async fn get_oom_event(&self, _: &TtrpcContext, _: GetOOMEventRequest) -> TResult<OOMEvent> {
        let id = self.oom_rx.lock().await.recv().await;
        let id = done(
            "GetOOMEvent",
            id.ok_or_else(|| AgentError::Internal("the OOM watcher stopped".into())),
        )?;
        Ok(OOMEvent {
            container_id: id,
            ..Default::default()
        })
    }
}
