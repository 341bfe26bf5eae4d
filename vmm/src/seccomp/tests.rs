//! Each test forks a child that installs a filter and makes calls; the parent reads how the
//! child ended and what it wrote. The filters are compiled before the fork, so the child
//! only installs them and makes the calls under test.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

use super::*;

/// Runs `body` in a child whose stderr is a pipe, after `thread`'s filter is installed;
/// returns the child's exit status and what it wrote to stderr.
fn in_child(filters: &Filters, thread: Thread, body: impl FnOnce() -> i32) -> (i32, String) {
    let mut fds = [0; 2];
    // SAFETY: pipe fills the two descriptors we pass.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only installs the filter, runs `body` and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: in the child: stderr becomes the pipe's write end.
        unsafe {
            libc::dup2(fds[1], 2);
            libc::close(fds[0]);
        }
        let code = match filters.apply(thread) {
            Ok(()) => body(),
            Err(_) => 100,
        };
        // SAFETY: _exit ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: both descriptors are ours; the read end is owned from here on.
    let read = unsafe {
        libc::close(fds[1]);
        OwnedFd::from_raw_fd(fds[0])
    };
    let mut out = String::new();
    std::fs::File::from(read).read_to_string(&mut out).unwrap();
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "the child ended with {status:#x}");
    (libc::WEXITSTATUS(status), out)
}

fn filters() -> Filters {
    Filters::new().expect("the filters build")
}

#[test]
fn the_exit_status_is_128_plus_sigsys() {
    assert_eq!(EXIT_BAD_SYSCALL, 128 + libc::SIGSYS);
}

#[test]
fn every_filter_builds_within_the_kernels_limit() {
    let f = filters();
    for t in [
        Thread::Vcpu,
        Thread::EventLoop,
        Thread::Api,
        Thread::Signals,
    ] {
        let len = f.program(t).len();
        assert!(len > 3 && len < 4096, "{t:?}: {len} instructions");
    }
}

#[test]
fn a_forbidden_syscall_ends_the_vmm_with_sigsys_status_and_names_the_call() {
    let f = filters();
    // A vCPU has no business making sockets.
    let (code, err) = in_child(&f, Thread::Vcpu, || {
        // SAFETY: plain-value arguments.
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        0
    });
    assert_eq!(code, EXIT_BAD_SYSCALL, "{err}");
    assert!(
        err.contains(&format!(
            "the vcpu thread made a forbidden syscall {}",
            libc::SYS_socket
        )),
        "{err}"
    );
}

#[test]
fn allowed_calls_pass_and_arguments_are_checked() {
    let f = filters();
    // The event loop writes, draws random bytes and opens Unix sockets...
    let (code, err) = in_child(&f, Thread::EventLoop, || {
        let mut b = [0u8; 8];
        // SAFETY: valid buffers and plain-value arguments.
        unsafe {
            if libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) != 8 {
                return 1;
            }
            let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if s < 0 {
                return 2;
            }
            libc::close(s);
        }
        0
    });
    assert_eq!((code, err.as_str()), (0, ""));
    // ... but no network socket.
    let (code, err) = in_child(&f, Thread::EventLoop, || {
        // SAFETY: plain-value arguments.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        0
    });
    assert_eq!(code, EXIT_BAD_SYSCALL, "{err}");
    assert!(err.contains("the event loop thread"), "{err}");
    // A vCPU runs KVM ioctls only.
    let (code, err) = in_child(&f, Thread::Vcpu, || {
        let mut on: libc::c_int = 1;
        // SAFETY: FIONBIO on stdin with a valid argument.
        unsafe { libc::ioctl(0, libc::FIONBIO, &mut on) };
        0
    });
    assert_eq!(code, EXIT_BAD_SYSCALL, "{err}");
    assert!(
        err.contains(&format!("args 0x0, {:#x}", libc::FIONBIO)),
        "{err}"
    );
}

#[test]
fn the_api_starts_threads_but_no_process_and_signals_only_its_own() {
    let f = filters();
    let (code, err) = in_child(&f, Thread::Api, || {
        // clone3 is answered ENOSYS (glibc then uses clone, with CLONE_THREAD)...
        // SAFETY: clone3 with a null argument is refused before it reads anything.
        let r = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
        if r != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
            return 1;
        }
        // ... so threads start.
        if std::thread::spawn(|| 7).join().ok() != Some(7) {
            return 2;
        }
        0
    });
    assert_eq!((code, err.as_str()), (0, ""));
    // A new process is refused.
    let (code, err) = in_child(&f, Thread::Api, || {
        // SAFETY: the forbidden fork never returns in a child.
        unsafe { libc::fork() };
        0
    });
    assert_eq!(code, EXIT_BAD_SYSCALL, "{err}");
    assert!(
        err.contains(&format!("forbidden syscall {}", libc::SYS_clone)),
        "{err}"
    );
    // tgkill reaches this process's threads only.
    let (code, err) = in_child(&f, Thread::Api, || {
        // SAFETY: signal 0 to pid 1 only checks; the filter stops it before the kernel does.
        unsafe { libc::syscall(libc::SYS_tgkill, 1, 1, 0) };
        0
    });
    assert_eq!(code, EXIT_BAD_SYSCALL, "{err}");
    assert!(
        err.contains(&format!("forbidden syscall {}", libc::SYS_tgkill)),
        "{err}"
    );
}

#[test]
fn a_vcpu_rotates_the_console_log_under_its_filter() {
    use std::io::Write;
    let f = filters();
    let dir = std::env::temp_dir().join(format!("carapace-seccomp-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("console.log");
    let mut log = crate::devices::legacy::ConsoleLog::with_cap(&path, 8).unwrap();
    let (code, err) = in_child(&f, Thread::Vcpu, move || {
        // Past the cap: the file moves to console.log.1 and a new one starts.
        for _ in 0..3 {
            if log.write_all(b"0123456789").is_err() {
                return 1;
            }
        }
        0
    });
    let rotated = std::fs::metadata(dir.join("console.log.1")).is_ok();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(rotated, "the log was rotated");
}
