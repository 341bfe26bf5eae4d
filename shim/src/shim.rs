//! The shim v2 process contract (the `containerd-shim` crate's `Shim` trait): `start` starts
//! (or joins, for a pod's later containers) the serving shim and writes its address, `delete`
//! cleans up after a shim that is gone, and the serving shim builds the Task service.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config as ShimConfig, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::MessageField;
use oci_spec::runtime::Spec;

use crate::config::Config;
use crate::convert::Exit;
use crate::events::Events;
use crate::sandbox;
use crate::service::Service;
use crate::spec;

/// The configuration, read once by `main` before the shim machinery starts.
pub static CONFIG: OnceLock<Arc<Config>> = OnceLock::new();

fn config() -> Arc<Config> {
    CONFIG.get_or_init(|| Arc::new(Config::default())).clone()
}

/// The shim process.
pub struct CarapaceShim {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
}

/// The pod of the container whose bundle is the current directory (containerd runs `start`
/// and `delete` there).
fn pod_of(id: &str) -> String {
    match Spec::load("config.json") {
        Ok(s) => spec::sandbox_id(&s, id),
        Err(_) => id.to_string(),
    }
}

#[async_trait]
impl Shim for CarapaceShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        Self {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // A pod's containers share the shim (and VM) of the pod's sandbox.
        let grouping = pod_of(&opts.id);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let sid = pod_of(&self.id);
        log::info!("delete: cleaning up container {} of pod {sid}", self.id);
        let host_dir = sandbox::shared_dir(&sid).join(spec::container_dir(&self.id));
        if let Err(e) = sandbox::cleanup_dir(&host_dir) {
            log::warn!("delete: {e}");
        }
        if sid == self.id {
            let dir = sandbox::state_dir(&sid);
            kill_leftover_vmm(&dir.join("vmm.pid"));
            if let Err(e) = sandbox::cleanup_dir(&dir) {
                log::warn!("delete: {e}");
            }
        }
        let exit = Exit::now(128 + libc::SIGKILL as u32);
        Ok(DeleteResponse {
            pid: 0,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service::new(
            config(),
            Events::new(publisher, &self.namespace),
            self.exit.clone(),
        )
    }
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
    log::warn!("delete: killing leftover carapace-vmm {pid}");
    // SAFETY: kill(2) with a pid checked just above to be a carapace-vmm and a valid signal.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
