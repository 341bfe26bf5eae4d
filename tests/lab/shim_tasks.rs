//! A long-running container in a carapace microVM driven with `ctr task`: exec (output, exit
//! code, the container's seccomp profile), ps, pause/resume, metrics, kill -9 (exit 137), and a VMM that dies under its
//! container (TaskExit published, nothing left after delete).

use std::time::Duration;

use carapace_tests::artifacts::{busybox_image, BUSYBOX_IMAGE};
use carapace_tests::carapace::{vmms_of, Carapace, RUNTIME};
use carapace_tests::containerd::Containerd;
use carapace_tests::lab::wait_for;
use carapace_tests::lab_test;

/// Runs `sleep 1000` as container `id`, under containerd's default seccomp profile.
fn run_detached(c: &Containerd, id: &str) {
    c.ctr_ok(&[
        "run",
        "-d",
        "--seccomp",
        "--runtime",
        RUNTIME,
        BUSYBOX_IMAGE,
        id,
        "sleep",
        "1000",
    ]);
    assert_eq!(c.task_status(id), "RUNNING");
}

lab_test! {
    fn ctr_task_exec_ps_pause_metrics_kill() {
        let c = Carapace::start();
        c.import(&busybox_image());
        run_detached(&c, "d1");

        let out = c.ctr_ok(&["task", "exec", "--exec-id", "e1", "d1", "sh", "-c", "echo from-exec; echo err >&2"]);
        assert_eq!(out.trim(), "from-exec");
        let out = c.ctr_output(["task", "exec", "--exec-id", "e2", "d1", "sh", "-c", "exit 5"]);
        assert_eq!(out.status.code(), Some(5), "{}", c.explain("exec exit 5", &out));
        // The exec sees the container's own processes (same pid namespace): sleep is there.
        let out = c.ctr_ok(&["task", "exec", "--exec-id", "e3", "d1", "ps"]);
        assert!(out.contains("sleep 1000"), "ps in the container: {out}");
        // The exec runs under the container's seccomp profile, as its first process does.
        let out = c.ctr_ok(&["task", "exec", "--exec-id", "e4", "d1", "sh", "-c", "grep ^Seccomp: /proc/1/status /proc/self/status"]);
        let modes: Vec<&str> = out.lines().map(|l| l.split_whitespace().last().unwrap_or("")).collect();
        assert_eq!(modes, ["2", "2"], "init's and the exec's seccomp modes: {out}");

        let ps = c.ctr_ok(&["task", "ps", "d1"]);
        assert!(ps.lines().count() >= 2, "ctr task ps lists a process: {ps}");

        c.ctr_ok(&["task", "pause", "d1"]);
        assert_eq!(c.task_status("d1"), "PAUSED");
        c.ctr_ok(&["task", "resume", "d1"]);
        assert_eq!(c.task_status("d1"), "RUNNING");

        let metrics = c.ctr_ok(&["task", "metrics", "d1"]);
        assert!(metrics.contains("pids.current"), "cgroup v2 metrics: {metrics}");
        assert!(metrics.contains("memory.usage"), "cgroup v2 metrics: {metrics}");

        c.ctr_ok(&["task", "kill", "-s", "9", "d1"]);
        let stopped = wait_for(Duration::from_secs(20), || (c.task_status("d1") == "STOPPED").then_some(()));
        assert!(stopped.is_some(), "the task stops after kill -9: {}", c.task_status("d1"));
        c.delete_task("d1", 137);

        c.assert_nothing_left();
    }
}

lab_test! {
    fn vmm_crash_ends_the_task_and_leaves_nothing() {
        let c = Carapace::start();
        c.import(&busybox_image());
        run_detached(&c, "crash1");
        // The VMM itself, inside its jail's PID namespace (its supervisor then dies of the
        // same signal).
        let vmms = vmms_of("crash1");
        assert_eq!(vmms.len(), 1, "one VMM runs the pod: {vmms:?}");
        // SAFETY: kill(2) with a pid read from /proc and a valid signal number.
        unsafe { libc::kill(vmms[0] as libc::pid_t, libc::SIGKILL) };
        let stopped = wait_for(Duration::from_secs(20), || (c.task_status("crash1") == "STOPPED").then_some(()));
        assert!(stopped.is_some(), "TaskExit reaches containerd: {}\n{}", c.task_status("crash1"), c.log());
        c.delete_task("crash1", 255);
        c.assert_nothing_left();
    }
}
