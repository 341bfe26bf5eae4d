//! Host file system work under a pod's state directory that no guest-planted symlink can
//! redirect: the pod's private mount tree and its read-only export, directories and files
//! made by `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` from a
//! directory descriptor, mounts attached by descriptor (`open_tree` / `fsmount` +
//! `move_mount`), attributes applied recursively before a tree is attached
//! (`mount_setattr`), and unmounts that never follow a symlink (`UMOUNT_NOFOLLOW`).
//!
//! The layout (see [`crate::sandbox`]): `/run/carapace/<sid>/` is 0700; under it `mnt/` is a
//! tmpfs (nosuid, nodev, noexec, shared propagation) where the shim mounts every rootfs and
//! bind, which the guest never sees; `shared/` is a read-only, nosuid, nodev, noexec bind of
//! `mnt/` made a slave of it, so each mount made later under `mnt/` appears under `shared/`
//! keeping its own flags. The VMM exports `shared/`: the guest writes inside a container's
//! rootfs and its rw volumes, and can never create, rename or replace anything above them.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags, CWD};
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, open_tree, FsMountFlags,
    FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};

use crate::error::{Result, ShimError};

// mount_setattr(2) (linux/mount.h); rustix does not wrap this call.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// What a bind gets on the host, applied to the whole tree before it is attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindFlags {
    /// Read-only (recursively: submounts of the source too).
    pub read_only: bool,
    /// No execution.
    pub no_exec: bool,
}

fn io(what: impl Into<String>, e: rustix::io::Errno) -> ShimError {
    ShimError::io(what, std::io::Error::from(e))
}

/// The resolution every lookup under a pod directory uses: beneath the starting directory,
/// no symlinks (magic links included), no mount crossings.
fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

/// The normal components of `rel`; anything else (`..`, `/`, `.`) is refused.
fn components(rel: &Path) -> Result<Vec<&std::ffi::OsStr>> {
    rel.components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(ShimError::Internal(format!(
                "{} is not a plain relative path",
                rel.display()
            ))),
        })
        .collect()
}

/// An open directory that host paths are resolved beneath.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens the directory at `path` (an absolute path the shim built from checked ids; its
    /// last component must not be a symlink).
    pub fn open(path: &Path) -> Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(format!("opening {}", path.display()), e))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path this directory was opened at (for messages and mountinfo).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directories of `rel` beneath this one (existing ones are kept) and opens
    /// the last; never follows a symlink or leaves this mount.
    pub fn mkdir_all(&self, rel: &Path, mode: u32) -> Result<Dir> {
        let mut fd = self
            .fd
            .try_clone()
            .map_err(|e| ShimError::io("duplicating a directory descriptor", e))?;
        let mut path = self.path.clone();
        for name in components(rel)? {
            path.push(name);
            match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(mode)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(io(format!("creating {}", path.display()), e)),
            }
            fd = rustix::fs::openat2(
                &fd,
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                beneath(),
            )
            .map_err(|e| {
                io(
                    format!("opening {} (without following links)", path.display()),
                    e,
                )
            })?;
        }
        Ok(Dir { fd, path })
    }

    /// Creates (or opens, never truncating) the regular file `rel` beneath this directory, its
    /// parents made as by [`Dir::mkdir_all`]; returns an `O_PATH` descriptor of it.
    pub fn touch(&self, rel: &Path) -> Result<OwnedFd> {
        // A file directly beneath this directory has the empty path as its parent.
        let parent = self.mkdir_all(rel.parent().unwrap_or(Path::new("")), 0o755)?;
        let name = rel
            .file_name()
            .ok_or_else(|| ShimError::Internal(format!("{} names no file", rel.display())))?;
        let path = self.path.join(rel);
        let created = rustix::fs::openat2(
            &parent.fd,
            name,
            OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
            beneath(),
        )
        .map_err(|e| io(format!("creating {}", path.display()), e))?;
        drop(created);
        rustix::fs::openat2(
            &parent.fd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            beneath(),
        )
        .map_err(|e| io(format!("opening {}", path.display()), e))
    }

    /// The `/proc/self/fd/N` path of this directory: for interfaces that take a path (it
    /// names exactly this directory, whatever happens to its name).
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// mount_setattr(2) on the mount at `fd` (`AT_EMPTY_PATH`), recursively if `recursive`.
fn mount_setattr(fd: &impl AsFd, recursive: bool, attr: MountAttr, what: &str) -> Result<()> {
    let empty = CString::default();
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: the descriptor is open for the call, the path is a valid NUL-terminated string,
    // and `attr` is a live `struct mount_attr` whose size is passed with it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_fd().as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(ShimError::io(
            format!("setting mount attributes ({what})"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Attaches the detached mount `tree` on the directory or file `target`.
fn attach(tree: &OwnedFd, target: &impl AsFd, what: &str) -> Result<()> {
    move_mount(
        tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| io(format!("attaching {what}"), e))
}

/// Makes the pod's private tree `mnt` (a tmpfs, shared propagation) and its export `shared`
/// (a read-only slave bind of it), both directories of `pod` that exist and are empty.
pub fn make_share(pod: &Dir, mnt: &str, shared: &str) -> Result<()> {
    let mnt_dir = pod.mkdir_all(Path::new(mnt), 0o700)?;
    let shared_dir = pod.mkdir_all(Path::new(shared), 0o700)?;
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| io("fsopen tmpfs", e))?;
    for (key, value) in [("mode", "755"), ("size", "1m"), ("nr_inodes", "65536")] {
        fsconfig_set_string(&fs, key, value).map_err(|e| io(format!("tmpfs {key}"), e))?;
    }
    fsconfig_create(&fs).map_err(|e| io("creating the pod's tmpfs", e))?;
    let tree = fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )
    .map_err(|e| io("fsmount of the pod's tmpfs", e))?;
    attach(&tree, &mnt_dir, &mnt_dir.path().display().to_string())?;
    let private = Dir::open(mnt_dir.path())?;
    mount_setattr(
        &private,
        false,
        MountAttr {
            attr_set: 0,
            attr_clr: 0,
            propagation: libc::MS_SHARED,
            userns_fd: 0,
        },
        "shared propagation",
    )?;
    let export = open_tree(
        &private,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| io("cloning the pod's tree", e))?;
    mount_setattr(
        &export,
        false,
        MountAttr {
            attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        },
        "read-only export",
    )?;
    attach(
        &export,
        &shared_dir,
        &shared_dir.path().display().to_string(),
    )?;
    let exported = Dir::open(shared_dir.path())?;
    mount_setattr(
        &exported,
        false,
        MountAttr {
            attr_set: 0,
            attr_clr: 0,
            propagation: libc::MS_SLAVE,
            userns_fd: 0,
        },
        "slave propagation",
    )
}

/// Bind-mounts the host path `source` (a directory or a file, a path the containerd client
/// chose) on `rel` beneath `root` (created, never followed), recursively, with `flags` and
/// always nosuid and nodev applied to the whole tree before it appears.
pub fn bind(root: &Dir, source: &Path, rel: &Path, flags: BindFlags) -> Result<()> {
    let tree = open_tree(
        CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| io(format!("cloning the mount tree of {}", source.display()), e))?;
    let mut attr_set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if flags.read_only {
        attr_set |= MOUNT_ATTR_RDONLY;
    }
    if flags.no_exec {
        attr_set |= MOUNT_ATTR_NOEXEC;
    }
    mount_setattr(
        &tree,
        true,
        MountAttr {
            attr_set,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        },
        &source.display().to_string(),
    )?;
    let what = format!(
        "{} on {}",
        source.display(),
        root.path().join(rel).display()
    );
    // The type of what was cloned, read from the clone (the source is not resolved twice).
    let st =
        rustix::fs::fstat(&tree).map_err(|e| io(format!("reading {}", source.display()), e))?;
    let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir();
    if is_dir {
        attach(&tree, &root.mkdir_all(rel, 0o755)?, &what)
    } else {
        attach(&tree, &root.touch(rel)?, &what)
    }
}

/// Unmounts `path` lazily without following a symlink in its last component.
pub fn unmount(path: &Path) -> std::result::Result<(), rustix::io::Errno> {
    rustix::mount::unmount(path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
}

/// Options of the mount at `path` as `statvfs` reports them: (read-only, nosuid, nodev).
#[cfg(test)]
pub fn mount_flags(path: &Path) -> std::io::Result<(bool, bool, bool)> {
    let s = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    let f = s.f_flag;
    Ok((
        f.contains(rustix::fs::StatVfsMountFlags::RDONLY),
        f.contains(rustix::fs::StatVfsMountFlags::NOSUID),
        f.contains(rustix::fs::StatVfsMountFlags::NODEV),
    ))
}

#[cfg(test)]
mod tests;
