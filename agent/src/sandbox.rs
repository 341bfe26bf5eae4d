//! The sandbox as a whole: the pod's hostname, DNS and hosts files, sandbox-wide mounts,
//! the pod's memory-backed volumes (tmpfs in guest memory), and what the guest is (kernel,
//! memory, vCPUs).

use std::path::{Path, PathBuf};

use carapace_protocol::agent::{CreateSandboxRequest, GuestDetails};
use carapace_protocol::types::Mount;
use nix::mount::MsFlags;

use crate::error::{AgentError, Result};
use crate::spec::SandboxFiles;

/// Writes the sandbox's files under `dir` and makes its mounts; sets the hostname of the
/// guest itself when `own_uts` (the agent is PID 1 of a VM; never on a host).
pub fn create(req: &CreateSandboxRequest, dir: &Path, own_uts: bool) -> Result<SandboxFiles> {
    if !req.hostname.is_empty() {
        crate::spec::validate_id("hostname", &req.hostname)?;
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| AgentError::io("creating the sandbox directory", e))?;
    let mut files = SandboxFiles::default();
    let mut write = |name: &str, dest: &'static str, text: String| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| AgentError::io("writing a sandbox file", e))?;
        files.files.push((path, dest));
        Ok(())
    };
    if !req.hostname.is_empty() {
        write("hostname", "/etc/hostname", format!("{}\n", req.hostname))?;
        files.hostname = Some(req.hostname.clone());
        if own_uts {
            nix::unistd::sethostname(&req.hostname)
                .map_err(|e| AgentError::sys("sethostname", e))?;
        }
    }
    if !req.dns_servers.is_empty() || !req.dns_searches.is_empty() {
        write("resolv.conf", "/etc/resolv.conf", resolv_conf(req))?;
    }
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !req.hostname.is_empty() {
        hosts.push_str(&format!("127.0.1.1\t{}\n", req.hostname));
    }
    for h in &req.hosts {
        h.ip.parse::<std::net::IpAddr>().map_err(|_| {
            AgentError::InvalidArgument(format!("hosts entry {:?} is not an IP address", h.ip))
        })?;
        hosts.push_str(&format!("{}\t{}\n", h.ip, h.names.join(" ")));
    }
    write("hosts", "/etc/hosts", hosts)?;
    for m in &req.mounts {
        mount(m)?;
    }
    Ok(files)
}

fn resolv_conf(req: &CreateSandboxRequest) -> String {
    let mut s = String::new();
    for n in &req.dns_servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !req.dns_searches.is_empty() {
        s.push_str(&format!("search {}\n", req.dns_searches.join(" ")));
    }
    if !req.dns_options.is_empty() {
        s.push_str(&format!("options {}\n", req.dns_options.join(" ")));
    }
    s
}

/// Mount flags and the remaining data string of mount(8)-style options.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

fn mount(m: &Mount) -> Result<()> {
    let dest = PathBuf::from(&m.destination);
    if !dest.is_absolute() {
        return Err(AgentError::InvalidArgument(format!(
            "mount destination {:?} is not absolute",
            m.destination
        )));
    }
    std::fs::create_dir_all(&dest).map_err(|e| AgentError::io("creating a mount point", e))?;
    let (mut flags, data) = parse_options(&m.options);
    let fstype = if m.fstype == "bind" {
        flags |= MsFlags::MS_BIND;
        None
    } else {
        Some(m.fstype.as_str())
    };
    nix::mount::mount(
        Some(m.source.as_str()),
        &dest,
        fstype,
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| {
        AgentError::InvalidArgument(format!("mounting {} on {}: {e}", m.source, m.destination))
    })
}

/// Mounts the pod-memory volume `name` (a tmpfs in guest memory, see
/// [`carapace_protocol::POD_MEMORY_DIR`]) unless it is mounted already; `shm` gets the 64 MiB
/// containerd gives a pod's `/dev/shm`, any other (an emptyDir) the guest's memory as bound.
pub fn mount_pod_memory(name: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = Path::new(carapace_protocol::POD_MEMORY_DIR);
    let path = dir.join(name);
    std::fs::create_dir_all(&path)
        .map_err(|e| AgentError::io("creating a pod-memory directory", e))?;
    let dev = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.dev());
    let (here, parent) = (dev(&path), dev(dir));
    if matches!((&here, &parent), (Ok(a), Ok(b)) if a != b) {
        return Ok(()); // a mount point already: the pod's containers share it
    }
    let data = if name == "shm" {
        "mode=1777,size=65536k"
    } else {
        "mode=1777"
    };
    nix::mount::mount(
        Some("pod-memory"),
        &path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data),
    )
    .map_err(|e| AgentError::sys("mounting a pod-memory tmpfs", e))
}

/// Binds directory `subpath` of the pod-memory volume `name` (mounted already) on `target`, a
/// directory of the agent's own that it makes: a kubelet subPath of a memory emptyDir. The
/// directories are made where missing (0755, as the kubelet makes them), every component
/// walked by descriptor without following a link, and the bind made from the last one: a
/// container of the pod that planted a link in the shared tmpfs cannot point the bind at
/// anything outside the volume.
pub fn bind_pod_memory_subpath(name: &str, subpath: &Path, target: &Path) -> Result<()> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{mkdirat, Mode};
    use std::os::fd::AsRawFd;
    use std::path::Component;
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let volume = Path::new(carapace_protocol::POD_MEMORY_DIR).join(name);
    let mut dir = nix::fcntl::open(&volume, flags, Mode::empty())
        .map_err(|e| AgentError::sys("opening a pod-memory volume", e))?;
    for c in subpath.components() {
        let Component::Normal(c) = c else {
            return Err(AgentError::InvalidArgument(format!(
                "the subpath {} of pod-memory volume {name} is not plain",
                subpath.display()
            )));
        };
        match mkdirat(&dir, c, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(AgentError::sys("making a subpath directory", e)),
        }
        dir = openat(&dir, c, flags, Mode::empty()).map_err(|e| {
            AgentError::InvalidArgument(format!(
                "the subpath {} of pod-memory volume {name} is not a directory there: {e}",
                subpath.display()
            ))
        })?;
    }
    std::fs::create_dir_all(target)
        .map_err(|e| AgentError::io("creating a subpath mount point", e))?;
    nix::mount::mount(
        Some(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd()))),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| AgentError::sys("binding a pod-memory subpath", e))
}

/// Undoes [`bind_pod_memory_subpath`] for every mount point in `dir` and removes them (only
/// ever `rmdir`: a bind still there is never descended into).
pub fn unbind_pod_memory_subpaths(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        if let Err(err) = std::fs::remove_dir(&path) {
            tracing::warn!("removing subpath mount point {}: {err}", path.display());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The guest's kernel, memory and vCPUs.
pub fn guest_details() -> GuestDetails {
    let mut d = GuestDetails::new();
    if let Ok(u) = nix::sys::utsname::uname() {
        d.kernel_release = u.release().to_string_lossy().into_owned();
        d.kernel_version = u.version().to_string_lossy().into_owned();
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    d.memory_total_bytes = kib("MemTotal:") * 1024;
    d.memory_available_bytes = kib("MemAvailable:") * 1024;
    d.vcpus = std::thread::available_parallelism().map_or(0, |n| n.get() as u32);
    d.agent_version = env!("CARGO_PKG_VERSION").to_string();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = parse_options(&[
            "ro".into(),
            "nosuid".into(),
            "size=64m".into(),
            "mode=1777".into(),
        ]);
        assert!(f.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(d, "size=64m,mode=1777");
    }

    #[test]
    fn resolv_conf_lists_servers_searches_options() {
        let mut r = CreateSandboxRequest::new();
        r.dns_servers = vec!["10.0.0.10".into()];
        r.dns_searches = vec!["svc.cluster.local".into()];
        r.dns_options = vec!["ndots:5".into()];
        assert_eq!(
            resolv_conf(&r),
            "nameserver 10.0.0.10\nsearch svc.cluster.local\noptions ndots:5\n"
        );
    }
}
