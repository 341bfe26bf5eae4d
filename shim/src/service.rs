//! containerd's Task service for one pod: every handler has the same shape (trace, validate,
//! do, map the error to its ttrpc code). The first Create boots the pod's VM; the Delete of
//! the last container tears it down.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use carapace_protocol::agent as ag;
use carapace_protocol::agent_ttrpc::AgentServiceClient;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::*;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics::*;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use oci_spec::runtime::Spec;
use tokio::sync::{watch, Mutex};

use crate::agent::{ctx, ctx_timeout};
use crate::config::{Config, Share};
use crate::convert::{self, Exit};
use crate::error::{Result, ShimError};
use crate::events::Events;
use crate::hostfs;
use crate::mounts;
use crate::output::Outputs;
use crate::process::Proc;
use crate::sandbox::{self, FirstContainer, Sandbox};
use crate::sizing;
use crate::spec;
use crate::stdio::{Pumps, StdioPaths};

type TResult<T> = ttrpc::Result<T>;

/// Deadline of short agent RPCs.
const RPC: Duration = Duration::from_secs(30);
/// How long an exited process's output may take to drain.
const DRAIN: Duration = Duration::from_secs(5);

/// One container of the pod.
struct Container {
    bundle: String,
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
}

#[derive(Default)]
struct State {
    sandbox: Option<Arc<Sandbox>>,
    containers: HashMap<String, Container>,
}

/// The Task service.
pub struct Service {
    config: Arc<Config>,
    events: Arc<Events>,
    exit: Arc<ExitSignal>,
    state: Mutex<State>,
}

fn done<T>(what: &str, r: Result<T>) -> TResult<T> {
    r.map_err(|e| {
        log::warn!("{what} failed ({:?}): {e}", e.code());
        e.into()
    })
}

fn not_found(id: &str, exec_id: &str) -> ShimError {
    if exec_id.is_empty() {
        ShimError::NotFound(format!("container {id:?}"))
    } else {
        ShimError::NotFound(format!("exec {exec_id:?} of container {id:?}"))
    }
}

fn agent_err(what: &'static str) -> impl FnOnce(ttrpc::Error) -> ShimError {
    move |e| ShimError::agent(what, e)
}

impl State {
    fn sandbox(&self) -> Result<Arc<Sandbox>> {
        self.sandbox
            .clone()
            .ok_or_else(|| ShimError::FailedPrecondition("the pod's VM is not running".into()))
    }

    fn container(&self, id: &str) -> Result<&Container> {
        self.containers.get(id).ok_or_else(|| not_found(id, ""))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Proc>> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            return Ok(c.init.clone());
        }
        c.execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| not_found(id, exec_id))
    }

    /// The pid reported for every process of the pod in Create, Start, State, Delete and the
    /// task events: the VMM's. containerd and the tools around it treat a task pid as a host
    /// process (`/proc/<pid>`, `nsenter -t`, cgroup and metrics collectors); a guest pid there
    /// would name an unrelated host process or none. The VMM is the host process that lives
    /// exactly as long as the pod's containers and whose death ends them (Kata reports a host
    /// pid there too). The guest pids are listed by Pids.
    fn pid(&self) -> u32 {
        self.sandbox.as_ref().map_or(0, |s| s.vmm.pid())
    }
}

impl Service {
    /// A service with no pod yet.
    pub fn new(config: Arc<Config>, events: Events, exit: Arc<ExitSignal>) -> Self {
        Self {
            config,
            events: Arc::new(events),
            exit,
            state: Mutex::new(State::default()),
        }
    }

    /// Watches one started process until it exits, then drains its output and publishes
    /// TaskExit (after its start event, which `lifecycle` orders).
    fn watch_exit(
        &self,
        proc: Arc<Proc>,
        agent: AgentServiceClient,
        mut vmm: watch::Receiver<Option<i32>>,
        pid: u32,
    ) {
        let events = self.events.clone();
        tokio::spawn(async move {
            let req = ag::WaitProcessRequest {
                container_id: proc.container_id.clone(),
                exec_id: proc.exec_id.clone(),
                ..Default::default()
            };
            let exit = tokio::select! {
                r = agent.wait_process(ctx(), &req) => match r {
                    Ok(r) => Exit::from(&r),
                    Err(e) => {
                        log::error!("{}/{}: WaitProcess: {e}", proc.container_id, proc.exec_id);
                        Exit::now(255)
                    }
                },
                _ = vmm.wait_for(Option::is_some) => {
                    log::error!("{}/{}: the VM ended under the process", proc.container_id, proc.exec_id);
                    Exit::now(255)
                }
            };
            if let Some(p) = proc.pumps() {
                p.drain(DRAIN).await;
                p.stop_stdin();
            }
            let _order = proc.lifecycle.lock().await;
            events
                .publish(
                    TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id: proc.container_id.clone(),
                        id: proc.event_id().to_string(),
                        pid,
                        exit_status: exit.status,
                        exited_at: MessageField::some(exit.at.clone()),
                        ..Default::default()
                    }),
                )
                .await;
            log::info!(
                "{}/{} exited with {}",
                proc.container_id,
                proc.exec_id,
                exit.status
            );
            proc.set_exited(exit);
        });
    }

    /// Logs why the VM ended when it ends on its own (a crash, a guest panic): the VMM's log
    /// and the guest console go to containerd's log before teardown removes them.
    fn watch_vm(&self, sandbox: &Arc<Sandbox>) {
        let sandbox = Arc::downgrade(sandbox);
        let mut exit = match sandbox.upgrade() {
            Some(s) => s.vmm_exit(),
            None => return,
        };
        tokio::spawn(async move {
            let status = match exit.wait_for(Option::is_some).await {
                Ok(s) => *s,
                Err(_) => return,
            };
            let Some(s) = sandbox.upgrade() else { return };
            if !s.stopping() {
                log::error!(
                    "pod {}: the VM ended on its own (status {status:?})\n--- vmm log ---\n{}\n--- guest console ---\n{}",
                    s.id,
                    s.vmm_log_tail(),
                    s.console_tail()
                );
            }
        });
    }

    /// Forwards the agent's OOM events until the VM ends.
    fn watch_oom(&self, sandbox: &Sandbox) {
        let agent = sandbox.agent.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Ok(ev) = agent
                .get_oom_event(ctx(), &ag::GetOOMEventRequest::new())
                .await
            {
                log::info!("OOM in container {}", ev.container_id);
                events
                    .publish(
                        TASK_OOM_EVENT_TOPIC,
                        Box::new(TaskOOM {
                            container_id: ev.container_id,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        });
    }

    async fn do_create(&self, req: &CreateTaskRequest) -> Result<CreateTaskResponse> {
        let id = req.id.as_str();
        spec::check_id("container", id)?;
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restoring from a checkpoint".into(),
            ));
        }
        let stdio = StdioPaths::from(req);
        let dest = stdio.destination()?;
        let bundle = Path::new(&req.bundle);
        let oci = Spec::load(bundle.join("config.json")).map_err(|e| {
            ShimError::InvalidArgument(format!("{}/config.json: {e}", bundle.display()))
        })?;
        // Before the VM boots: a logger that cannot run fails the create at once.
        let outputs =
            Arc::new(Outputs::open(&dest, stdio.terminal, id, self.events.namespace()).await?);
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
        let booting = match &state.sandbox {
            Some(s) if s.id != sid => {
                return Err(ShimError::InvalidArgument(format!(
                    "this shim serves pod {:?}, not {sid:?}",
                    s.id
                )))
            }
            Some(s) if s.share == Share::BlockCopy => {
                return Err(ShimError::FailedPrecondition(
                    "share = \"block-copy\" runs one container per VM: a second container needs virtio-fs".into(),
                ))
            }
            Some(_) => false,
            None => {
                sandbox::prepare_dirs(&sid)?;
                true
            }
        };
        let guest_rootfs = spec::guest_rootfs(id);

        let mut booted: Option<Arc<Sandbox>> = None;
        // Read before `for_guest` drops host namespace paths from the spec.
        let netns = crate::network::netns_path(&oci);
        let hostname = oci.hostname().clone().filter(|h| !h.is_empty());
        let resolv_conf = crate::network::resolv_conf_source(&oci);
        let result: Result<Arc<Proc>> = async {
            let size = sizing::vm_size(&self.config, &oci)?;
            // Everything is mounted in the pod's private tree, never seen by the guest (it sees
            // the read-only export of it); no path under it is followed through a link.
            let mnt = hostfs::Dir::open(&sandbox::mnt_dir(&sid))?;
            let rootfs_rel = spec::container_dir(id).join("rootfs");
            let host_rootfs = mounts::mount_rootfs(&req.rootfs, bundle, &mnt, &rootfs_rel).await?;
            let binds = spec::for_guest(&mut oci, id, self.config.share == Share::Virtiofs)?;
            for b in &binds {
                hostfs::bind(&mnt, &b.source, &b.share_path, b.flags)?;
            }
            let sb = match &state.sandbox {
                Some(s) => s.clone(),
                None => {
                    let first = FirstContainer {
                        id,
                        host_rootfs: &host_rootfs,
                        guest_rootfs: &guest_rootfs,
                        size,
                        netns: netns.clone(),
                        hostname: hostname.clone(),
                        resolv_conf: resolv_conf.clone(),
                    };
                    let s = Arc::new(Sandbox::boot(&self.config, &sid, first).await?);
                    booted = Some(s.clone());
                    s
                }
            };
            let spec_json = serde_json::to_vec(&oci)
                .map_err(|e| ShimError::Internal(format!("encoding the spec: {e}")))?;
            let creq = ag::CreateContainerRequest {
                container_id: id.to_string(),
                oci_spec: spec_json,
                rootfs: guest_rootfs.display().to_string(),
                ..Default::default()
            };
            sb.agent
                .create_container(ctx_timeout(RPC), &creq)
                .await
                .map_err(agent_err("CreateContainer"))?;
            let proc = Proc::new(id, "", stdio.clone(), None, outputs.clone());
            proc.set_pumps(Arc::new(Pumps::start(&sb.agent, id, "", &stdio, &outputs)));
            self.watch_exit(proc.clone(), sb.agent.clone(), sb.vmm_exit(), sb.vmm.pid());
            Ok(proc)
        }
        .await;

        let proc = match result {
            Ok(p) => p,
            Err(e) => {
                if let Some(s) = booted {
                    log::warn!(
                        "create of {id} failed; guest console:\n{}",
                        s.console_tail()
                    );
                    if let Err(t) = s.teardown().await {
                        log::error!("tearing down after a failed create: {t}");
                    }
                } else if booting {
                    let _ = sandbox::cleanup_dir(&sandbox::state_dir(&sid));
                } else {
                    let _ = sandbox::cleanup_container(&sid, id);
                }
                return Err(e);
            }
        };
        if let Some(s) = booted {
            self.watch_oom(&s);
            self.watch_vm(&s);
            state.sandbox = Some(s);
        }
        let pid = state.pid();
        state.containers.insert(
            id.to_string(),
            Container {
                bundle: req.bundle.clone(),
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

    async fn do_start(&self, req: &StartRequest) -> Result<StartResponse> {
        let (proc, sb) = {
            let state = self.state.lock().await;
            (state.process(&req.id, &req.exec_id)?, state.sandbox()?)
        };
        let pid = sb.vmm.pid();
        let _order = proc.lifecycle.lock().await;
        if proc.status() != Status::CREATED {
            return Err(ShimError::FailedPrecondition(format!(
                "{}/{} is {:?}, not created",
                req.id,
                req.exec_id,
                proc.status()
            )));
        }
        if req.exec_id.is_empty() {
            let r = ag::StartContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            sb.agent
                .start_container(ctx_timeout(RPC), &r)
                .await
                .map_err(agent_err("StartContainer"))?;
            proc.set_status(Status::RUNNING);
            self.events
                .publish(
                    TASK_START_EVENT_TOPIC,
                    Box::new(TaskStart {
                        container_id: req.id.clone(),
                        pid,
                        ..Default::default()
                    }),
                )
                .await;
        } else {
            let r = ag::ExecProcessRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                process: proc.exec_spec.clone().unwrap_or_default(),
                ..Default::default()
            };
            sb.agent
                .exec_process(ctx_timeout(RPC), &r)
                .await
                .map_err(agent_err("ExecProcess"))?;
            proc.set_status(Status::RUNNING);
            proc.set_pumps(Arc::new(Pumps::start(
                &sb.agent,
                &req.id,
                &req.exec_id,
                &proc.stdio,
                &proc.outputs,
            )));
            self.watch_exit(proc.clone(), sb.agent.clone(), sb.vmm_exit(), pid);
            self.events
                .publish(
                    TASK_EXEC_STARTED_EVENT_TOPIC,
                    Box::new(TaskExecStarted {
                        container_id: req.id.clone(),
                        exec_id: req.exec_id.clone(),
                        pid,
                        ..Default::default()
                    }),
                )
                .await;
        }
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn do_delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
        let mut state = self.state.lock().await;
        let proc = state.process(&req.id, &req.exec_id)?;
        let pid = state.pid();
        if matches!(proc.status(), Status::RUNNING | Status::PAUSED) {
            return Err(ShimError::FailedPrecondition(format!(
                "{}/{} is still running",
                req.id, req.exec_id
            )));
        }
        if !req.exec_id.is_empty() {
            if let Some(c) = state.containers.get_mut(&req.id) {
                c.execs.remove(&req.exec_id);
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
        if !sb.vmm.exited() {
            let r = ag::RemoveContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            if let Err(e) = sb.agent.remove_container(ctx_timeout(RPC), &r).await {
                log::warn!("{}: RemoveContainer: {e}", req.id);
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
            .remove(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        // Its loggers: the init's and those of execs never deleted.
        for p in std::iter::once(&c.init).chain(c.execs.values()) {
            p.outputs.close().await;
        }
        let cleaned = sandbox::cleanup_container(&sb.id, &req.id);
        self.events
            .publish(
                TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: req.id.clone(),
                    pid,
                    exit_status: exit.status,
                    exited_at: MessageField::some(exit.at.clone()),
                    id: req.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        if state.containers.is_empty() {
            state.sandbox = None;
            sb.teardown().await?;
        }
        cleaned?;
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn do_exec(&self, req: &ExecProcessRequest) -> Result<()> {
        spec::check_id("exec", &req.exec_id)?;
        let stdio = StdioPaths::from(req);
        let dest = stdio.destination()?;
        let spec = convert::any_json(&req.spec, "the exec process spec")?;
        let outputs = Arc::new(
            Outputs::open(&dest, stdio.terminal, &req.exec_id, self.events.namespace()).await?,
        );
        let r = self.add_exec(req, stdio, spec, outputs.clone()).await;
        if r.is_err() {
            outputs.close().await;
        }
        r
    }

    async fn add_exec(
        &self,
        req: &ExecProcessRequest,
        stdio: StdioPaths,
        spec: Vec<u8>,
        outputs: Arc<Outputs>,
    ) -> Result<()> {
        let mut state = self.state.lock().await;
        let c = state
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        if c.init.status() != Status::RUNNING {
            return Err(ShimError::FailedPrecondition(format!(
                "container {:?} is not running",
                req.id
            )));
        }
        if c.execs.contains_key(&req.exec_id) {
            return Err(ShimError::AlreadyExists(format!("exec {:?}", req.exec_id)));
        }
        c.execs.insert(
            req.exec_id.clone(),
            Proc::new(&req.id, &req.exec_id, stdio, Some(spec), outputs),
        );
        drop(state);
        self.events
            .publish(
                TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(TaskExecAdded {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(())
    }

    async fn do_state(&self, req: &StateRequest) -> Result<StateResponse> {
        let state = self.state.lock().await;
        let c = state.container(&req.id)?;
        let proc = state.process(&req.id, &req.exec_id)?;
        let exit = proc.exit();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.clone(),
            pid: state.pid(),
            status: proc.status().into(),
            stdin: proc.stdio.stdin.clone(),
            stdout: proc.stdio.stdout.clone(),
            stderr: proc.stdio.stderr.clone(),
            terminal: proc.stdio.terminal,
            exit_status: exit.as_ref().map_or(0, |e| e.status),
            exited_at: exit.map(|e| e.at).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn do_kill(&self, req: &KillRequest) -> Result<()> {
        let (proc, sb) = {
            let state = self.state.lock().await;
            (state.process(&req.id, &req.exec_id)?, state.sandbox()?)
        };
        if proc.status() == Status::STOPPED {
            return Err(ShimError::NotFound(format!(
                "{}/{}: the process has already finished",
                req.id, req.exec_id
            )));
        }
        let r = ag::SignalProcessRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            signal: req.signal,
            all: req.all,
            ..Default::default()
        };
        sb.agent
            .signal_process(ctx_timeout(RPC), &r)
            .await
            .map_err(agent_err("SignalProcess"))?;
        Ok(())
    }

    async fn do_pause(&self, id: &str, pause: bool) -> Result<()> {
        let (proc, sb) = {
            let state = self.state.lock().await;
            (state.process(id, "")?, state.sandbox()?)
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
        if pause {
            let r = ag::PauseContainerRequest {
                container_id: id.to_string(),
                ..Default::default()
            };
            sb.agent
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
            sb.agent
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

    async fn do_shutdown(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        if !state.containers.is_empty() {
            log::info!("Shutdown: containers remain; the shim keeps serving");
            return Ok(());
        }
        if let Some(sb) = state.sandbox.take() {
            sb.teardown().await?;
        }
        self.exit.signal();
        Ok(())
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
        done("Create", self.do_create(&req).await)
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> TResult<StartResponse> {
        log::info!("Start {}/{}", req.id, req.exec_id);
        done("Start", self.do_start(&req).await)
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TResult<DeleteResponse> {
        log::info!("Delete {}/{}", req.id, req.exec_id);
        done("Delete", self.do_delete(&req).await)
    }

    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> TResult<StateResponse> {
        log::debug!("State {}/{}", req.id, req.exec_id);
        done("State", self.do_state(&req).await)
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TResult<WaitResponse> {
        log::info!("Wait {}/{}", req.id, req.exec_id);
        let proc = done(
            "Wait",
            self.state.lock().await.process(&req.id, &req.exec_id),
        )?;
        let exit = proc.wait().await;
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
        done("Kill", self.do_kill(&req).await)?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TResult<Empty> {
        log::info!("Exec {}/{}", req.id, req.exec_id);
        done("Exec", self.do_exec(&req).await)?;
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
        let r = async {
            let sb = self.state.lock().await.sandbox()?;
            let r = ag::TtyWinResizeRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                rows: req.height,
                columns: req.width,
                ..Default::default()
            };
            sb.agent
                .tty_win_resize(ctx_timeout(RPC), &r)
                .await
                .map_err(agent_err("TtyWinResize"))
        };
        done("ResizePty", r.await)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TResult<Empty> {
        log::info!("CloseIO {}/{} stdin {}", req.id, req.exec_id, req.stdin);
        let proc = done(
            "CloseIO",
            self.state.lock().await.process(&req.id, &req.exec_id),
        )?;
        if req.stdin {
            if let Some(p) = proc.pumps() {
                p.close_stdin(DRAIN).await;
            }
        }
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TResult<Empty> {
        log::info!("Update {}", req.id);
        let r = async {
            let resources = convert::any_json(&req.resources, "the resources")?;
            let sb = {
                let state = self.state.lock().await;
                state.container(&req.id)?;
                state.sandbox()?
            };
            let r = ag::UpdateContainerRequest {
                container_id: req.id.clone(),
                resources,
                ..Default::default()
            };
            sb.agent
                .update_container(ctx_timeout(RPC), &r)
                .await
                .map_err(agent_err("UpdateContainer"))
        };
        done("Update", r.await)?;
        Ok(Empty::new())
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TResult<Empty> {
        log::info!("Pause {}", req.id);
        done("Pause", self.do_pause(&req.id, true).await)?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TResult<Empty> {
        log::info!("Resume {}", req.id);
        done("Resume", self.do_pause(&req.id, false).await)?;
        Ok(Empty::new())
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TResult<StatsResponse> {
        log::debug!("Stats {}", req.id);
        let r = async {
            let sb = {
                let state = self.state.lock().await;
                state.container(&req.id)?;
                state.sandbox()?
            };
            let r = ag::StatsContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            let s = sb
                .agent
                .stats_container(ctx_timeout(RPC), &r)
                .await
                .map_err(agent_err("StatsContainer"))?;
            Ok(StatsResponse {
                stats: MessageField::some(convert::metrics_any(&s)?),
                ..Default::default()
            })
        };
        done("Stats", r.await)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TResult<PidsResponse> {
        log::debug!("Pids {}", req.id);
        let r = async {
            let sb = {
                let state = self.state.lock().await;
                state.container(&req.id)?;
                state.sandbox()?
            };
            let r = ag::ListProcessesRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            let list = sb
                .agent
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
        };
        done("Pids", r.await)
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
        let state = self.state.lock().await;
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: state.pid(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> TResult<Empty> {
        log::info!("Shutdown {} now {}", req.id, req.now);
        done("Shutdown", self.do_shutdown().await)?;
        Ok(Empty::new())
    }
}
