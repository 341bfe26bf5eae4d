//! The requests on a pod's existing processes that leave its containers as they are: state,
//! wait, signals, the terminal's size, closing stdin, resources, pause and resume,
//! statistics and the process list.

use std::sync::Arc;

use carapace_protocol::agent as ag;
use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::{TaskPaused, TaskResumed};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics::{TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC};

use super::host::Vm;
use super::{agent_err, Pod, RPC};
use crate::agent::ctx_timeout;
use crate::convert::{self, Exit};
use crate::error::{Result, ShimError};
use crate::exec_id::ExecId;
use crate::watchers::DRAIN;

impl Pod {
    /// A process's state.
    pub async fn state(&self, id: &str, exec: &ExecId) -> Result<StateResponse> {
        let state = self.state.lock().await;
        let c = state.container(id)?;
        let proc = state.process(id, exec)?;
        let exit = proc.exit();
        Ok(StateResponse {
            id: id.to_string(),
            bundle: c.bundle.clone(),
            pid: state.pid(),
            status: proc.status().into(),
            stdin: proc.stdio.stdin.clone(),
            stdout: proc.stdio.stdout.clone(),
            stderr: proc.stdio.stderr.clone(),
            terminal: proc.stdio.terminal,
            exit_status: exit.as_ref().map_or(0, |e| e.status),
            exited_at: exit.map(|e| e.at).into(),
            exec_id: exec.wire().to_string(),
            ..Default::default()
        })
    }

    /// Waits for a process to exit.
    pub async fn wait(&self, id: &str, exec: &ExecId) -> Result<Exit> {
        let proc = self.state.lock().await.process(id, exec)?;
        Ok(proc.wait().await)
    }

    /// Signals a process that has not finished (or, with `all`, every process of its
    /// container).
    pub async fn kill(&self, id: &str, exec: &ExecId, signal: u32, all: bool) -> Result<()> {
        let (proc, sb) = {
            let state = self.state.lock().await;
            (state.process(id, exec)?, state.sandbox()?)
        };
        if proc.status() == Status::STOPPED {
            return Err(ShimError::NotFound(format!(
                "{id}/{exec}: the process has already finished"
            )));
        }
        let r = ag::SignalProcessRequest {
            container_id: id.to_string(),
            exec_id: exec.wire().to_string(),
            signal,
            all,
            ..Default::default()
        };
        sb.agent()
            .signal_process(ctx_timeout(RPC), &r)
            .await
            .map_err(agent_err("SignalProcess"))?;
        Ok(())
    }

    /// Resizes a process's terminal.
    pub async fn resize_pty(&self, id: &str, exec: &ExecId, width: u32, height: u32) -> Result<()> {
        let sb = self.state.lock().await.sandbox()?;
        let r = ag::TtyWinResizeRequest {
            container_id: id.to_string(),
            exec_id: exec.wire().to_string(),
            rows: height,
            columns: width,
            ..Default::default()
        };
        sb.agent()
            .tty_win_resize(ctx_timeout(RPC), &r)
            .await
            .map_err(agent_err("TtyWinResize"))?;
        Ok(())
    }

    /// containerd closed a process's stdin: what was written is forwarded, then the
    /// process's stdin is closed.
    pub async fn close_stdin(&self, id: &str, exec: &ExecId, stdin: bool) -> Result<()> {
        let proc = self.state.lock().await.process(id, exec)?;
        if stdin {
            if let Some(p) = proc.pumps() {
                p.close_stdin(DRAIN).await;
            }
        }
        Ok(())
    }

    /// Changes container `id`'s resources (`resources`: the LinuxResources JSON).
    pub async fn update(&self, id: &str, resources: Vec<u8>) -> Result<()> {
        let sb = self.container_sandbox(id).await?;
        let r = ag::UpdateContainerRequest {
            container_id: id.to_string(),
            resources,
            ..Default::default()
        };
        sb.agent()
            .update_container(ctx_timeout(RPC), &r)
            .await
            .map_err(agent_err("UpdateContainer"))?;
        Ok(())
    }

    /// Pauses (`pause`) or resumes container `id`.
    pub async fn pause(&self, id: &str, pause: bool) -> Result<()> {
        let (proc, sb) = {
            let state = self.state.lock().await;
            (state.process(id, &ExecId::Init)?, state.sandbox()?)
        };
        let want = if pause {
            Status::RUNNING
        } else {
            Status::PAUSED
        };
        if proc.status() != want {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id:?} is {:?}",
                proc.status()
            )));
        }
        let agent = sb.agent();
        if pause {
            let r = ag::PauseContainerRequest {
                container_id: id.to_string(),
                ..Default::default()
            };
            agent
                .pause_container(ctx_timeout(RPC), &r)
                .await
                .map_err(agent_err("PauseContainer"))?;
            proc.set_status(Status::PAUSED);
            let ev = TaskPaused {
                container_id: id.to_string(),
                ..Default::default()
            };
            self.events
                .publish(TASK_PAUSED_EVENT_TOPIC, Box::new(ev))
                .await;
        } else {
            let r = ag::ResumeContainerRequest {
                container_id: id.to_string(),
                ..Default::default()
            };
            agent
                .resume_container(ctx_timeout(RPC), &r)
                .await
                .map_err(agent_err("ResumeContainer"))?;
            proc.set_status(Status::RUNNING);
            let ev = TaskResumed {
                container_id: id.to_string(),
                ..Default::default()
            };
            self.events
                .publish(TASK_RESUMED_EVENT_TOPIC, Box::new(ev))
                .await;
        }
        Ok(())
    }

    /// Container `id`'s statistics as containerd's metrics.
    pub async fn stats(&self, id: &str) -> Result<StatsResponse> {
        let sb = self.container_sandbox(id).await?;
        let r = ag::StatsContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        let s = sb
            .agent()
            .stats_container(ctx_timeout(RPC), &r)
            .await
            .map_err(agent_err("StatsContainer"))?;
        Ok(StatsResponse {
            stats: MessageField::some(convert::metrics_any(&s)?),
            ..Default::default()
        })
    }

    /// The processes of container `id`.
    pub async fn pids(&self, id: &str) -> Result<PidsResponse> {
        let sb = self.container_sandbox(id).await?;
        let r = ag::ListProcessesRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        let list = sb
            .agent()
            .list_processes(ctx_timeout(RPC), &r)
            .await
            .map_err(agent_err("ListProcesses"))?;
        // Guest pids (the guest's root pid namespace): what `ctr task ps` shows. Unlike
        // the task pid (see `State::pid`) nothing on the host acts on them.
        Ok(PidsResponse {
            processes: list
                .pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    /// The VM of existing container `id`.
    async fn container_sandbox(&self, id: &str) -> Result<Arc<dyn Vm>> {
        let state = self.state.lock().await;
        state.container(id)?;
        state.sandbox()
    }
}
