//! A long-running container in a carapace microVM driven with `ctr task`: exec (output and
//! exit code), ps, pause/resume, metrics, kill -9 (exit 137), and a VMM that dies under its
//! container (TaskExit published, nothing left after delete).

use std::process::Output;
use std::time::Duration;

use carapace_tests::artifacts::{busybox_image, BUSYBOX_IMAGE};
use carapace_tests::carapace::{Carapace, RUNTIME};
use carapace_tests::containerd::{processes_mentioning, Containerd};
use carapace_tests::lab::wait_for;
use carapace_tests::lab_test;

fn explain(c: &Containerd, what: &str, out: &Output) -> String {
    format!(
        "{what}: status {:?}\nstdout: {}\nstderr: {}\n--- containerd log ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.log()
    )
}

fn ok(c: &Containerd, args: &[&str]) -> String {
    let out = c.ctr_output(args);
    assert!(
        out.status.success(),
        "{}",
        explain(c, &args.join(" "), &out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The STATUS column of `ctr task ls` for `id`.
fn task_status(c: &Containerd, id: &str) -> String {
    ok(c, &["task", "ls"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("absent")
        .to_string()
}

fn run_detached(c: &Containerd, id: &str) {
    ok(
        c,
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            BUSYBOX_IMAGE,
            id,
            "sleep",
            "1000",
        ],
    );
    assert_eq!(task_status(c, id), "RUNNING");
}

/// Deletes the task, checks the exit status `ctr task delete` reports (containerd 1.6's ctr
/// warns "task ID exit with non-zero exit code N"), then removes the container.
fn delete(c: &Containerd, id: &str, status: u32) {
    let out = c.ctr_output(["task", "delete", id]);
    assert!(out.status.success(), "{}", explain(c, "task delete", &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reported = stderr
        .split("non-zero exit code ")
        .nth(1)
        .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    assert_eq!(reported, status, "{}", explain(c, "task delete", &out));
    ok(c, &["container", "rm", id]);
}

lab_test! {
    fn ctr_task_exec_ps_pause_metrics_kill() {
        let c = Carapace::start();
        c.import(&busybox_image());
        run_detached(&c, "d1");

        let out = ok(&c, &["task", "exec", "--exec-id", "e1", "d1", "sh", "-c", "echo from-exec; echo err >&2"]);
        assert_eq!(out.trim(), "from-exec");
        let out = c.ctr_output(["task", "exec", "--exec-id", "e2", "d1", "sh", "-c", "exit 5"]);
        assert_eq!(out.status.code(), Some(5), "{}", explain(&c, "exec exit 5", &out));
        // The exec sees the container's own processes (same pid namespace): sleep is there.
        let out = ok(&c, &["task", "exec", "--exec-id", "e3", "d1", "ps"]);
        assert!(out.contains("sleep 1000"), "ps in the container: {out}");

        let ps = ok(&c, &["task", "ps", "d1"]);
        assert!(ps.lines().count() >= 2, "ctr task ps lists a process: {ps}");

        ok(&c, &["task", "pause", "d1"]);
        assert_eq!(task_status(&c, "d1"), "PAUSED");
        ok(&c, &["task", "resume", "d1"]);
        assert_eq!(task_status(&c, "d1"), "RUNNING");

        let metrics = ok(&c, &["task", "metrics", "d1"]);
        assert!(metrics.contains("pids.current"), "cgroup v2 metrics: {metrics}");
        assert!(metrics.contains("memory.usage"), "cgroup v2 metrics: {metrics}");

        ok(&c, &["task", "kill", "-s", "9", "d1"]);
        let stopped = wait_for(Duration::from_secs(20), || (task_status(&c, "d1") == "STOPPED").then_some(()));
        assert!(stopped.is_some(), "the task stops after kill -9: {}", task_status(&c, "d1"));
        delete(&c, "d1", 137);

        let left = c.leftovers();
        assert!(left.is_empty(), "carapace left traces: {left:?}\n{}", c.log());
    }
}

lab_test! {
    fn vmm_crash_ends_the_task_and_leaves_nothing() {
        let c = Carapace::start();
        c.import(&busybox_image());
        run_detached(&c, "crash1");
        let pod = processes_mentioning("/run/carapace/crash1/");
        let vmms: Vec<u32> = processes_mentioning("carapace-vmm")
            .into_iter()
            .filter(|p| pod.contains(p))
            .collect();
        assert_eq!(vmms.len(), 1, "one VMM runs the pod: {vmms:?}");
        // SAFETY: kill(2) with a pid read from /proc and a valid signal number.
        unsafe { libc::kill(vmms[0] as libc::pid_t, libc::SIGKILL) };
        let stopped = wait_for(Duration::from_secs(20), || (task_status(&c, "crash1") == "STOPPED").then_some(()));
        assert!(stopped.is_some(), "TaskExit reaches containerd: {}\n{}", task_status(&c, "crash1"), c.log());
        delete(&c, "crash1", 255);
        let left = c.leftovers();
        assert!(left.is_empty(), "carapace left traces: {left:?}\n{}", c.log());
    }
}
