//! Log URIs and guest processes through containerd-shim-carapace-v2: `ctr run --log-uri
//! file://...` and `binary://...` (a logging script gets the container's stdout and stderr,
//! its environment and arguments, and is gone once the task is deleted), an exec's log file,
//! bad log URIs refused by name with nothing left behind, and `ctr task ps` listing the
//! guest pids of a container.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use carapace_tests::artifacts::{busybox_image, BUSYBOX_IMAGE};
use carapace_tests::carapace::{Carapace, RUNTIME};
use carapace_tests::containerd::{make_temp_dir, Containerd, NAMESPACE};
use carapace_tests::lab::wait_for;
use carapace_tests::lab_test;

fn run_logged(c: &Containerd, id: &str, uri: &str, cmd: &str) -> Output {
    c.ctr_output([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--log-uri",
        uri,
        BUSYBOX_IMAGE,
        id,
        "sh",
        "-c",
        cmd,
    ])
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{}: {e}>", p.display()))
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write the logger");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod the logger");
}

lab_test! {
    fn file_and_binary_log_uris() {
        let c = Carapace::start();
        c.import(&busybox_image());
        let dir = make_temp_dir("carapace-logs");

        // file://: stdout and stderr appended to the file (its directory created).
        let log = dir.join("sub/x.log");
        let uri = format!("file://{}", log.display());
        let out = run_logged(&c, "l1", &uri, "echo to-out; echo to-err >&2; exit 3");
        assert_eq!(out.status.code(), Some(3), "{}", c.explain("ctr run file://", &out));
        assert!(out.stdout.is_empty(), "{}", c.explain("ctr run file://", &out));
        let text = read(&log);
        assert!(text.contains("to-out\n") && text.contains("to-err\n"), "the log file: {text:?}\n{}", c.log());

        // binary://: the logger gets fd 3 (stdout), fd 4 (stderr), closes fd 5 when ready.
        let logger = dir.join("logger.sh");
        let d = dir.display();
        write_script(&logger, &format!(
            "echo $$ > {d}/logger.pid\n\
             echo \"$CONTAINER_ID $CONTAINER_NAMESPACE $1 $2\" > {d}/logger.env\n\
             exec 5>&-\n\
             /bin/cat <&3 > {d}/logger.out &\n\
             /bin/cat <&4 > {d}/logger.err\n\
             wait"
        ));
        let uri = format!("binary://{}?tag=t1", logger.display());
        let out = run_logged(&c, "l2", &uri, "echo bin-out; echo bin-err >&2");
        assert!(out.status.success(), "{}", c.explain("ctr run binary://", &out));
        assert_eq!(read(&dir.join("logger.out")), "bin-out\n", "{}", c.log());
        assert_eq!(read(&dir.join("logger.err")), "bin-err\n", "{}", c.log());
        assert_eq!(read(&dir.join("logger.env")), format!("l2 {NAMESPACE} tag t1\n"));
        let pid = read(&dir.join("logger.pid")).trim().to_string();
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the logger {pid} outlived its task");

        // Bad log URIs: refused by name, no VM booted, nothing left.
        let exits = dir.join("exits.sh");
        write_script(&exits, "exit 3");
        for (i, (uri, says)) in [
            ("binary:///nonexistent/logger".to_string(), "/nonexistent/logger".to_string()),
            ("syslog:///x".to_string(), "unknown scheme".to_string()),
            (format!("binary://{}", exits.display()), "exited with status 3".to_string()),
        ]
        .iter()
        .enumerate()
        {
            let id = format!("bad{i}");
            let out = run_logged(&c, &id, uri, "echo never");
            assert!(!out.status.success(), "{}", c.explain(uri, &out));
            assert!(String::from_utf8_lossy(&out.stderr).contains(says.as_str()), "{}", c.explain(uri, &out));
            let _ = c.ctr_output(["container", "rm", &id]);
        }

        c.assert_nothing_left();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The pids `ctr task ps` lists.
fn task_pids(c: &Containerd, id: &str) -> BTreeSet<u32> {
    c.ctr_ok(&["task", "ps", id])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The PID column of `ctr task ls` for `id` (the task pid containerd keeps).
fn task_pid(c: &Containerd, id: &str) -> Option<u32> {
    c.ctr_ok(&["task", "ls"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

lab_test! {
    fn ctr_task_ps_lists_guest_pids_and_exec_logs() {
        let c = Carapace::start();
        c.import(&busybox_image());
        let dir = make_temp_dir("carapace-ps");
        c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, BUSYBOX_IMAGE, "p1", "sh", "-c", "sleep 1000 & sleep 1000"]);

        // sh and its sleeps (busybox sh may exec the last one): two processes at least.
        let pids = wait_for(Duration::from_secs(20), || {
            let p = task_pids(&c, "p1");
            (p.len() >= 2).then_some(p)
        });
        let pids = pids.unwrap_or_else(|| panic!("ctr task ps: {:?}\n{}", task_pids(&c, "p1"), c.log()));
        // The task pid stays the VMM's, a host process; the listed pids are the guest's.
        let vmm = task_pid(&c, "p1").expect("ctr task ls shows p1");
        assert!(Path::new(&format!("/proc/{vmm}")).exists(), "the task pid {vmm} is a host process");
        assert!(!pids.contains(&vmm), "guest pids {pids:?}, not the VMM's {vmm}");

        // An exec's own log URI, and its process listed while it runs.
        let log = dir.join("exec.log");
        let uri = format!("file://{}", log.display());
        c.ctr_ok(&["task", "exec", "--exec-id", "e1", "--log-uri", &uri, "p1", "sh", "-c", "echo exec-out; echo exec-err >&2"]);
        let text = read(&log);
        assert!(text.contains("exec-out\n") && text.contains("exec-err\n"), "the exec's log: {text:?}\n{}", c.log());
        let mut e2 = c
            .ctr(["task", "exec", "--exec-id", "e2", "p1", "sleep", "1000"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ctr task exec");
        let more = wait_for(Duration::from_secs(20), || {
            let p = task_pids(&c, "p1");
            (p.len() > pids.len()).then_some(p)
        });
        assert!(more.is_some(), "the exec's process is listed: {:?} then {:?}", pids, task_pids(&c, "p1"));

        c.ctr_ok(&["task", "kill", "-a", "-s", "9", "p1"]);
        let stopped = wait_for(Duration::from_secs(20), || {
            c.ctr_ok(&["task", "ls"]).lines().any(|l| l.starts_with("p1 ") && l.contains("STOPPED")).then_some(())
        });
        assert!(stopped.is_some(), "p1 stops after kill -9\n{}", c.log());
        // The exec died with its container: its ctr returns.
        let _ = e2.kill();
        let _ = e2.wait();
        c.ctr_ok(&["task", "delete", "p1"]);
        c.ctr_ok(&["container", "rm", "p1"]);
        c.assert_nothing_left();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
