//! Leaving the initramfs: PID 1 moves the guest's root from the kernel's initial rootfs to a
//! tmpfs and re-executes itself there, because containers need pivot_root(2), which the kernel
//! refuses while the current root is the initial rootfs (EINVAL). This is what switch_root(8)
//! and LinuxKit's init do; the alternative, libcontainer's `no_pivot` (MS_MOVE + chroot), is
//! weaker isolation (a chroot can be escaped by a process with CAP_SYS_CHROOT), so we do not
//! use it.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use nix::mount::{mount, MsFlags};

/// Set in the environment of the re-executed agent, so it does not move again; its value is
/// the CLOCK_MONOTONIC time (ns) the first agent started at, for the start-up figure.
const MOVED: &str = "CARAPACE_ROOT_MOVED";
/// Where the new root is assembled before it replaces the old one.
const NEW_ROOT: &str = "/.carapace-root";
/// statfs(2) f_type of ramfs (linux/magic.h; neither libc nor nix name it).
const RAMFS_MAGIC: libc::__fsword_t = 0x8584_58f6;

/// Whether `/` is the kernel's initial rootfs (ramfs, or tmpfs with CONFIG_TMPFS) that this
/// process has not yet left.
pub fn on_initial_rootfs() -> bool {
    if std::env::var_os(MOVED).is_some() {
        return false;
    }
    // /proc is not mounted yet: the filesystem type tells (rootfs is ramfs or tmpfs), and the
    // marker in the environment tells a root this agent already moved.
    match nix::sys::statfs::statfs("/") {
        Ok(s) => {
            let t = s.filesystem_type();
            t == nix::sys::statfs::FsType(RAMFS_MAGIC) || t == nix::sys::statfs::TMPFS_MAGIC
        }
        Err(_) => false,
    }
}

/// Copies the initramfs into a fresh tmpfs, frees the originals, makes the tmpfs `/` and
/// re-executes this program as /init. Returns only on failure.
pub fn leave(started_ns: u64) -> anyhow::Result<()> {
    let root = Path::new("/");
    let root_dev = fs::metadata(root)?.dev();
    fs::DirBuilder::new().mode(0o755).create(NEW_ROOT).ok();
    mount(
        Some("rootfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .with_context(|| format!("mounting a tmpfs on {NEW_ROOT}"))?;
    let new_root = Path::new(NEW_ROOT);
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let path = entry.path();
        if path == new_root {
            continue;
        }
        copy_tree(&path, &new_root.join(entry.file_name()), root_dev)?;
    }
    // Free the initramfs's pages: its files now live in the tmpfs.
    for entry in fs::read_dir(root)? {
        let path = entry?.path();
        if path != new_root {
            remove_tree(&path, root_dev);
        }
    }
    // Mounts made on the old root (a kernel-mounted /dev) move with it.
    for dir in ["/dev", "/proc", "/sys"] {
        if fs::metadata(dir).is_ok_and(|m| m.dev() != root_dev) {
            let target = new_root.join(&dir[1..]);
            fs::create_dir_all(&target)?;
            mount(
                Some(dir),
                &target,
                None::<&str>,
                MsFlags::MS_MOVE,
                None::<&str>,
            )
            .with_context(|| format!("moving the mount {dir}"))?;
        }
    }
    std::env::set_current_dir(new_root)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the tmpfs onto /")?;
    nix::unistd::chroot(".").context("chroot into the tmpfs")?;
    std::env::set_current_dir("/")?;
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<Result<_, _>>()?;
    env.push(CString::new(format!("{MOVED}={started_ns}"))?);
    let init = CString::new("/init")?;
    let err = nix::unistd::execve(&init, &args, &env).unwrap_err();
    Err(anyhow::anyhow!(
        "re-executing /init in the tmpfs root: {err}"
    ))
}

/// Forgets the marker, so children do not inherit it; returns when the first agent started
/// (CLOCK_MONOTONIC ns) if this one was re-executed by [`leave`].
pub fn forget_marker() -> Option<u64> {
    let started = std::env::var(MOVED).ok()?.parse().ok();
    std::env::remove_var(MOVED);
    started
}

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Copies `from` to `to` (directories recursively, files, symlinks, device nodes), keeping
/// modes and owners, without leaving the filesystem `dev` (mount points are skipped).
fn copy_tree(from: &Path, to: &Path, dev: u64) -> anyhow::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        if meta.dev() != dev {
            // A mount point: recreate the directory only.
            fs::DirBuilder::new()
                .mode(meta.mode() & 0o7777)
                .create(to)?;
            return Ok(());
        }
        fs::DirBuilder::new()
            .mode(meta.mode() & 0o7777)
            .create(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()), dev)?;
        }
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else if ft.is_file() {
        fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    } else {
        // Device nodes, fifos and sockets: recreate with mknod.
        let path = CString::new(to.as_os_str().as_bytes())?;
        // SAFETY: mknod reads the NUL-terminated path; mode and rdev come from the original.
        if unsafe { libc::mknod(path.as_ptr(), meta.mode(), meta.rdev()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mknod {}", to.display()));
        }
    }
    let _ = std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()));
    Ok(())
}

/// Removes `path` recursively without crossing into other filesystems; errors are ignored (a
/// file left behind costs memory, nothing else).
fn remove_tree(path: &Path, dev: u64) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.dev() != dev {
        return;
    }
    if meta.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                remove_tree(&e.path(), dev);
            }
        }
        let _ = fs::remove_dir(path);
    } else {
        let _ = fs::remove_file(path);
    }
}
