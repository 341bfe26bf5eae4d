//! The pod as the shim serves it: its VM and containers, each container's init and exec
//! processes, and their lifecycle: the first Create boots the VM and a failed Create rolls
//! back exactly what it made; Delete removes a container in order (agent, output, share,
//! event) and the Delete of the last one tears the VM down. The requests that leave the
//! containers as they are live in `control`. Side effects go through [`host`]'s traits and
//! [`crate::agent::Agent`], which the unit tests fake.

mod control;
pub mod host;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use carapace_protocol::agent as ag;
use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::*;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics::*;
use oci_spec::runtime::Spec;
use tokio::sync::Mutex;

use crate::agent::ctx_timeout;
use crate::config::{Config, Share};
use crate::convert::Exit;
use crate::error::{Result, ShimError};
use crate::exec_id::ExecId;
use crate::hooks::HostHooks;
use crate::output::{Destination, Outputs};
use crate::process::Proc;
use crate::sandbox::FirstContainer;
use crate::sizing;
use crate::spec;
use crate::stdio::{Pumps, StdioPaths};
use crate::watchers;
use host::{EventSink, Host, Vm};

/// Deadline of short agent RPCs.
const RPC: Duration = Duration::from_secs(30);

/// One container of the pod.
struct Container {
    bundle: String,
    /// Its host-side OCI hooks (poststart and poststop are still to run).
    hooks: HostHooks,
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
}

#[derive(Default)]
struct State {
    sandbox: Option<Arc<dyn Vm>>,
    containers: HashMap<String, Container>,
}

fn not_found(id: &str, exec: &ExecId) -> ShimError {
    match exec {
        ExecId::Init => ShimError::NotFound(format!("container {id:?}")),
        ExecId::Exec(e) => ShimError::NotFound(format!("exec {e:?} of container {id:?}")),
    }
}

fn agent_err(what: &'static str) -> impl FnOnce(ttrpc::Error) -> ShimError {
    move |e| ShimError::agent(what, e)
}

impl State {
    fn sandbox(&self) -> Result<Arc<dyn Vm>> {
        self.sandbox
            .clone()
            .ok_or_else(|| ShimError::FailedPrecondition("the pod's VM is not running".into()))
    }

    fn container(&self, id: &str) -> Result<&Container> {
        self.containers
            .get(id)
            .ok_or_else(|| not_found(id, &ExecId::Init))
    }

    fn process(&self, id: &str, exec: &ExecId) -> Result<Arc<Proc>> {
        let c = self.container(id)?;
        match exec {
            ExecId::Init => Ok(c.init.clone()),
            ExecId::Exec(e) => c.execs.get(e).cloned().ok_or_else(|| not_found(id, exec)),
        }
    }

    /// The pid reported for every process of the pod in Create, Start, State, Delete and the
    /// task events: the VMM's. containerd and the tools around it treat a task pid as a host
    /// process (`/proc/<pid>`, `nsenter -t`, cgroup and metrics collectors); a guest pid there
    /// would name an unrelated host process or none. The VMM is the host process that lives
    /// exactly as long as the pod's containers and whose death ends them (Kata reports a host
    /// pid there too). The guest pids are listed by Pids.
    fn pid(&self) -> u32 {
        self.sandbox.as_ref().map_or(0, |s| s.pid())
    }
}

/// The pod: its VM (once booted) and its containers.
pub struct Pod {
    config: Arc<Config>,
    host: Arc<dyn Host>,
    events: Arc<dyn EventSink>,
    state: Mutex<State>,
}

impl Pod {
    /// A pod with no VM and no container yet.
    pub fn new(config: Arc<Config>, host: Arc<dyn Host>, events: Arc<dyn EventSink>) -> Self {
        Self {
            config,
            host,
            events,
            state: Mutex::new(State::default()),
        }
    }

    /// The pid every task of the pod reports (see `State::pid`); 0 before the VM boots.
    pub async fn task_pid(&self) -> u32 {
        self.state.lock().await.pid()
    }

    /// Creates container `req.id` from its checked spec `oci`, booting the VM for the pod's
    /// first container. Its output destination is opened first: a logger that cannot run
    /// fails the create before the VM boots.
    pub async fn create(
        &self,
        req: &CreateTaskRequest,
        oci: Spec,
        stdio: StdioPaths,
        dest: &Destination,
    ) -> Result<CreateTaskResponse> {
        let outputs =
            Arc::new(Outputs::open(dest, stdio.terminal, &req.id, self.events.namespace()).await?);
        let r = self.create_task(req, oci, stdio, outputs.clone()).await;
        if r.is_err() {
            outputs.close().await;
        }
        r
    }

    async fn create_task(
        &self,
        req: &CreateTaskRequest,
        mut oci: Spec,
        stdio: StdioPaths,
        outputs: Arc<Outputs>,
    ) -> Result<CreateTaskResponse> {
        let id = req.id.as_str();
        let bundle = Path::new(&req.bundle);
        let sid = spec::sandbox_id(&oci, id)?;

        let mut state = self.state.lock().await;
        if state.containers.contains_key(id) {
            return Err(ShimError::AlreadyExists(format!("container {id:?}")));
        }
        // Before anything is made for the pod: a refusal leaves nothing to undo.
        let pod_pid = state.sandbox.as_ref().map(|_| state.pid());
        spec::refuse_host_namespaces(&oci)?;
        spec::refuse_host_propagation(&oci)?;
        let hooks = crate::hooks::take(&mut oci)?;
        let shared_namespaces = spec::pod_namespaces(&oci, pod_pid)?;
        let booting = match &state.sandbox {
            Some(s) if *s.id() != sid => {
                return Err(ShimError::InvalidArgument(format!(
                    "this shim serves pod {:?}, not {sid:?}",
                    s.id()
                )))
            }
            Some(s) if s.share() == Share::BlockCopy => {
                return Err(ShimError::FailedPrecondition(
                    "share = \"block-copy\" runs one container per VM: a second container needs virtio-fs".into(),
                ))
            }
            Some(_) => false,
            None => {
                self.host.prepare_dirs(&sid)?;
                true
            }
        };
        let guest_rootfs = spec::guest_rootfs(id);

        let mut booted: Option<Arc<dyn Vm>> = None;
        // Read before `for_guest` drops host namespace paths from the spec.
        let netns = crate::network::netns_path(&oci);
        let own_netns = netns.is_none() && crate::network::wants_new_netns(&oci);
        let hostname = oci.hostname().clone().filter(|h| !h.is_empty());
        let resolv_conf = crate::network::resolv_conf_source(&oci);
        let cgroup = oci.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let mut hooks_ran = false;
        let result: Result<Arc<Proc>> = async {
            let size = sizing::vm_size(&self.config, &oci)?;
            let limits = crate::limits::device_limits(&self.config, &oci)?;
            let host_rootfs = self
                .host
                .mount_container(&sid, id, &req.rootfs, bundle, &mut oci, self.config.share)
                .await?;
            let sb = match &state.sandbox {
                Some(s) => s.clone(),
                None => {
                    let first = FirstContainer {
                        id,
                        host_rootfs: &host_rootfs,
                        guest_rootfs: &guest_rootfs,
                        size,
                        netns: netns.clone(),
                        own_netns,
                        hostname: hostname.clone(),
                        resolv_conf: resolv_conf.clone(),
                        cgroup: cgroup.as_ref().map(|p| p.to_string_lossy().into_owned()),
                        limits,
                    };
                    let s = self.host.boot(&self.config, &sid, first).await?;
                    booted = Some(s.clone());
                    s
                }
            };
            // prestart and createRuntime, on the host, the VM up (its pid is the task's).
            hooks_ran = !hooks.is_empty();
            hooks.create(id, sb.pid(), &req.bundle).await?;
            let spec_json = serde_json::to_vec(&oci)
                .map_err(|e| ShimError::Internal(format!("encoding the spec: {e}")))?;
            let creq = ag::CreateContainerRequest {
                container_id: id.to_string(),
                oci_spec: spec_json,
                rootfs: guest_rootfs.display().to_string(),
                share_namespaces_of: sid.to_string(),
                shared_namespaces: shared_namespaces.clone(),
                ..Default::default()
            };
            let agent = sb.agent();
            agent
                .create_container(ctx_timeout(RPC), &creq)
                .await
                .map_err(agent_err("CreateContainer"))?;
            let proc = Proc::new(id, ExecId::Init, stdio.clone(), None, outputs.clone());
            proc.set_pumps(Arc::new(Pumps::start(
                &agent,
                id,
                &ExecId::Init,
                &stdio,
                &outputs,
            )));
            watchers::exit(
                self.events.clone(),
                proc.clone(),
                agent,
                sb.exit_watch(),
                sb.pid(),
            );
            Ok(proc)
        }
        .await;

        let proc = match result {
            Ok(p) => p,
            Err(e) => {
                if hooks_ran {
                    hooks.poststop(id, state.pid(), &req.bundle).await;
                }
                if let Some(s) = booted {
                    log::warn!(
                        "create of {id} failed; guest console:\n{}",
                        s.console_tail()
                    );
                    if let Err(t) = s.teardown().await {
                        log::error!("tearing down after a failed create: {t}");
                    }
                } else if booting {
                    let _ = self.host.remove_dirs(&sid);
                } else {
                    let _ = self.host.cleanup_container(&sid, id);
                }
                return Err(e);
            }
        };
        if let Some(s) = booted {
            watchers::oom(self.events.clone(), s.agent());
            watchers::vm(&s);
            state.sandbox = Some(s);
        }
        let pid = state.pid();
        state.containers.insert(
            id.to_string(),
            Container {
                bundle: req.bundle.clone(),
                hooks,
                init: proc,
                execs: HashMap::new(),
            },
        );
        self.events
            .publish(
                TASK_CREATE_EVENT_TOPIC,
                Box::new(TaskCreate {
                    container_id: id.to_string(),
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: MessageField::some(TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    }),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Starts a created process: the container's own, or an exec.
    pub async fn start(&self, id: &str, exec: &ExecId) -> Result<StartResponse> {
        let (proc, sb, hooks, bundle) = {
            let state = self.state.lock().await;
            let c = state.container(id)?;
            let (hooks, bundle) = (c.hooks.clone(), c.bundle.clone());
            (state.process(id, exec)?, state.sandbox()?, hooks, bundle)
        };
        let pid = sb.pid();
        let agent = sb.agent();
        let _order = proc.lifecycle.lock().await;
        if proc.status() != Status::CREATED {
            return Err(ShimError::FailedPrecondition(format!(
                "{id}/{exec} is {:?}, not created",
                proc.status()
            )));
        }
        match exec {
            ExecId::Init => {
                // `ctr run --cni` sets the network up between Create and Start.
                sb.adopt_network().await?;
                let r = ag::StartContainerRequest {
                    container_id: id.to_string(),
                    ..Default::default()
                };
                agent
                    .start_container(ctx_timeout(RPC), &r)
                    .await
                    .map_err(agent_err("StartContainer"))?;
                proc.set_status(Status::RUNNING);
                self.events
                    .publish(
                        TASK_START_EVENT_TOPIC,
                        Box::new(TaskStart {
                            container_id: id.to_string(),
                            pid,
                            ..Default::default()
                        }),
                    )
                    .await;
                hooks.poststart(id, pid, &bundle).await;
            }
            ExecId::Exec(exec_id) => {
                let r = ag::ExecProcessRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.clone(),
                    process: proc.exec_spec.clone().unwrap_or_default(),
                    ..Default::default()
                };
                agent
                    .exec_process(ctx_timeout(RPC), &r)
                    .await
                    .map_err(agent_err("ExecProcess"))?;
                proc.set_status(Status::RUNNING);
                proc.set_pumps(Arc::new(Pumps::start(
                    &agent,
                    id,
                    exec,
                    &proc.stdio,
                    &proc.outputs,
                )));
                watchers::exit(
                    self.events.clone(),
                    proc.clone(),
                    agent,
                    sb.exit_watch(),
                    pid,
                );
                self.events
                    .publish(
                        TASK_EXEC_STARTED_EVENT_TOPIC,
                        Box::new(TaskExecStarted {
                            container_id: id.to_string(),
                            exec_id: exec_id.clone(),
                            pid,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        }
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// Deletes a stopped process. An exec is forgotten; a container is removed from the
    /// agent (unless the VM is gone), its output closed, its share cleaned and TaskDelete
    /// published, and the Delete of the pod's last container tears the VM down.
    pub async fn delete(&self, id: &str, exec: &ExecId) -> Result<DeleteResponse> {
        let mut state = self.state.lock().await;
        let proc = state.process(id, exec)?;
        let pid = state.pid();
        if matches!(proc.status(), Status::RUNNING | Status::PAUSED) {
            return Err(ShimError::FailedPrecondition(format!(
                "{id}/{exec} is still running"
            )));
        }
        if let ExecId::Exec(exec_id) = exec {
            if let Some(c) = state.containers.get_mut(id) {
                c.execs.remove(exec_id);
            }
            drop(state);
            proc.outputs.close().await;
            let exit = proc.exit().unwrap_or_else(|| Exit::now(0));
            return Ok(DeleteResponse {
                pid,
                exit_status: exit.status,
                exited_at: MessageField::some(exit.at),
                ..Default::default()
            });
        }
        let sb = state.sandbox()?;
        if !sb.exited() {
            let r = ag::RemoveContainerRequest {
                container_id: id.to_string(),
                ..Default::default()
            };
            if let Err(e) = sb.agent().remove_container(ctx_timeout(RPC), &r).await {
                log::warn!("{id}: RemoveContainer: {e}");
            }
        }
        // A created process that never ran exits when removed: let its watcher record it.
        let exit = match tokio::time::timeout(Duration::from_secs(2), proc.wait()).await {
            Ok(e) => e,
            Err(_) => Exit::now(255),
        };
        if let Some(p) = proc.pumps() {
            p.stop_stdin();
        }
        let c = state
            .containers
            .remove(id)
            .ok_or_else(|| not_found(id, &ExecId::Init))?;
        // Its loggers: the init's and those of execs never deleted.
        for p in std::iter::once(&c.init).chain(c.execs.values()) {
            p.outputs.close().await;
        }
        let cleaned = self.host.cleanup_container(sb.id(), id);
        self.events
            .publish(
                TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: id.to_string(),
                    pid,
                    exit_status: exit.status,
                    exited_at: MessageField::some(exit.at.clone()),
                    id: id.to_string(),
                    ..Default::default()
                }),
            )
            .await;
        let torn_down = if state.containers.is_empty() {
            state.sandbox = None;
            sb.teardown().await
        } else {
            Ok(())
        };
        // After the container is gone (and with the pod's last, the VM), as runc runs it.
        c.hooks.poststop(id, pid, &c.bundle).await;
        torn_down?;
        cleaned?;
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    /// Adds exec `exec_id` (checked) to running container `id`, created, not started: its
    /// output destination is opened now, the process spec sent at Start.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        spec: Vec<u8>,
        dest: &Destination,
    ) -> Result<()> {
        let outputs =
            Arc::new(Outputs::open(dest, stdio.terminal, exec_id, self.events.namespace()).await?);
        let r = self
            .add_exec(id, exec_id, stdio, spec, outputs.clone())
            .await;
        if r.is_err() {
            outputs.close().await;
        }
        r
    }

    async fn add_exec(
        &self,
        id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        spec: Vec<u8>,
        outputs: Arc<Outputs>,
    ) -> Result<()> {
        let mut state = self.state.lock().await;
        let c = state
            .containers
            .get_mut(id)
            .ok_or_else(|| not_found(id, &ExecId::Init))?;
        if c.init.status() != Status::RUNNING {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id:?} is not running"
            )));
        }
        if c.execs.contains_key(exec_id) {
            return Err(ShimError::AlreadyExists(format!("exec {exec_id:?}")));
        }
        let exec = ExecId::Exec(exec_id.to_string());
        c.execs.insert(
            exec_id.to_string(),
            Proc::new(id, exec, stdio, Some(spec), outputs),
        );
        drop(state);
        self.events
            .publish(
                TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(TaskExecAdded {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(())
    }

    /// Containerd asks the shim to end: with containers left it keeps serving (false);
    /// otherwise the VM, if any, is torn down and the shim may exit (true).
    pub async fn shutdown(&self) -> Result<bool> {
        let mut state = self.state.lock().await;
        if !state.containers.is_empty() {
            log::info!("Shutdown: containers remain; the shim keeps serving");
            return Ok(false);
        }
        if let Some(sb) = state.sandbox.take() {
            sb.teardown().await?;
        }
        Ok(true)
    }
}
