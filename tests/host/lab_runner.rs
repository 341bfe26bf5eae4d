//! tests/lab/run keeps its promises: the command's output and exit status come back, the
//! writable output share works, a timeout or a lab that cannot boot gives its own status and
//! message, and no QEMU outlives the runner in any case.

use std::process::{Command, Output};
use std::sync::Mutex;

use carapace_tests::containerd::{make_temp_dir, processes_mentioning};
use carapace_tests::repo_root;

/// One lab at a time: the machines have two cores.
static LAB: Mutex<()> = Mutex::new(());

fn lab(args: &[&str], env: &[(&str, &str)]) -> Output {
    let _one = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let before = processes_mentioning("carapace-lab.");
    let out = Command::new(repo_root().join("tests/lab/run"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo_root())
        .output()
        .expect("run tests/lab/run");
    let after: Vec<u32> = processes_mentioning("carapace-lab.")
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(
        after.is_empty(),
        "processes outlived tests/lab/run: {after:?}"
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn command_output_status_and_environment_come_back() {
    let out = lab(
        &["--", "sh", "-c", "echo in-lab $(id -u) $(pwd) $CARAPACE_PROBE; test -c /dev/kvm && grep -qw svm /proc/cpuinfo && echo kvm-ok; exit 7"],
        &[("CARAPACE_PROBE", "passed through")],
    );
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let root = repo_root();
    assert!(
        stdout.contains(&format!("in-lab 0 {} passed through", root.display())),
        "stdout: {stdout}"
    );
    assert!(stdout.contains("kvm-ok"), "stdout: {stdout}");
    assert!(
        text(&out.stderr).contains("lab: booted in"),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn output_share_is_writable_and_the_rest_is_discarded() {
    let dir = make_temp_dir("carapace-lab-out");
    let marker = repo_root().join("target/lab-write-probe");
    let script = format!(
        "echo written > $CARAPACE_LAB_OUT/result && touch {} && echo ok",
        marker.display()
    );
    let out = lab(
        &["--", "sh", "-c", &script],
        &[("CARAPACE_LAB_OUT", dir.to_str().expect("utf-8 path"))],
    );
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("result")).expect("result written in the lab"),
        "written\n"
    );
    assert!(
        !marker.exists(),
        "a write outside the output share reached the host"
    );
    std::fs::remove_dir_all(&dir).expect("remove output dir");
}

#[test]
fn a_command_past_its_timeout_is_stopped_with_status_124() {
    let out = lab(&["--timeout", "2", "--", "sleep", "60"], &[]);
    assert_eq!(
        out.status.code(),
        Some(124),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("ran past the timeout of 2 s"),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn a_lab_that_cannot_boot_fails_with_status_125() {
    let dir = make_temp_dir("carapace-bad-kernel");
    let bad = dir.join("vmlinux");
    std::fs::write(&bad, b"not a kernel").expect("write bad kernel");
    let out = lab(
        &["--", "true"],
        &[("CARAPACE_LAB_KERNEL", bad.to_str().expect("utf-8 path"))],
    );
    std::fs::remove_dir_all(&dir).expect("remove bad kernel");
    assert_eq!(
        out.status.code(),
        Some(125),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("the lab failed to boot"),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn bad_arguments_are_refused_before_booting() {
    let out = lab(&["--timeout", "soon", "--", "true"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--timeout must be a number of seconds, got 'soon'"));
    let out = lab(&["--frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown option '--frobnicate'"));
}
