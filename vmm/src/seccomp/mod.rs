//! The VMM's syscall filters: one seccomp allowlist per kind of thread ([`Thread`]), compiled
//! once at start-up ([`Filters`]) and installed by each thread on itself before it does its
//! work, and what a forbidden syscall does: the thread's SIGSYS handler names the thread and
//! the call on stderr and ends the VMM with [`EXIT_BAD_SYSCALL`].
//!
//! What each list holds, and why, is written next to it. The lists cover every configuration
//! the VMM supports (blk, net, vsock, fs, rng; pause/resume; shutdown) at run time; set-up
//! (opening KVM, mapping memory, creating devices, binding sockets, spawning the vCPU threads)
//! happens before the filters go on, as in Firecracker and Cloud Hypervisor. The lab tests run
//! with the filters on: that is what shows the lists are complete.
//!
//! seccompiler (rust-vmm's, Firecracker's) builds the BPF; a rule's argument checks narrow a
//! call where the argument is a plain value (ioctl requests, socket domains, tgkill's pid,
//! clone's flags).

use std::cell::Cell;
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The VMM's exit status when a thread made a forbidden syscall: 128 + SIGSYS, the status a
/// shell gives a process the signal killed.
pub const EXIT_BAD_SYSCALL: i32 = carapace_vmm_config::status::BAD_SYSCALL;

/// The kinds of thread, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thread {
    /// A vCPU: KVM_RUN and the exits it serves (MMIO and port I/O of the devices).
    Vcpu = 1,
    /// The main thread once the VM runs: the device event loop (every virtio backend), then
    /// the VM's teardown.
    EventLoop = 2,
    /// The control API: its accept loop and the client threads it starts (they inherit it).
    Api = 3,
    /// The thread that waits for SIGTERM, SIGINT and SIGHUP.
    Signals = 4,
}

impl Thread {
    fn name(self) -> &'static [u8] {
        match self {
            Thread::Vcpu => b"vcpu",
            Thread::EventLoop => b"event loop",
            Thread::Api => b"api",
            Thread::Signals => b"signals",
        }
    }

    fn from_code(code: u8) -> Option<Thread> {
        [
            Thread::Vcpu,
            Thread::EventLoop,
            Thread::Api,
            Thread::Signals,
        ]
        .into_iter()
        .find(|t| *t as u8 == code)
    }
}

/// Why the filters could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused a rule or the filter (a bug in the lists below).
    #[error("building the {0:?} thread's seccomp filter")]
    Build(Thread, #[source] seccompiler::BackendError),
    /// The filter compiled but does not fit the kernel's BPF limits.
    #[error("compiling the {0:?} thread's seccomp filter")]
    Compile(Thread, #[source] seccompiler::BackendError),
    /// The kernel refused the filter (no seccomp, or no_new_privs refused).
    #[error("installing the {0:?} thread's seccomp filter")]
    Install(Thread, #[source] seccompiler::Error),
    /// The jail supervisor's filter could not be built (a bug in its list).
    #[error("building the jail supervisor's seccomp filter")]
    Supervisor(#[source] seccompiler::BackendError),
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// The compiled filter of every kind of thread.
#[derive(Debug, Clone)]
pub struct Filters {
    vcpu: BpfProgram,
    event_loop: BpfProgram,
    api: BpfProgram,
    api_clone3: BpfProgram,
    signals: BpfProgram,
}

impl Filters {
    /// Compiles every thread's filter for this process and installs the SIGSYS handler.
    pub fn new() -> Result<Filters, SeccompError> {
        install_sigsys_handler().map_err(SeccompError::Handler)?;
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        Ok(Filters {
            vcpu: compile(Thread::Vcpu, pid)?,
            event_loop: compile(Thread::EventLoop, pid)?,
            api: compile(Thread::Api, pid)?,
            api_clone3: clone3_enosys()?,
            signals: compile(Thread::Signals, pid)?,
        })
    }

    /// The compiled program of `thread`.
    pub fn program(&self, thread: Thread) -> &BpfProgram {
        match thread {
            Thread::Vcpu => &self.vcpu,
            Thread::EventLoop => &self.event_loop,
            Thread::Api => &self.api,
            Thread::Signals => &self.signals,
        }
    }

    /// Puts `thread`'s filter on the calling thread (and on the threads it starts later).
    /// Also sets no_new_privs on it, which seccomp requires of a process without
    /// CAP_SYS_ADMIN and which costs the VMM nothing: it never executes a program.
    pub fn apply(&self, thread: Thread) -> Result<(), SeccompError> {
        if thread == Thread::Api {
            apply_program(thread, &self.api_clone3)?;
        }
        apply_program(thread, self.program(thread))
    }
}

/// Names the calling thread's kind for the SIGSYS report, in a thread that inherited the
/// filter of its kind from the thread that started it (the API's client threads).
pub fn inherited(thread: Thread) {
    THREAD.with(|t| t.set(thread as u8));
}

/// Installs `program` as `thread`'s filter on the calling thread.
pub fn apply_program(thread: Thread, program: &BpfProgram) -> Result<(), SeccompError> {
    THREAD.with(|t| t.set(thread as u8));
    seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(thread, e))
}

thread_local! {
    /// The kind of the calling thread, for the SIGSYS handler (0: none set).
    static THREAD: Cell<u8> = const { Cell::new(0) };
}

/// Syscalls every thread makes: memory allocation (malloc's arenas grow with mprotect and
/// shrink with madvise), locks, the clock, logging to stderr, the no-op handler of the
/// vCPU kick signal returning, closing what it owns (std checks a descriptor with
/// fcntl(F_GETFD) before it closes it in debug builds), and ending (a thread's own end frees
/// its stacks).
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_read,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// A vCPU, beyond [`COMMON`]: the eventfds of the exits it serves are written with `write`;
/// a driver resetting the vsock device (on a guest reboot) drops its connections and
/// disarms its retry timer from this thread (`epoll_ctl`, `timerfd_settime`, `close`); the
/// serial console it writes rotates its log file at 4 MiB (`rename`, `openat`, and
/// `ftruncate` when the rename fails). In a jail those reach the jail's directories only.
const VCPU: &[i64] = &[
    libc::SYS_epoll_ctl,
    libc::SYS_timerfd_settime,
    libc::SYS_rename,
    libc::SYS_openat,
    libc::SYS_ftruncate,
];

/// The ioctls of a vCPU thread: running it, and reading its registers for the log when the
/// guest dies.
const VCPU_IOCTLS: &[u64] = &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS];

/// The event loop, beyond [`COMMON`]. By device:
/// - the loop itself: epoll, eventfds (read/write), timerfds;
/// - blk: positioned and vectored reads and writes, flush, discard (fallocate);
/// - net: the tap's reads and writes (readv/writev);
/// - vsock: the Unix sockets that carry its streams (connect for guest-initiated streams,
///   accept for host-initiated ones, their reads, writes, shutdown and options);
/// - rng: getrandom;
/// - fs: the passthrough file system (fuse-backend-rs) acting for the guest's users: every
///   file operation FUSE has, by file descriptor or beneath one (`*at`), the credentials it
///   takes on per request (setresuid/setresgid, setgroups, capget/capset for the effective
///   set), and the umask of creation;
/// - teardown: kicking the vCPU threads out of KVM_RUN (tgkill, to this process only),
///   waiting for them, and removing the sockets' files.
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_dup,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    // fs
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_readlinkat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fgetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    libc::SYS_getxattr,
    libc::SYS_setxattr,
    libc::SYS_listxattr,
    libc::SYS_removexattr,
    libc::SYS_lgetxattr,
    libc::SYS_llistxattr,
    libc::SYS_flock,
    libc::SYS_copy_file_range,
    libc::SYS_fadvise64,
    libc::SYS_sync_file_range,
    libc::SYS_syncfs,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_umask,
    libc::SYS_getuid,
    libc::SYS_getgid,
    libc::SYS_geteuid,
    libc::SYS_getegid,
    // teardown
    libc::SYS_unlink,
];

/// The event loop's ioctls: non-blocking and close-on-exec modes set through std and
/// vmm-sys-util.
const EVENT_LOOP_IOCTLS: &[u64] = &[libc::FIONBIO, libc::FIOCLEX];

/// The control API, beyond [`COMMON`]: its socket (accept, the peer's credentials checked
/// against its own user, read and write with timeouts), client threads (clone with
/// CLONE_THREAD only: no new process), the `status` answer's read of /proc/self/smaps (kept
/// open, read with pread), pausing (tgkill of the vCPUs, this process only), and removing
/// its socket file when it ends.
const API: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_geteuid,
    libc::SYS_getuid,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_openat,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
    libc::SYS_unlink,
];

/// The ioctls of the API threads.
const API_IOCTLS: &[u64] = &[libc::FIONBIO, libc::FIOCLEX];

/// The signals thread, beyond [`COMMON`]: waiting for the signals.
const SIGNALS: &[i64] = &[libc::SYS_rt_sigtimedwait];

// The KVM vCPU ioctls the filters name (include/uapi/linux/kvm.h).
const KVM_RUN: u64 = 0xae80;
const KVM_GET_REGS: u64 = 0x8090_ae81;
const KVM_GET_SREGS: u64 = 0x8138_ae83;

fn condition(
    thread: Thread,
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .map_err(|e| SeccompError::Build(thread, e))
}

/// Rules allowing `syscall` when argument `arg` is one of `values`.
fn one_of(thread: Thread, arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    values
        .iter()
        .map(|&v| {
            SeccompRule::new(vec![condition(thread, arg, SeccompCmpOp::Eq, v)?])
                .map_err(|e| SeccompError::Build(thread, e))
        })
        .collect()
}

/// The rules of `thread`: syscall number to the rules that allow it (none: always).
fn rules(thread: Thread, pid: i32) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let (own, ioctls): (&[i64], &[u64]) = match thread {
        Thread::Vcpu => (VCPU, VCPU_IOCTLS),
        Thread::EventLoop => (EVENT_LOOP, EVENT_LOOP_IOCTLS),
        Thread::Api => (API, API_IOCTLS),
        Thread::Signals => (SIGNALS, &[]),
    };
    for &nr in COMMON.iter().chain(own) {
        map.insert(nr, Vec::new());
    }
    if !ioctls.is_empty() {
        map.insert(libc::SYS_ioctl, one_of(thread, 1, ioctls)?);
    }
    // Signals go to this process's own threads only (vCPU kicks).
    if matches!(thread, Thread::EventLoop | Thread::Api) {
        map.insert(libc::SYS_tgkill, one_of(thread, 0, &[pid as u64])?);
    }
    // Unix sockets only (vsock streams to host programs).
    if thread == Thread::EventLoop {
        map.insert(
            libc::SYS_socket,
            one_of(thread, 0, &[libc::AF_UNIX as u64])?,
        );
    }
    if thread == Thread::Api {
        // New threads only, never a new process: pthread_create's clone carries
        // CLONE_THREAD. glibc tries clone3 first, whose flags live in memory where a filter
        // cannot read them: allowed here, it is refused with ENOSYS by the program stacked
        // under this one ([`clone3_enosys`]), and glibc falls back to clone.
        map.insert(libc::SYS_clone3, Vec::new());
        let flag = libc::CLONE_THREAD as u64;
        map.insert(
            libc::SYS_clone,
            vec![SeccompRule::new(vec![condition(
                thread,
                0,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])
            .map_err(|e| SeccompError::Build(thread, e))?],
        );
    }
    Ok(map)
}

/// The jail's supervisor (the process outside the VMM's PID namespace, jail.rs), whose whole
/// life is: waiting for its signals and for its child (`child`), passing the signals on to
/// it, ending as it ended (its status, or its signal raised on itself, `own`), and one
/// message on stderr if that fails. Anything else kills it outright (it has no SIGSYS
/// handler), and the VMM with it (PR_SET_PDEATHSIG).
const SUPERVISOR: &[i64] = &[
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_wait4,
    libc::SYS_getpid,
    libc::SYS_write,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The supervisor's program (see [`SUPERVISOR`]): kill(2) reaches `child` and itself only.
pub fn supervisor(child: i32, own: i32) -> Result<BpfProgram, SeccompError> {
    let rule = |pid: i32| {
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, pid as u64)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(SeccompError::Supervisor)
    };
    let mut map: BTreeMap<i64, Vec<SeccompRule>> =
        SUPERVISOR.iter().map(|&nr| (nr, Vec::new())).collect();
    map.insert(libc::SYS_kill, vec![rule(child)?, rule(own)?]);
    let filter = SeccompFilter::new(
        map,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Supervisor)?;
    filter.try_into().map_err(SeccompError::Supervisor)
}

/// Builds `thread`'s program: its rules allow, anything else traps (SIGSYS).
fn compile(thread: Thread, pid: i32) -> Result<BpfProgram, SeccompError> {
    build(
        thread,
        rules(thread, pid)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
    )
}

/// The program stacked under the API's filter: clone3 answered ENOSYS, anything else left
/// to the filter. The kernel takes the strictest answer of the stacked filters, so the API's
/// own filter allows clone3 and this one refuses it.
fn clone3_enosys() -> Result<BpfProgram, SeccompError> {
    build(
        Thread::Api,
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )
}

fn build(
    thread: Thread,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| SeccompError::Build(thread, e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile(thread, e))
}

/// Installs the SIGSYS handler (process-wide, once).
fn install_sigsys_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler only makes async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The SIGSYS handler: names the thread and the call on stderr, then ends the VMM. Only
/// write and exit_group are called (every filter allows both), and nothing allocates.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let mut msg = Message::default();
    msg.push(b"carapace-vmm: seccomp: the ");
    let code = THREAD.with(|t| t.get());
    msg.push(Thread::from_code(code).map_or(b"unfiltered".as_slice(), Thread::name));
    msg.push(b" thread made a forbidden syscall ");
    // SAFETY: for SIGSYS the kernel fills siginfo's _sigsys member: the call's address at
    // offset 16, the syscall number at 24 (struct siginfo in include/uapi/asm-generic).
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    msg.number(i64::from(nr));
    if !ctx.is_null() {
        // SAFETY: with SA_SIGINFO the third argument is the thread's ucontext_t.
        let gregs = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
        msg.push(b" (args ");
        for (i, reg) in [libc::REG_RDI, libc::REG_RSI, libc::REG_RDX]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                msg.push(b", ");
            }
            msg.hex(gregs[reg as usize] as u64);
        }
        msg.push(b")");
    }
    msg.push(b"; stopping the VM\n");
    // SAFETY: write and _exit are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(2, msg.buf.as_ptr().cast(), msg.len);
        libc::_exit(EXIT_BAD_SYSCALL);
    }
}

/// A fixed buffer the SIGSYS handler formats into without allocating.
struct Message {
    buf: [u8; 256],
    len: usize,
}

impl Default for Message {
    fn default() -> Self {
        Message {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl Message {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn number(&mut self, mut v: i64) {
        if v < 0 {
            self.push(b"-");
            v = -v;
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn hex(&mut self, mut v: u64) {
        let mut digits = [0u8; 16];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(v & 0xf) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.push(b"0x");
        self.push(&digits[i..]);
    }
}

#[cfg(test)]
mod tests;
