//! What the agent's host tests share: starting the real agent binary as root in fresh
//! namespaces, listening on a Unix socket in a scratch directory, and connecting to it.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use carapace_protocol::agent_ttrpc::AgentServiceClient;

/// Whether the tests run as root (they are skipped otherwise).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Starts carapace-agent listening on `dir`/agent.sock with its state under `dir`/state and
/// containers under `cgroup_parent`, in new namespaces `unshare_flags` (CLONE_NEWNS at least:
/// the root is made private there), and connects to it within 10 s.
pub async fn start_agent(
    dir: &Path,
    cgroup_parent: &str,
    unshare_flags: libc::c_int,
) -> (Child, AgentServiceClient) {
    let sock = dir.join("agent.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_carapace-agent"));
    cmd.arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--cgroup-parent")
        .arg(cgroup_parent);
    // SAFETY: only async-signal-safe calls (unshare, mount) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(unshare_flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("starting carapace-agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        if let Ok(c) = ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display())).await
        {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not listen within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (child, AgentServiceClient::new(client))
}
