//! PID 1 duties inside the VM: the boot marker, the pseudo filesystems, the serial console as
//! stdio, and ending the VM (a reboot, which the VMM turns into an exit).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Printed on the console once init runs; tests and benchmarks wait for this line.
pub const BOOT_MARKER: &str = "carapace-agent: init reached";

/// Prints the boot marker (mounting /proc first if needed, for the uptime).
pub fn print_marker() {
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .or_else(|| {
            std::fs::create_dir_all("/proc").ok()?;
            mount(
                Some("proc"),
                "/proc",
                Some("proc"),
                MsFlags::empty(),
                None::<&str>,
            )
            .ok()?;
            std::fs::read_to_string("/proc/uptime").ok()
        })
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{BOOT_MARKER} (uptime {uptime} s, {cpus} cpus, pid {})",
        std::process::id()
    );
    let _ = out.flush();
}

struct PseudoFs {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The filesystems every guest needs, in mount order.
const PSEUDO_FILESYSTEMS: &[PseudoFs] = &[
    PseudoFs {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    PseudoFs {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    PseudoFs {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    PseudoFs {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    PseudoFs {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
    },
    PseudoFs {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    PseudoFs {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    PseudoFs {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
];

fn is_mountpoint(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(4) == Some(path)))
        .unwrap_or(false)
}

/// Mounts the pseudo filesystems (skipping those already mounted, e.g. /dev by the kernel),
/// points stdio at the console, and enables every cgroup controller for the containers.
pub fn setup() -> anyhow::Result<()> {
    for fs in PSEUDO_FILESYSTEMS {
        if is_mountpoint(fs.target) {
            continue;
        }
        std::fs::create_dir_all(fs.target)?;
        mount(
            Some(fs.source),
            fs.target,
            Some(fs.fstype),
            fs.flags,
            fs.data,
        )
        .map_err(|e| anyhow::anyhow!("mounting {} on {}: {e}", fs.fstype, fs.target))?;
    }
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    console_stdio();
    // Let containers' cgroups use every controller (libcgroups enables them further down).
    if let Ok(controllers) = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
        let enable: Vec<String> = controllers
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect();
        let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", enable.join(" "));
    }
    Ok(())
}

/// Makes fds 0-2 the serial console, so logs and panics reach it.
fn console_stdio() {
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `console` stays open across the call.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
}

/// Ends the VM: sync, then reboot (the VMM runs the guest so that a reboot is an exit).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    eprintln!("carapace-agent: reboot failed: {err:?}");
    // PID 1 must not exit: that would panic the guest kernel.
    loop {
        std::thread::park();
    }
}
