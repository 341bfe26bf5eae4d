//! containerd's Task service for one pod, kept thin: every handler has the same shape
//! (trace, validate containerd's request, do it through [`crate::pod`], map the error to its
//! ttrpc code). The pod's state and lifecycle live in [`crate::pod`], the background
//! watchers in [`crate::watchers`].

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::api::*;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use oci_spec::runtime::Spec;

use crate::config::Config;
use crate::convert;
use crate::error::{Result, ShimError};
use crate::events::Events;
use crate::exec_id::ExecId;
use crate::pod::host::System;
use crate::pod::Pod;
use crate::spec;
use crate::stdio::StdioPaths;

type TResult<T> = ttrpc::Result<T>;

/// The Task service.
pub struct Service {
    pod: Pod,
    exit: Arc<ExitSignal>,
}

/// Maps a handler's outcome to what containerd gets, logging a failure with its code.
fn done<T>(what: &str, r: Result<T>) -> TResult<T> {
    carapace_protocol::status::respond(r, |e| log::warn!("{what} failed ({:?}): {e}", e.code()))
}

impl Service {
    /// A service with no pod yet.
    pub fn new(config: Arc<Config>, events: Events, exit: Arc<ExitSignal>) -> Self {
        Self {
            pod: Pod::new(config, Arc::new(System), Arc::new(events)),
            exit,
        }
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TResult<CreateTaskResponse> {
        log::info!(
            "Create {} bundle {} ({} rootfs mounts)",
            req.id,
            req.bundle,
            req.rootfs.len()
        );
        let r = async {
            spec::check_id("container", &req.id)?;
            if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
                return Err(ShimError::Unimplemented(
                    "restoring from a checkpoint".into(),
                ));
            }
            let stdio = StdioPaths::from(&req);
            let dest = stdio.destination()?;
            let bundle = Path::new(&req.bundle);
            let oci = Spec::load(bundle.join("config.json")).map_err(|e| {
                ShimError::InvalidArgument(format!("{}/config.json: {e}", bundle.display()))
            })?;
            self.pod.create(&req, oci, stdio, &dest).await
        };
        done("Create", r.await)
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> TResult<StartResponse> {
        log::info!("Start {}/{}", req.id, req.exec_id);
        let exec = ExecId::from_wire(&req.exec_id);
        done("Start", self.pod.start(&req.id, &exec).await)
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TResult<DeleteResponse> {
        log::info!("Delete {}/{}", req.id, req.exec_id);
        let exec = ExecId::from_wire(&req.exec_id);
        done("Delete", self.pod.delete(&req.id, &exec).await)
    }

    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> TResult<StateResponse> {
        log::debug!("State {}/{}", req.id, req.exec_id);
        let exec = ExecId::from_wire(&req.exec_id);
        done("State", self.pod.state(&req.id, &exec).await)
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TResult<WaitResponse> {
        log::info!("Wait {}/{}", req.id, req.exec_id);
        let exec = ExecId::from_wire(&req.exec_id);
        let exit = done("Wait", self.pod.wait(&req.id, &exec).await)?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TResult<Empty> {
        log::info!(
            "Kill {}/{} signal {} all {}",
            req.id,
            req.exec_id,
            req.signal,
            req.all
        );
        let exec = ExecId::from_wire(&req.exec_id);
        let r = self.pod.kill(&req.id, &exec, req.signal, req.all).await;
        done("Kill", r)?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TResult<Empty> {
        log::info!("Exec {}/{}", req.id, req.exec_id);
        let r = async {
            spec::check_id("exec", &req.exec_id)?;
            let stdio = StdioPaths::from(&req);
            let dest = stdio.destination()?;
            let spec = convert::any_json(&req.spec, "the exec process spec")?;
            self.pod
                .exec(&req.id, &req.exec_id, stdio, spec, &dest)
                .await
        };
        done("Exec", r.await)?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TResult<Empty> {
        log::debug!(
            "ResizePty {}/{} {}x{}",
            req.id,
            req.exec_id,
            req.width,
            req.height
        );
        let exec = ExecId::from_wire(&req.exec_id);
        let r = self
            .pod
            .resize_pty(&req.id, &exec, req.width, req.height)
            .await;
        done("ResizePty", r)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TResult<Empty> {
        log::info!("CloseIO {}/{} stdin {}", req.id, req.exec_id, req.stdin);
        let exec = ExecId::from_wire(&req.exec_id);
        let r = self.pod.close_stdin(&req.id, &exec, req.stdin).await;
        done("CloseIO", r)?;
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TResult<Empty> {
        log::info!("Update {}", req.id);
        let r = async {
            let resources = convert::any_json(&req.resources, "the resources")?;
            self.pod.update(&req.id, resources).await
        };
        done("Update", r.await)?;
        Ok(Empty::new())
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TResult<Empty> {
        log::info!("Pause {}", req.id);
        done("Pause", self.pod.pause(&req.id, true).await)?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TResult<Empty> {
        log::info!("Resume {}", req.id);
        done("Resume", self.pod.pause(&req.id, false).await)?;
        Ok(Empty::new())
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TResult<StatsResponse> {
        log::debug!("Stats {}", req.id);
        done("Stats", self.pod.stats(&req.id).await)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TResult<PidsResponse> {
        log::debug!("Pids {}", req.id);
        done("Pids", self.pod.pids(&req.id).await)
    }

    async fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> TResult<Empty> {
        log::info!("Checkpoint {}", req.id);
        done(
            "Checkpoint",
            Err(ShimError::Unimplemented(
                "checkpoint of a microVM container".into(),
            )),
        )
    }

    async fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TResult<ConnectResponse> {
        log::debug!("Connect {}", req.id);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.pod.task_pid().await,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> TResult<Empty> {
        log::info!("Shutdown {} now {}", req.id, req.now);
        if done("Shutdown", self.pod.shutdown().await)? {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
