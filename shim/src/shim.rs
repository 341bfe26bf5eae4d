//! The shim v2 process contract: `start` starts (or joins, for a pod's later containers) the
//! serving shim and prints and writes its address, `delete` cleans up after a shim that is
//! gone, and the serving shim registers the Task service and runs until Shutdown.
//!
//! Why not the `containerd-shim` crate's `Shim` trait and `run`: its 0.12 bootstrap answers
//! `start` with the JSON reply of containerd 1.7+ and serves only `containerd.task.v3.Task`,
//! while Debian 12's containerd 1.6 expects a bare address and calls `containerd.task.v2.Task`
//! (the same messages). So the entry points are ours; the crate still does the spawning, the
//! flag parsing, the log fifo, the event publisher and the generated Task service.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use containerd_shim::asynchronous::{spawn, ExitSignal};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim_async::{create_task, Task};
use oci_spec::runtime::Spec;

use crate::config::Config;
use crate::convert::Exit;
use crate::events::Events;
use crate::sandbox::{self, PodId};
use crate::service::Service;
use crate::spec;

/// The Task service name containerd 1.6 calls.
const TASK_V2: &str = "containerd.task.v2.Task";
/// The Task service name containerd 2.x calls (what the generated code registers).
const TASK_V3: &str = "containerd.task.v3.Task";

/// A failure of a shim action (reported by `main` and ending the process).
#[derive(Debug, thiserror::Error)]
pub enum ShimProcessError {
    /// The `containerd-shim` crate failed.
    #[error("{what}")]
    Crate {
        /// What was being done.
        what: &'static str,
        /// The crate's error.
        #[source]
        source: containerd_shim::Error,
    },
    /// An I/O operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// containerd's request names an id or pod that fails the id rule.
    #[error(transparent)]
    Refused(#[from] crate::error::ShimError),
    /// The ttrpc server failed.
    #[error("serving ttrpc on {socket}: {message}")]
    Server {
        /// The socket.
        socket: String,
        /// ttrpc's error.
        message: String,
    },
}

fn crate_err(what: &'static str) -> impl FnOnce(containerd_shim::Error) -> ShimProcessError {
    move |source| ShimProcessError::Crate { what, source }
}

/// The pod of the container whose bundle is the current directory (containerd runs `start`
/// and `delete` there); an id or annotation that fails the id rule is refused by name.
fn pod_of(id: &str) -> Result<PodId, ShimProcessError> {
    let pod = match Spec::load("config.json") {
        Ok(s) => spec::sandbox_id(&s, id),
        Err(_) => PodId::new(id),
    };
    Ok(pod?)
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// `start`: starts the pod's serving shim unless it already runs, writes `address` in the
/// bundle and prints the address for containerd.
pub async fn start(flags: &Flags) -> Result<(), ShimProcessError> {
    spec::check_id("container", &flags.id)?;
    let grouping = pod_of(&flags.id)?.to_string();
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    let address = opts.socket_address(&grouping);
    // A later container of a pod joins the pod's shim (and VM).
    let running = tokio::net::UnixStream::connect(socket_path(&address))
        .await
        .is_ok();
    if !running {
        let _ = std::fs::remove_file(socket_path(&address));
        spawn(opts, &grouping, Vec::new())
            .await
            .map_err(crate_err("spawning the serving shim"))?;
    }
    containerd_shim::util::write_str_to_file("address", &address)
        .await
        .map_err(crate_err("writing the address file"))?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| ShimProcessError::Io {
            what: "printing the address".into(),
            source,
        })
}

/// `delete`: cleans up after the shim of container `flags.id` (which is gone): its mounts
/// and, for a pod's own container, a leftover VMM and the pod's state directory. Prints the
/// DeleteResponse.
pub fn delete(flags: &Flags) -> Result<(), ShimProcessError> {
    let id = &flags.id;
    // Nothing on the host is touched for an id that could name a path outside the state root.
    spec::check_id("container", id)?;
    let sid = pod_of(id)?;
    if let Err(e) = sandbox::cleanup_container(&sid, id) {
        eprintln!("delete: {e}");
    }
    if sid.as_str() == id {
        let dir = sandbox::state_dir(&sid);
        kill_leftover_vmm(&dir.join("vmm.pid"));
        if let Err(e) = sandbox::cleanup_dir(&dir) {
            eprintln!("delete: {e}");
        }
    }
    let exit = Exit::now(128 + libc::SIGKILL as u32);
    let resp = DeleteResponse {
        pid: 0,
        exit_status: exit.status,
        exited_at: MessageField::some(exit.at),
        ..Default::default()
    };
    let bytes = resp.write_to_bytes().map_err(|e| ShimProcessError::Io {
        what: "encoding the DeleteResponse".into(),
        source: std::io::Error::other(e),
    })?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .map_err(|source| ShimProcessError::Io {
            what: "printing the DeleteResponse".into(),
            source,
        })
}

/// The serving shim (started by `start` with `-socket`): serves the Task service until
/// Shutdown, then removes its socket.
pub async fn serve(flags: &Flags, config: Arc<Config>) -> Result<(), ShimProcessError> {
    containerd_shim::logger::init(flags.debug, &config.log_level, &flags.namespace, &flags.id)
        .map_err(crate_err("opening the log fifo"))?;
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").map_err(|e| ShimProcessError::Io {
        what: "TTRPC_ADDRESS".into(),
        source: std::io::Error::other(e),
    })?;
    let publisher = RemotePublisher::new(&ttrpc_address)
        .await
        .map_err(crate_err("connecting to containerd's event service"))?;
    let exit = Arc::new(ExitSignal::default());
    let task: Arc<dyn Task + Send + Sync> = Arc::new(Service::new(
        config,
        Events::new(publisher, &flags.namespace),
        exit.clone(),
    ));
    let mut services = create_task(task.clone());
    if let Some(v3) = create_task(task).remove(TASK_V3) {
        services.insert(TASK_V2.to_string(), v3);
    }
    let path = socket_path(&flags.socket).to_string();
    if let Some(parent) = Path::new(&path).parent() {
        std::fs::create_dir_all(parent).map_err(|source| ShimProcessError::Io {
            what: format!("creating {}", parent.display()),
            source,
        })?;
    }
    let server_err = |e: ttrpc::Error| ShimProcessError::Server {
        socket: flags.socket.clone(),
        message: e.to_string(),
    };
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{path}"))
        .map_err(server_err)?
        .register_service(services);
    server.start().await.map_err(server_err)?;
    // The `start` process reads our stdout until it closes: point it at stderr (/dev/null).
    // SAFETY: dup2 on the process's own standard descriptors, which stay valid.
    if unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0 {
        return Err(ShimProcessError::Io {
            what: "closing stdout".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    log::info!("serving on {}", flags.socket);
    exit.wait().await;
    log::info!("shutting down");
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Kills the VMM a dead shim left behind, if `pid_file` names a live carapace-vmm.
fn kill_leftover_vmm(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains("carapace-vmm") {
        return;
    }
    eprintln!("delete: killing leftover carapace-vmm {pid}");
    // SAFETY: kill(2) with a pid checked just above to be a carapace-vmm and a valid signal.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
