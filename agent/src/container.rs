//! The containers of the pod: creating them with youki's libcontainer, their processes
//! (init and execs), signals, waits, pause/resume, resource updates, statistics, OOM
//! events, and removal that leaves no cgroup, mount or state behind.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use libcgroups::common::{CgroupManager, ControllerOpt};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container as LcContainer, ContainerStatus};
use libcontainer::oci_spec::runtime::LinuxSeccomp;
use libcontainer::signal::Signal as LcSignal;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::cgroup;
use crate::error::{AgentError, Result};
use crate::process::{ChildStdio, Process, Stdio};
use crate::reaper::{ExitStatus, Reaper};
use crate::spec::{self, Placement, SandboxFiles};

/// Where the agent keeps its state and puts its containers' cgroups.
#[derive(Debug, Clone)]
pub struct Layout {
    /// libcontainer's state (`containers/`) and the bundles the agent writes (`bundles/`).
    pub state_dir: PathBuf,
    /// The cgroup under which each container gets `<parent>/<id>`.
    pub cgroup_parent: String,
}

struct Container {
    lc: LcContainer,
    /// Its spec's seccomp profile, which its execs run under too (see [`crate::seccomp`]).
    seccomp: Option<LinuxSeccomp>,
    cgroup_path: String,
    bundle: PathBuf,
    init: Arc<Process>,
    execs: HashMap<String, Arc<Process>>,
    oom_seen: u64,
    /// The inotify watch on the cgroup's `memory.events`, when there is one.
    oom_wd: Option<nix::sys::inotify::WatchDescriptor>,
}

/// Every container of the pod, by id.
pub struct Containers {
    layout: Layout,
    reaper: Reaper,
    map: Mutex<HashMap<String, Container>>,
    /// Names the console sockets: `consoles/<n>.sock` stays within a Unix socket path's 108
    /// bytes whatever the ids (CRI's are 64 characters each; a path built from a container
    /// and an exec id is not).
    consoles: AtomicU64,
    /// The LSMs this kernel enforces, read once: what of a spec's LSM fields is kept.
    lsms: spec::GuestLsms,
    sandbox: Mutex<SandboxFiles>,
    oom_tx: mpsc::UnboundedSender<String>,
    /// Watches on the containers' `memory.events`; `None` where inotify is not to be had.
    oom_watch: Option<crate::oom::OomWatch>,
}

fn lc_signal(sig: i32) -> Result<LcSignal> {
    LcSignal::try_from(sig).map_err(|e| AgentError::InvalidArgument(e.to_string()))
}

fn not_found(id: &str) -> AgentError {
    AgentError::NotFound(format!("container {id:?}"))
}

impl Containers {
    /// An empty set; OOM events go to `oom_tx` (call inside a tokio runtime: the OOM watch
    /// registers with it).
    pub fn new(
        layout: Layout,
        reaper: Reaper,
        oom_tx: mpsc::UnboundedSender<String>,
    ) -> Result<Self> {
        for dir in ["containers", "bundles", "consoles"] {
            std::fs::create_dir_all(layout.state_dir.join(dir))
                .map_err(|e| AgentError::io("creating the state directory", e))?;
        }
        Ok(Self {
            layout,
            reaper,
            map: Mutex::new(HashMap::new()),
            consoles: AtomicU64::new(0),
            lsms: spec::GuestLsms::of_this_kernel(),
            sandbox: Mutex::new(SandboxFiles::default()),
            oom_tx,
            oom_watch: crate::oom::OomWatch::new()
                .map_err(|e| tracing::warn!("no inotify for OOM events, polling only: {e}"))
                .ok(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the sandbox-wide files and hostname later containers get.
    pub fn set_sandbox(&self, files: SandboxFiles) {
        *self.sandbox.lock().unwrap_or_else(|e| e.into_inner()) = files;
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.layout.state_dir
    }

    fn lc_root(&self) -> PathBuf {
        self.layout.state_dir.join("containers")
    }

    fn builder(&self, id: &str) -> Result<ContainerBuilder> {
        Ok(
            ContainerBuilder::new(id.to_string(), SyscallType::default())
                .with_root_path(self.lc_root())?,
        )
    }

    /// Creates container `id` (its init process waits for StartContainer), in the namespaces
    /// of `shared` (their types, and the container whose first process has them) where
    /// given.
    pub fn create(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &str,
        shared: Option<(&str, &[String])>,
    ) -> Result<()> {
        spec::validate_id("container", id)?;
        if self.lock().contains_key(id) {
            return Err(AgentError::AlreadyExists(format!("container {id:?}")));
        }
        let mut spec = spec::parse(spec_json)?;
        let dropped = spec::drop_unenforceable_lsm(&mut spec, self.lsms);
        if !dropped.is_empty() {
            tracing::warn!(
                id,
                "not enforced, the guest has no such LSM: {}",
                dropped.join(", ")
            );
        }
        if let Some((of, types)) = shared {
            let pid = {
                let map = self.lock();
                let c = map.get(of).ok_or_else(|| {
                    AgentError::FailedPrecondition(format!(
                        "container {id:?} shares the namespaces of container {of:?}, which is not here"
                    ))
                })?;
                // A reaped init's pid may be another process's by now.
                if c.init.exited().is_some() {
                    return Err(AgentError::FailedPrecondition(format!(
                        "container {id:?} shares the namespaces of container {of:?}, whose first process has exited"
                    )));
                }
                c.init.pid
            };
            spec::join_namespaces(&mut spec, pid.as_raw(), types)?;
        }
        let rootfs = if rootfs.is_empty() {
            spec.root()
                .as_ref()
                .map(|r| r.path().clone())
                .unwrap_or_default()
        } else {
            PathBuf::from(rootfs)
        };
        if !rootfs.is_absolute() {
            return Err(AgentError::InvalidArgument(format!(
                "the rootfs path {} is not absolute",
                rootfs.display()
            )));
        }
        // Pod-memory volumes, and the binds of subpaths inside them (undone with the
        // container, or below if the create fails).
        let subpaths = self.subpaths_dir(id);
        let pod_memory = (|| -> Result<()> {
            for m in spec::pod_memory_mounts(&spec)? {
                crate::sandbox::mount_pod_memory(&m.name)?;
                if let Some(sub) = &m.subpath {
                    let target = subpaths.join(m.index.to_string());
                    crate::sandbox::bind_pod_memory_subpath(&m.name, sub, &target)?;
                    if let Some(mount) = spec.mounts_mut().as_mut().and_then(|v| v.get_mut(m.index))
                    {
                        mount.set_source(Some(target));
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = pod_memory {
            crate::sandbox::unbind_pod_memory_subpaths(&subpaths);
            return Err(e);
        }
        let prepared = (|| -> Result<_> {
            let net_sysctls = spec::take_net_sysctls(&mut spec)?;
            let cgroup_path = format!("{}/{id}", self.layout.cgroup_parent.trim_end_matches('/'));
            let sandbox = self
                .sandbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            spec::adapt(
                &mut spec,
                &Placement {
                    rootfs: &rootfs,
                    cgroup_path: cgroup_path.clone(),
                    sandbox: &sandbox,
                },
            )?;
            // Once the spec is accepted; pod-wide and not undone (as a pod's sysctls in its
            // network namespace under runc).
            spec::set_net_sysctls(&net_sysctls)?;
            let terminal = spec
                .process()
                .as_ref()
                .and_then(|p| p.terminal())
                .unwrap_or(false);
            let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
            Ok((cgroup_path, terminal, seccomp))
        })();
        if prepared.is_err() {
            crate::sandbox::unbind_pod_memory_subpaths(&subpaths);
        }
        let (cgroup_path, terminal, seccomp) = prepared?;

        let bundle = self.layout.state_dir.join("bundles").join(id);
        let _ = std::fs::remove_dir_all(&bundle);
        if let Err(e) = std::fs::create_dir_all(&bundle) {
            crate::sandbox::unbind_pod_memory_subpaths(&subpaths);
            return Err(AgentError::io("creating the bundle", e));
        }
        let result = (|| {
            spec.save(bundle.join("config.json"))
                .map_err(|e| AgentError::Internal(format!("writing config.json: {e}")))?;
            let (builder, io) = self.with_stdio(self.builder(id)?, terminal)?;
            let lc = builder
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()?;
            let pid = lc
                .pid()
                .ok_or_else(|| AgentError::Internal("libcontainer returned no pid".into()))?;
            let pid = Pid::from_raw(pid.as_raw());
            // Registered before the reaper can next run (single-threaded runtime).
            let exit = self.reaper.register(pid);
            let stdio = io.finish()?;
            Ok((lc, Process { pid, stdio, exit }))
        })();
        let (lc, init) = match result {
            Ok(v) => v,
            Err(err) => {
                self.cleanup_failed(id, &bundle);
                return Err(err);
            }
        };
        tracing::info!(id, pid = %init.pid, "container created");
        let oom_wd = self.watch_oom(id, &cgroup_path);
        self.lock().insert(
            id.to_string(),
            Container {
                lc,
                seccomp,
                cgroup_path,
                bundle,
                init: Arc::new(init),
                execs: HashMap::new(),
                oom_seen: 0,
                oom_wd,
            },
        );
        Ok(())
    }

    fn cleanup_failed(&self, id: &str, bundle: &Path) {
        let dir = self.lc_root().join(id);
        if dir.exists() {
            if let Ok(mut lc) = LcContainer::load(dir.clone()) {
                if let Err(e) = lc.delete(true) {
                    tracing::warn!(id, "cleaning up a failed container: {e}");
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        let _ = std::fs::remove_dir_all(bundle);
        crate::sandbox::unbind_pod_memory_subpaths(&self.subpaths_dir(id));
    }

    /// Where container `id`'s binds of pod-memory subpaths are mounted (the agent's own, in
    /// no container's view).
    fn subpaths_dir(&self, id: &str) -> PathBuf {
        self.layout.state_dir.join("subpaths").join(id)
    }

    /// `builder` with the process's stdio: a console socket libcontainer sends the pty
    /// master to when `terminal`, else pipes.
    fn with_stdio(
        &self,
        builder: ContainerBuilder,
        terminal: bool,
    ) -> Result<(ContainerBuilder, PendingStdio)> {
        if terminal {
            let n = self.consoles.fetch_add(1, Ordering::Relaxed);
            let path = self
                .layout
                .state_dir
                .join("consoles")
                .join(format!("{n}.sock"));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).map_err(|e| {
                AgentError::io(&format!("binding the console socket {}", path.display()), e)
            })?;
            Ok((
                builder.with_console_socket(Some(&path)),
                PendingStdio::Pty(ConsoleSocket {
                    listener,
                    _path: RemovedOnDrop(path),
                }),
            ))
        } else {
            let (ours, child) = Stdio::pipes()?;
            let ChildStdio {
                stdin,
                stdout,
                stderr,
            } = child;
            Ok((
                builder
                    .with_stdin(stdin)
                    .with_stdout(stdout)
                    .with_stderr(stderr),
                PendingStdio::Pipes(ours),
            ))
        }
    }

    /// Starts the init process of a created container.
    pub fn start(&self, id: &str) -> Result<()> {
        let mut map = self.lock();
        let c = map.get_mut(id).ok_or_else(|| not_found(id))?;
        c.lc.refresh_status()?;
        if c.lc.status() != ContainerStatus::Created {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} is {:?}, not created",
                c.lc.status()
            )));
        }
        c.lc.start()?;
        tracing::info!(id, "container started");
        Ok(())
    }

    /// Runs another process in a running container.
    pub fn exec(&self, id: &str, exec_id: &str, process_json: &[u8]) -> Result<()> {
        spec::validate_id("exec", exec_id)?;
        let mut process = spec::parse_process(process_json)?;
        let dropped = spec::drop_unenforceable_lsm_of_process(&mut process, self.lsms);
        if !dropped.is_empty() {
            tracing::warn!(
                id,
                exec_id,
                "not enforced, the guest has no such LSM: {}",
                dropped.join(", ")
            );
        }
        let mut map = self.lock();
        let c = map.get_mut(id).ok_or_else(|| not_found(id))?;
        if c.execs.contains_key(exec_id) {
            return Err(AgentError::AlreadyExists(format!(
                "exec {exec_id:?} of container {id:?}"
            )));
        }
        c.lc.refresh_status()?;
        if c.lc.status() != ContainerStatus::Running {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} is {:?}, not running",
                c.lc.status()
            )));
        }
        let terminal = process.terminal().unwrap_or(false);
        let filtered = c
            .seccomp
            .as_ref()
            .map(|profile| crate::seccomp::prepare(&mut process, profile))
            .transpose()?;
        let path = c.bundle.join(format!("exec-{exec_id}.json"));
        // Removed however this ends.
        let _process_file = RemovedOnDrop(path.clone());
        std::fs::write(
            &path,
            serde_json::to_vec(&process).map_err(|e| AgentError::Internal(e.to_string()))?,
        )
        .map_err(|e| AgentError::io("writing the exec process", e))?;
        let mut builder = self.builder(id)?;
        if let Some(f) = filtered {
            builder = builder.with_executor(f);
        }
        let (builder, io) = self.with_stdio(builder, terminal)?;
        let pid = builder
            .as_tenant()
            .with_detach(true)
            .with_process(Some(&path))
            .build()?;
        let pid = Pid::from_raw(pid.as_raw());
        let exit = self.reaper.register(pid);
        let stdio = match io.finish() {
            Ok(s) => s,
            Err(e) => {
                // It runs, but no one could wait for it or signal it: it goes.
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                return Err(e);
            }
        };
        tracing::info!(id, exec_id, %pid, "exec started");
        c.execs
            .insert(exec_id.to_string(), Arc::new(Process { pid, stdio, exit }));
        Ok(())
    }

    /// The process named by (id, exec_id); an empty exec_id is the init process.
    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        let map = self.lock();
        let c = map.get(id).ok_or_else(|| not_found(id))?;
        if exec_id.is_empty() {
            return Ok(c.init.clone());
        }
        c.execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("exec {exec_id:?} of container {id:?}")))
    }

    /// Sends `signal` to one process, or to every process of the container when `all`.
    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| AgentError::InvalidArgument(format!("{signal} is not a signal")))?;
        if all {
            if !exec_id.is_empty() {
                return Err(AgentError::InvalidArgument(
                    "'all' applies to the init process only".into(),
                ));
            }
            let mut map = self.lock();
            let c = map.get_mut(id).ok_or_else(|| not_found(id))?;
            c.lc.refresh_status()?;
            return Ok(c.lc.kill(lc_signal(sig as i32)?, true)?);
        }
        let p = self.process(id, exec_id)?;
        if p.exited().is_some() {
            return Err(AgentError::NotFound(format!(
                "process {exec_id:?} of container {id:?} has exited"
            )));
        }
        nix::sys::signal::kill(p.pid, sig).map_err(|e| match e {
            nix::errno::Errno::ESRCH => AgentError::NotFound(format!("process {} is gone", p.pid)),
            e => AgentError::sys("kill", e),
        })
    }

    /// Waits for a process to exit. When a container's init exits, its cgroup's OOM kills are
    /// read once more before the exit is answered: a kill that ends the container between two
    /// polls of [`Containers::poll_oom`] is still reported, and before the exit.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitStatus> {
        let p = self.process(id, exec_id)?;
        let status = p.wait().await;
        if exec_id.is_empty() {
            self.report_oom(id);
        }
        Ok(status)
    }

    /// Freezes or thaws every process of the container.
    pub fn pause(&self, id: &str, pause: bool) -> Result<()> {
        let mut map = self.lock();
        let c = map.get_mut(id).ok_or_else(|| not_found(id))?;
        c.lc.refresh_status()?;
        if pause {
            c.lc.pause()?;
        } else {
            c.lc.resume()?;
        }
        Ok(())
    }

    /// Applies new cgroup limits.
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let resources = spec::parse_resources(resources_json)?;
        let path = self.cgroup_path(id)?;
        let opt = ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        cgroup::manager(&path, id)?.apply(&opt).map_err(|e| {
            AgentError::InvalidArgument(format!("the kernel refused the resources: {e}"))
        })
    }

    fn cgroup_path(&self, id: &str) -> Result<String> {
        self.lock()
            .get(id)
            .map(|c| c.cgroup_path.clone())
            .ok_or_else(|| not_found(id))
    }

    /// The pids (in the agent's pid namespace) of every process in the container's cgroup,
    /// ascending: the init process, its children, execs.
    pub fn processes(&self, id: &str) -> Result<Vec<u32>> {
        cgroup::pids(&self.cgroup_path(id)?, id)
    }

    /// Cgroup and network statistics.
    pub fn stats(&self, id: &str) -> Result<carapace_protocol::agent::StatsContainerResponse> {
        cgroup::stats(&self.cgroup_path(id)?, id)
    }

    /// Kills what still runs, waits for the init process, and deletes the container's
    /// cgroup, mounts and state.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let init = self.process(id, "")?;
        if init.exited().is_none() {
            {
                let mut map = self.lock();
                if let Some(c) = map.get_mut(id) {
                    let _ = c.lc.refresh_status();
                    if c.lc.status() == ContainerStatus::Paused {
                        let _ = c.lc.resume();
                    }
                    if let Err(e) = c.lc.kill(lc_signal(libc::SIGKILL)?, true) {
                        tracing::warn!(id, "killing the container: {e}");
                        let _ = nix::sys::signal::kill(init.pid, Signal::SIGKILL);
                    }
                }
            }
            if tokio::time::timeout(Duration::from_secs(10), init.wait())
                .await
                .is_err()
            {
                return Err(AgentError::Internal(format!(
                    "container {id:?} did not die within 10 s"
                )));
            }
        }
        // The last chance to see an OOM kill of this container's cgroup.
        self.report_oom(id);
        let mut c = self.lock().remove(id).ok_or_else(|| not_found(id))?;
        if let (Some(w), Some(wd)) = (&self.oom_watch, c.oom_wd.take()) {
            w.unwatch(wd);
        }
        let _ = c.lc.refresh_status();
        let result = c.lc.delete(true);
        let _ = std::fs::remove_dir_all(&c.bundle);
        let _ = std::fs::remove_dir_all(self.lc_root().join(id));
        crate::sandbox::unbind_pod_memory_subpaths(&self.subpaths_dir(id));
        result?;
        tracing::info!(id, "container removed");
        Ok(())
    }

    /// Ids of every container.
    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Looks for new OOM kills in every container's cgroup and reports them.
    pub fn poll_oom(&self) {
        let mut map = self.lock();
        for (id, c) in map.iter_mut() {
            self.report_new_oom_kills(id, c);
        }
    }

    /// Watches container `id`'s `memory.events` for OOM kills, where the cgroup notifies.
    fn watch_oom(&self, id: &str, cgroup_path: &str) -> Option<nix::sys::inotify::WatchDescriptor> {
        let watch = self
            .oom_watch
            .as_ref()
            .filter(|_| cgroup::oom_events_notify())?;
        let file = cgroup::oom_events_file(cgroup_path);
        watch
            .watch(id, &file)
            .map_err(|e| tracing::warn!(id, "cannot watch {}: {e}; polling it", file.display()))
            .ok()
    }

    /// Waits until watched `memory.events` files change and reports the new OOM kills of
    /// their containers; returns only if the watch fails (or there is none).
    pub async fn watch_oom_events(&self) {
        let Some(watch) = &self.oom_watch else { return };
        loop {
            match watch.changed().await {
                Ok(ids) => ids.iter().for_each(|id| self.report_oom(id)),
                Err(e) => {
                    tracing::warn!("the OOM watch failed, polling only: {e}");
                    return;
                }
            }
        }
    }

    /// Reports container `id`'s new OOM kills, if any.
    pub fn report_oom(&self, id: &str) {
        if let Some(c) = self.lock().get_mut(id) {
            self.report_new_oom_kills(id, c);
        }
    }

    fn report_new_oom_kills(&self, id: &str, c: &mut Container) {
        let kills = cgroup::oom_kills(&c.cgroup_path);
        if kills > c.oom_seen {
            c.oom_seen = kills;
            tracing::info!(id, kills, "OOM kill");
            let _ = self.oom_tx.send(id.to_string());
        }
    }
}

/// The agent's side of a new process's stdio, completed once libcontainer has built it.
enum PendingStdio {
    Pipes(Stdio),
    /// libcontainer connects to this socket and sends the pty master over it.
    Pty(ConsoleSocket),
}

/// A file removed when this is dropped.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A console socket, removed when it is dropped (received from or not).
struct ConsoleSocket {
    listener: UnixListener,
    _path: RemovedOnDrop,
}

impl PendingStdio {
    fn finish(self) -> Result<Stdio> {
        match self {
            Self::Pipes(s) => Ok(s),
            Self::Pty(console) => Stdio::pty(receive_fd(&console.listener)?),
        }
    }
}

fn receive_fd(listener: &UnixListener) -> Result<OwnedFd> {
    listener
        .set_nonblocking(true)
        .map_err(|e| AgentError::io("console socket", e))?;
    let (conn, _) = listener
        .accept()
        .map_err(|e| AgentError::io("accepting the console socket", e))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| AgentError::io("console socket", e))?;
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&conn),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| AgentError::sys("receiving the pty master", e))?;
    for cmsg in msg
        .cmsgs()
        .map_err(|e| AgentError::sys("receiving the pty master", e))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed `fd` in our table for us (SCM_RIGHTS);
                // nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(AgentError::Internal(
        "libcontainer sent no pty master".into(),
    ))
}
