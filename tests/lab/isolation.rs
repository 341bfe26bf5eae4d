//! The isolation boundary, attacked: root in a pod's guest (a container given CAP_SYS_ADMIN
//! mounts the pod's whole virtio-fs share, as a compromised guest kernel could) and a
//! containerd client with hostile fields try to reach the host, and every attempt fails
//! with nothing changed on the host. Symlinks planted in the share while the shim creates a
//! container, block and character device nodes, a setuid file then run by an unprivileged
//! host user, writes through a read-only bind remounted rw in the guest, `security.` and
//! `trusted.` xattrs, a sandbox id of `../..`, the host's own network namespace, and the pod's
//! sockets and directories as an unprivileged host user sees them; and the second wall: a
//! running pod's VMM in its jail (namespaces, root, capabilities, limits) with every thread
//! under its seccomp filter while the pod uses each device.

use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use carapace_tests::artifacts::{busybox_image, fs_probe, BUSYBOX_IMAGE};
use carapace_tests::carapace::{
    parent_of, thread_seccomp_modes, vmms_of, Carapace, RUNTIME, STATE_ROOT,
};
use carapace_tests::containerd::{make_temp_dir, mounts_under};
use carapace_tests::lab::wait_for;
use carapace_tests::lab_test;

const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The unprivileged host user of the attacks from the host side.
const NOBODY: u32 = 65534;

/// What guest root runs: each attack prints one `attack NAME: RESULT` line into /results in
/// its own rootfs (which the test reads on the host), then it keeps planting symlinks where
/// the shim will make container `late`'s directories until /stop appears.
const ATTACKER: &str = r#"
r=/results
say() { echo "attack $1: $2" >> $r; }
try() { name=$1; shift; if out=$("$@" 2>&1); then say "$name" "succeeded"; else say "$name" "failed: $out"; fi; }
mkdir -p /share
try mount mount -t virtiofs carapace /share
try plant-root ln -s /victim /share/late
try mkdir-root mkdir /share/late
try rename-own mv /share/att /share/att2
try replace-rootfs rm -rf /share/att/mounts
try mknod-block mknod /blk b 8 0
try mknod-char mknod /chr c 1 3
try mknod-fifo mknod /fifo p
cp /bin/busybox /suid-sh && chmod 4755 /suid-sh && say setuid "$(stat -c %a /suid-sh)"
try remount-ro mount -o remount,bind,rw /ro
try write-ro sh -c 'echo pwned > /ro/keep'
try create-ro sh -c 'echo new > /ro/new'
try write-ro-share sh -c 'for d in /share/att/mounts/*; do [ -f $d/keep ] && { echo pwned > $d/keep; exit; }; done; echo no-volume; exit 1'
echo data > /xf
# A valid VFS_CAP_REVISION_2 value (every permitted capability): the guest kernel checks it.
try xattr-capability /probe setxattr /xf security.capability hex:00000002ffffffff00000000ffffffff00000000
try xattr-security /probe setxattr /xf security.carapace x
try xattr-trusted /probe setxattr /xf trusted.overlay.opaque y
try xattr-user /probe setxattr /xf user.fine z
echo ready >> $r
while [ ! -e /stop ]; do
  ln -s /victim /share/late 2>/dev/null
  mkdir -p /share/late 2>/dev/null && ln -s /victim /share/late/rootfs 2>/dev/null
  ln -s /victim/file /share/late/mounts 2>/dev/null
done
echo stopped >> $r
sleep 1000
"#;

fn result<'a>(results: &'a str, name: &str) -> &'a str {
    let prefix = format!("attack {name}: ");
    results
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no result for {name}:\n{results}"))
}

fn assert_failed(results: &str, name: &str, because: &str) {
    let r = result(results, name);
    assert!(
        r.starts_with("failed") && r.contains(because),
        "{name} must fail with {because:?}: {r}\n{results}"
    );
}

/// Runs `path args` as the unprivileged host user; returns whether it ran and its output.
fn run_as_nobody(path: &Path, args: &[&str]) -> (bool, String) {
    run_as(NOBODY, path, args)
}

/// Runs `path args` as host user and group `id`; returns whether it succeeded and its output.
fn run_as(id: u32, path: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(path).args(args).uid(id).gid(id).output();
    match out {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// Whether the unprivileged host user can connect to the Unix socket at `path` (tried in a
/// forked child that drops to that uid; raw calls only after the fork).
fn nobody_can_connect(path: &Path) -> bool {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a zeroed sockaddr_un is valid; the path is copied within its bounds below.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = c.as_bytes_with_nul();
    assert!(bytes.len() <= addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: the child only makes system calls (no allocation, no locks) and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: plain system calls on values owned by this (child) process.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(NOBODY, NOBODY, NOBODY) != 0
                || libc::setresuid(NOBODY, NOBODY, NOBODY) != 0
            {
                libc::_exit(2);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            let rc = libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len);
            libc::_exit(if rc == 0 { 0 } else { 1 });
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 2,
        "the child could not drop to uid {NOBODY}"
    );
    libc::WEXITSTATUS(status) == 0
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// statvfs flags of the mount holding `path`.
fn mount_flags(path: &Path) -> u64 {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a zeroed statvfs is valid output space; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(
        rc,
        0,
        "statvfs {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    s.f_flag
}

/// A victim the attacks aim at: a directory with a file, and what it held.
fn victim(name: &str) -> PathBuf {
    let v = make_temp_dir(name);
    std::fs::write(v.join("file"), "precious\n").unwrap();
    v
}

fn assert_victim_intact(v: &Path) {
    let names: Vec<_> = std::fs::read_dir(v)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("file")],
        "{} gained entries",
        v.display()
    );
    assert_eq!(
        std::fs::read_to_string(v.join("file")).unwrap(),
        "precious\n"
    );
    assert!(
        mounts_under(v).is_empty(),
        "something was mounted on {}",
        v.display()
    );
}

lab_test! {
    fn guest_root_cannot_reach_the_host_through_the_share() {
        let c = Carapace::start();
        c.import(&busybox_image());
        let victim = victim("carapace-victim");
        let ro = make_temp_dir("carapace-ro");
        std::fs::write(ro.join("keep"), "host-only\n").unwrap();
        // The attacker's links name /victim: a shim that followed one on the host would
        // create, truncate or mount over the host's /victim.
        std::fs::create_dir_all("/victim").unwrap();
        std::fs::write("/victim/file", "precious\n").unwrap();
        let ro_mount = format!("type=bind,src={},dst=/ro,options=rbind:ro", ro.display());
        let probe = format!("type=bind,src={},dst=/probe,options=rbind:ro", fs_probe().display());
        let sandbox = format!("{CONTAINER_TYPE}=sandbox");
        c.ctr_ok(&[
            "run", "-d", "--runtime", RUNTIME, "--cap-add", "CAP_SYS_ADMIN", "--annotation", &sandbox,
            "--mount", &probe, "--mount", &ro_mount, BUSYBOX_IMAGE, "att", "sh", "-c", ATTACKER,
        ]);
        let pod = Path::new(STATE_ROOT).join("att");
        let rootfs = pod.join("shared/att/rootfs");
        let results = wait_for(Duration::from_secs(120), || {
            std::fs::read_to_string(rootfs.join("results")).ok().filter(|r| r.contains("ready"))
        })
        .unwrap_or_else(|| panic!("the attacker never got ready: {:?}\n{}", std::fs::read_to_string(rootfs.join("results")), c.log()));
        eprintln!("{results}");
        assert_eq!(result(&results, "mount"), "succeeded", "guest root mounts the whole share");

        // 1. Nothing above a container's own rootfs and volumes can be made, renamed or
        // replaced, so no link is ever where the shim creates a container: one joining the
        // pod while the attacker keeps planting them comes up and nothing on the host moved.
        for name in ["plant-root", "mkdir-root", "rename-own", "replace-rootfs"] {
            assert_failed(&results, name, "Read-only file system");
        }
        let member = format!("{CONTAINER_TYPE}=container");
        let in_pod = format!("{SANDBOX_ID}=att");
        let out = c.ctr_ok(&[
            "run", "--rm", "--runtime", RUNTIME, "--annotation", &member, "--annotation", &in_pod,
            "--mount", &format!("type=bind,src={},dst=/v,options=rbind:rw", victim.join("file").display()),
            BUSYBOX_IMAGE, "late", "sh", "-c", "cat /v; ls /",
        ]);
        assert!(out.starts_with("precious\n") && out.contains("bin"), "the late container ran in its own rootfs: {out}");
        assert_victim_intact(&victim);
        assert_eq!(std::fs::read_to_string("/victim/file").unwrap(), "precious\n");
        assert_eq!(std::fs::read_dir("/victim").unwrap().count(), 1, "/victim gained entries");

        // 2. No device node reaches the host's share; a FIFO is fine.
        assert_failed(&results, "mknod-block", "Operation not permitted");
        assert_failed(&results, "mknod-char", "Operation not permitted");
        assert_eq!(result(&results, "mknod-fifo"), "succeeded");
        assert!(!rootfs.join("blk").exists() && !rootfs.join("chr").exists());

        // A setuid file made by guest root exists on the host, but no unprivileged host user
        // can reach it (the pod directory is 0700) and its mount is nosuid,nodev.
        assert_eq!(result(&results, "setuid"), "4755");
        let suid = rootfs.join("suid-sh");
        assert_eq!(mode(&suid), 0o4755);
        let (ran, out) = run_as_nobody(&suid, &["id", "-u"]);
        assert!(!ran, "uid {NOBODY} ran the guest's setuid file: {out}");
        assert!(out.contains("Permission denied"), "{out}");
        let flags = mount_flags(&suid);
        assert!(flags & libc::ST_NOSUID != 0 && flags & libc::ST_NODEV != 0, "rootfs mount flags {flags:#x}");
        assert_eq!(mode(&pod), 0o700);
        assert_eq!(mode(Path::new(STATE_ROOT)), 0o711);

        // 3. A read-only bind stays read-only on the host, whatever the guest remounts.
        assert_eq!(result(&results, "remount-ro"), "succeeded", "guest root may remount its own view");
        for name in ["write-ro", "create-ro", "write-ro-share"] {
            assert_failed(&results, name, "Read-only file system");
        }
        assert_eq!(std::fs::read_to_string(ro.join("keep")).unwrap(), "host-only\n");
        assert!(!ro.join("new").exists());

        // 4. Only user. xattrs are set on host files.
        assert_failed(&results, "xattr-capability", "Operation not permitted");
        assert_failed(&results, "xattr-security", "Operation not permitted");
        assert_failed(&results, "xattr-trusted", "Operation not permitted");
        assert_eq!(result(&results, "xattr-user"), "succeeded");
        let xf = CString::new(rootfs.join("xf").as_os_str().as_encoded_bytes()).unwrap();
        for name in ["security.capability", "security.carapace", "trusted.overlay.opaque"] {
            let cname = CString::new(name).unwrap();
            // SAFETY: NUL-terminated strings; a null buffer of size 0 asks only for the size.
            let n = unsafe { libc::lgetxattr(xf.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
            assert!(n < 0, "{name} reached the host file");
        }

        // 6. The pod's sockets: 0600 in a 0700 directory; an unprivileged user cannot connect.
        assert_eq!(mode(&pod.join("vm")), 0o700);
        for s in ["api.sock", "vsock.sock"] {
            let p = pod.join("vm").join(s);
            assert!(std::fs::symlink_metadata(&p).unwrap().file_type().is_socket(), "{s}");
            assert_eq!(mode(&p), 0o600, "{s}");
            assert!(!nobody_can_connect(&p), "uid {NOBODY} connected to {s}");
        }

        std::fs::write(rootfs.join("stop"), "").unwrap();
        c.ctr_ok(&["task", "kill", "-s", "9", "att"]);
        wait_for(Duration::from_secs(30), || (c.task_status("att") == "STOPPED").then_some(()));
        c.delete_task("att", 137);
        c.assert_nothing_left();
        assert_victim_intact(&victim);
        assert_eq!(std::fs::read_to_string(ro.join("keep")).unwrap(), "host-only\n");
        let _ = std::fs::remove_dir_all("/victim");
        let _ = std::fs::remove_dir_all(&victim);
        let _ = std::fs::remove_dir_all(&ro);
    }
}

lab_test! {
    fn a_hostile_containerd_client_cannot_make_the_shim_touch_host_paths() {
        let c = Carapace::start();
        c.import(&busybox_image());
        // 5. A sandbox id that climbs out of the state root (it used to be removed).
        let victim = victim("carapace-victim-id");
        let name = victim.file_name().unwrap().to_string_lossy().into_owned();
        let climb = format!("{SANDBOX_ID}=../..{}/{name}", victim.parent().unwrap().display());
        let member = format!("{CONTAINER_TYPE}=container");
        let out = c.ctr_output(["run", "--rm", "--runtime", RUNTIME, "--annotation", &member, "--annotation", &climb, BUSYBOX_IMAGE, "climb", "true"]);
        assert!(!out.status.success(), "{}", c.explain("sandbox id ../..", &out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("sandbox id"), "the refusal names the sandbox id: {err}");
        assert_victim_intact(&victim);
        let _ = c.ctr_output(["container", "rm", "climb"]);

        // 8. The host's own network namespace is refused by name, before any tap is made.
        let out = c.ctr_output(["run", "--rm", "--runtime", RUNTIME, "--with-ns", "network:/proc/1/ns/net", BUSYBOX_IMAGE, "hostnet", "true"]);
        assert!(!out.status.success(), "{}", c.explain("host netns", &out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("host's own network namespace"), "{err}");
        let _ = c.ctr_output(["container", "rm", "hostnet"]);
        // A spec that shares the host's network (ctr --net-host; CRI's hostNetwork leaves the
        // namespace out the same way) is refused by name: a VM cannot share it.
        let out = c.ctr_output(["run", "--rm", "--runtime", RUNTIME, "--net-host", BUSYBOX_IMAGE, "nethost", "true"]);
        assert!(!out.status.success(), "{}", c.explain("--net-host", &out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("host's network namespace"), "{err}");
        let _ = c.ctr_output(["container", "rm", "nethost"]);

        c.assert_nothing_left();
        assert_victim_intact(&victim);
        let _ = std::fs::remove_dir_all(&victim);
    }
}

/// What a process's `/proc/<pid>/status` says for `key` (e.g. "CapEff").
fn status_field(pid: u32, key: &str) -> String {
    carapace_tests::carapace::status_field(pid, key)
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Runs `sleep 1000` as container `id`, a pod of its own, and returns its one VMM's pid.
fn run_one_pod(c: &Carapace, id: &str) -> u32 {
    c.import(&busybox_image());
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        BUSYBOX_IMAGE,
        id,
        "sleep",
        "1000",
    ]);
    assert_eq!(c.task_status(id), "RUNNING", "{}", c.log());
    let vmms = vmms_of(id);
    assert_eq!(vmms.len(), 1, "one VMM runs the pod");
    vmms[0]
}

/// The soft and hard values of the limit `name` ("Max processes") in a `/proc/<pid>/limits`.
fn soft_and_hard_limit<'a>(limits: &'a str, name: &str) -> Vec<&'a str> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|rest| rest.split_whitespace().take(2).collect())
        .unwrap_or_default()
}

/// The mount points of a `/proc/<pid>/mountinfo`, in its order.
fn mount_points(mountinfo: &str) -> Vec<&str> {
    mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect()
}

/// Checks that the VMM of running container `id` serves the devices a pod uses: vsock (an
/// exec), the rootfs (a file written, synced and read back), rng, and pause and resume
/// through its control API.
fn assert_the_vmm_serves_the_pod(c: &Carapace, id: &str) {
    let out = c.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "serves",
        id,
        "sh",
        "-c",
        "echo written > /f && sync && cat /f && head -c 16 /dev/urandom | wc -c",
    ]);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, ["written", "16"], "{out}");
    c.ctr_ok(&["task", "pause", id]);
    assert_eq!(c.task_status(id), "PAUSED");
    c.ctr_ok(&["task", "resume", id]);
    assert_eq!(c.task_status(id), "RUNNING");
}

/// The capabilities a jailed VMM with a share keeps: CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH,
/// FOWNER, FSETID, SETGID, SETUID and MKNOD (bits 0-4, 6, 7, 27).
const FS_CAPS: &str = "00000000080000df";

lab_test! {
    fn a_pods_vmm_runs_jailed_with_every_thread_under_its_seccomp_filter() {
        let c = Carapace::start_with_config(
            "vmm_max_file_size = 1073741824\nvmm_max_processes = 512\nvmm_max_open_files = 4096\n",
        );
        let vmm = run_one_pod(&c, "sc1");

        // The second wall: every thread filtered.
        let threads = thread_seccomp_modes(vmm);
        let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
        for kind in ["carapace-vmm", "vcpu0", "api", "signals"] {
            assert!(names.contains(&kind), "a {kind} thread among {names:?}");
        }
        for (name, mode) in &threads {
            assert_eq!(mode, "2", "thread {name} runs under a seccomp filter: {threads:?}");
        }
        // Its own mount, IPC, UTS, network and PID namespaces: PID 1 in the last.
        for ns in ["mnt", "ipc", "uts", "net", "pid"] {
            let own = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).unwrap();
            let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
            assert_ne!(own, host, "the VMM has a {ns} namespace of its own");
        }
        let nspid: Vec<String> = status_field(vmm, "NSpid").split_whitespace().map(String::from).collect();
        assert_eq!(nspid, [vmm.to_string(), "1".to_string()], "the VMM is PID 1 of its namespace");
        // Outside it, the process the shim started waits as its supervisor: no capability,
        // no descriptor but stderr and the VMM's liveness pipe, under a seccomp filter.
        let supervisor = parent_of(vmm).expect("the VMM's parent");
        assert!(std::fs::read_to_string(format!("/proc/{supervisor}/cmdline")).unwrap().contains("carapace-vmm"));
        for (key, want) in [("CapEff", "0000000000000000"), ("CapPrm", "0000000000000000"),
            ("CapBnd", "0000000000000000"), ("NoNewPrivs", "1"), ("Seccomp", "2")]
        {
            assert_eq!(status_field(supervisor, key), want, "the supervisor's {key}");
        }
        assert_eq!(std::fs::read_dir(format!("/proc/{supervisor}/fd")).unwrap().count(), 2, "the supervisor's descriptors");
        // A root holding the pod's VMM directory and its share only, read-only but for them.
        let pod_dir = format!("{STATE_ROOT}/sc1");
        let mountinfo = std::fs::read_to_string(format!("/proc/{vmm}/mountinfo")).unwrap();
        let points = mount_points(&mountinfo);
        let (vm_dir, share) = (format!("{pod_dir}/vm"), format!("{pod_dir}/shared"));
        assert_eq!(points.first(), Some(&"/"), "the jail's mounts:\n{mountinfo}");
        assert!(points.contains(&vm_dir.as_str()) && points.contains(&share.as_str()), "{mountinfo}");
        assert!(!points.contains(&pod_dir.as_str()), "the rest of the pod's state directory stays outside:\n{mountinfo}");
        // Below the share, the containers' rootfs mounts; the VMM's own /proc/self/fd and
        // mountinfo;
        // nothing else (no /proc, /dev/kvm, kernel or initramfs: unmounted once open).
        for p in &points[1..] {
            assert!(p.starts_with(&pod_dir) || ["/proc/self/fd", "/proc/self/mountinfo"].contains(p), "{p} is mounted in the jail:\n{mountinfo}");
        }
        let mut top: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(top, ["proc", "run"], "what the VMM's / holds");
        assert!(mountinfo.lines().next().unwrap().contains(" ro,"), "its root is read-only:\n{mountinfo}");
        // The capabilities the virtio-fs passthrough needs, and no more; no_new_privs.
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(status_field(vmm, set), FS_CAPS, "{set}");
        }
        assert_eq!(status_field(vmm, "CapInh"), "0000000000000000");
        assert_eq!(status_field(vmm, "CapAmb"), "0000000000000000");
        assert_eq!(status_field(vmm, "NoNewPrivs"), "1");
        // The configured resource limits.
        let limits = std::fs::read_to_string(format!("/proc/{vmm}/limits")).unwrap();
        for (name, value) in [
            ("Max file size", "1073741824"),
            ("Max processes", "512"),
            ("Max open files", "4096"),
        ] {
            assert_eq!(soft_and_hard_limit(&limits, name), [value, value], "{name}:\n{limits}");
        }

        // The confined VMM serves every device the pod uses: vsock (exec), virtio-fs (the
        // rootfs written and read back), rng, pause and resume through the control API.
        assert_the_vmm_serves_the_pod(&c, "sc1");
        let out = c.ctr_ok(&["task", "exec", "--exec-id", "e2", "sc1", "cat", "/f"]);
        assert_eq!(out.trim(), "written");
        c.ctr_ok(&["task", "kill", "-s", "9", "sc1"]);
        let stopped = wait_for(Duration::from_secs(30), || (c.task_status("sc1") == "STOPPED").then_some(()));
        assert!(stopped.is_some(), "sc1 stops after kill -9");
        c.delete_task("sc1", 137);
        // A forbidden call mid-run ends the VM on its own (the shim logs the VMM's log, which
        // names the call); one during teardown shows in the VMM's exit status.
        let log = c.log();
        assert!(!log.contains("forbidden syscall"), "no VMM thread made a forbidden syscall:\n{log}");
        assert!(!log.contains("outside its seccomp filter"), "{log}");
        assert!(!log.contains("seccomp is OFF"), "{log}");
        c.assert_nothing_left();
    }
}

/// The uid and gid the VMM of a pod without a share takes in the test below: one of its own,
/// which no other process uses.
const VMM_USER: u32 = 65532;

lab_test! {
    fn a_pod_without_a_share_runs_its_vmm_as_the_configured_user_with_no_capability() {
        let c = Carapace::start_with_share(
            "block-copy",
            &format!("vmm_user = \"{VMM_USER}:{VMM_USER}\"\nvmm_max_processes = 64\n"),
        );
        let vmm = run_one_pod(&c, "uc1");
        // The user and group of the configuration, real, effective, saved and filesystem; no
        // supplementary group, no capability, no_new_privs, every thread filtered.
        let id = format!("{VMM_USER}\t{VMM_USER}\t{VMM_USER}\t{VMM_USER}");
        assert_eq!(status_field(vmm, "Uid"), id);
        assert_eq!(status_field(vmm, "Gid"), id);
        assert_eq!(status_field(vmm, "Groups"), "");
        for set in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
            assert_eq!(status_field(vmm, set), "0000000000000000", "{set}");
        }
        assert_eq!(status_field(vmm, "NoNewPrivs"), "1");
        for (name, mode) in thread_seccomp_modes(vmm) {
            assert_eq!(mode, "2", "thread {name}");
        }
        let limits = std::fs::read_to_string(format!("/proc/{vmm}/limits")).unwrap();
        assert_eq!(soft_and_hard_limit(&limits, "Max processes"), ["64", "64"], "{limits}");
        // Its directory is that user's, in the root-only pod directory, and it is all of the
        // pod's state directory that the jail holds.
        let pod = Path::new(STATE_ROOT).join("uc1");
        let vm_dir = pod.join("vm");
        let md = std::fs::metadata(&vm_dir).unwrap();
        assert_eq!((md.uid(), md.gid(), mode(&vm_dir)), (VMM_USER, VMM_USER, 0o700));
        assert_eq!((std::fs::metadata(&pod).unwrap().uid(), mode(&pod)), (0, 0o700));
        let mountinfo = std::fs::read_to_string(format!("/proc/{vmm}/mountinfo")).unwrap();
        let points = mount_points(&mountinfo);
        assert_eq!(points, ["/", vm_dir.to_str().unwrap(), "/proc/self/fd", "/proc/self/mountinfo"], "{mountinfo}");
        // Another process of the same user cannot look inside it (the VMM is not dumpable
        // once it dropped root), and another user cannot reach its sockets.
        let cat = Path::new("/bin/cat");
        let (read, out) = run_as(VMM_USER, cat, &[&format!("/proc/{vmm}/environ")]);
        assert!(!read, "uid {VMM_USER} read the VMM's environment: {out}");
        for s in ["api.sock", "vsock.sock"] {
            assert!(!nobody_can_connect(&vm_dir.join(s)), "uid {NOBODY} connected to {s}");
        }

        // As that user it serves the pod: exec (vsock), the rootfs image written and read
        // back (blk), rng, pause and resume (the control API).
        assert_the_vmm_serves_the_pod(&c, "uc1");
        c.ctr_ok(&["task", "kill", "-s", "9", "uc1"]);
        let stopped = wait_for(Duration::from_secs(30), || (c.task_status("uc1") == "STOPPED").then_some(()));
        assert!(stopped.is_some(), "uc1 stops after kill -9");
        c.delete_task("uc1", 137);
        let log = c.log();
        assert!(!log.contains("forbidden syscall"), "{log}");
        c.assert_nothing_left();
    }
}
