//! The pod's host cgroup (issue 15, Kata's `sandbox_cgroup_only`): the sandbox container's
//! `linux.cgroupsPath`, which the kubelet and containerd's CRI plugin set, names where the
//! pod's processes belong on the host; the pod's VMM is born in it (the shim writes the
//! forked child into `cgroup.procs` before it executes carapace-vmm), so the kubelet's
//! accounting and eviction see the whole VM, guest memory included.
//!
//! Both forms containerd writes are understood, on the cgroup v2 hierarchy:
//! - cgroupfs: an absolute path, `/kubepods/burstable/pod<uid>/<id>`;
//! - systemd: `slice:prefix:name`, `kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`,
//!   the slice expanded as systemd nests slices (`/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid>.slice`) and the leaf `<prefix>-<name>.scope`. The shim makes
//!   that directory itself rather than asking systemd for a transient scope over D-Bus.
//!
//! The path is client input: every component must be a plain name (no `.`, `..`, empty or
//! NUL), so the cgroup is always below the hierarchy's root. Missing directories are made, as
//! runc makes them (`ctr` names `/<namespace>/<id>`), and those the shim made are removed at
//! teardown, deepest first; cgroups it found (the kubelet's pod cgroup) are left. Each parent
//! of a directory it makes gets its controllers enabled for its children, as runc does.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use crate::error::{Result, ShimError};

/// Where the cgroup v2 hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The pod's cgroup, once resolved and made.
#[derive(Debug)]
pub struct PodCgroup {
    dir: PathBuf,
    /// The directories the shim made, outermost first.
    made: Vec<PathBuf>,
}

fn refused(path: &str, why: &str) -> ShimError {
    ShimError::InvalidArgument(format!("cgroupsPath {path:?}: {why}"))
}

/// The directory `cgroups_path` names below `root`.
pub fn resolve(root: &Path, cgroups_path: &str) -> Result<PathBuf> {
    let plain =
        |c: &str| !c.is_empty() && c != "." && c != ".." && !c.contains('/') && !c.contains('\0');
    let mut dir = root.to_path_buf();
    if cgroups_path.starts_with('/') {
        let rel = Path::new(cgroups_path);
        let mut n = 0;
        for c in rel.components() {
            match c {
                Component::RootDir => {}
                Component::Normal(s) if plain(&s.to_string_lossy()) => {
                    dir.push(s);
                    n += 1;
                }
                _ => return Err(refused(cgroups_path, "a component is not a plain name")),
            }
        }
        if n == 0 || cgroups_path.contains("/./") || cgroups_path.ends_with("/.") {
            return Err(refused(cgroups_path, "names no cgroup below the root"));
        }
        return Ok(dir);
    }
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err(refused(
            cgroups_path,
            "neither an absolute path nor slice:prefix:name",
        ));
    };
    if !plain(name) || !prefix.is_empty() && !plain(prefix) {
        return Err(refused(cgroups_path, "prefix and name must be plain names"));
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let Some(stem) = slice.strip_suffix(".slice").filter(|s| plain(s)) else {
        return Err(refused(cgroups_path, "the slice must be NAME.slice"));
    };
    if stem != "-" {
        // systemd nests a-b-c.slice in a-b.slice in a.slice; "-" is the root slice.
        let words: Vec<&str> = stem.split('-').collect();
        if words.iter().any(|w| w.is_empty()) {
            return Err(refused(cgroups_path, "the slice has an empty part"));
        }
        for i in 1..=words.len() {
            dir.push(format!("{}.slice", words[..i].join("-")));
        }
    }
    let leaf = if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    dir.push(leaf);
    Ok(dir)
}

/// Enables in `parent`'s `cgroup.subtree_control` every controller it has, as runc does when
/// it makes a cgroup, so the pod's cgroup accounts memory, CPU and pids. A controller the
/// kernel refuses there (a parent with processes of its own, say) is skipped.
fn delegate_controllers(parent: &Path) {
    let Ok(available) = std::fs::read_to_string(parent.join("cgroup.controllers")) else {
        return;
    };
    let control = parent.join("cgroup.subtree_control");
    for c in available.split_whitespace() {
        if let Err(e) = std::fs::write(&control, format!("+{c}")) {
            log::debug!("enabling {c} in {}: {e}", control.display());
        }
    }
}

/// Whether `dir` is a cgroup2 file system (CGROUP2_SUPER_MAGIC).
fn is_cgroup2(dir: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
}

impl PodCgroup {
    /// Resolves `cgroups_path` under [`CGROUP_ROOT`] and makes what is missing of it.
    pub fn make(cgroups_path: &str) -> Result<PodCgroup> {
        Self::make_under(Path::new(CGROUP_ROOT), cgroups_path)
    }

    fn make_under(root: &Path, cgroups_path: &str) -> Result<PodCgroup> {
        let dir = resolve(root, cgroups_path)?;
        if !root.is_dir() {
            return Err(ShimError::FailedPrecondition(format!(
                "cgroupsPath {cgroups_path:?}: no cgroup hierarchy at {}",
                root.display()
            )));
        }
        if root == Path::new(CGROUP_ROOT) && !is_cgroup2(root) {
            return Err(ShimError::FailedPrecondition(format!(
                "cgroupsPath {cgroups_path:?}: {CGROUP_ROOT} is not a cgroup v2 hierarchy \
                 (carapace places pod VMs on cgroup v2 only)"
            )));
        }
        let mut cg = PodCgroup {
            dir: dir.clone(),
            made: Vec::new(),
        };
        let below = dir.strip_prefix(root).unwrap_or(&dir).to_path_buf();
        let mut at = root.to_path_buf();
        for c in below.components() {
            let parent = at.clone();
            at.push(c);
            if !at.exists() {
                delegate_controllers(&parent);
            }
            match std::fs::create_dir(&at) {
                Ok(()) => cg.made.push(at.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    cg.remove();
                    return Err(ShimError::io(format!("creating {}", at.display()), e));
                }
            }
        }
        Ok(cg)
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its `cgroup.procs`, open for writing: a process that writes "0" there moves itself
    /// (the VMM's child does, before it executes carapace-vmm).
    pub fn procs(&self) -> Result<OwnedFd> {
        let p = self.dir.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&p)
            .map(OwnedFd::from)
            .map_err(|e| ShimError::io(format!("opening {}", p.display()), e))
    }

    /// Removes what the shim made of the cgroup, deepest first (its processes gone: call
    /// after the VMM ended). A directory another pod uses meanwhile stays (it is not empty).
    pub fn remove(&self) {
        for d in self.made.iter().rev() {
            if let Err(e) = std::fs::remove_dir(d) {
                if d == &self.dir {
                    log::warn!("removing the pod's cgroup {}: {e}", d.display());
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &str) -> Result<PathBuf> {
        resolve(Path::new("/sys/fs/cgroup"), p)
    }

    #[test]
    fn cgroupfs_paths_are_below_the_root() {
        assert_eq!(
            r("/kubepods/burstable/pod1/abc").unwrap(),
            Path::new("/sys/fs/cgroup/kubepods/burstable/pod1/abc")
        );
        for bad in ["/", "/a/../../etc", "/a/./b", "/a/.", "//", "/a\0b"] {
            assert!(r(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn systemd_slices_nest_and_the_leaf_is_a_scope() {
        assert_eq!(
            r("kubepods-burstable-pod1.slice:cri-containerd:abc").unwrap(),
            Path::new(
                "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            r(":carapace:p").unwrap(),
            Path::new("/sys/fs/cgroup/system.slice/carapace-p.scope")
        );
        assert_eq!(
            r("-.slice::p").unwrap(),
            Path::new("/sys/fs/cgroup/p.scope")
        );
        for bad in [
            "a.slice:p",
            "a.slice:p:..",
            "a.slice:..:n",
            "a/b.slice:p:n",
            "a--b.slice:p:n",
            "a:p:n",
            "relative/path",
            "a.slice:p:n/x",
        ] {
            assert!(r(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn what_the_shim_made_it_removes_and_nothing_else() {
        let root = std::env::temp_dir().join(format!("carapace-cg-{}", std::process::id()));
        std::fs::create_dir_all(root.join("kubepods/pod1")).unwrap();
        std::fs::write(
            root.join("kubepods/pod1/cgroup.controllers"),
            "memory pids\n",
        )
        .unwrap();
        let made = PodCgroup::make_under(&root, "/kubepods/pod1/sb/leaf").unwrap();
        assert!(made.dir().is_dir());
        // The parent it found delegates its controllers (a plain file here: the last write).
        let control = std::fs::read_to_string(root.join("kubepods/pod1/cgroup.subtree_control"));
        assert_eq!(control.unwrap(), "+pids");
        let again = PodCgroup::make_under(&root, "/kubepods/pod1/sb/leaf").unwrap();
        again.remove();
        assert!(made.dir().is_dir(), "a cgroup the shim did not make stays");
        made.remove();
        assert!(
            !root.join("kubepods/pod1/sb").exists(),
            "made parents go too"
        );
        assert!(root.join("kubepods/pod1").is_dir(), "found ones stay");
        let e = PodCgroup::make_under(&root.join("none"), "/a").unwrap_err();
        assert!(e.to_string().contains("no cgroup hierarchy"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
