//! What a pod in a carapace microVM must do through containerd beyond one `ctr run`: two
//! containers grouped into one VM by the CRI annotations (sharing the sandbox's ipc, uts and
//! pid namespaces when the spec asks), a memory limit enforced in the
//! guest with its OOM event, writes to the rootfs and to bind-mounted host directories
//! reaching the host, stdin closing (CloseIO), Update, Checkpoint refused, the VM sized
//! from annotations, events in containerd's order, a guest
//! kernel panic ending the task, 20 create/delete cycles leaving nothing behind, and the pod's
//! VMM in the host cgroup its spec names.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use carapace_tests::artifacts::{busybox_image, BUSYBOX_IMAGE};
use carapace_tests::carapace::{vmms_of, Carapace, RUNTIME, STATE_ROOT};
use carapace_tests::containerd::{
    make_temp_dir, processes_mentioning, processes_named, Containerd, EventLog,
};
use carapace_tests::lab::{ms, wait_for};
use carapace_tests::lab_test;
use containerd_shim_protos::api::{CheckpointTaskRequest, UpdateTaskRequest};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_sync::{Client, TaskClient};

/// 100 MiB of memory touched at once: dd's block buffer filled by one read of /dev/zero
/// (in-kernel, fast even under TCG, where a shell or tail growing a buffer takes minutes).
const MEMORY_HOG: &str = "dd if=/dev/zero of=/dev/null bs=100M count=1";
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// `ctr run -d` of `cmd` in container `id` with extra `ctr run` flags.
fn run_detached(c: &Containerd, flags: &[&str], id: &str, cmd: &[&str]) {
    let mut args = vec!["run", "-d", "--runtime", RUNTIME];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[BUSYBOX_IMAGE, id]);
    args.extend_from_slice(cmd);
    c.ctr_ok(&args);
    assert_eq!(c.task_status(id), "RUNNING", "{}", c.log());
}

/// Kills `id` with SIGKILL and waits for its task to stop.
fn kill9(c: &Containerd, id: &str) {
    c.ctr_ok(&["task", "kill", "-s", "9", id]);
    let stopped = wait_for(Duration::from_secs(30), || {
        (c.task_status(id) == "STOPPED").then_some(())
    });
    assert!(
        stopped.is_some(),
        "{id} stops after kill -9: {}",
        c.task_status(id)
    );
}

/// The memory limit `ctr task metrics` reports for `id` (the agent reads the guest cgroup).
fn memory_limit(c: &Containerd, id: &str) -> String {
    let metrics = c.ctr_ok(&["task", "metrics", id]);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("memory.usage_limit"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no memory.usage_limit in the metrics:\n{metrics}"))
}

fn exec(c: &Containerd, id: &str, exec_id: &str, script: &str) -> String {
    c.ctr_ok(&["task", "exec", "--exec-id", exec_id, id, "sh", "-c", script])
}

lab_test! {
    fn two_containers_of_a_pod_share_one_vm() {
        let c = Carapace::start();
        c.import(&busybox_image());
        let events = EventLog::start(&c);
        let sandbox = format!("{CONTAINER_TYPE}=sandbox");
        run_detached(&c, &["--annotation", &sandbox], "pod1", &["sleep", "1000"]);
        let member = format!("{CONTAINER_TYPE}=container");
        let pod = format!("{SANDBOX_ID}=pod1");
        run_detached(&c, &["--annotation", &member, "--annotation", &pod], "app1", &["sleep", "1000"]);

        assert_eq!(vmms_of("pod1").len(), 1, "one VMM runs the pod");
        assert!(!Path::new(STATE_ROOT).join("app1").exists(), "app1 has no VM of its own");
        let shims = processes_named("containerd-shim-carapace-v2")
            .into_iter()
            .filter(|p| processes_mentioning(&c.socket().to_string_lossy()).contains(p))
            .count();
        assert_eq!(shims, 1, "one shim serves both containers");
        // One guest kernel under both: the same boot id; each container its own pid 1.
        let boot = |id: &str, e: &str| exec(&c, id, e, "cat /proc/sys/kernel/random/boot_id");
        assert_eq!(boot("pod1", "b1"), boot("app1", "b2"), "both run in one VM");
        // Each container has its own pid namespace: app1 sees its own sleep only.
        let ps = exec(&c, "app1", "p1", "ps -o pid,args");
        assert_eq!(ps.matches("sleep 1000").count(), 1, "{ps}");

        // The member goes first; the pod's VM keeps running for the sandbox.
        kill9(&c, "app1");
        c.delete_task("app1", 137);
        assert_eq!(c.task_status("pod1"), "RUNNING");
        assert_eq!(exec(&c, "pod1", "after", "echo still-here").trim(), "still-here");
        assert_eq!(vmms_of("pod1").len(), 1, "the VM outlives the member");
        kill9(&c, "pod1");
        c.delete_task("pod1", 137);
        c.assert_nothing_left();
        for id in ["pod1", "app1"] {
            let topics: Vec<String> = events.task_events(id).into_iter().map(|e| e.0).collect();
            assert!(topics.contains(&"/tasks/create".to_string()), "{id}: {topics:?}");
            assert!(topics.contains(&"/tasks/delete".to_string()), "{id}: {topics:?}");
        }
    }
}

/// The pid `ctr task ls` shows for `id` (a carapace task's: its pod's VMM).
fn task_pid(c: &Containerd, id: &str) -> String {
    let tasks = c.ctr_ok(&["task", "ls"]);
    tasks
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f[1].to_string())
        })
        .unwrap_or_else(|| panic!("no task {id}:\n{tasks}"))
}

lab_test! {
    fn a_pods_containers_join_the_sandboxs_ipc_uts_and_pid_namespaces_as_cri_asks() {
        let c = Carapace::start();
        c.import(&busybox_image());
        let sandbox = format!("{CONTAINER_TYPE}=sandbox");
        run_detached(&c, &["--annotation", &sandbox], "pod2", &["sleep", "1000"]);
        // The paths CRI gives a pod's containers: the sandbox task's namespaces.
        let pid = task_pid(&c, "pod2");
        let (member, pod) = (format!("{CONTAINER_TYPE}=container"), format!("{SANDBOX_ID}=pod2"));
        let with: Vec<String> = ["ipc", "uts", "pid"].iter().map(|t| format!("{t}:/proc/{pid}/ns/{t}")).collect();
        let mut flags = vec!["--annotation", &member, "--annotation", &pod];
        for w in &with {
            flags.extend(["--with-ns", w.as_str()]);
        }
        run_detached(&c, &flags, "app2", &["sleep", "1001"]);
        let namespaces = "for n in ipc uts pid; do readlink /proc/self/ns/$n; done";
        assert_eq!(exec(&c, "app2", "n1", namespaces), exec(&c, "pod2", "n2", namespaces), "app2 is in pod2's namespaces");
        // One pid namespace: app2 sees the sandbox's process, and its own.
        let ps = exec(&c, "app2", "p1", "ps -o args");
        assert!(ps.contains("sleep 1000") && ps.contains("sleep 1001"), "{ps}");
        // A namespace that is not the pod's is a host one: refused by name, nothing made.
        let foreign = "ipc:/proc/1/ns/ipc";
        let out = c.ctr_output(["run", "-d", "--runtime", RUNTIME, "--annotation", &member, "--annotation", &pod, "--with-ns", foreign, BUSYBOX_IMAGE, "app3", "true"]);
        assert!(!out.status.success(), "{}", c.explain("a host ipc namespace", &out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("is not the pod's"), "{}", c.explain("a host ipc namespace", &out));
        let _ = c.ctr_output(["container", "rm", "app3"]);
        for id in ["app2", "pod2"] {
            kill9(&c, id);
            c.delete_task(id, 137);
        }
        c.assert_nothing_left();
    }
}

lab_test! {
    fn memory_limit_is_enforced_with_an_oom_event() {
        let c = Carapace::start();
        c.import(&busybox_image());
        let events = EventLog::start(&c);
        // The limit reaches the container's cgroup in the guest (the agent's stats read it)...
        let limit = "33554432";
        run_detached(&c, &["--memory-limit", limit], "m1", &["sleep", "1000"]);
        assert_eq!(memory_limit(&c, "m1"), limit);
        kill9(&c, "m1");
        c.delete_task("m1", 137);
        // ... and is enforced: 100 MiB touched by a container limited to 32 MiB is killed (the
        // VM has 256 MiB on top of the limit: the cgroup, not the VM, stops it).
        let out = c.ctr_output(["run", "--rm", "--runtime", RUNTIME, "--memory-limit", limit, BUSYBOX_IMAGE, "oom1", "sh", "-c", MEMORY_HOG]);
        assert_eq!(out.status.code(), Some(137), "{}", c.explain("memory hog", &out));
        let oom = wait_for(Duration::from_secs(10), || {
            events.task_events("oom1").iter().any(|e| e.0 == "/tasks/oom").then_some(())
        });
        assert!(oom.is_some(), "a /tasks/oom event for oom1:\n{}", events.dump());
        c.assert_nothing_left();
    }
}

lab_test! {
    fn writes_reach_the_rootfs_and_bind_mounted_host_dirs() {
        let c = Carapace::start();
        c.import(&busybox_image());
        let rw = make_temp_dir("carapace-bind-rw");
        let ro = make_temp_dir("carapace-bind-ro");
        std::fs::write(rw.join("from-host"), "host-data\n").expect("write the host file");
        std::fs::write(ro.join("keep"), "read-only\n").expect("write the host file");
        let rw_mount = format!("type=bind,src={},dst=/rw,options=rbind:rw", rw.display());
        let ro_mount = format!("type=bind,src={},dst=/ro,options=rbind:ro", ro.display());
        let script = "cat /rw/from-host > /rw/seen; echo from-guest > /rw/out; \
                      echo rootfs-data > /etc/written; \
                      if echo x > /ro/new 2>/dev/null; then echo ro-writable > /rw/ro; fi; \
                      sleep 1000";
        run_detached(&c, &["--mount", &rw_mount, "--mount", &ro_mount], "w1", &["sh", "-c", script]);

        let out = wait_for(Duration::from_secs(20), || std::fs::read_to_string(rw.join("out")).ok().filter(|s| s.ends_with('\n')));
        assert_eq!(out.as_deref(), Some("from-guest\n"), "the guest's write reaches the host dir");
        assert_eq!(std::fs::read_to_string(rw.join("seen")).unwrap_or_default(), "host-data\n");
        assert!(!rw.join("ro").exists(), "a read-only bind mount refused the write");
        assert!(!ro.join("new").exists());
        // A host write appears in the guest.
        std::fs::write(rw.join("later"), "written-later\n").expect("write");
        assert_eq!(exec(&c, "w1", "r1", "cat /rw/later"), "written-later\n");
        // The rootfs write lands in the container's rootfs on the host (containerd's snapshot,
        // mounted in the pod's share) and the container reads it back.
        let host_rootfs = Path::new(STATE_ROOT).join("w1/shared/w1/rootfs");
        assert_eq!(std::fs::read_to_string(host_rootfs.join("etc/written")).unwrap_or_default(), "rootfs-data\n");
        assert_eq!(exec(&c, "w1", "r2", "cat /etc/written"), "rootfs-data\n");

        kill9(&c, "w1");
        c.delete_task("w1", 137);
        c.assert_nothing_left();
        // Teardown unmounted the bind mounts before removing the share: the host files stay.
        for f in ["from-host", "out", "seen", "later"] {
            assert!(rw.join(f).exists(), "{f} survived the teardown");
        }
        assert!(ro.join("keep").exists(), "the read-only dir survived the teardown");
        let _ = std::fs::remove_dir_all(rw);
        let _ = std::fs::remove_dir_all(ro);
    }
}

lab_test! {
    fn stdin_closes_and_events_come_in_order() {
        let c = Carapace::start();
        c.import(&busybox_image());
        let events = EventLog::start(&c);

        // `ctr run` forwards its stdin and closes it (CloseIO) at EOF: cat ends.
        let mut child = c
            .ctr(["run", "--rm", "--runtime", RUNTIME, BUSYBOX_IMAGE, "cat1", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ctr");
        child.stdin.take().expect("piped").write_all(b"through-stdin\n").expect("write stdin");
        let out = child.wait_with_output().expect("wait for ctr");
        assert!(out.status.success(), "{}", c.explain("cat", &out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "through-stdin\n");

        run_detached(&c, &[], "ev1", &["sleep", "1000"]);
        let out = c.ctr_output(["task", "exec", "--exec-id", "x1", "ev1", "sh", "-c", "exit 2"]);
        assert_eq!(out.status.code(), Some(2), "{}", c.explain("exec", &out));
        c.ctr_ok(&["task", "pause", "ev1"]);
        c.ctr_ok(&["task", "resume", "ev1"]);
        kill9(&c, "ev1");
        c.delete_task("ev1", 137);
        c.assert_nothing_left();

        let want = [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete",
        ];
        let got = wait_for(Duration::from_secs(5), || {
            let got: Vec<String> = events.task_events("ev1").into_iter().map(|e| e.0).collect();
            (got.last().map(String::as_str) == Some("/tasks/delete")).then_some(got)
        })
        .unwrap_or_else(|| events.task_events("ev1").into_iter().map(|e| e.0).collect());
        assert_eq!(got, want, "events of ev1 in containerd's order:\n{}", events.dump());
        let exits: Vec<String> = events
            .task_events("ev1")
            .into_iter()
            .filter(|e| e.0 == "/tasks/exit")
            .map(|e| e.1)
            .collect();
        assert!(exits[0].contains("\"id\":\"x1\"") && exits[0].contains("\"exit_status\":2"), "{exits:?}");
        assert!(exits[1].contains("\"exit_status\":137"), "{exits:?}");
        let cat: Vec<String> = events.task_events("cat1").into_iter().map(|e| e.0).collect();
        assert_eq!(cat, ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], "{}", events.dump());
    }
}

lab_test! {
    fn a_guest_kernel_panic_ends_the_task() {
        // vm.panic_on_oom set from the kernel command line: a container with no memory limit
        // that runs the guest (128 MiB) out of memory panics its kernel, and panic=1 resets
        // the VM.
        let c = Carapace::start_with_config("kernel_params = \"sysctl.vm.panic_on_oom=1\"\n");
        c.import(&busybox_image());
        let events = EventLog::start(&c);
        let small = "io.carapace.memory_mib=128";
        let started = Instant::now();
        c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--annotation", small, BUSYBOX_IMAGE, "gp1", "sh", "-c", MEMORY_HOG]);
        let stopped = wait_for(Duration::from_secs(30), || (c.task_status("gp1") == "STOPPED").then_some(()));
        assert!(stopped.is_some(), "the task stops when its guest panics: {}\n{}", c.task_status("gp1"), c.log());
        println!("lab figure: ctr run -d of the memory hog to the task STOPPED by its guest's panic: {:.0} ms", ms(started.elapsed()));
        // The process's exit is seen when the VMM closes its sockets; it is gone soon after.
        let gone = wait_for(Duration::from_secs(20), || vmms_of("gp1").is_empty().then_some(()));
        assert!(gone.is_some(), "the VMM ended with its guest");
        // The shim put the guest's last words in containerd's log before removing the console.
        let logged = wait_for(Duration::from_secs(20), || {
            let log = c.log();
            (log.contains("ended on its own") && log.contains("Kernel panic")).then_some(())
        });
        assert!(logged.is_some(), "the panic is logged:\n{}", c.log());
        c.delete_task("gp1", 255);
        c.assert_nothing_left();
        let exit = events.task_events("gp1").into_iter().find(|e| e.0 == "/tasks/exit");
        assert!(exit.is_some_and(|e| e.1.contains("\"exit_status\":255")), "TaskExit 255 published:\n{}", events.dump());
    }
}

lab_test! {
    fn twenty_create_delete_cycles_leave_nothing() {
        // 20 containers created, run and deleted in one pod (its VM stays up: each cycle
        // mounts a rootfs into the share and removes it), then 3 whole pods booted and torn
        // down; every other test here also checks a whole pod leaves nothing.
        let c = Carapace::start();
        c.import(&busybox_image());
        let mounts = || std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().count();
        let mounts_before = mounts();
        let sandbox = format!("{CONTAINER_TYPE}=sandbox");
        run_detached(&c, &["--annotation", &sandbox], "cpod", &["sleep", "1000"]);
        let mounts_with_pod = mounts();
        let member = format!("{CONTAINER_TYPE}=container");
        let pod = format!("{SANDBOX_ID}=cpod");
        let mut times = Vec::new();
        for i in 0..20 {
            let id = format!("cycle{i}");
            let start = Instant::now();
            let out = c.ctr_output(["run", "--rm", "--runtime", RUNTIME, "--annotation", &member, "--annotation", &pod, BUSYBOX_IMAGE, &id, "true"]);
            times.push(start.elapsed());
            assert!(out.status.success(), "{}", c.explain(&id, &out));
            assert!(!Path::new(STATE_ROOT).join("cpod/shared").join(&id).exists(), "{id}'s share directory is gone");
        }
        assert_eq!(mounts(), mounts_with_pod, "20 containers left mounts behind");
        assert_eq!(vmms_of("cpod").len(), 1, "one VM served the 20 containers");
        kill9(&c, "cpod");
        c.delete_task("cpod", 137);
        c.assert_nothing_left();
        let mut pods = Vec::new();
        for i in 0..3 {
            let id = format!("pod{i}");
            let start = Instant::now();
            let out = c.ctr_output(["run", "--rm", "--runtime", RUNTIME, BUSYBOX_IMAGE, &id, "true"]);
            pods.push(start.elapsed());
            assert!(out.status.success(), "{}", c.explain(&id, &out));
            c.assert_nothing_left();
        }
        assert_eq!(mounts(), mounts_before, "the cycles left mounts behind");
        let tasks = c.ctr_ok(&["task", "ls", "-q"]);
        assert!(tasks.trim().is_empty(), "tasks left: {tasks}");
        times.sort();
        pods.sort();
        println!(
            "lab figure: container in a running pod, ctr run --rm true x20: median {:.0} ms (min {:.0}, max {:.0}); whole pod x3: median {:.0} ms",
            ms(times[10]),
            ms(times[0]),
            ms(times[19]),
            ms(pods[1])
        );
    }
}

lab_test! {
    fn the_vm_is_sized_from_annotations() {
        let c = Carapace::start();
        c.import(&busybox_image());
        let script = "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo";
        let out = c.ctr_output(["run", "--rm", "--runtime", RUNTIME, "--annotation", "io.carapace.vcpus=2", "--annotation", "io.carapace.memory_mib=384", BUSYBOX_IMAGE, "size1", "sh", "-c", script]);
        assert!(out.status.success(), "{}", c.explain("sized run", &out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("2"), "two vCPUs: {text}");
        let kib: u64 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // The guest kernel keeps some of the 384 MiB for itself; the config's 256 MiB is far below.
        assert!((300 * 1024..=384 * 1024).contains(&kib), "MemTotal {kib} kB for a 384 MiB VM");

        let out = c.ctr_output(["run", "--rm", "--runtime", RUNTIME, "--annotation", "io.carapace.vcpus=0", BUSYBOX_IMAGE, "size2", "true"]);
        assert!(!out.status.success(), "a zero-vCPU VM is refused");
        assert!(String::from_utf8_lossy(&out.stderr).contains("io.carapace.vcpus"), "{}", c.explain("vcpus=0", &out));
        c.assert_nothing_left();
    }
}

/// A ttrpc client of the shim serving container `id` (its address is in the bundle), for the
/// Task calls `ctr` 1.6 cannot make.
fn shim_client(c: &Containerd, id: &str) -> TaskClient {
    let bundle = c
        .dir()
        .join("state/io.containerd.runtime.v2.task")
        .join(carapace_tests::containerd::NAMESPACE)
        .join(id);
    let address = std::fs::read_to_string(bundle.join("address")).expect("the shim's address file");
    let path = address.trim().trim_start_matches("unix://");
    TaskClient::new(Client::connect(&format!("unix://{path}")).expect("connect to the shim"))
}

lab_test! {
    fn update_changes_limits_and_checkpoint_is_unimplemented() {
        let c = Carapace::start();
        c.import(&busybox_image());
        run_detached(&c, &["--memory-limit", "134217728"], "u1", &["sleep", "1000"]);
        assert_eq!(memory_limit(&c, "u1"), "134217728");

        let client = shim_client(&c, "u1");
        let ctx = || containerd_shim_protos::ttrpc::context::with_timeout(30_000_000_000);
        let resources = Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: br#"{"memory":{"limit":67108864}}"#.to_vec(),
            ..Default::default()
        };
        let req = UpdateTaskRequest { id: "u1".into(), resources: MessageField::some(resources), ..Default::default() };
        client.update(ctx(), &req).expect("Update");
        assert_eq!(memory_limit(&c, "u1"), "67108864", "Update reached the guest cgroup");

        let bad = UpdateTaskRequest { id: "nosuch".into(), ..Default::default() };
        let e = client.update(ctx(), &bad).expect_err("Update of an unknown container");
        assert!(format!("{e:?}").contains("NOT_FOUND") || format!("{e:?}").contains("InvalidArgument") || format!("{e:?}").contains("INVALID_ARGUMENT"), "{e:?}");
        let req = CheckpointTaskRequest { id: "u1".into(), path: "/tmp/cp".into(), ..Default::default() };
        let e = client.checkpoint(ctx(), &req).expect_err("Checkpoint");
        assert!(format!("{e:?}").contains("UNIMPLEMENTED"), "Checkpoint answers UNIMPLEMENTED: {e:?}");

        kill9(&c, "u1");
        c.delete_task("u1", 137);
        c.assert_nothing_left();
    }
}

/// The cgroup v2 path (`0::/...`) process `pid` is in.
fn cgroup_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in {text}"))
        .to_string()
}

lab_test! {
    fn the_pods_vmm_runs_in_the_cgroup_its_spec_names() {
        let c = Carapace::start();
        c.import(&busybox_image());
        // Both forms containerd writes: a cgroupfs path and systemd's slice:prefix:name.
        for (id, path, dir) in [
            ("cg1", "/carapace-pods/burstable/cg1", "/carapace-pods/burstable/cg1"),
            ("cg2", "carapace-pods.slice:cri:cg2", "/carapace.slice/carapace-pods.slice/cri-cg2.scope"),
        ] {
            run_detached(&c, &["--cgroup", path], id, &["sleep", "1000"]);
            let vmms = vmms_of(id);
            assert_eq!(vmms.len(), 1);
            assert_eq!(cgroup_of(vmms[0]), dir, "the VMM of {id} runs in its pod's cgroup");
            // Its guest memory is charged there: the booted guest has unpacked its initramfs.
            let current: u64 = std::fs::read_to_string(format!("/sys/fs/cgroup{dir}/memory.current"))
                .map(|s| s.trim().parse().unwrap())
                .unwrap_or(0);
            println!("lab figure: {id}: the pod's cgroup charges {} MiB with its VM booted", current >> 20);
            assert!(current > 8 << 20, "memory.current {current}");
            kill9(&c, id);
            c.delete_task(id, 137);
            assert!(!Path::new(&format!("/sys/fs/cgroup{dir}")).exists(), "{dir} removed");
        }
        assert!(!Path::new("/sys/fs/cgroup/carapace-pods").exists(), "made parents removed");
        assert!(!Path::new("/sys/fs/cgroup/carapace.slice").exists());
        // A path that would leave the hierarchy is refused by name, and nothing is left.
        let out = c.ctr_output([
            "run", "-d", "--runtime", RUNTIME, "--cgroup", "/a/../../../etc", BUSYBOX_IMAGE, "cg3", "true",
        ]);
        assert!(!out.status.success(), "{}", c.explain("a hostile cgroupsPath", &out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cgroupsPath"),
            "{}",
            c.explain("the refusal names the key", &out)
        );
        let _ = c.ctr_output(["container", "rm", "cg3"]);
        c.assert_nothing_left();
    }
}
