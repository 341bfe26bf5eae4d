//! The OCI spec containerd wrote, rewritten for the guest: the rootfs moved to its place in
//! the pod's share, the pod's namespace paths read as the sandbox container's (any other
//! refused), host namespace paths and the host cgroup path dropped, host bind-mount sources
//! moved into the share, the pod's memory-backed volumes (`/dev/shm`, emptyDir of medium
//! Memory) pointed at the guest's tmpfs for them; and the pod a container belongs to, from
//! the CRI annotations. Pure functions, unit-tested.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use carapace_protocol::{is_pod_memory_name, POD_MEMORY_DIR};

use crate::error::{Result, ShimError};
use crate::hostfs::BindFlags;

/// Where the agent mounts the pod's share inside the guest.
pub const GUEST_SHARE: &str = "/run/carapace/shared";
/// The CRI annotation saying whether a container is a pod's sandbox or one of its containers.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The CRI annotation naming the pod (sandbox) a container belongs to.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A pod (sandbox) id that passed the id rule shared with the agent
/// ([`carapace_protocol::id::check`]): the only kind of id a state path is built from, so
/// every path below stays a direct child of [`crate::sandbox::STATE_ROOT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodId(String);

impl PodId {
    /// Checks `id` (from containerd: a container id or the CRI sandbox-id annotation).
    pub fn new(id: &str) -> Result<Self> {
        check_id("sandbox", id)?;
        Ok(Self(id.to_string()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PodId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The pod a container belongs to: its own (a sandbox or a lone `ctr run` container), or
/// the one named by its CRI annotations; refused unless it passes the id rule (the
/// annotation is the client's to set: `../../tmp/x` must never name a host path).
pub fn sandbox_id(spec: &Spec, container_id: &str) -> Result<PodId> {
    let ann = spec.annotations().clone().unwrap_or_default();
    match (ann.get(CONTAINER_TYPE), ann.get(SANDBOX_ID)) {
        (Some(t), Some(sid)) if t == "container" && !sid.is_empty() => PodId::new(sid),
        _ => PodId::new(container_id),
    }
}

/// Checks a container or exec id from containerd by the rule the agent checks too.
pub fn check_id(kind: &str, id: &str) -> Result<()> {
    carapace_protocol::id::check(kind, id).map_err(|e| ShimError::InvalidArgument(e.to_string()))
}

/// A container's directory inside the share, relative to the share's root.
pub fn container_dir(container_id: &str) -> PathBuf {
    PathBuf::from(container_id)
}

/// The container's rootfs as the guest sees it.
pub fn guest_rootfs(container_id: &str) -> PathBuf {
    Path::new(GUEST_SHARE)
        .join(container_dir(container_id))
        .join("rootfs")
}

/// A host path to bind into the share before the container is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    /// The host source.
    pub source: PathBuf,
    /// Its place relative to the share's root.
    pub share_path: PathBuf,
    /// What the host mount gets (the spec's `ro` and `noexec`; nosuid and nodev always).
    pub flags: BindFlags,
}

/// The namespace types ("ipc", "uts", "pid") `spec` asks to share with its pod's sandbox
/// container: a namespace path `/proc/<pod_pid>/ns/<type>`, where `pod_pid` is the pid the
/// pod's tasks report (its VMM's; none before the pod's VM boots), from which containerd's
/// CRI plugin builds the paths it gives the pod's other containers. A path of those types that
/// names any other process is refused: it is a host namespace, which a container in the VM
/// cannot join. (Network paths are the pod's network, read by `network::netns_path`; other
/// types' paths are dropped by [`for_guest`].)
pub fn pod_namespaces(spec: &Spec, pod_pid: Option<u32>) -> Result<Vec<String>> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut shared = Vec::new();
    for ns in &namespaces {
        let (Some(path), Some(name)) = (ns.path(), shareable(ns.typ())) else {
            continue;
        };
        let pods = pod_pid.map(|pid| PathBuf::from(format!("/proc/{pid}/ns/{name}")));
        if pods.as_deref() != Some(path.as_path()) {
            return Err(ShimError::InvalidArgument(format!(
                "the {name} namespace {} is not the pod's: a container in a VM cannot join a host namespace",
                path.display()
            )));
        }
        shared.push(name.to_string());
    }
    Ok(shared)
}

/// Refuses a spec with a bind mount that asks for shared or slave propagation (Kubernetes'
/// Bidirectional and HostToContainer, `rshared`/`rslave` in the mount's options): mounts made
/// on the host later cannot reach a container in a VM, nor a container's mounts the host. A
/// container's own mounts keep private propagation, as every other runtime's by default.
pub fn refuse_host_propagation(spec: &Spec) -> Result<()> {
    for m in spec.mounts().iter().flatten() {
        let options = m.options().clone().unwrap_or_default();
        let is_bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        let asked = options
            .iter()
            .find(|o| matches!(o.as_str(), "shared" | "rshared" | "slave" | "rslave"));
        if let (true, Some(asked)) = (is_bind, asked) {
            let kind = if asked.ends_with("shared") {
                "Bidirectional"
            } else {
                "HostToContainer"
            };
            return Err(ShimError::InvalidArgument(format!(
                "the mount of {} on {} asks for {asked} propagation ({kind} in Kubernetes): \
                 mount propagation between the host and a container cannot reach through \
                 carapace's VM",
                m.source()
                    .as_deref()
                    .map_or_else(|| "?".into(), |p| p.display().to_string()),
                m.destination().display()
            )));
        }
    }
    Ok(())
}

/// Refuses a spec that shares one of the host's pid, ipc, uts or network namespaces (the spec
/// has no namespace of that type: how CRI asks for hostPID, hostIPC and hostNetwork, and
/// `ctr run --net-host` for the network): the container runs in a VM, which cannot share any
/// namespace of the host's.
pub fn refuse_host_namespaces(spec: &Spec) -> Result<()> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let host: Vec<&str> = [
        (T::Pid, "pid"),
        (T::Ipc, "ipc"),
        (T::Uts, "uts"),
        (T::Network, "network"),
    ]
    .into_iter()
    .filter(|(typ, _)| !namespaces.iter().any(|n| n.typ() == *typ))
    .map(|(_, name)| name)
    .collect();
    if host.is_empty() {
        return Ok(());
    }
    Err(ShimError::InvalidArgument(format!(
        "the spec shares the host's {} namespace{} (hostPID, hostIPC, hostNetwork): a container in a VM cannot share any namespace of the host's",
        host.join(", "),
        if host.len() > 1 { "s" } else { "" }
    )))
}

/// The name of a namespace type a pod's containers may share with its sandbox container.
fn shareable(typ: oci_spec::runtime::LinuxNamespaceType) -> Option<&'static str> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    match typ {
        T::Ipc => Some("ipc"),
        T::Uts => Some("uts"),
        T::Pid => Some("pid"),
        _ => None,
    }
}

/// The host directory the spec's `root.path` names, for a container whose rootfs containerd
/// hands over as a directory rather than as mounts (`ctr run --config`, a bundle made by
/// hand): relative to the bundle (`rootfs` when unset), or absolute, as runc takes it.
pub fn host_root_dir(spec: &Spec, bundle: &Path) -> PathBuf {
    let path = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    bundle.join(path)
}

/// Rewrites `spec` for the guest and lists the host paths to bind into the share. With
/// `binds_allowed` false (no share to carry them), a host bind mount is refused.
pub fn for_guest(
    spec: &mut Spec,
    container_id: &str,
    binds_allowed: bool,
) -> Result<Vec<HostBind>> {
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(guest_rootfs(container_id));
    spec.set_root(Some(root));

    if let Some(mut linux) = spec.linux().clone() {
        if let Some(ns) = linux.namespaces().clone() {
            // A path names a host namespace (the CRI's netns, a pod's ipc): meaningless in
            // the guest, where the agent shares the pod's namespaces itself.
            let kept = ns.into_iter().filter(|n| n.path().is_none()).collect();
            linux.set_namespaces(Some(kept));
        }
        linux.set_cgroups_path(None);
        spec.set_linux(Some(linux));
    }

    let mut binds = Vec::new();
    if let Some(mut mounts) = spec.mounts().clone() {
        for (i, m) in mounts.iter_mut().enumerate() {
            let is_bind = m.typ().as_deref() == Some("bind")
                || m.options()
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
            let Some(source) = m.source().clone() else {
                continue;
            };
            if !is_bind || !source.is_absolute() {
                continue;
            }
            if let Some(name) = pod_memory_name(
                m.destination(),
                &source,
                is_tmpfs_on_host,
                mount_root_on_host,
            ) {
                m.set_source(Some(Path::new(POD_MEMORY_DIR).join(name)));
                continue;
            }
            if !binds_allowed {
                return Err(ShimError::InvalidArgument(format!(
                    "the bind mount of {} needs the virtio-fs share (share = \"virtiofs\")",
                    source.display()
                )));
            }
            let share_path = container_dir(container_id)
                .join("mounts")
                .join(i.to_string());
            let has = |o: &str| {
                m.options()
                    .as_ref()
                    .is_some_and(|os| os.iter().any(|x| x == o))
            };
            binds.push(HostBind {
                flags: BindFlags {
                    read_only: has("ro"),
                    no_exec: has("noexec"),
                },
                source,
                share_path: share_path.clone(),
            });
            m.set_source(Some(Path::new(GUEST_SHARE).join(share_path)));
        }
        spec.set_mounts(Some(mounts));
    }
    Ok(binds)
}

/// The pod-memory volume (see [`POD_MEMORY_DIR`]), as a path relative to that directory, a
/// bind mount to `dest` from host path `source` stands for: the pod's `/dev/shm` (containerd
/// binds the sandbox's host shm there), a kubelet emptyDir of medium Memory
/// (`.../volumes/kubernetes.io~empty-dir/<name>` on a host tmpfs, as Kata tells them), or a
/// subPath of one (`.../volume-subpaths/<name>/<container>/<index>`, the kubelet's bind of a
/// directory of that tmpfs, which `mount_root` names: the mount's root in its file system).
/// Anything else stays a host bind.
pub fn pod_memory_name(
    dest: &Path,
    source: &Path,
    is_tmpfs: impl Fn(&Path) -> bool,
    mount_root: impl Fn(&Path) -> Option<PathBuf>,
) -> Option<PathBuf> {
    if dest == Path::new("/dev/shm") {
        return Some("shm".into());
    }
    let parent = source.parent()?;
    let volume = source.file_name()?.to_str()?;
    let empty_dir = parent.file_name()? == "kubernetes.io~empty-dir"
        && parent.parent()?.file_name()? == "volumes";
    if empty_dir {
        let name = format!("empty-dir-{volume}");
        return (is_pod_memory_name(&name) && is_tmpfs(source)).then(|| name.into());
    }
    // .../volume-subpaths/<volume>/<container>/<index>
    let volume_dir = parent.parent()?;
    if volume_dir.parent()?.file_name()? != "volume-subpaths" {
        return None;
    }
    let name = format!("empty-dir-{}", volume_dir.file_name()?.to_str()?);
    if !is_pod_memory_name(&name) || !is_tmpfs(source) {
        return None;
    }
    let root = mount_root(source)?;
    let sub = root.strip_prefix("/").ok()?;
    let plain = sub
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    plain.then(|| Path::new(&name).join(sub))
}

/// The root (in its file system) of the mount at `path`, from the shim's mountinfo: for the
/// kubelet's bind of a subPath, the directory it binds.
fn mount_root_on_host(path: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_root_in(&info, path)
}

/// [`mount_root_on_host`] over `mountinfo`'s text: the last (topmost) mount at `path`.
fn mount_root_in(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    // Fields: id parent major:minor root mount-point ...; spaces and the like octal-escaped.
    let unescape = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let octal = b
                .get(i + 1..i + 4)
                .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
            match (b[i], octal) {
                (b'\\', Some(v)) => {
                    out.push(v);
                    i += 4;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
    };
    mountinfo.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let root = f.nth(3)?;
        let point = f.next()?;
        (unescape(point) == path).then(|| unescape(root))
    })
}

/// Whether `path` is on a tmpfs on the host (an emptyDir of medium Memory is).
fn is_tmpfs_on_host(path: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == TMPFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder};

    use super::*;

    #[test]
    fn host_mount_propagation_is_refused_by_name_private_binds_are_not() {
        let with = |options: &[&str]| {
            let mut spec = Spec::default();
            let mut mounts = spec.mounts().clone().unwrap_or_default();
            mounts.push(
                MountBuilder::default()
                    .destination("/data")
                    .typ("bind")
                    .source("/srv/data")
                    .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
                    .build()
                    .unwrap(),
            );
            spec.set_mounts(Some(mounts));
            refuse_host_propagation(&spec)
        };
        assert!(with(&["rbind", "rprivate", "rw"]).is_ok());
        assert!(
            refuse_host_propagation(&Spec::default()).is_ok(),
            "containerd's default mounts"
        );
        for (option, kind) in [
            ("rslave", "HostToContainer"),
            ("rshared", "Bidirectional"),
            ("slave", "HostToContainer"),
        ] {
            let e = with(&["rbind", option, "rw"]).unwrap_err().to_string();
            assert!(
                e.contains(option)
                    && e.contains(kind)
                    && e.contains("/srv/data")
                    && e.contains("/data"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_root_dir_is_the_specs_root_path_relative_to_the_bundle_or_absolute() {
        let bundle = Path::new("/run/containerd/b1");
        let mut spec = Spec::default();
        spec.set_root(None);
        assert_eq!(host_root_dir(&spec, bundle), bundle.join("rootfs"));
        let mut root = oci_spec::runtime::Root::default();
        root.set_path(PathBuf::from("fs"));
        spec.set_root(Some(root.clone()));
        assert_eq!(host_root_dir(&spec, bundle), bundle.join("fs"));
        root.set_path(PathBuf::from("/srv/rootfs"));
        spec.set_root(Some(root));
        assert_eq!(host_root_dir(&spec, bundle), Path::new("/srv/rootfs"));
    }

    #[test]
    fn pod_from_annotations() {
        let mut spec = Spec::default();
        assert_eq!(sandbox_id(&spec, "c1").unwrap().as_str(), "c1");
        spec.set_annotations(Some(HashMap::from([
            (CONTAINER_TYPE.to_string(), "container".to_string()),
            (SANDBOX_ID.to_string(), "pod1".to_string()),
        ])));
        assert_eq!(sandbox_id(&spec, "c1").unwrap().as_str(), "pod1");
        spec.set_annotations(Some(HashMap::from([
            (CONTAINER_TYPE.to_string(), "sandbox".to_string()),
            (SANDBOX_ID.to_string(), "pod1".to_string()),
        ])));
        assert_eq!(sandbox_id(&spec, "pod1").unwrap().as_str(), "pod1");
        // The annotation is the client's: one that leaves the state root is refused.
        for bad in ["../../tmp/victim", "..", "a/b"] {
            spec.set_annotations(Some(HashMap::from([
                (CONTAINER_TYPE.to_string(), "container".to_string()),
                (SANDBOX_ID.to_string(), bad.to_string()),
            ])));
            let e = sandbox_id(&spec, "c1").unwrap_err();
            assert!(e.to_string().contains("sandbox id"), "{e}");
        }
        assert!(sandbox_id(&Spec::default(), "../x").is_err());
    }

    #[test]
    fn namespaces_of_the_pods_pid_are_shared_and_any_other_refused() {
        let with = |paths: &[(LinuxNamespaceType, &str)]| {
            let mut spec = Spec::default();
            let mut linux = spec.linux().clone().unwrap();
            let mut ns: Vec<_> = linux
                .namespaces()
                .clone()
                .unwrap()
                .into_iter()
                .filter(|n| !paths.iter().any(|(t, _)| *t == n.typ()))
                .collect();
            for (typ, path) in paths {
                ns.push(
                    LinuxNamespaceBuilder::default()
                        .typ(*typ)
                        .path(*path)
                        .build()
                        .unwrap(),
                );
            }
            linux.set_namespaces(Some(ns));
            spec.set_linux(Some(linux));
            spec
        };
        let pod = with(&[
            (LinuxNamespaceType::Ipc, "/proc/42/ns/ipc"),
            (LinuxNamespaceType::Uts, "/proc/42/ns/uts"),
            (LinuxNamespaceType::Pid, "/proc/42/ns/pid"),
            (LinuxNamespaceType::Network, "/var/run/netns/cni-1"),
        ]);
        assert_eq!(
            pod_namespaces(&pod, Some(42)).unwrap(),
            ["ipc", "uts", "pid"]
        );
        assert!(pod_namespaces(&Spec::default(), None).unwrap().is_empty());
        for (spec, pid) in [
            (
                with(&[(LinuxNamespaceType::Ipc, "/proc/1/ns/ipc")]),
                Some(42),
            ),
            (with(&[(LinuxNamespaceType::Pid, "/proc/42/ns/pid")]), None),
            (
                with(&[(LinuxNamespaceType::Uts, "/proc/42/ns/ipc")]),
                Some(42),
            ),
        ] {
            let e = pod_namespaces(&spec, pid).unwrap_err();
            assert!(e.to_string().contains("not the pod's"), "{e}");
        }
    }

    #[test]
    fn a_spec_sharing_a_host_namespace_is_refused_by_name() {
        assert!(refuse_host_namespaces(&Spec::default()).is_ok());
        for (gone, named) in [
            (&[LinuxNamespaceType::Pid][..], "host's pid namespace"),
            (
                &[LinuxNamespaceType::Network, LinuxNamespaceType::Uts][..],
                "host's uts, network namespaces",
            ),
        ] {
            let mut spec = Spec::default();
            let mut linux = spec.linux().clone().unwrap();
            let kept = linux
                .namespaces()
                .clone()
                .unwrap()
                .into_iter()
                .filter(|n| !gone.contains(&n.typ()))
                .collect();
            linux.set_namespaces(Some(kept));
            spec.set_linux(Some(linux));
            let e = refuse_host_namespaces(&spec).unwrap_err();
            assert!(
                matches!(e, ShimError::InvalidArgument(_)) && e.to_string().contains(named),
                "{e}"
            );
        }
    }

    #[test]
    fn a_subpath_of_a_memory_empty_dir_is_the_directory_its_bind_roots_at() {
        let sub = Path::new("/var/lib/kubelet/pods/u/volume-subpaths/cache/app/0");
        let at = |root: &'static str| move |_: &Path| Some(PathBuf::from(root));
        assert_eq!(
            pod_memory_name(Path::new("/sub"), sub, |_| true, at("/a/b")),
            Some(PathBuf::from("empty-dir-cache/a/b"))
        );
        assert_eq!(
            pod_memory_name(Path::new("/sub"), sub, |_| true, at("/")),
            Some(PathBuf::from("empty-dir-cache"))
        );
        // On disk, an unknown root, a root that climbs, another layout: host binds.
        assert_eq!(
            pod_memory_name(Path::new("/sub"), sub, |_| false, at("/a")),
            None
        );
        assert_eq!(
            pod_memory_name(Path::new("/sub"), sub, |_| true, |_| None),
            None
        );
        assert_eq!(
            pod_memory_name(Path::new("/sub"), sub, |_| true, at("/a/../..")),
            None
        );
        let other = Path::new("/var/lib/kubelet/pods/u/other/cache/app/0");
        assert_eq!(
            pod_memory_name(Path::new("/sub"), other, |_| true, at("/a")),
            None
        );

        let info = "22 1 0:21 / /run rw shared:5 - tmpfs tmpfs rw\n\
                    90 22 0:40 / /var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache rw - tmpfs tmpfs rw\n\
                    91 22 0:40 /a\\040dir/b /var/lib/kubelet/pods/u/volume-subpaths/cache/app/0 rw - tmpfs tmpfs rw\n";
        assert_eq!(mount_root_in(info, sub), Some(PathBuf::from("/a dir/b")));
        assert_eq!(mount_root_in(info, Path::new("/nowhere")), None);
    }

    #[test]
    fn dev_shm_and_memory_empty_dirs_are_the_guests_tmpfs_other_binds_stay_host_binds() {
        let (tmpfs, disk) = (true, false);
        let pod_memory_name = |d: &Path, s: &Path, on_tmpfs: bool| {
            pod_memory_name(d, s, |_| on_tmpfs, |_| None).map(|p| p.display().to_string())
        };
        let shm = Path::new("/run/containerd/io.containerd.grpc.v1.cri/sandboxes/p/shm");
        assert_eq!(
            pod_memory_name(Path::new("/dev/shm"), shm, disk).as_deref(),
            Some("shm")
        );
        let vol = Path::new("/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache");
        assert_eq!(
            pod_memory_name(Path::new("/cache"), vol, tmpfs).as_deref(),
            Some("empty-dir-cache")
        );
        // An emptyDir on disk, a name that could climb, any other path: host binds.
        assert_eq!(pod_memory_name(Path::new("/cache"), vol, disk), None);
        let odd = Path::new("/v/volumes/kubernetes.io~empty-dir/..");
        assert_eq!(pod_memory_name(Path::new("/x"), odd, tmpfs), None);
        let upper = Path::new("/v/volumes/kubernetes.io~empty-dir/Cache");
        assert_eq!(pod_memory_name(Path::new("/x"), upper, tmpfs), None);
        assert_eq!(
            pod_memory_name(Path::new("/data"), Path::new("/tmp"), tmpfs),
            None
        );

        let mut spec = Spec::default();
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.retain(|m| m.destination() != Path::new("/dev/shm"));
        mounts.push(
            MountBuilder::default()
                .destination("/dev/shm")
                .typ("bind")
                .source(shm)
                .options(vec!["rbind".to_string(), "rw".to_string()])
                .build()
                .unwrap(),
        );
        spec.set_mounts(Some(mounts));
        // No share is needed for it: it is not a host path the guest sees.
        assert_eq!(for_guest(&mut spec, "c1", false).unwrap(), vec![]);
        let m = spec.mounts().as_ref().unwrap().last().unwrap().clone();
        assert_eq!(
            m.source().as_deref(),
            Some(Path::new("/run/carapace/pod-memory/shm"))
        );
    }

    #[test]
    fn rootfs_namespaces_cgroup_and_binds_are_rewritten() {
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().unwrap();
        let mut ns = linux.namespaces().clone().unwrap();
        ns.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path("/var/run/netns/x")
                .build()
                .unwrap(),
        );
        let before = ns.len();
        linux.set_namespaces(Some(ns));
        linux.set_cgroups_path(Some("/k8s/pod".into()));
        spec.set_linux(Some(linux));
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(
            MountBuilder::default()
                .destination("/data")
                .typ("bind")
                .source("/tmp")
                .options(vec!["rbind".to_string(), "rw".to_string()])
                .build()
                .unwrap(),
        );
        let n = mounts.len();
        spec.set_mounts(Some(mounts));

        let binds = for_guest(&mut spec, "c1", true).unwrap();
        assert_eq!(
            spec.root().as_ref().unwrap().path(),
            Path::new("/run/carapace/shared/c1/rootfs")
        );
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), before - 1);
        assert!(linux.cgroups_path().is_none());
        assert_eq!(
            binds,
            vec![HostBind {
                source: "/tmp".into(),
                share_path: PathBuf::from(format!("c1/mounts/{}", n - 1)),
                flags: BindFlags::default(),
            }]
        );
        let m = &spec.mounts().as_ref().unwrap()[n - 1];
        assert_eq!(
            m.source().as_deref(),
            Some(Path::new(&format!(
                "/run/carapace/shared/c1/mounts/{}",
                n - 1
            )))
        );

        // `ro` and `noexec` reach the host mount (nosuid and nodev it always gets).
        let mut spec3 = Spec::default();
        let mut mounts = spec3.mounts().clone().unwrap();
        mounts.push(
            MountBuilder::default()
                .destination("/etc-ro")
                .typ("bind")
                .source("/etc")
                .options(vec![
                    "rbind".to_string(),
                    "ro".to_string(),
                    "noexec".to_string(),
                ])
                .build()
                .unwrap(),
        );
        spec3.set_mounts(Some(mounts));
        let binds3 = for_guest(&mut spec3, "c1", true).unwrap();
        assert_eq!(
            binds3[0].flags,
            BindFlags {
                read_only: true,
                no_exec: true
            }
        );

        let mut spec2 = spec.clone();
        let mut mounts = spec2.mounts().clone().unwrap();
        mounts[n - 1].set_source(Some("/tmp".into()));
        spec2.set_mounts(Some(mounts));
        assert!(for_guest(&mut spec2, "c1", false).is_err());
    }
}
