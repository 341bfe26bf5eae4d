//! containerd runs containers in carapace microVMs through containerd-shim-carapace-v2:
//! `ctr run --rm --runtime io.containerd.carapace.v2` output, exit codes, a terminal
//! (`ctr run -t`), a privileged container, the spec's OCI hooks (run on the host; in-container ones refused), and nothing left on the host afterwards (no VMM, no shim, no state directory, no mount).

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

/// A spec for `ctr run --config` (no image: the rootfs is the spec's `root.path`): busybox
/// in `dir/rootfs` running `cmd`, with `hooks` (OCI JSON), written to `dir/spec-<name>.json`.
fn spec_with_hooks(
    c: &Containerd,
    dir: &std::path::Path,
    name: &str,
    cmd: &[&str],
    hooks: serde_json::Value,
) -> std::path::PathBuf {
    let rootfs = dir.join("rootfs");
    if !rootfs.exists() {
        carapace_tests::agent::busybox_rootfs(&rootfs);
    }
    let mut spec: serde_json::Value =
        serde_json::from_str(&c.ctr_ok(&["oci", "spec"])).expect("ctr oci spec prints JSON");
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": false});
    spec["process"]["args"] = serde_json::json!(cmd);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    // `ctr oci spec` has no container id to put in its cgroup path (it prints "/default", a
    // parent of other tests' containers); `ctr run` would name the container's own.
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/default/hooks-{name}"));
    spec["hooks"] = hooks;
    let path = dir.join(format!("spec-{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    path
}

/// A hook running the test's script for `stage`: it keeps the state it read as
/// `DIR/<stage>.json` and, at `create`, the task pid's command name and network namespace.
fn hook(dir: &std::path::Path, stage: &str) -> serde_json::Value {
    serde_json::json!({"path": "/bin/sh", "args": ["sh", dir.join("hook.sh"), stage], "env": [format!("DIR={}", dir.display())]})
}

const HOOK_SCRIPT: &str = r#"state=$(cat)
echo "$state" >"$DIR/$1.json"
pid=$(echo "$state" | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
if [ "$1" = create ]; then cat /proc/$pid/comm >"$DIR/create.comm"; readlink /proc/$pid/ns/net >"$DIR/create.netns"; fi
if [ "$1" = fail ]; then echo hook-says-no >&2; exit 3; fi
exit 0
"#;

lab_test! {
    fn the_specs_host_hooks_run_on_the_host_and_in_container_ones_are_refused() {
        let c = Carapace::start();
        let dir = c.dir().join("hooks");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hook.sh"), HOOK_SCRIPT).unwrap();
        let read_state = |stage: &str| -> serde_json::Value {
            let text = std::fs::read_to_string(dir.join(format!("{stage}.json")))
                .unwrap_or_else(|e| panic!("the {stage} hook ran: {e}\n{}", c.log()));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{stage} state {text:?}: {e}"))
        };

        // prestart/createRuntime at Create with the task's pid (the VMM, in the pod's network
        // namespace), poststart after Start, poststop after Delete.
        let spec = spec_with_hooks(&c, &dir, "hooked", &["echo", "hooked"], serde_json::json!({
            "createRuntime": [hook(&dir, "create")],
            "poststart": [hook(&dir, "poststart")],
            "poststop": [hook(&dir, "poststop")],
        }));
        let out = c.ctr_output(["run", "--rm", "--runtime", RUNTIME, "--config", spec.to_str().unwrap(), "hooked"]);
        assert!(out.status.success(), "{}", c.explain("ctr run --config", &out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hooked", "{}", c.explain("ctr run", &out));
        let created = read_state("create");
        assert_eq!((created["id"].as_str(), created["status"].as_str()), (Some("hooked"), Some("creating")), "{created}");
        assert!(created["pid"].as_u64().is_some_and(|p| p > 0), "{created}");
        let comm = std::fs::read_to_string(dir.join("create.comm")).unwrap_or_default();
        assert!(comm.trim().starts_with("carapace-vmm"), "the task pid is the VMM: {comm:?}");
        let netns = std::fs::read_to_string(dir.join("create.netns")).unwrap_or_default();
        let host_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert!(netns.starts_with("net:") && netns.trim() != host_netns.to_string_lossy(), "the pod's own namespace: {netns:?} (host {host_netns:?})");
        assert_eq!(read_state("poststart")["status"], "running");
        assert_eq!(read_state("poststop")["status"], "stopped");
        c.assert_nothing_left();

        // A failing createRuntime hook fails the run, naming it and what it said; poststop
        // still runs, and nothing is left.
        let spec = spec_with_hooks(&c, &dir, "fails", &["true"], serde_json::json!({
            "createRuntime": [hook(&dir, "fail")],
            "poststop": [hook(&dir, "after-fail")],
        }));
        let out = c.ctr_output(["run", "--rm", "--runtime", RUNTIME, "--config", spec.to_str().unwrap(), "hook-fails"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("createRuntime hook") && err.contains("hook-says-no"), "{}", c.explain("ctr run", &out));
        assert_eq!(read_state("after-fail")["status"], "stopped");
        let _ = c.ctr_output(["containers", "delete", "hook-fails"]);
        c.assert_nothing_left();

        // A createContainer hook would run a host program in the guest's namespaces: refused
        // by name before anything is made.
        let spec = spec_with_hooks(&c, &dir, "refused", &["true"], serde_json::json!({
            "createContainer": [hook(&dir, "in-container")],
        }));
        let out = c.ctr_output(["run", "--rm", "--runtime", RUNTIME, "--config", spec.to_str().unwrap(), "hook-refused"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("createContainer hook"), "{}", c.explain("ctr run", &out));
        assert!(!dir.join("in-container.json").exists(), "the refused hook did not run");
        let _ = c.ctr_output(["containers", "delete", "hook-refused"]);
        c.assert_nothing_left();
    }
}
