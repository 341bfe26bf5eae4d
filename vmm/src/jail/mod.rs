//! The jail carapace-vmm puts itself in, as Firecracker's jailer puts Firecracker, but done
//! in-process and in two steps, both while the process has one thread (namespaces and
//! capabilities are per thread; the threads started later inherit them):
//!
//! 1. [`Jail::enter`], first thing in `main`: new mount, IPC, UTS and network namespaces
//!    (the VMM needs no network: taps come as descriptors, vsock streams go to Unix sockets
//!    by path, so its network namespace is a new, empty one rather than the pod's); every
//!    mount a slave of the host's (nothing the VMM mounts reaches the host, while mounts the
//!    shim makes later in a share, such as a new container's rootfs, still reach the VMM);
//!    then `pivot_root` into a private tmpfs holding only what the VM needs, each at its host
//!    path: the kernel, initramfs and disk images and /dev/kvm bound read-only where they can
//!    be, a /proc, the directories of the VMM's sockets and console, and each virtio-fs share
//!    with the mounts below it; resource limits.
//! 2. [`Jail::seal`], once the machine is built (every file, device and socket open): what
//!    was needed only to open (kernel, initramfs, disks, /dev/kvm, /proc but its
//!    `/proc/self/fd` and `mountinfo`) is unmounted and removed, the root made read-only, the unprivileged user taken
//!    when there is no share, the capability sets cut to what the virtio-fs passthrough needs
//!    to act for the guest's users, and no_new_privs set.
//!
//!
//! Before both, [`enter_pid_namespace`]: a process cannot move itself into a new PID
//! namespace, only its children, so the VMM forks. The child, PID 1 of a namespace of its
//! own (it sees no other process, and no process of the host can be named from it), goes on
//! to be the VMM; the parent stays outside as its supervisor, as Firecracker's jailer does
//! with `--new-pid-ns` but without exec: it drops every capability and descriptor, puts
//! itself under a seccomp filter of a few calls ([`crate::seccomp::supervisor`]), passes
//! SIGTERM, SIGINT and SIGHUP on to the VMM, and ends as the VMM ended (its exit status, or
//! the same signal), so the shim that started it sees one process, as without the jail. The
//! VMM dies with it (PR_SET_PDEATHSIG), so killing the supervisor kills the VM.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root, setresgid, setresuid, Gid, Uid};

use crate::config::{JailConfig, Serial, VmConfig};

/// The capabilities the VMM keeps when it serves virtio-fs shares, and why: the passthrough
/// takes on each guest request's user and group (SETUID, SETGID), creates files for them and
/// gives them their owner (CHOWN), reaches files whatever their mode, as the guest's root
/// may (DAC_OVERRIDE, DAC_READ_SEARCH), changes times and modes of files it does not own
/// (FOWNER), keeps set-group-ID bits on write (FSETID), and makes overlayfs whiteouts and
/// FIFOs (MKNOD). Nothing else: no SYS_ADMIN (mounts, trusted xattrs), no NET_ADMIN, no
/// SYS_PTRACE, no SETFCAP (file capabilities set by a guest), no SYS_MODULE.
pub const FS_CAPABILITIES: [Capability; 8] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_MKNOD,
];

/// The hostname inside the VMM's UTS namespace.
const HOSTNAME: &str = "carapace-vmm";

/// Why the VMM could not enter its jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A namespace, mount or identity call failed.
    #[error("jail: {what}")]
    Sys {
        /// The step.
        what: String,
        /// The failure.
        #[source]
        source: nix::Error,
    },
    /// A capability set could not be changed.
    #[error("jail: {what}")]
    Caps {
        /// The step.
        what: String,
        /// The failure.
        #[source]
        source: caps::errors::CapsError,
    },
    /// A resource limit could not be set.
    #[error("jail: setrlimit {0}")]
    Rlimit(&'static str, #[source] std::io::Error),
    /// Other threads run: they would keep the host's root and every capability.
    #[error("jail: the VMM has {0} threads; it must confine itself while it has one")]
    Threads(usize),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

fn caps_err(what: impl Into<String>) -> impl FnOnce(caps::errors::CapsError) -> JailError {
    let what = what.into();
    move |source| JailError::Caps { what, source }
}

/// What the jail holds, each at its host path.
#[derive(Debug, Default, Clone)]
pub struct Contents {
    /// Files needed only to be opened (kernel, initramfs, disk images, /dev/kvm), with
    /// whether they may be bound read-only.
    pub open_only: Vec<(PathBuf, bool)>,
    /// Directories kept for the VM's life: those of its sockets and console.
    pub dirs: Vec<PathBuf>,
    /// Directories kept with every mount below them: the virtio-fs shares.
    pub trees: Vec<PathBuf>,
}

impl Contents {
    /// Adds `dir` to the kept directories (once; never "" or "/").
    pub fn keep_dir(&mut self, dir: &Path) {
        if dir.parent().is_some() && !self.dirs.iter().any(|d| d == dir) {
            self.dirs.push(dir.to_path_buf());
        }
    }
}

/// What the jail of a VMM running `config` holds.
pub fn contents(config: &VmConfig) -> Contents {
    let mut c = Contents::default();
    c.open_only.push((PathBuf::from("/dev/kvm"), false));
    c.open_only.push((config.kernel.clone(), true));
    if let Some(i) = &config.initramfs {
        c.open_only.push((i.clone(), true));
    }
    for b in &config.block {
        c.open_only.push((b.path.clone(), b.read_only));
    }
    let sockets = config
        .api_socket
        .iter()
        .chain(config.vsock.iter().map(|v| &v.socket));
    for s in sockets {
        if let Some(d) = s.parent() {
            c.keep_dir(d);
        }
    }
    if let Serial::File(f) = &config.serial {
        if let Some(d) = f.parent() {
            c.keep_dir(d);
        }
    }
    c.trees = config.fs.iter().map(|f| f.path.clone()).collect();
    c
}

/// The jail the VMM has entered, until it is sealed.
pub struct Jail {
    config: JailConfig,
    /// Mounts to remove at [`Jail::seal`], innermost last.
    temporary: Vec<PathBuf>,
}

/// A /proc mounted in the jail until it is sealed, apart from the jail's /proc.
const PROC_TMP: &str = "/.proc";

/// Waits until `task_dir` (a /proc/<pid>/task) lists one thread: a thread just joined is
/// listed until the kernel has released it (the VMM's bind_private joins one right before
/// the seal).
fn one_thread(task_dir: &Path) -> Result<(), JailError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let threads = std::fs::read_dir(task_dir).map_or(0, |d| d.count());
        if threads == 1 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(JailError::Threads(threads));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The signals that stop the VM in order (SIGTERM, SIGINT, SIGHUP): `main` takes them with
/// sigwait, and the supervisor passes them on to the VMM.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The signal set holding `signals`.
pub fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before sigaddset adds to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Step 0 (see the module's documentation): returns in the child, PID 1 of a new PID
/// namespace, which goes on to be the VMM; the parent never returns from here (it supervises
/// the child and exits as it exits). `seccomp`: whether the supervisor filters itself (the
/// VMM's `seccomp` setting). Call it while the process has one thread.
pub fn enter_pid_namespace(seccomp: bool) -> Result<(), JailError> {
    one_thread(Path::new("/proc/self/task"))?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(sys("unshare(PID)"))?;
    // SIGCHLD blocked before the fork, so the supervisor's sigwait cannot miss a child that
    // ends at once; the child puts the mask back as it was.
    // SAFETY: sigset_t is plain data (all zeroes is a valid value).
    let mut before: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both masks are ours.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signal_set(&[libc::SIGCHLD]), &mut before) };
    // The child's way to see that its supervisor died before PR_SET_PDEATHSIG was in force:
    // the write end closes with the supervisor.
    let (alive_r, alive_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))?;
    crate::vm::count_cpu_before_fork();
    // SAFETY: the process has one thread, so the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(alive_r);
            supervise(child.as_raw(), alive_w.as_raw_fd(), seccomp)
        }
        nix::unistd::ForkResult::Child => {
            drop(alive_w);
            // SAFETY: prctl and poll take plain values and a pollfd we own; the mask is ours.
            unsafe {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(JailError::Sys {
                        what: "PR_SET_PDEATHSIG".into(),
                        source: nix::Error::last(),
                    });
                }
                let mut fd = libc::pollfd {
                    fd: alive_r.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                if libc::poll(&mut fd, 1, 0) != 0 {
                    libc::_exit(carapace_vmm_config::status::ERROR);
                }
                libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
            }
            Ok(())
        }
    }
}

/// The supervisor's life (see [`enter_pid_namespace`]). Once its filter is on, it makes
/// only the system calls the filter allows: no allocation, no std I/O.
fn supervise(child: libc::pid_t, alive: libc::c_int, seccomp: bool) -> ! {
    let die = |what: &[u8]| -> ! {
        // SAFETY: write and kill take plain values and our buffers; the child must not
        // outlive a supervisor that cannot watch it.
        unsafe {
            for part in [b"carapace-vmm: jail supervisor: ".as_slice(), what, b"\n"] {
                libc::write(2, part.as_ptr().cast(), part.len());
            }
            libc::kill(child, libc::SIGKILL);
            libc::_exit(carapace_vmm_config::status::ERROR)
        }
    };
    // Nothing of the VMM's stays open here but stderr and the child's liveness pipe: stdin
    // and stdout (a console pipe, say) end with the VMM, not with its supervisor.
    // SAFETY: closing descriptors this process owns; nothing uses them after.
    unsafe {
        libc::close(0);
        libc::close(1);
        libc::syscall(libc::SYS_close_range, 3, alive - 1, 0);
        libc::syscall(libc::SYS_close_range, alive + 1, u32::MAX, 0);
    }
    if drop_capabilities(&CapsHashSet::new()).is_err() {
        die(b"cannot drop its capabilities");
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) and setrlimit take plain values.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            die(b"cannot set no_new_privs");
        }
        // Dying of the child's signal (below) must not leave a core of the supervisor.
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
    }
    if seccomp {
        // SAFETY: getpid has no preconditions.
        let own = unsafe { libc::getpid() };
        match crate::seccomp::supervisor(child, own) {
            Ok(program) => {
                if seccompiler::apply_filter(&program).is_err() {
                    die(b"cannot install its seccomp filter");
                }
            }
            Err(_) => die(b"cannot build its seccomp filter"),
        }
    }
    // An array, not a Vec: nothing may allocate under the filter.
    let [term, int, hup] = STOP_SIGNALS;
    let set = signal_set(&[term, int, hup, libc::SIGCHLD]);
    // SAFETY: sigwait, kill and waitpid take plain values, our set and our own status word.
    unsafe {
        // Blocked already but for SIGCHLD (main blocks the others before the jail): blocked
        // here again so this does not depend on it.
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut sig = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                continue;
            }
            if sig != libc::SIGCHLD {
                libc::kill(child, sig);
                continue;
            }
            let mut status = 0;
            if libc::waitpid(child, &mut status, libc::WNOHANG) != child {
                continue;
            }
            if libc::WIFEXITED(status) {
                libc::_exit(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                // The same end as the VMM's: its signal, with the default action.
                let sig = libc::WTERMSIG(status);
                libc::signal(sig, libc::SIG_DFL);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &signal_set(&[sig]), std::ptr::null_mut());
                libc::kill(libc::getpid(), sig);
                libc::_exit(128 + sig);
            }
        }
    }
}

/// Cuts every capability set to `kept`.
fn drop_capabilities(kept: &CapsHashSet) -> Result<(), JailError> {
    cut_bounding_set(kept)?;
    cut_process_sets(kept)
}

/// Cuts the bounding set to `kept`: first, for dropping from it needs CAP_SETPCAP in the
/// effective set, which [`cut_process_sets`] takes away.
fn cut_bounding_set(kept: &CapsHashSet) -> Result<(), JailError> {
    for cap in caps::all() {
        if !kept.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(caps_err(format!("dropping {cap} from the bounding set")))?;
        }
    }
    Ok(())
}

/// Cuts the ambient, inheritable, effective and permitted sets to `kept` (dropping needs no
/// capability).
fn cut_process_sets(kept: &CapsHashSet) -> Result<(), JailError> {
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing the ambient set"))?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .map_err(caps_err("clearing the inheritable set"))?;
    caps::set(None, CapSet::Effective, kept).map_err(caps_err("setting the effective set"))?;
    caps::set(None, CapSet::Permitted, kept).map_err(caps_err("setting the permitted set"))?;
    Ok(())
}

impl Jail {
    /// Step 1 (see the module's documentation).
    pub fn enter(config: &JailConfig, contents: &Contents) -> Result<Jail, JailError> {
        one_thread(Path::new("/proc/self/task"))?;
        // Before the machine is built: the fs device sizes its descriptor bounds by the open
        // file limit in force.
        limits(config)?;
        if !config.root.is_dir() {
            return Err(JailError::Sys {
                what: format!("the root {} is not a directory", config.root.display()),
                source: nix::Error::ENOTDIR,
            });
        }
        unshare(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWNET,
        )
        .map_err(sys("unshare(mount, IPC, UTS, network)"))?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .map_err(sys("making every mount a slave of the host's"))?;
        nix::unistd::sethostname(HOSTNAME).map_err(sys("sethostname"))?;

        let root = &config.root;
        let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(
            Some("tmpfs"),
            root,
            Some("tmpfs"),
            hidden,
            Some("mode=0755,size=1m"),
        )
        .map_err(sys(format!("mounting a tmpfs on {}", root.display())))?;
        let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        let mut temporary = Vec::new();
        for dir in &contents.dirs {
            let target = inside(dir);
            make_dir(&target)?;
            bind(dir, &target, MsFlags::empty())?;
            remount(&target, hidden)?;
        }
        for tree in &contents.trees {
            let target = inside(tree);
            make_dir(&target)?;
            bind(tree, &target, MsFlags::MS_REC)?;
        }
        // Files after the directories: one inside a kept directory is there already (and its
        // placeholder must not be removed from the host's directory at the seal).
        let kept = |f: &Path| {
            contents
                .dirs
                .iter()
                .chain(&contents.trees)
                .any(|d| f.starts_with(d))
        };
        for (file, read_only) in contents.open_only.iter().filter(|(f, _)| !kept(f)) {
            let target = inside(file);
            make_file(&target)?;
            bind(file, &target, MsFlags::empty())?;
            // /dev/kvm must stay a device; everything else is data.
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
            if !file.starts_with("/dev") {
                flags |= MsFlags::MS_NODEV;
            }
            if *read_only {
                flags |= MsFlags::MS_RDONLY;
            }
            remount(&target, flags)?;
            temporary.push(file.clone());
        }
        // /proc: a temporary one, and of it the VMM's own descriptors at /proc/self/fd for
        // good (fuse-backend-rs reaches the files it holds by /proc/self/fd/N, for xattrs by
        // that path), its /proc/self/mountinfo, and /proc/self/smaps until the machine has
        // opened it.
        let proc_tmp = inside(Path::new(PROC_TMP));
        make_dir(&proc_tmp)?;
        mount(Some("proc"), &proc_tmp, Some("proc"), hidden, None::<&str>)
            .map_err(sys("mounting /proc in the jail"))?;
        let pid = std::process::id().to_string();
        let fd_dir = inside(Path::new("/proc/self/fd"));
        make_dir(&fd_dir)?;
        bind(&proc_tmp.join(&pid).join("fd"), &fd_dir, MsFlags::empty())?;
        remount(&fd_dir, hidden)?;
        // fuse-backend-rs reads /proc/self/mountinfo (the share's mount id), kept too.
        for (name, keep) in [("mountinfo", true), ("smaps", false)] {
            let at = Path::new("/proc/self").join(name);
            let target = inside(&at);
            make_file(&target)?;
            bind(&proc_tmp.join(&pid).join(name), &target, MsFlags::empty())?;
            if !keep {
                temporary.push(at);
            }
        }
        temporary.push(PathBuf::from(PROC_TMP));

        // pivot_root(".", "."): the old root ends up mounted over the new one, and is detached.
        chdir(root).map_err(sys(format!("chdir {}", root.display())))?;
        pivot_root(".", ".").map_err(sys("pivot_root"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root"))?;
        chdir("/").map_err(sys("chdir /"))?;
        Ok(Jail {
            config: config.clone(),
            temporary,
        })
    }

    /// Step 2 (see the module's documentation). `shares`: whether the VMM serves virtio-fs
    /// (it then keeps [`FS_CAPABILITIES`], and stays root).
    pub fn seal(self, shares: bool) -> Result<(), JailError> {
        one_thread(&Path::new(PROC_TMP).join("self/task"))?;
        for path in self.temporary.iter().rev() {
            umount2(path, MntFlags::MNT_DETACH)
                .map_err(sys(format!("unmounting {}", path.display())))?;
            remove_with_parents(path);
        }
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(sys("remounting the root read-only"))?;
        let kept: CapsHashSet = if shares {
            FS_CAPABILITIES.into_iter().collect()
        } else {
            CapsHashSet::new()
        };
        // In this order: the bounding set while CAP_SETPCAP is effective, the ids while
        // CAP_SETUID and CAP_SETGID are, the process's sets last.
        cut_bounding_set(&kept)?;
        let jail = &self.config;
        if let (Some(uid), Some(gid)) = (jail.uid, jail.gid) {
            // Checked by the configuration: never with shares, never 0. Changing the real,
            // effective and saved ids of a process with one thread clears its permitted and
            // effective sets; cut_process_sets makes sure of every set.
            nix::unistd::setgroups(&[]).map_err(sys("setgroups"))?;
            setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))
                .map_err(sys(format!("setresgid {gid}")))?;
            setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
                .map_err(sys(format!("setresuid {uid}")))?;
        }
        cut_process_sets(&kept)?;
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes plain values.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(JailError::Sys {
                what: "no_new_privs".into(),
                source: nix::Error::last(),
            });
        }
        Ok(())
    }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> JailError {
    move |e| JailError::Sys {
        what,
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

fn make_dir(path: &Path) -> Result<(), JailError> {
    std::fs::create_dir_all(path).map_err(io_err(format!("creating {}", path.display())))
}

fn make_file(path: &Path) -> Result<(), JailError> {
    if let Some(parent) = path.parent() {
        make_dir(parent)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map(drop)
        .map_err(io_err(format!("creating {}", path.display())))
}

fn bind(from: &Path, to: &Path, extra: MsFlags) -> Result<(), JailError> {
    mount(
        Some(from),
        to,
        None::<&str>,
        MsFlags::MS_BIND | extra,
        None::<&str>,
    )
    .map_err(sys(format!("binding {}", from.display())))
}

fn remount(path: &Path, flags: MsFlags) -> Result<(), JailError> {
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
        None::<&str>,
    )
    .map_err(sys(format!("remounting {}", path.display())))
}

/// Removes the placeholder `path` and its parents up to the first one not empty.
fn remove_with_parents(path: &Path) {
    let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir(path));
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| d.parent().is_some()) {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// The configured resource limits (soft and hard alike, so the VMM cannot raise them again).
fn limits(jail: &JailConfig) -> Result<(), JailError> {
    let set = |what: &'static str, resource, value: u64| {
        let rl = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the rlimit we own.
        if unsafe { libc::setrlimit(resource, &rl) } != 0 {
            return Err(JailError::Rlimit(what, std::io::Error::last_os_error()));
        }
        Ok(())
    };
    if let Some(n) = jail.max_open_files {
        set("RLIMIT_NOFILE", libc::RLIMIT_NOFILE, n)?;
    }
    if let Some(n) = jail.max_file_size {
        // A write past the limit then fails with EFBIG (a serial console the guest floods
        // stops growing) instead of killing the VMM with SIGXFSZ.
        // SAFETY: ignoring a signal installs no handler.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        set("RLIMIT_FSIZE", libc::RLIMIT_FSIZE, n)?;
    }
    if let Some(n) = jail.max_processes {
        set("RLIMIT_NPROC", libc::RLIMIT_NPROC, n)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
