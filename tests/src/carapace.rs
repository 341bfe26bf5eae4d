//! containerd set up to run containers with carapace: a private containerd whose PATH finds
//! the freshly built `containerd-shim-carapace-v2`, and a shim configuration file (through
//! `CARAPACE_CONFIG`) naming the built VMM, guest kernel and initramfs.

use std::ffi::OsString;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::artifacts;
use crate::containerd::{
    make_temp_dir, mounts_under, processes_mentioning, processes_named, Containerd,
};

/// The runtime name `ctr run --runtime` takes.
pub const RUNTIME: &str = "io.containerd.carapace.v2";
/// Where the shim keeps each pod's state.
pub const STATE_ROOT: &str = "/run/carapace";

/// Pids of the carapace-vmm processes running pod `sid` (their command lines name the pod's
/// state directory): the VMMs themselves, not the supervisors their jails leave outside
/// their PID namespaces (a supervisor is the parent of the VMM, with the same command line).
pub fn vmms_of(sid: &str) -> Vec<u32> {
    let pod = processes_mentioning(&format!("{STATE_ROOT}/{sid}/"));
    let all: Vec<u32> = processes_named("carapace-vmm")
        .into_iter()
        .filter(|p| pod.contains(p))
        .collect();
    let parents: Vec<u32> = all.iter().filter_map(|&p| parent_of(p)).collect();
    all.into_iter().filter(|p| !parents.contains(p)).collect()
}

/// The parent of process `pid` (`PPid:` in its status), if it still runs.
pub fn parent_of(pid: u32) -> Option<u32> {
    status_field(pid, "PPid")?.parse().ok()
}

/// The value of `key` in `/proc/<pid>/status` (trimmed), if the process runs and has it.
pub fn status_field(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    Some(value.trim().to_string())
}

/// Each thread of process `pid`: its name and its `Seccomp:` mode from
/// `/proc/<pid>/task/<tid>/status` (0 none, 1 strict, 2 filter).
pub fn thread_seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&tasks).unwrap_or_else(|e| panic!("{}: {e}", tasks.display())) {
        let dir = entry.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(|m| m.trim().to_string())
            .unwrap_or_default();
        out.push((comm.trim().to_string(), mode));
    }
    out
}

/// How the shim shares rootfs directories with the guest in tests: `CARAPACE_SHARE` if set,
/// else `virtiofs` (the design; `block-copy` is the shim's older ext4-image stop-gap).
pub fn share() -> String {
    std::env::var("CARAPACE_SHARE").unwrap_or_else(|_| "virtiofs".into())
}

/// A private containerd with the carapace shim available.
pub struct Carapace {
    containerd: Option<Containerd>,
    config_dir: PathBuf,
}

impl Carapace {
    /// Writes the shim's configuration and starts containerd.
    pub fn start() -> Carapace {
        Self::start_with_config("")
    }

    /// Like [`Carapace::start`], with `extra` TOML lines appended to the shim configuration.
    pub fn start_with_config(extra: &str) -> Carapace {
        Self::start_with_share(&share(), extra)
    }

    /// Like [`Carapace::start_with_config`], with rootfs directories shared as `share` says
    /// (`virtiofs` or `block-copy`) whatever [`share`] says.
    pub fn start_with_share(share: &str, extra: &str) -> Carapace {
        Self::start_full(share, extra, None)
    }

    /// Like [`Carapace::start`], with containerd's CRI plugin configured by `cri` (see
    /// [`Containerd::start_with_cri`]).
    pub fn start_with_cri(cri: &dyn Fn(&Path) -> String) -> Carapace {
        Self::start_full(&share(), "", Some(cri))
    }

    fn start_full(share: &str, extra: &str, cri: Option<&dyn Fn(&Path) -> String>) -> Carapace {
        let config_dir = make_temp_dir("carapace-shim-config");
        let config = config_dir.join("config.toml");
        let text = format!(
            "vmm = {:?}\nkernel = {:?}\ninitramfs = {:?}\nvcpus = 1\nmemory_mib = 256\nlog_level = \"debug\"\nshare = {:?}\n{extra}",
            artifacts::vmm_binary(),
            artifacts::guest_kernel(),
            artifacts::initramfs(),
            share,
        );
        std::fs::write(&config, text).expect("write the shim config");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![artifacts::bin_dir()];
        dirs.extend(std::env::split_paths(&path));
        let path = std::env::join_paths(dirs).expect("PATH entries have no ':'");
        let containerd = Containerd::start_with_cri(
            &[("PATH", path), ("CARAPACE_CONFIG", OsString::from(&config))],
            cri,
        );
        Carapace {
            containerd: Some(containerd),
            config_dir,
        }
    }

    /// What carapace left on the host while containerd still runs: VMM processes, shims of
    /// this containerd, state directories and mounts under [`STATE_ROOT`], and taps
    /// (`*_carapace`) or ingress qdiscs in the host's or a named (`/var/run/netns`) network
    /// namespace. Polls up to 10 s
    /// (a shim exits shortly after its Shutdown); empty when nothing leaked.
    pub fn leftovers(&self) -> Vec<String> {
        let socket = self.socket().to_string_lossy().into_owned();
        let mut found = Vec::new();
        let clean = crate::lab::wait_for(Duration::from_secs(10), || {
            found = leftovers_now(&socket);
            found.is_empty().then_some(())
        });
        if clean.is_some() {
            Vec::new()
        } else {
            found
        }
    }

    /// Fails the test, with containerd's log, when [`Carapace::leftovers`] finds anything.
    pub fn assert_nothing_left(&self) {
        let left = self.leftovers();
        assert!(
            left.is_empty(),
            "carapace left traces: {left:?}\n{}",
            self.log()
        );
    }
}

fn leftovers_now(containerd_socket: &str) -> Vec<String> {
    let mut found = Vec::new();
    for pid in processes_named("carapace-vmm") {
        if pid != std::process::id() {
            found.push(format!("carapace-vmm process {pid}"));
        }
    }
    for pid in processes_named("containerd-shim-carapace-v2") {
        if processes_mentioning(containerd_socket).contains(&pid) {
            found.push(format!("shim process {pid}"));
        }
    }
    if let Ok(entries) = std::fs::read_dir(STATE_ROOT) {
        for e in entries.flatten() {
            found.push(format!("state directory {}", e.path().display()));
        }
    }
    for m in mounts_under(Path::new(STATE_ROOT)) {
        found.push(format!("mount {}", m.display()));
    }
    found.extend(network_leftovers());
    found
}

/// Taps and ingress qdiscs in the host's network namespace and the named ones.
fn network_leftovers() -> Vec<String> {
    let mut namespaces = vec![None];
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        namespaces.extend(entries.flatten().map(|e| Some(e.file_name())));
    }
    let mut found = Vec::new();
    for ns in namespaces {
        let run = |cmd: &str, args: &[&str]| {
            let mut c = std::process::Command::new(cmd);
            if let Some(n) = &ns {
                c.arg("-n").arg(n);
            }
            c.args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let name = ns.as_ref().map_or("host".into(), |n| n.to_string_lossy());
        for l in run("ip", &["-o", "link", "show"]).lines() {
            if l.contains("_carapace") {
                found.push(format!("tap in netns {name}: {l}"));
            }
        }
        for l in run("tc", &["qdisc", "show", "ingress"]).lines() {
            found.push(format!("ingress qdisc in netns {name}: {l}"));
        }
    }
    found
}

impl Deref for Carapace {
    type Target = Containerd;

    fn deref(&self) -> &Containerd {
        self.containerd
            .as_ref()
            .expect("containerd runs until stopped")
    }
}

impl Drop for Carapace {
    fn drop(&mut self) {
        drop(self.containerd.take());
        // A failed test can leave VMMs of its pods behind (their shims were killed with
        // containerd): end them and their state so later tests start clean.
        for pid in processes_mentioning(&format!("{STATE_ROOT}/")) {
            if processes_named("carapace-vmm").contains(&pid) {
                // SAFETY: kill(2) with a pid read from /proc and a valid signal number.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for m in mounts_under(Path::new(STATE_ROOT)) {
            let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).expect("no NUL");
            // SAFETY: umount2 with a NUL-terminated path; MNT_DETACH never blocks.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if let Ok(entries) = std::fs::read_dir(STATE_ROOT) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let _ = std::fs::remove_dir_all(&self.config_dir);
    }
}
