//! Parses the OCI JSON the shim sends (spec, exec process, resources) and rewrites a spec into
//! the one the agent runs: rootfs location, the per-container namespaces, the pod's shared
//! network namespace, the agent's cgroup layout and the sandbox's hostname/DNS/hosts files.
//! Pure functions, unit-tested.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceType, LinuxResources, Mount, MountBuilder, Process, RootBuilder,
    Spec,
};

use crate::error::{AgentError, Result};

/// Namespaces every container gets of its own; the network namespace is the pod's (the
/// agent's) and is never created per container.
const OWN_NAMESPACES: [LinuxNamespaceType; 4] = [
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Ipc,
];

/// Checks a container or exec id by the rule the shim checks too ([`carapace_protocol::id`]).
pub fn validate_id(kind: &str, id: &str) -> Result<()> {
    carapace_protocol::id::check(kind, id).map_err(|e| AgentError::InvalidArgument(e.to_string()))
}

/// Parses the spec JSON the shim sent.
pub fn parse(json: &[u8]) -> Result<Spec> {
    serde_json::from_slice(json)
        .map_err(|e| AgentError::InvalidArgument(format!("the OCI spec is not valid: {e}")))
}

/// Parses an exec's OCI Process JSON and checks it can run.
pub fn parse_process(json: &[u8]) -> Result<Process> {
    let process: Process = serde_json::from_slice(json)
        .map_err(|e| AgentError::InvalidArgument(format!("the OCI process is not valid: {e}")))?;
    check_process(&process)?;
    Ok(process)
}

/// Parses UpdateContainer's OCI LinuxResources JSON.
pub fn parse_resources(json: &[u8]) -> Result<LinuxResources> {
    serde_json::from_slice(json)
        .map_err(|e| AgentError::InvalidArgument(format!("the resources are not valid: {e}")))
}

fn check_process(process: &Process) -> Result<()> {
    if process.args().as_ref().map_or(true, |a| a.is_empty()) {
        return Err(AgentError::InvalidArgument(
            "the process has no args".into(),
        ));
    }
    if !process.cwd().is_absolute() {
        return Err(AgentError::InvalidArgument(format!(
            "the process cwd {:?} is not absolute",
            process.cwd()
        )));
    }
    Ok(())
}

/// The sandbox-wide files containers see at /etc/hostname, /etc/hosts, /etc/resolv.conf.
#[derive(Debug, Default, Clone)]
pub struct SandboxFiles {
    /// Host paths (in the agent's view) keyed by their destination in the container.
    pub files: Vec<(PathBuf, &'static str)>,
    /// The pod's hostname, given to containers whose spec names none.
    pub hostname: Option<String>,
}

/// Everything the agent decides for a container regardless of the spec it got.
pub struct Placement<'a> {
    /// The container's root filesystem in the agent's view.
    pub rootfs: &'a Path,
    /// The cgroup the container gets (an absolute cgroup path).
    pub cgroup_path: String,
    /// Sandbox-wide files to bind into the container.
    pub sandbox: &'a SandboxFiles,
}

/// Rewrites `spec` for running inside the guest.
pub fn adapt(spec: &mut Spec, place: &Placement<'_>) -> Result<()> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| AgentError::InvalidArgument("the spec has no process".into()))?;
    check_process(process)?;
    if !place.rootfs.is_dir() {
        return Err(AgentError::InvalidArgument(format!(
            "the rootfs {} is not a directory",
            place.rootfs.display()
        )));
    }
    let readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let root = RootBuilder::default()
        .path(place.rootfs)
        .readonly(readonly)
        .build()
        .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
    spec.set_root(Some(root));

    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces: Vec<LinuxNamespace> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        // The pod's network namespace is the agent's own: share it.
        .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
        .collect();
    for typ in OWN_NAMESPACES {
        if !namespaces.iter().any(|ns| ns.typ() == typ) {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(typ);
            namespaces.push(ns);
        }
    }
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(Some(PathBuf::from(&place.cgroup_path)));
    let propagation = linux
        .rootfs_propagation()
        .as_deref()
        .map(rootfs_propagation)
        .transpose()?;
    linux.set_rootfs_propagation(propagation.map(String::from));
    spec.set_linux(Some(linux));

    if spec.hostname().is_none() {
        spec.set_hostname(place.sandbox.hostname.clone());
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (source, dest) in &place.sandbox.files {
        if !mounts.iter().any(|m| m.destination() == Path::new(dest)) {
            mounts.push(bind_ro(source, dest)?);
        }
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// Takes the `net.*` sysctls out of the spec: they belong to the pod's network namespace,
/// which in the guest is the agent's own (containers share it rather than join it by path,
/// so libcontainer would take them for the host's and refuse them); the agent sets them
/// there itself ([`set_net_sysctls`]). Keys are checked: `net.` and then names only.
pub fn take_net_sysctls(spec: &mut Spec) -> Result<Vec<(PathBuf, String)>> {
    let Some(mut linux) = spec.linux().clone() else {
        return Ok(Vec::new());
    };
    let Some(mut sysctls) = linux.sysctl().clone() else {
        return Ok(Vec::new());
    };
    let mut keys: Vec<String> = sysctls
        .keys()
        .filter(|k| k.starts_with("net."))
        .cloned()
        .collect();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        if key.starts_with("net.core.") && !PER_NETNS_CORE_SYSCTLS.contains(&key.as_str()) {
            return Err(AgentError::InvalidArgument(format!(
                "the sysctl {key:?} is not one of a network namespace's own (of net.core.* only \
                 {PER_NETNS_CORE_SYSCTLS:?} are; the others, bpf_jit_harden among them, are \
                 the whole kernel's)"
            )));
        }
        let value = sysctls.remove(&key).unwrap_or_default();
        out.push((sysctl_path(&key)?, value));
    }
    linux.set_sysctl(Some(sysctls));
    spec.set_linux(Some(linux));
    Ok(out)
}

/// The `net.core.*` sysctls a network namespace has of its own. The agent sets the pod's net
/// sysctls in the guest's initial namespace, where the other `net.core.*` keys are the whole
/// kernel's (`bpf_jit_harden`, `bpf_jit_enable`, buffer maxima): a container under runc
/// never sees those in its pod's namespace, so they are refused rather than set guest-wide.
const PER_NETNS_CORE_SYSCTLS: [&str; 2] = ["net.core.somaxconn", "net.core.txrehash"];

/// `/proc/sys/...` of a sysctl key, as runc reads one: dots separate, a slash stands for a
/// dot within a name (`net.ipv4.conf.eth0/10.rp_filter`). No component may be empty, `.` or
/// `..`, or hold anything but `[A-Za-z0-9_-]` and those dots.
fn sysctl_path(key: &str) -> Result<PathBuf> {
    let mut path = PathBuf::from("/proc/sys");
    for part in key.split('.') {
        let name = part.replace('/', ".");
        let ok = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !ok {
            return Err(AgentError::InvalidArgument(format!(
                "the sysctl {key:?} is not a sysctl name"
            )));
        }
        path.push(name);
    }
    Ok(path)
}

/// Sets the pod's network sysctls ([`take_net_sysctls`]) in the agent's network namespace.
pub fn set_net_sysctls(sysctls: &[(PathBuf, String)]) -> Result<()> {
    for (path, value) in sysctls {
        std::fs::write(path, value).map_err(|e| {
            AgentError::InvalidArgument(format!("setting the sysctl {}: {e}", path.display()))
        })?;
    }
    Ok(())
}

/// A spec mount whose source is a pod-memory volume (see
/// [`carapace_protocol::POD_MEMORY_DIR`]), or a directory inside one: a kubelet subPath of a
/// memory emptyDir, `POD_MEMORY_DIR/<name>/<subpath>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMemoryMount {
    /// The mount's index in the spec.
    pub index: usize,
    /// The volume's name.
    pub name: String,
    /// The directory inside it, if any: plain components only.
    pub subpath: Option<PathBuf>,
}

/// The spec's mounts of pod-memory volumes; a source under that directory that is not one
/// well-formed name, optionally followed by plain path components, is refused.
pub fn pod_memory_mounts(spec: &Spec) -> Result<Vec<PodMemoryMount>> {
    use std::path::Component;
    let dir = Path::new(carapace_protocol::POD_MEMORY_DIR);
    let mut found = Vec::new();
    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        let Some(rest) = m.source().as_deref().and_then(|s| s.strip_prefix(dir).ok()) else {
            continue;
        };
        let bad = || {
            AgentError::InvalidArgument(format!(
                "the mount source {} is not a pod-memory volume or a directory in one",
                rest.display()
            ))
        };
        if rest.as_os_str().len() > 4096
            || rest
                .to_str()
                .is_some_and(|r| r.split('/').any(|c| c == "." || c == ".."))
        {
            return Err(bad());
        }
        let mut components = rest.components();
        let name = match components.next() {
            Some(Component::Normal(n)) => n
                .to_str()
                .filter(|n| carapace_protocol::is_pod_memory_name(n)),
            _ => None,
        }
        .ok_or_else(bad)?;
        let mut subpath = PathBuf::new();
        for c in components {
            match c {
                Component::Normal(c) => subpath.push(c),
                _ => return Err(bad()),
            }
        }
        found.push(PodMemoryMount {
            index,
            name: name.to_string(),
            subpath: (!subpath.as_os_str().is_empty()).then_some(subpath),
        });
    }
    Ok(found)
}

/// The Linux security modules the guest kernel enforces, which decide what of a spec's LSM
/// fields can be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLsms {
    /// AppArmor is enabled (`/sys/module/apparmor/parameters/enabled` reads Y).
    pub apparmor: bool,
    /// SELinux is mounted (`/sys/fs/selinux/enforce` exists).
    pub selinux: bool,
}

impl GuestLsms {
    /// What this kernel enforces (carapace's guest kernel: neither).
    pub fn of_this_kernel() -> Self {
        let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|v| v.starts_with('Y'));
        let selinux = Path::new("/sys/fs/selinux/enforce").exists();
        Self { apparmor, selinux }
    }
}

/// Clears the LSM fields of `spec` (its process's AppArmor profile and SELinux label, its
/// mount label) that `lsms` cannot honour, as Kata's agent does, and returns what was
/// cleared for the caller to log. containerd's CRI plugin names the host's LSM: an AppArmor
/// profile on an AppArmor host (`cri-containerd.apparmor.d`), SELinux labels on an SELinux
/// one. The guest has neither, and libcontainer refuses a container whose profile it cannot
/// apply; the container is confined by the VM and by its seccomp profile, capabilities and
/// namespaces instead.
pub fn drop_unenforceable_lsm(spec: &mut Spec, lsms: GuestLsms) -> Vec<String> {
    let mut dropped = Vec::new();
    if let Some(mut process) = spec.process().clone() {
        dropped = drop_unenforceable_lsm_of_process(&mut process, lsms);
        spec.set_process(Some(process));
    }
    if !lsms.selinux {
        if let Some(mut linux) = spec.linux().clone() {
            if let Some(label) = linux.mount_label().clone() {
                dropped.push(format!("SELinux mount label {label:?}"));
                linux.set_mount_label(None);
                spec.set_linux(Some(linux));
            }
        }
    }
    dropped
}

/// [`drop_unenforceable_lsm`] for a process of ExecProcess.
pub fn drop_unenforceable_lsm_of_process(process: &mut Process, lsms: GuestLsms) -> Vec<String> {
    let mut dropped = Vec::new();
    if !lsms.apparmor {
        if let Some(profile) = process.apparmor_profile().clone() {
            dropped.push(format!("AppArmor profile {profile:?}"));
            process.set_apparmor_profile(None);
        }
    }
    if !lsms.selinux {
        if let Some(label) = process.selinux_label().clone() {
            dropped.push(format!("SELinux label {label:?}"));
            process.set_selinux_label(None);
        }
    }
    dropped
}

/// Makes `spec` join, for each of `types` ("ipc", "uts", "pid"), the namespace of that type
/// of process `pid` in the agent's view (the pod's sandbox container's first process)
/// instead of a new one of its own. Other types are refused: the network is the pod's
/// already, and a mount namespace is each container's own.
pub fn join_namespaces(spec: &mut Spec, pid: i32, types: &[String]) -> Result<()> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    for name in types {
        let typ = match name.as_str() {
            "ipc" => LinuxNamespaceType::Ipc,
            "uts" => LinuxNamespaceType::Uts,
            "pid" => LinuxNamespaceType::Pid,
            other => {
                return Err(AgentError::InvalidArgument(format!(
                    "a container can share the sandbox's ipc, uts and pid namespaces, not {other:?}"
                )))
            }
        };
        namespaces.retain(|ns| ns.typ() != typ);
        let mut ns = LinuxNamespace::default();
        ns.set_typ(typ);
        ns.set_path(Some(PathBuf::from(format!("/proc/{pid}/ns/{name}"))));
        namespaces.push(ns);
    }
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
    Ok(())
}

/// The spec's `rootfsPropagation` as libcontainer takes it. containerd's CRI plugin sends
/// runc's recursive names (`rshared` for a pod with a bidirectional mount, `rslave` for
/// host-to-container); libcontainer knows only the plain ones, and makes the rootfs's
/// propagation recursive whichever it is given. It acts between the container's mount
/// namespace and the guest's, the only ones it can reach from inside the VM.
fn rootfs_propagation(value: &str) -> Result<&'static str> {
    match value {
        "shared" | "rshared" => Ok("shared"),
        "slave" | "rslave" => Ok("slave"),
        "private" | "rprivate" => Ok("private"),
        "unbindable" | "runbindable" => Ok("unbindable"),
        other => Err(AgentError::InvalidArgument(format!(
            "rootfsPropagation {other:?} is not one of (r)shared, (r)slave, (r)private, (r)unbindable"
        ))),
    }
}

fn bind_ro(source: &Path, dest: &str) -> Result<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".to_string(),
            "ro".to_string(),
            "nosuid".to_string(),
            "nodev".to_string(),
        ])
        .build()
        .map_err(|e| AgentError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Spec {
        Spec::default()
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("container", "abc-1_2.x").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_id("container", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn adapt_adds_own_namespaces_and_drops_network() {
        let mut spec = minimal();
        spec.set_hostname(None);
        let dir = std::env::temp_dir();
        let sandbox = SandboxFiles {
            hostname: Some("pod".into()),
            ..Default::default()
        };
        let place = Placement {
            rootfs: &dir,
            cgroup_path: "/carapace/c1".into(),
            sandbox: &sandbox,
        };
        adapt(&mut spec, &place).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let types: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(!types.contains(&LinuxNamespaceType::Network));
        for t in OWN_NAMESPACES {
            assert!(types.contains(&t));
        }
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/carapace/c1"))
        );
        assert_eq!(spec.root().as_ref().unwrap().path(), &dir);
        assert_eq!(spec.hostname().as_deref(), Some("pod"));
    }

    #[test]
    fn lsm_fields_the_guest_cannot_honour_are_cleared_and_named() {
        let with_lsm = || {
            let mut spec = minimal();
            let mut p = spec.process().clone().unwrap();
            p.set_apparmor_profile(Some("cri-containerd.apparmor.d".into()));
            p.set_selinux_label(Some("system_u:system_r:container_t:s0".into()));
            spec.set_process(Some(p));
            let mut linux = spec.linux().clone().unwrap();
            linux.set_mount_label(Some("system_u:object_r:container_file_t:s0".into()));
            spec.set_linux(Some(linux));
            spec
        };
        let none = GuestLsms {
            apparmor: false,
            selinux: false,
        };
        let mut spec = with_lsm();
        let dropped = drop_unenforceable_lsm(&mut spec, none);
        assert_eq!(dropped.len(), 3, "{dropped:?}");
        assert!(
            dropped[0].contains("cri-containerd.apparmor.d"),
            "{dropped:?}"
        );
        let p = spec.process().as_ref().unwrap();
        assert_eq!((p.apparmor_profile(), p.selinux_label()), (&None, &None));
        assert_eq!(spec.linux().as_ref().unwrap().mount_label(), &None);
        // What the guest enforces stays.
        let both = GuestLsms {
            apparmor: true,
            selinux: true,
        };
        let mut kept = with_lsm();
        assert!(drop_unenforceable_lsm(&mut kept, both).is_empty());
        assert_eq!(kept, with_lsm());
    }

    #[test]
    fn rootfs_propagation_is_what_libcontainer_takes() {
        let sandbox = SandboxFiles::default();
        let dir = std::env::temp_dir();
        let place = Placement {
            rootfs: &dir,
            cgroup_path: "/c".into(),
            sandbox: &sandbox,
        };
        let with = |value: Option<&str>| {
            let mut spec = minimal();
            let mut linux = spec.linux().clone().unwrap_or_default();
            linux.set_rootfs_propagation(value.map(String::from));
            spec.set_linux(Some(linux));
            adapt(&mut spec, &place)
                .map(|()| spec.linux().clone().unwrap().rootfs_propagation().clone())
        };
        for (sent, taken) in [
            ("rshared", "shared"),
            ("rslave", "slave"),
            ("rprivate", "private"),
            ("runbindable", "unbindable"),
            ("shared", "shared"),
            ("slave", "slave"),
        ] {
            assert_eq!(with(Some(sent)).unwrap().as_deref(), Some(taken), "{sent}");
        }
        assert_eq!(with(None).unwrap(), None);
        let e = with(Some("rsideways")).unwrap_err();
        assert!(
            matches!(&e, AgentError::InvalidArgument(m) if m.contains("rsideways")),
            "{e}"
        );
    }

    #[test]
    fn net_sysctls_are_taken_out_for_the_agent_and_odd_keys_refused() {
        let mut spec = minimal();
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_sysctl(Some(std::collections::HashMap::from([
            ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
            (
                "net.ipv4.ping_group_range".to_string(),
                "0 1000".to_string(),
            ),
            (
                "net.ipv4.conf.eth0/10.rp_filter".to_string(),
                "2".to_string(),
            ),
        ])));
        spec.set_linux(Some(linux));
        let net = take_net_sysctls(&mut spec).unwrap();
        assert_eq!(
            net,
            vec![
                (
                    PathBuf::from("/proc/sys/net/ipv4/conf/eth0.10/rp_filter"),
                    "2".to_string()
                ),
                (
                    PathBuf::from("/proc/sys/net/ipv4/ping_group_range"),
                    "0 1000".to_string()
                ),
            ]
        );
        let left = spec.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        for bad in [
            "net..x",
            "net.ipv4./",
            "net.ipv4.../x",
            "net.a b",
            "net./..",
            "net.",
            "net.core.bpf_jit_harden",
        ] {
            let mut spec = minimal();
            let mut linux = spec.linux().clone().unwrap_or_default();
            linux.set_sysctl(Some(std::collections::HashMap::from([(
                bad.to_string(),
                "1".to_string(),
            )])));
            spec.set_linux(Some(linux));
            assert!(
                matches!(
                    take_net_sysctls(&mut spec),
                    Err(AgentError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn pod_memory_mounts_are_named_with_their_subpaths_and_odd_ones_refused() {
        let with = |sources: &[&str]| {
            let mut spec = minimal();
            let mut mounts = spec.mounts().clone().unwrap_or_default();
            for (i, src) in sources.iter().enumerate() {
                mounts.push(
                    MountBuilder::default()
                        .destination(format!("/m{i}"))
                        .typ("bind")
                        .source(src)
                        .options(vec!["rbind".to_string()])
                        .build()
                        .unwrap(),
                );
            }
            spec.set_mounts(Some(mounts));
            pod_memory_mounts(&spec).map(|found| {
                found
                    .into_iter()
                    .map(|m| (m.name, m.subpath.map(|p| p.display().to_string())))
                    .collect::<Vec<_>>()
            })
        };
        let extra = minimal().mounts().as_ref().map_or(0, |m| m.len());
        let found = with(&[
            "/run/carapace/pod-memory/shm",
            "/run/carapace/pod-memory/empty-dir-cache",
            "/run/carapace/shared/c1/mounts/3",
            "/run/carapace/pod-memory/empty-dir-cache/a/b",
        ])
        .unwrap();
        assert_eq!(
            found,
            vec![
                ("shm".to_string(), None),
                ("empty-dir-cache".to_string(), None),
                ("empty-dir-cache".to_string(), Some("a/b".to_string())),
            ]
        );
        let mut spec = minimal();
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.push(
            MountBuilder::default()
                .destination("/sub")
                .source("/run/carapace/pod-memory/shm/x")
                .build()
                .unwrap(),
        );
        spec.set_mounts(Some(mounts));
        assert_eq!(pod_memory_mounts(&spec).unwrap()[0].index, extra);
        for bad in [
            "/run/carapace/pod-memory/../shared",
            "/run/carapace/pod-memory/Bad/b",
            "/run/carapace/pod-memory/empty-dir-cache/../../shared",
            "/run/carapace/pod-memory/empty-dir-cache/./a",
            "/run/carapace/pod-memory",
        ] {
            assert!(
                matches!(with(&[bad]), Err(AgentError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_specs_are_invalid_arguments() {
        assert!(matches!(
            parse(b"{not json"),
            Err(AgentError::InvalidArgument(_))
        ));
        let mut spec = minimal();
        spec.set_process(None);
        let sandbox = SandboxFiles::default();
        let place = Placement {
            rootfs: Path::new("/nonexistent-rootfs"),
            cgroup_path: "/c".into(),
            sandbox: &sandbox,
        };
        assert!(matches!(
            adapt(&mut spec, &place),
            Err(AgentError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_process(br#"{"cwd":"/","args":[]}"#),
            Err(AgentError::InvalidArgument(_))
        ));
    }
}
