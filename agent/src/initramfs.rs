//! Leaving the initramfs: containers need pivot_root(2), which the kernel refuses while the
//! current root is the initial rootfs (it has no parent mount: EINVAL). PID 1 bind-mounts the
//! rootfs onto a directory of itself, moves that mount onto `/` and chroots into it, so the
//! root becomes an ordinary mount with a parent, with nothing copied (the trick switch_root(8)
//! users apply to initramfs roots). The alternative, libcontainer's `no_pivot` (MS_MOVE +
//! chroot inside each container), is weaker isolation, so we do not use it.

use anyhow::Context;
use nix::mount::{mount, MsFlags};

/// Where the rootfs is bind-mounted before the mount moves onto `/`.
const NEW_ROOT: &str = "/.carapace-root";
/// statfs(2) f_type of ramfs (linux/magic.h; neither libc nor nix name it).
const RAMFS_MAGIC: libc::__fsword_t = 0x8584_58f6;

/// Whether `/` is the kernel's initial rootfs (ramfs, or tmpfs with CONFIG_TMPFS); /proc is
/// not mounted yet, so the filesystem type is the test.
pub fn on_initial_rootfs() -> bool {
    match nix::sys::statfs::statfs("/") {
        Ok(s) => {
            let t = s.filesystem_type();
            t == nix::sys::statfs::FsType(RAMFS_MAGIC) || t == nix::sys::statfs::TMPFS_MAGIC
        }
        Err(_) => false,
    }
}

/// Makes a bind mount of the initial rootfs the root of this process (chroot into it; the
/// process has no other reference to the old root). Its children, containers included, start
/// from the new root.
pub fn leave() -> anyhow::Result<()> {
    std::fs::create_dir_all(NEW_ROOT)?;
    mount(
        Some("/"),
        NEW_ROOT,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting / on {NEW_ROOT}"))?;
    std::env::set_current_dir(NEW_ROOT)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the bind mount onto /")?;
    nix::unistd::chroot(".").context("chroot into the new root")?;
    std::env::set_current_dir("/")?;
    // The mount point the bind came from is an empty directory of the same filesystem.
    let _ = std::fs::remove_dir(NEW_ROOT);
    Ok(())
}
