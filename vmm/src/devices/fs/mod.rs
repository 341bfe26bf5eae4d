//! virtio-fs: one host directory shared with the guest under a mount tag, served inside the
//! VMM by fuse-backend-rs's passthrough file system (no separate daemon). Malformed requests
//! are answered with errors and counted before the FUSE server sees them (request.rs); the
//! share's rules are enforced between the server and the file system, on the arguments the
//! server parsed, so a guest rewriting a request while it is served cannot slip past them
//! (guard.rs).
//!
//! The guest mounts it with `mount -t virtiofs <tag> <dir>`. Queue 0 is the high-priority
//! queue (FORGET, INTERRUPT), queue 1 the one request queue; both are served the same way, on
//! the event loop thread as the guest kicks them, like virtio-blk.
//!
//! What keeps the guest inside the shared directory: every inode is an `O_PATH` descriptor
//! opened with `openat(parent, name, O_NOFOLLOW)` from the share's root, names with `/` are
//! refused, `..` looked up at the root is the root itself, symlinks are never followed on the
//! host (the guest kernel resolves them in its own namespace) and regular I/O reopens only
//! regular files and directories through `/proc/self/fd`. The passthrough options that would
//! widen this stay off: file handles (`open_by_handle_at` can reach any file on the host file
//! system), writeback caching, no-open and killpriv_v2. Only `user.` xattrs can be set or
//! removed: `trusted.` and `security.` names act on the host with the VMM's privileges (a
//! `security.capability` set by the guest would be honoured by the host). Block and character
//! device nodes are refused unless the share allows them (overlayfs's whiteout, 0:0, is always
//! allowed); setuid files are left to the host's `nosuid` mount. xattr buffers are clamped to
//! 64 KiB, and the inodes and open handles the guest holds (one host descriptor each) are
//! bounded from RLIMIT_NOFILE.
//!
//! DAX (mapping host files into a guest memory window) is not implemented; the configuration
//! refuses `dax: true`.

mod device;
mod guard;
mod memory;
mod request;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_guard;

pub use device::{Fs, ShareOptions};
pub use guard::{Limits, Policy, FD_RESERVE, MIN_HANDLES, MIN_INODES, XATTR_SIZE_MAX};

/// Size of each of the device's queues. The Linux driver caps a request's pages at the queue
/// size (no indirect descriptors are offered), so 1024 lets it send 1 MiB reads and writes.
pub const QUEUE_SIZE: u16 = 1024;

/// Request queues besides the high-priority one (virtio_fs_config.num_request_queues).
pub const NUM_REQUEST_QUEUES: u32 = 1;

/// Longest mount tag (virtio_fs_config.tag, not NUL-terminated when full).
pub const TAG_LEN: usize = 36;

/// Most descriptors one request may use.
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// How the guest may cache what it reads from the share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// No data cache (direct I/O), attributes and names not cached: host changes are seen at
    /// once. Shared writable mmap is then refused by the guest kernel (ENODEV).
    #[default]
    Never,
    /// Close-to-open consistency; attributes and names cached for a second.
    Auto,
    /// The guest caches freely (only for shares the guest has to itself).
    Always,
}

/// Why the fs device could not be created or activated.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or longer than the configuration space holds.
    #[error("the tag `{0}` must be 1 to 36 bytes")]
    Tag(String),
    /// The shared directory cannot be opened.
    #[error("cannot share {path}")]
    Share {
        /// The directory.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Guest memory cannot be described for fuse-backend-rs.
    #[error("cannot describe guest memory for the FUSE server: {0}")]
    Memory(String),
}
