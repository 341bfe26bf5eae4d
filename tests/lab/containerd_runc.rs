//! The lab runs containerd and runc: `ctr run --rm` of the busybox image, output read back,
//! exit codes passed through. This is the baseline carapace is compared with.

use std::time::{Duration, Instant};

use carapace_tests::artifacts::{busybox_image, BUSYBOX_IMAGE};
use carapace_tests::containerd::{mounts_under, processes_mentioning, Containerd};
use carapace_tests::lab::ms;
use carapace_tests::lab_test;

fn run(c: &Containerd, id: &str, cmd: &[&str]) -> (std::process::Output, Duration) {
    let start = Instant::now();
    let out = c.ctr_output(["run", "--rm", BUSYBOX_IMAGE, id].iter().chain(cmd));
    (out, start.elapsed())
}

lab_test! {
    fn ctr_run_with_runc() {
        let c = Containerd::start();
        c.import(&busybox_image());

        let (out, first) = run(&c, "echo1", &["echo", "hello from runc"]);
        assert!(out.status.success(), "ctr run failed: {}\n{}", String::from_utf8_lossy(&out.stderr), c.log());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "hello from runc");

        let (out, second) = run(&c, "echo2", &["sh", "-c", "cat /etc/hostname >/dev/null; echo $((6 * 7))"]);
        assert!(out.status.success(), "ctr run failed: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "42");

        let (out, _) = run(&c, "exit3", &["sh", "-c", "echo to-stderr >&2; exit 3"]);
        assert_eq!(out.status.code(), Some(3), "the container's exit status reaches ctr");
        assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));

        let tasks = c.ctr_output(["tasks", "list", "-q"]);
        assert!(String::from_utf8_lossy(&tasks.stdout).trim().is_empty(), "--rm left tasks behind");
        let root = std::path::Path::new("/run/containerd");
        assert!(mounts_under(root).is_empty(), "mounts left under {}", root.display());

        println!("lab figure: ctr run --rm (runc) first {:.0} ms, second {:.0} ms", ms(first), ms(second));
        let socket = c.socket().to_string_lossy().into_owned();
        drop(c);
        assert!(processes_mentioning(&socket).is_empty(), "processes outlived containerd");
    }
}
