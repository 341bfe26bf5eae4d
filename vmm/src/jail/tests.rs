//! Unit tests of the jail: what it holds, and the PID namespace's supervisor.

use super::*;

#[test]
fn the_jail_holds_what_the_configuration_names() {
    let mut config = VmConfig::new("/k/vmlinux".into());
    config.initramfs = Some("/k/initramfs".into());
    config.api_socket = Some("/run/carapace/p/api.sock".into());
    config.vsock = Some(crate::config::VsockConfig {
        cid: 3,
        socket: "/run/carapace/p/vsock.sock".into(),
    });
    config.serial = Serial::File("/run/carapace/p/console.log".into());
    config.block.push(crate::config::BlockConfig {
        path: "/d/disk.img".into(),
        read_only: true,
        rate_limit: None,
    });
    let c = contents(&config);
    assert_eq!(
        c.open_only,
        [
            (PathBuf::from("/dev/kvm"), false),
            (PathBuf::from("/k/vmlinux"), true),
            (PathBuf::from("/k/initramfs"), true),
            (PathBuf::from("/d/disk.img"), true)
        ]
    );
    assert_eq!(
        c.dirs,
        [PathBuf::from("/run/carapace/p")],
        "each directory once"
    );
    assert!(c.trees.is_empty());
}

/// Runs `check` in a forked child (a process of one thread, as the VMM is when it enters and
/// seals its jail) and returns the child's wait status: 0 when the check passed; a failed
/// one is printed on stderr and exits 1.
fn in_a_child(check: impl FnOnce() -> Result<(), String>) -> i32 {
    // SAFETY: the child only makes system calls and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // A panic must not unwind into the test harness the child inherited (it would return
        // and exit 0, passing the test).
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)) {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                eprintln!("jail check: {e}");
                1
            }
            Err(_) => {
                eprintln!("jail check: panicked");
                2
            }
        };
        // SAFETY: ends the child without the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

/// Enters and seals a jail in a forked child (a process of one thread, as the VMM is
/// then) and checks, from inside, what it left.
#[test]
fn a_sealed_jail_holds_its_directories_and_shares_with_the_fs_capabilities() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the jail needs root");
        return;
    }
    let base = std::env::temp_dir().join(format!("carapace-jail-test-{}", std::process::id()));
    let root = base.join("jail");
    let sockets = base.join("sockets");
    let share = base.join("share");
    let kernel = base.join("vmlinux");
    for d in [&root, &sockets, &share] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(sockets.join("kept"), "here").unwrap();
    std::fs::write(share.join("shared"), "too").unwrap();
    std::fs::write(&kernel, "kernel").unwrap();
    let jail = JailConfig {
        root: root.clone(),
        uid: None,
        gid: None,
        max_file_size: Some(1 << 20),
        max_processes: Some(1000),
        max_open_files: Some(256),
    };
    let contents = Contents {
        open_only: vec![(kernel.clone(), true)],
        dirs: vec![sockets.clone()],
        trees: vec![share.clone()],
    };
    let status = in_a_child(|| {
        let j = Jail::enter(&jail, &contents).map_err(|e| format!("{e:?}"))?;
        // Inside, before the seal: what the machine opens is there.
        let kept_open = std::fs::File::open(&kernel).map_err(|e| e.to_string())?;
        if std::fs::write(&kernel, "x").is_ok() {
            return Err("the kernel is writable".into());
        }
        if !Path::new("/proc/self/fd").exists() || !Path::new("/proc/self/smaps").exists() {
            return Err("no /proc/self before the seal".into());
        }
        j.seal(true).map_err(|e| format!("{e:?}"))?;
        drop(kept_open);
        let top: Vec<_> = std::fs::read_dir("/")
            .map_err(|e| e.to_string())?
            .map(|e| e.unwrap().file_name())
            .collect();
        let first = sockets.components().nth(1).unwrap().as_os_str().to_owned();
        let mut top = top;
        top.sort();
        let mut want = vec![std::ffi::OsString::from("proc"), first];
        want.sort();
        if top != want {
            return Err(format!("the sealed root holds {top:?}"));
        }
        // The VMM's own descriptors stay reachable by /proc/self/fd/N (the
        // passthrough's xattr calls use that path): ENODATA, not ENOENT.
        let held = std::fs::File::open(share.join("shared")).map_err(|e| e.to_string())?;
        let by_fd = std::ffi::CString::new(format!("/proc/self/fd/{}", held.as_raw_fd())).unwrap();
        let mut buf = [0u8; 8];
        // SAFETY: valid C strings and buffer.
        let r = unsafe {
            libc::getxattr(
                by_fd.as_ptr(),
                c"user.none".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        if r >= 0 || errno == Some(libc::ENOENT) {
            return Err(format!("getxattr by /proc/self/fd: {r}, {errno:?}"));
        }
        if Path::new("/proc/self/smaps").exists() || Path::new("/.proc").exists() {
            return Err("the temporary /proc is still there".into());
        }
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        if read(sockets.join("kept")).as_deref() != Some("here")
            || read(share.join("shared")).as_deref() != Some("too")
        {
            return Err("a kept directory is not there".into());
        }
        if kernel.exists() {
            return Err("an open-only path is still there".into());
        }
        if std::fs::write("/planted", "x").is_ok() {
            return Err("the root is writable".into());
        }
        let eff = caps::read(None, CapSet::Effective).map_err(|e| e.to_string())?;
        let bnd = caps::read(None, CapSet::Bounding).map_err(|e| e.to_string())?;
        let want: CapsHashSet = FS_CAPABILITIES.into_iter().collect();
        if eff != want || bnd != want {
            return Err(format!("effective {eff:?}, bounding {bnd:?}"));
        }
        // SAFETY: prctl(PR_GET_NO_NEW_PRIVS) takes plain values.
        if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } != 1 {
            return Err("no_new_privs is not set".into());
        }
        Ok(())
    });
    let left = std::fs::read_dir(&root).map(|d| d.count()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&base);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's checks failed ({status:#x}); see its stderr"
    );
    assert_eq!(left, 0, "nothing reached the host's directory");
}

/// A jail without shares and with a user: sealed in a forked child, the child has that
/// user's ids everywhere, no supplementary group, no capability in any set, no_new_privs, and
/// still writes in its kept directory (which the VMM's user owns, as the shim makes it).
#[test]
fn a_sealed_jail_without_shares_takes_the_user_and_every_capability_away() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the jail needs root");
        return;
    }
    const USER: u32 = 65532;
    let base = std::env::temp_dir().join(format!("carapace-jail-user-{}", std::process::id()));
    let root = base.join("jail");
    let vm = base.join("vm");
    for d in [&root, &vm] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::os::unix::fs::chown(&vm, Some(USER), Some(USER)).unwrap();
    let jail = JailConfig {
        root: root.clone(),
        uid: Some(USER),
        gid: Some(USER),
        max_file_size: None,
        max_processes: None,
        max_open_files: None,
    };
    let contents = Contents {
        open_only: Vec::new(),
        dirs: vec![vm.clone()],
        trees: Vec::new(),
    };
    let status = in_a_child(|| {
        let j = Jail::enter(&jail, &contents).map_err(|e| format!("{e:?}"))?;
        j.seal(false).map_err(|e| format!("{e:?}"))?;
        let mut ids = [0; 3];
        let mut gids = [0; 3];
        // SAFETY: each call writes three ids into the arrays it is given.
        unsafe {
            libc::getresuid(&mut ids[0], &mut ids[1], &mut ids[2]);
            libc::getresgid(&mut gids[0], &mut gids[1], &mut gids[2]);
        }
        // SAFETY: a size of 0 asks only for the count.
        let groups = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        if ids != [USER; 3] || gids != [USER; 3] || groups != 0 {
            return Err(format!("uids {ids:?}, gids {gids:?}, {groups} groups"));
        }
        for set in [
            CapSet::Effective,
            CapSet::Permitted,
            CapSet::Inheritable,
            CapSet::Ambient,
            CapSet::Bounding,
        ] {
            let held = caps::read(None, set).map_err(|e| e.to_string())?;
            if !held.is_empty() {
                return Err(format!("{set:?} holds {held:?}"));
            }
        }
        // SAFETY: prctl(PR_GET_NO_NEW_PRIVS) takes plain values.
        if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } != 1 {
            return Err("no_new_privs is not set".into());
        }
        std::fs::write(vm.join("console.log"), "rotated")
            .and_then(|()| std::fs::rename(vm.join("console.log"), vm.join("console.log.1")))
            .map_err(|e| format!("writing in its directory: {e}"))?;
        Ok(())
    });
    let wrote = vm.join("console.log.1").exists();
    let _ = std::fs::remove_dir_all(&base);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's checks failed ({status:#x}); see its stderr"
    );
    assert!(wrote, "the jailed user wrote in its directory");
}

#[test]
fn the_fs_capabilities_hold_no_admin_power() {
    for cap in [
        Capability::CAP_SYS_ADMIN,
        Capability::CAP_NET_ADMIN,
        Capability::CAP_SYS_PTRACE,
        Capability::CAP_SETFCAP,
        Capability::CAP_SETPCAP,
        Capability::CAP_SYS_MODULE,
        Capability::CAP_SYS_RAWIO,
    ] {
        assert!(!FS_CAPABILITIES.contains(&cap), "{cap}");
    }
}

/// What the VMM in its PID namespace does next, in [`the_pid_namespace_supervisor`].
#[derive(Clone, Copy)]
enum Then {
    Exit(i32),
    ExitOnSigterm(i32),
    Sleep,
}

/// A process as the shim starts the VMM (the test's child), which enters its PID
/// namespace: the supervisor's pid, and the VMM's host pid, which it reports from
/// inside (once it has checked that it is PID 1 there).
fn start_supervised(then: Then) -> (libc::pid_t, libc::pid_t) {
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::empty()).unwrap();
    // SAFETY: the child makes system calls and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        drop(report_r);
        if let Err(e) = enter_pid_namespace(true) {
            eprintln!("enter_pid_namespace: {e:?}");
            // SAFETY: ends the child.
            unsafe { libc::_exit(99) };
        }
        // The VMM: PID 1 here, another number on the host (NSpid: host, then own).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let nspid: Vec<&str> = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .unwrap()
            .split_whitespace()
            .collect();
        // SAFETY: getpid has no preconditions.
        let own = unsafe { libc::getpid() };
        if own != 1 || nspid.len() != 2 || nspid[1] != "1" {
            // SAFETY: ends the process.
            unsafe { libc::_exit(98) };
        }
        nix::unistd::write(&report_w, format!("{}\n", nspid[0]).as_bytes()).unwrap();
        // SAFETY: plain signal and exit calls.
        unsafe {
            match then {
                Then::Exit(code) => libc::_exit(code),
                Then::ExitOnSigterm(code) => {
                    let set = signal_set(&[libc::SIGTERM]);
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    let mut sig = 0;
                    libc::sigwait(&set, &mut sig);
                    libc::_exit(if sig == libc::SIGTERM { code } else { 97 });
                }
                Then::Sleep => loop {
                    libc::pause();
                },
            }
        }
    }
    drop(report_w);
    // One line (the VMM keeps its end open while it runs).
    let mut line = String::new();
    use std::io::BufRead as _;
    std::io::BufReader::new(std::fs::File::from(report_r))
        .read_line(&mut line)
        .ok();
    let vmm = line.trim().parse().unwrap_or(-1);
    (pid, vmm)
}

fn wait_status(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

/// Whether `pid` has ended (gone, or a zombie no one has reaped yet).
fn ended(pid: libc::pid_t) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.is_empty() || status.contains("State:\tZ")
}

#[test]
fn the_pid_namespace_supervisor() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a PID namespace needs root");
        return;
    }
    // The supervisor ends with the VMM's exit status.
    let (sup, vmm) = start_supervised(Then::Exit(7));
    assert!(vmm > 0, "the VMM is PID 1 of its namespace");
    let status = wait_status(sup);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
        "{status:#x}"
    );

    // It passes SIGTERM on; it holds no capability, no descriptor but stderr and the
    // liveness pipe, and runs under its filter with no_new_privs.
    let (sup, vmm) = start_supervised(Then::ExitOnSigterm(42));
    assert!(vmm > 0);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let status_text = std::fs::read_to_string(format!("/proc/{sup}/status")).unwrap();
    for (field, want) in [
        ("CapEff:", "0000000000000000"),
        ("CapPrm:", "0000000000000000"),
        ("CapBnd:", "0000000000000000"),
        ("NoNewPrivs:", "1"),
        ("Seccomp:", "2"),
    ] {
        let got = status_text
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(str::trim);
        assert_eq!(got, Some(want), "supervisor {field}\n{status_text}");
    }
    let fds = std::fs::read_dir(format!("/proc/{sup}/fd"))
        .unwrap()
        .count();
    assert_eq!(fds, 2, "stderr and the liveness pipe only");
    // SAFETY: signals our own child.
    unsafe { libc::kill(sup, libc::SIGTERM) };
    let status = wait_status(sup);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 42,
        "{status:#x}"
    );

    // A VMM killed by a signal: the supervisor dies of the same one.
    let (sup, vmm) = start_supervised(Then::Sleep);
    assert!(vmm > 0);
    // SAFETY: signals the VMM process this test started.
    unsafe { libc::kill(vmm, libc::SIGKILL) };
    let status = wait_status(sup);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "{status:#x}"
    );

    // Killing the supervisor kills the VMM (PR_SET_PDEATHSIG).
    let (sup, vmm) = start_supervised(Then::Sleep);
    assert!(vmm > 0 && !ended(vmm));
    // SAFETY: signals our own child.
    unsafe { libc::kill(sup, libc::SIGKILL) };
    wait_status(sup);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !ended(vmm) {
        assert!(
            std::time::Instant::now() < deadline,
            "the VMM outlived its supervisor"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
