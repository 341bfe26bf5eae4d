//! containerd runs containers in carapace microVMs through containerd-shim-carapace-v2:
//! `ctr run --rm --runtime io.containerd.carapace.v2` output, exit codes, a terminal
//! (`ctr run -t`), a privileged container, and nothing left on the host afterwards (no VMM, no shim, no state directory, no mount).

use std::time::{Duration, Instant};

use carapace_tests::artifacts::{busybox_image, BUSYBOX_IMAGE};
use carapace_tests::carapace::{Carapace, RUNTIME};
use carapace_tests::containerd::{Containerd, NAMESPACE};
use carapace_tests::lab::ms;
use carapace_tests::lab_test;

fn run(c: &Containerd, id: &str, cmd: &[&str]) -> (std::process::Output, Duration) {
    let start = Instant::now();
    let args = ["run", "--rm", "--runtime", RUNTIME, BUSYBOX_IMAGE, id];
    let out = c.ctr_output(args.iter().chain(cmd));
    (out, start.elapsed())
}

lab_test! {
    fn ctr_run_rm_in_a_microvm() {
        let c = Carapace::start();
        c.import(&busybox_image());

        let (out, first) = run(&c, "t1", &["echo", "hi"]);
        assert!(out.status.success(), "ctr run failed: {}", c.explain("ctr run", &out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "hi", "{}", c.explain("ctr run", &out));

        let (out, second) = run(&c, "t2", &["sh", "-c", "echo to-stderr >&2; exit 3"]);
        assert_eq!(out.status.code(), Some(3), "the exit status reaches ctr: {}", c.explain("ctr run", &out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"), "{}", c.explain("ctr run", &out));

        // The container runs in a VM of its own: it sees the VM's one vCPU (the lab has two).
        let (out, _) = run(&c, "t3", &["grep", "-c", "^processor", "/proc/cpuinfo"]);
        assert!(out.status.success(), "{}", c.explain("ctr run", &out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{}", c.explain("ctr run", &out));

        // A terminal (`ctr run -t`, given one by script(1)): the process sees a tty, and its
        // exit status still comes back.
        let ctr = format!(
            "ctr --address {} --namespace {NAMESPACE} run -t --rm --runtime {RUNTIME} {BUSYBOX_IMAGE} tty1 sh -c 'test -t 0 && echo is-a-tty; exit 4'",
            c.socket().display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &ctr, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run script");
        assert_eq!(out.status.code(), Some(4), "{}", c.explain("ctr run", &out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("is-a-tty"), "{}", c.explain("ctr run", &out));

        let tasks = c.ctr_output(["tasks", "list", "-q"]);
        assert!(String::from_utf8_lossy(&tasks.stdout).trim().is_empty(), "--rm left tasks behind");
        c.assert_nothing_left();
        if std::env::var_os("CARAPACE_SHOW_LOG").is_some() {
            println!("{}", c.log());
        }
        println!("lab figure: ctr run --rm (carapace) first {:.0} ms, second {:.0} ms", ms(first), ms(second));
    }
}

lab_test! {
    fn a_privileged_container_runs_with_every_capability_and_the_guests_devices() {
        let c = Carapace::start();
        c.import(&busybox_image());
        // Every device node of the spec is made in the container's /dev: those of the guest
        // (its serial console, say), never the host's, which the guest cannot name.
        let script = "grep ^CapEff: /proc/self/status; test -c /dev/ttyS0 && echo guest-serial; mknod /dev/made c 1 3 && echo x > /dev/made && echo made-null";
        let start = Instant::now();
        let (out, _) = (c.ctr_output(["run", "--rm", "--privileged", "--runtime", RUNTIME, BUSYBOX_IMAGE, "priv1", "sh", "-c", script]), ());
        let took = start.elapsed();
        assert!(out.status.success(), "{}", c.explain("ctr run --privileged", &out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<String> = stdout.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
        assert_eq!(lines[1..], ["guest-serial", "made-null"], "{stdout}");
        assert!(lines[0].starts_with("CapEff: 000001ff") || lines[0].starts_with("CapEff: 000003ff"), "every capability: {stdout}");
        c.assert_nothing_left();
        println!("lab figure: ctr run --rm --privileged (carapace) {:.0} ms", ms(took));
    }
}
