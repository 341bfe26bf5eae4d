//! The share's rules, enforced on the arguments fuse-backend-rs's server has already parsed
//! (and copied out of guest memory), so a guest that rewrites a request while it is served
//! cannot get past them: read-only shares, the `user.`-only xattr rule, no device nodes unless
//! allowed, xattr buffer sizes, and bounds on the host descriptors the guest can make the VMM
//! hold (one per looked-up inode, one per open handle).
//!
//! [`Guard`] wraps a [`FileSystem`] and implements it (filesystem.rs) by delegating every
//! method, checking first (and accounting after) where the share's rules say so; this file
//! holds the rules, the bounds and the accounting.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem, ROOT_ID};

use crate::devices::virtio::log_nth;

mod filesystem;

/// Largest xattr value or name list Linux stores (XATTR_SIZE_MAX, XATTR_LIST_MAX): a guest's
/// bigger buffer size is clamped to it, so it cannot make the VMM allocate up to 4 GiB.
pub const XATTR_SIZE_MAX: u32 = 65536;

/// The only xattr namespace the guest may set or remove: `trusted.` and `security.` names act
/// on the host with the VMM's privileges (a `security.capability` set by the guest would be
/// honoured by the host), `system.` ones are ACLs the host enforces.
const WRITABLE_XATTR_PREFIX: &[u8] = b"user.";

/// Descriptors the VMM keeps for everything but the shares (vsock, net, block, eventfds, the
/// control API, logs).
pub const FD_RESERVE: u64 = 1024;

/// The fewest inodes one share may hold, whatever RLIMIT_NOFILE says.
pub const MIN_INODES: usize = 256;

/// The fewest open handles one share may hold, whatever RLIMIT_NOFILE says.
pub const MIN_HANDLES: usize = 128;

/// FUSE_SETUPMAPPING_FLAG_WRITE: a DAX mapping the guest may write through.
const SETUPMAPPING_WRITE: u64 = 1;

/// What the share allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Refuse every change with EROFS.
    pub read_only: bool,
    /// Let the guest create block and character device nodes (refused with EPERM otherwise,
    /// except overlayfs's whiteout, a character device 0:0).
    pub allow_devices: bool,
}

/// How many host descriptors the guest can make one share hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Inodes the guest holds a lookup count on (each an `O_PATH` descriptor). The root is
    /// not counted.
    pub inodes: usize,
    /// Open file and directory handles (each a descriptor).
    pub handles: usize,
}

impl Limits {
    /// The bounds for a soft RLIMIT_NOFILE of `nofile`: [`FD_RESERVE`] descriptors are left for
    /// the rest of the VMM, two thirds of the others go to inodes and one third to handles,
    /// never fewer than [`MIN_INODES`] and [`MIN_HANDLES`]. 131072 gives 86698 and 43349.
    pub fn for_nofile(nofile: u64) -> Limits {
        // RLIM_INFINITY and other huge values: more than any table needs.
        let spare = nofile.min(1 << 24).saturating_sub(FD_RESERVE);
        let part = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Limits {
            inodes: part(spare * 2 / 3).max(MIN_INODES),
            handles: part(spare / 3).max(MIN_HANDLES),
        }
    }

    /// The bounds for the process's soft RLIMIT_NOFILE as it is now (the VMM raises it before
    /// it creates devices).
    pub fn from_rlimit() -> Limits {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given, which lives on this stack.
        let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            lim.rlim_cur
        } else {
            1024
        };
        Limits::for_nofile(nofile)
    }
}

/// The inodes and handles the guest holds, as the kernel's lookup counts say.
#[derive(Debug, Default)]
struct Live {
    /// Lookup count per inode (the root excluded).
    inodes: HashMap<u64, u64>,
    /// Open handles.
    handles: HashSet<u64>,
}

/// A file system that only lets through what the share's [`Policy`] and [`Limits`] allow.
pub struct Guard<FS> {
    inner: FS,
    policy: Policy,
    limits: Limits,
    live: Mutex<Live>,
    /// Requests refused so far, to rate-limit their logs.
    denials: AtomicU64,
}

impl<FS> std::fmt::Debug for Guard<FS> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .finish()
    }
}

fn errno<T>(e: i32) -> io::Result<T> {
    Err(io::Error::from_raw_os_error(e))
}

impl<FS: FileSystem> Guard<FS> {
    /// Wraps `inner`.
    pub fn new(inner: FS, policy: Policy, limits: Limits) -> Guard<FS> {
        Guard {
            inner,
            policy,
            limits,
            live: Mutex::new(Live::default()),
            denials: AtomicU64::new(0),
        }
    }

    /// The bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Inodes (root excluded) and handles the guest holds now.
    pub fn live(&self) -> (usize, usize) {
        let live = self.lock();
        (live.inodes.len(), live.handles.len())
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        // The state is counts only: one left half-updated by a panic is still usable.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts and logs (rate-limited) a refusal; returns `e` as an error.
    fn deny<T>(&self, what: &str, e: i32) -> io::Result<T> {
        let n = self.denials.fetch_add(1, Ordering::Relaxed) + 1;
        if log_nth(n) {
            log::info!("fs: refused {what} with errno {e} ({n} so far)");
        }
        errno(e)
    }

    /// EROFS on a read-only share.
    fn writable(&self, what: &str) -> io::Result<()> {
        if self.policy.read_only {
            return self.deny(what, libc::EROFS);
        }
        Ok(())
    }

    /// EPERM for xattr names outside `user.`.
    fn xattr_name(&self, what: &str, name: &CStr) -> io::Result<()> {
        if name.to_bytes().starts_with(WRITABLE_XATTR_PREFIX) {
            return Ok(());
        }
        self.deny(what, libc::EPERM)
    }

    /// ENFILE before an operation that always makes a new inode, when the table is full.
    fn room_for_inode(&self, what: &str) -> io::Result<()> {
        if self.lock().inodes.len() >= self.limits.inodes {
            return self.deny(what, libc::ENFILE);
        }
        Ok(())
    }

    /// Takes one lookup count on `entry`'s inode for the guest, or, when that would be one
    /// inode more than the bound, gives the count back to the inner file system and answers
    /// ENFILE.
    fn hold(&self, ctx: &Context, what: &str, entry: Entry) -> io::Result<Entry> {
        if entry.inode == 0 || entry.inode == ROOT_ID {
            // A negative entry holds nothing; the root's descriptor is held anyway.
            return Ok(entry);
        }
        {
            let mut live = self.lock();
            let full = live.inodes.len() >= self.limits.inodes;
            match live.inodes.get_mut(&entry.inode) {
                Some(n) => {
                    *n = n.saturating_add(1);
                    return Ok(entry);
                }
                None if !full => {
                    live.inodes.insert(entry.inode, 1);
                    return Ok(entry);
                }
                None => {}
            }
        }
        self.inner.forget(ctx, entry.inode.into(), 1);
        self.deny(what, libc::ENFILE)
    }

    /// Gives back `count` lookups of `inode`.
    fn drop_lookups(live: &mut Live, inode: u64, count: u64) {
        if let Some(n) = live.inodes.get_mut(&inode) {
            *n = n.saturating_sub(count);
            if *n == 0 {
                live.inodes.remove(&inode);
            }
        }
    }

    /// Records a new open handle, or releases it back to the inner file system and answers
    /// EMFILE when the bound is reached.
    fn hold_handle(
        &self,
        ctx: &Context,
        what: &str,
        inode: u64,
        handle: Option<FS::Handle>,
        dir: bool,
    ) -> io::Result<Option<FS::Handle>> {
        let Some(h) = handle else {
            return Ok(None);
        };
        let h: u64 = h.into();
        {
            let mut live = self.lock();
            if live.handles.len() < self.limits.handles || live.handles.contains(&h) {
                live.handles.insert(h);
                return Ok(Some(h.into()));
            }
        }
        let res = if dir {
            self.inner.releasedir(ctx, inode.into(), 0, h.into())
        } else {
            self.inner
                .release(ctx, inode.into(), 0, h.into(), false, false, None)
        };
        if let Err(e) = res {
            log::debug!("fs: cannot release handle {h} past the bound: {e}");
        }
        self.deny(what, libc::EMFILE)
    }

    /// A handle released by the inner file system is one less.
    fn released(&self, handle: u64, res: io::Result<()>) -> io::Result<()> {
        if res.is_ok() {
            self.lock().handles.remove(&handle);
        }
        res
    }
}
