//! Owner-only Unix sockets, shared by the control socket (`api.rs`) and the vsock device's
//! host socket (`devices/vsock/muxer.rs`): binding a listener whose file is mode 0600 whatever
//! the process umask, the SO_PEERCRED check that admits only the VMM's own user (or root),
//! the accept errors that mean "out of file descriptors" and the back-off they get, and
//! rate-limited warnings so a local user cannot flood the host's logs.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Mode of every socket file the VMM binds: only its owner may connect.
pub const PRIVATE_SOCKET_MODE: u32 = 0o600;

/// How long an accept loop waits before retrying after running out of file descriptors
/// (EMFILE, ENFILE) or kernel memory: the pending connection stays in the listen backlog
/// and is accepted once descriptors are free again, and the loop does not spin meanwhile.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why a connecting peer was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer runs as another user than the VMM (and is not root).
    #[error("peer uid {peer} (pid {pid}) is neither the VMM's uid {own} nor root")]
    Refused {
        /// The peer's uid at connect time.
        peer: u32,
        /// The peer's pid at connect time.
        pid: i32,
        /// The VMM's effective uid.
        own: u32,
    },
    /// SO_PEERCRED failed.
    #[error("cannot read the peer's credentials: {0}")]
    Credentials(#[source] io::Error),
}

/// Why a private socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// unshare, umask or bind failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The socket path.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The bound file is not a socket of mode 0600 (then it was removed).
    #[error("{}: bound with mode {mode:#o}, not {PRIVATE_SOCKET_MODE:#o}", path.display())]
    Mode {
        /// The socket path.
        path: std::path::PathBuf,
        /// The mode found.
        mode: u32,
    },
}

impl From<BindError> for io::Error {
    fn from(e: BindError) -> io::Error {
        let kind = match &e {
            BindError::Io { source, .. } => source.kind(),
            BindError::Mode { .. } => io::ErrorKind::PermissionDenied,
        };
        io::Error::new(kind, e)
    }
}

/// Binds a listening Unix socket at `path` whose file has mode 0600, whatever the umask.
///
/// Why this way: the kernel gives a socket file `0777 & !umask` at bind time, and the umask is
/// process-wide (every thread shares one `fs_struct`); fuse-backend-rs sets it to 0 when the
/// fs device is created. Setting the umask around `bind` would race with other threads
/// creating files (the fs device relies on umask 0 to give guest files the modes the guest
/// asks for), and `bind` then `chmod` leaves a window where the file is 0777, std's `bind`
/// also listens, so a client could connect in it, and `chmod` by path follows whatever the
/// path names by then. Instead `bind` runs on a short-lived thread that first unshares its
/// `fs_struct` (unshare(CLONE_FS): umask, cwd and root become its own) and sets umask 0o177
/// there: the kernel creates the socket file 0600 atomically, and no other thread sees the
/// change. The mode is checked afterwards as a guard.
pub fn bind_private(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |source| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    let listener = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare(CLONE_FS) only gives this thread its own copy of the
            // filesystem attributes; it touches no memory.
            if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: umask cannot fail; after the unshare it only affects this thread.
            unsafe { libc::umask(0o177) };
            UnixListener::bind(path)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the bind thread panicked")))
    })
    .map_err(io_err)?;
    let meta = path.symlink_metadata().map_err(io_err)?;
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.file_type().is_socket() || mode != PRIVATE_SOCKET_MODE {
        let _ = std::fs::remove_file(path);
        return Err(BindError::Mode {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(listener)
}

/// Whether a peer running as `peer` may use a socket of a VMM whose effective uid is `own`:
/// the VMM's own user, or root.
pub fn uid_allowed(peer: u32, own: u32) -> bool {
    peer == own || peer == 0
}

/// Admits `stream` if its peer (SO_PEERCRED, the credentials at connect time) runs as the
/// VMM's effective uid or as root.
pub fn check_peer(stream: &UnixStream) -> Result<(), PeerError> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own, and updates
    // `len`; the fd is the live socket `stream` borrows.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(PeerError::Credentials(io::Error::last_os_error()));
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(PeerError::Credentials(io::Error::other(
            "short SO_PEERCRED answer",
        )));
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    let own = unsafe { libc::geteuid() };
    if uid_allowed(cred.uid, own) {
        Ok(())
    } else {
        Err(PeerError::Refused {
            peer: cred.uid,
            pid: cred.pid,
            own,
        })
    }
}

/// Whether an accept error means the process or system is out of descriptors or memory: the
/// caller backs off for [`ACCEPT_BACKOFF`] and retries, the connection waits in the backlog.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Counts occurrences of one kind of warning and says which to log: the first ten, then
/// the 16th, 32nd, 64th, ... so a local user or guest cannot flood the host's logs.
#[derive(Debug, Default)]
pub struct LogLimit(AtomicU64);

impl LogLimit {
    /// A counter at zero.
    pub const fn new() -> Self {
        LogLimit(AtomicU64::new(0))
    }

    /// Counts one occurrence; returns the count so far if this one should be logged.
    pub fn hit(&self) -> Option<u64> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        (n <= 10 || n.is_power_of_two()).then_some(n)
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers for tests that need another process: another uid, or a lowered rlimit.

    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// Runs `f` in a forked child and returns its exit code (`None`: it was killed after
    /// `timeout`, or died of a signal). `f` runs in a copy of a multi-threaded process with
    /// only this thread: it must not take locks other threads may have held (environment,
    /// stdio); glibc's allocator is safe to use after fork.
    pub fn in_child(timeout: Duration, f: impl FnOnce() -> i32) -> Option<i32> {
        // SAFETY: fork has no memory-safety preconditions; the child runs only `f` (see
        // above) and leaves with _exit, never returning into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: _exit ends the child at once, running no destructors of shared state.
            unsafe { libc::_exit(code) };
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status of our own child into `status`.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            }
            if Instant::now() > deadline {
                // SAFETY: kill and waitpid act on our own child only.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What a client in a child process saw (the child's exit code).
    pub const ANSWERED: i32 = 1;
    /// The server closed the connection without a byte.
    pub const CLOSED: i32 = 0;
    /// connect(2) failed.
    pub const CONNECT_FAILED: i32 = 2;
    /// Nothing came, not even the close, within the wait.
    pub const SILENCE: i32 = 3;

    /// Connects to `path` from a child process running as `uid`, sends `request`, and
    /// reports whether the server answered ([`ANSWERED`]), closed ([`CLOSED`]), refused the
    /// connect ([`CONNECT_FAILED`]) or said nothing for `wait` ([`SILENCE`]). The child makes
    /// raw system calls only.
    pub fn client_as(uid: u32, path: &Path, request: &[u8], wait: Duration) -> Option<i32> {
        // SAFETY: sockaddr_un is plain data.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        assert!(bytes.len() < addr.sun_path.len());
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let wait_ms = wait.as_millis() as i32;
        in_child(wait + Duration::from_secs(5), || {
            // SAFETY: raw system calls on memory this closure owns or borrows (`addr`,
            // `request`, `buf`); nothing here takes a lock.
            unsafe {
                if libc::setresgid(uid, uid, uid) != 0 || libc::setresuid(uid, uid, uid) != 0 {
                    return 10;
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if fd < 0 {
                    return 11;
                }
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                    return CONNECT_FAILED;
                }
                // A refused client may be closed before or while it writes.
                let _ = libc::send(
                    fd,
                    request.as_ptr().cast(),
                    request.len(),
                    libc::MSG_NOSIGNAL,
                );
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                if libc::poll(&mut pfd, 1, wait_ms) == 0 {
                    return SILENCE;
                }
                let mut buf = [0u8; 64];
                match libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) {
                    0 => CLOSED,
                    n if n > 0 => ANSWERED,
                    // Closed with our request unread: ECONNRESET.
                    _ => CLOSED,
                }
            }
        })
    }

    /// connect(2) on an existing socket (UnixStream::connect would make a new descriptor).
    pub fn connect_fd(s: &std::os::unix::net::UnixStream, path: &Path) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: sockaddr_un is plain data.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, b) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *d = *b as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: connect reads `len` bytes of `addr`, which we own.
        let r = unsafe {
            libc::connect(
                s.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Runs `make` in a child whose umask is 0 (as fuse-backend-rs leaves it) and checks the
    /// socket it binds at `path` while what it made is alive. The child's exit code: 0 the
    /// socket is 0600 and the umask still 0; 1 another mode; 2 `make` failed; 3 no socket;
    /// 4 the umask changed; `None` the child did not finish.
    pub fn bind_mode_under_umask_0<T, E>(
        path: &std::path::Path,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Option<i32> {
        use std::os::unix::fs::PermissionsExt;
        in_child(Duration::from_secs(10), || {
            // SAFETY: umask cannot fail.
            unsafe { libc::umask(0) };
            let Ok(_made) = make() else {
                return 2;
            };
            let Ok(meta) = path.symlink_metadata() else {
                return 3;
            };
            // SAFETY: umask cannot fail.
            if unsafe { libc::umask(0) } != 0 {
                return 4;
            }
            i32::from(meta.permissions().mode() & 0o777 != 0o600)
        })
    }

    /// A temporary directory every user may traverse, removed on drop.
    pub struct OpenTempDir(pub crate::scratch::Scratch);

    impl OpenTempDir {
        /// A new directory in the system's temporary directory.
        pub fn new(tag: &str) -> Self {
            use std::os::unix::fs::PermissionsExt;
            let dir = crate::scratch::Scratch::dir(tag).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            OpenTempDir(dir)
        }
    }

    /// Sets this process's soft RLIMIT_NOFILE (children only).
    pub fn set_soft_nofile(n: u64) {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the rlimit we own.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl), 0);
            rl.rlim_cur = n as libc::rlim_t;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &rl), 0);
        }
    }

    /// A process starved of descriptors (children only): a client socket is made first, then
    /// the soft RLIMIT_NOFILE is lowered to 64 and every free slot filled.
    pub struct Starved {
        /// The client socket, made while descriptors remained (unconnected).
        pub client: std::os::unix::net::UnixStream,
        fillers: Vec<std::os::fd::OwnedFd>,
        soft: u64,
    }

    impl Starved {
        /// Starves the process; `None` if the client socket cannot be made.
        pub fn new() -> Option<Starved> {
            use std::os::fd::FromRawFd;
            let mut rl = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the rlimit we own.
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
            // SAFETY: socket(2) makes a new descriptor, owned below.
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            if fd < 0 {
                return None;
            }
            // SAFETY: `fd` is a new socket nothing else owns.
            let client = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
            set_soft_nofile(64);
            Some(Starved {
                client,
                fillers: exhaust_fds(),
                soft: rl.rlim_cur,
            })
        }

        /// Restores the soft limit and frees the filled slots; returns the client.
        pub fn relieve(self) -> std::os::unix::net::UnixStream {
            set_soft_nofile(self.soft);
            drop(self.fillers);
            self.client
        }
    }

    /// Opens descriptors until the process has none left (EMFILE); returns them.
    pub fn exhaust_fds() -> Vec<std::os::fd::OwnedFd> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let emfile = |e: &std::io::Error| e.raw_os_error() == Some(libc::EMFILE);
        let base = match std::fs::File::open("/dev/null") {
            Ok(f) => OwnedFd::from(f),
            Err(e) if emfile(&e) => return Vec::new(),
            Err(e) => panic!("/dev/null: {e}"),
        };
        let raw = base.as_raw_fd();
        let mut fds = vec![base];
        loop {
            // SAFETY: dup of a descriptor we own; the result is owned below.
            let fd = unsafe { libc::dup(raw) };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                assert!(emfile(&e), "dup: {e}");
                return fds;
            }
            // SAFETY: `fd` was just returned by dup and is owned by nothing else.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn private_sockets_are_0600_even_with_umask_0() {
        let dir = OpenTempDir::new("uds");
        let path = dir.0.join("s.sock");
        // In a child: the umask is process-wide, and other tests create files meanwhile.
        let code = bind_mode_under_umask_0(&path, || bind_private(&path));
        assert_eq!(code, Some(0), "not mode 0600 (or the umask changed)");
        // Without the private umask, a socket bound under umask 0 is world-writable.
        let wide = dir.0.join("wide.sock");
        let code = in_child(Duration::from_secs(10), || {
            // SAFETY: umask cannot fail.
            unsafe { libc::umask(0) };
            let _l = UnixListener::bind(&wide);
            wide.symlink_metadata()
                .map_or(1, |m| (m.permissions().mode() & 0o077) as i32)
        });
        assert_eq!(code, Some(0o77), "the attack this guards against");
    }

    #[test]
    fn binding_an_existing_path_fails() {
        let dir = OpenTempDir::new("uds");
        let path = dir.0.join("s.sock");
        std::fs::write(&path, b"").unwrap();
        let e = bind_private(&path).unwrap_err();
        assert!(
            matches!(&e, BindError::Io { source, .. } if source.kind() == io::ErrorKind::AddrInUse),
            "{e}"
        );
        assert!(path.exists());
    }

    #[test]
    fn only_the_own_uid_and_root_are_allowed() {
        assert!(uid_allowed(1000, 1000));
        assert!(uid_allowed(0, 1000));
        assert!(uid_allowed(0, 0));
        assert!(!uid_allowed(65534, 1000));
        assert!(!uid_allowed(65534, 0));
        assert!(!uid_allowed(1001, 1000));
    }

    #[test]
    fn peer_credentials_of_a_socket_pair_are_ours() {
        let (a, _b) = UnixStream::pair().unwrap();
        check_peer(&a).unwrap();
    }

    #[test]
    fn log_limit_logs_the_first_ten_then_powers_of_two() {
        let l = LogLimit::new();
        let logged: Vec<u64> = (0..100).filter_map(|_| l.hit()).collect();
        assert_eq!(logged, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64]);
    }

    #[test]
    fn exhaustion_errors_are_recognised() {
        for e in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(e)));
        }
        for e in [libc::ECONNABORTED, libc::EINTR, libc::EAGAIN] {
            assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(e)));
        }
    }
}
