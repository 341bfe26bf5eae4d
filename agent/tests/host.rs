//! Host-level tests of carapace-agent: the real binary, run as an ordinary root process in its
//! own mount namespace and listening on a Unix socket, creating real containers from a busybox
//! rootfs through its ttrpc API. Each test starts its own agent under its own cgroup parent
//! and removes every trace (processes, cgroups, files) when it ends. Skipped unless root.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use carapace_protocol::agent::*;
use carapace_protocol::agent_ttrpc::AgentServiceClient;
use oci_spec::runtime::Spec;
use ttrpc::context;
use ttrpc::Code;

mod common;

const CTX_SECS: i64 = 30;

fn ctx() -> context::Context {
    context::with_timeout(CTX_SECS * 1_000_000_000)
}

/// One running agent and its scratch directory.
struct Agent {
    child: Child,
    dir: PathBuf,
    cgroup_parent: String,
    client: AgentServiceClient,
}

/// A busybox rootfs in `dir` (the shared fixture: static busybox, applet links, passwd).
fn make_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    carapace_tests::agent::busybox_rootfs(&root);
    root
}

impl Agent {
    async fn start(name: &str) -> Option<Self> {
        if !common::is_root() {
            eprintln!("skipped: host tests of the agent need root");
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("carapace-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        make_rootfs(&dir);
        let cgroup_parent = format!("/carapace-test-{name}-{}", std::process::id());
        let (child, client) = common::start_agent(&dir, &cgroup_parent, libc::CLONE_NEWNS).await;
        Some(Self {
            child,
            dir,
            cgroup_parent,
            client,
        })
    }

    fn rootfs(&self) -> String {
        self.dir.join("rootfs").display().to_string()
    }

    fn spec(&self, args: &[&str], edit: impl FnOnce(&mut Spec)) -> Vec<u8> {
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        process.set_terminal(Some(false));
        spec.set_process(Some(process));
        edit(&mut spec);
        serde_json::to_vec(&spec).unwrap()
    }

    async fn create(&self, id: &str, spec: Vec<u8>) -> ttrpc::Result<()> {
        let req = CreateContainerRequest {
            container_id: id.into(),
            oci_spec: spec,
            rootfs: self.rootfs(),
            ..Default::default()
        };
        self.client.create_container(ctx(), &req).await.map(|_| ())
    }

    async fn run(&self, id: &str, spec: Vec<u8>) {
        self.create(id, spec).await.expect("CreateContainer");
        let req = StartContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.client
            .start_container(ctx(), &req)
            .await
            .expect("StartContainer");
    }

    async fn read_all(&self, id: &str, exec: &str, stderr: bool) -> String {
        carapace_tests::agent::read_all(&self.client, id, exec, stderr)
            .await
            .expect("reading a stream")
    }

    async fn wait(&self, id: &str, exec: &str) -> WaitProcessResponse {
        carapace_tests::agent::wait(&self.client, id, exec)
            .await
            .expect("WaitProcess")
    }

    async fn signal(&self, id: &str, exec: &str, signal: i32, all: bool) -> ttrpc::Result<()> {
        let req = SignalProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            signal: signal as u32,
            all,
            ..Default::default()
        };
        self.client.signal_process(ctx(), &req).await.map(|_| ())
    }

    async fn exec(&self, id: &str, exec: &str, args: &[&str]) -> ttrpc::Result<()> {
        let process = serde_json::json!({"args": args, "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}});
        self.exec_process(id, exec, process).await
    }

    /// ExecProcess with the OCI process `process`.
    async fn exec_process(
        &self,
        id: &str,
        exec: &str,
        process: serde_json::Value,
    ) -> ttrpc::Result<()> {
        let req = ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            process: process.to_string().into_bytes(),
            ..Default::default()
        };
        self.client.exec_process(ctx(), &req).await.map(|_| ())
    }

    async fn stats(&self, id: &str) -> StatsContainerResponse {
        let req = StatsContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.client
            .stats_container(ctx(), &req)
            .await
            .expect("StatsContainer")
    }

    /// Removes the container and checks nothing of it is left.
    async fn remove(&self, id: &str) {
        let req = RemoveContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.client
            .remove_container(ctx(), &req)
            .await
            .expect("RemoveContainer");
        for dir in self.cgroup_dirs(id) {
            assert!(!dir.exists(), "cgroup {} left behind", dir.display());
        }
        let mountinfo =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", self.child.id())).unwrap();
        assert!(
            !mountinfo.contains(&self.rootfs()),
            "a mount of the rootfs is left behind:\n{mountinfo}"
        );
        assert!(
            !self.dir.join("state/containers").join(id).exists(),
            "libcontainer state left behind"
        );
        assert!(
            !self.dir.join("state/bundles").join(id).exists(),
            "bundle left behind"
        );
    }

    /// Kills every process of container `id`, waits for its first, and removes it (see
    /// [`Agent::remove`]).
    async fn kill_and_remove(&self, id: &str) {
        self.signal(id, "", libc::SIGKILL, true).await.unwrap();
        self.wait(id, "").await;
        self.remove(id).await;
    }

    fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        let rel = format!("{}/{id}", self.cgroup_parent.trim_start_matches('/'));
        let mut dirs = vec![PathBuf::from("/sys/fs/cgroup").join(&rel)];
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            dirs.extend(entries.flatten().map(|e| e.path().join(&rel)));
        }
        dirs
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Containers a failed test left: kill their processes, then their cgroups.
        let parent = self.cgroup_parent.trim_start_matches('/').to_string();
        let mut roots = vec![PathBuf::from("/sys/fs/cgroup").join(&parent)];
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            roots.extend(entries.flatten().map(|e| e.path().join(&parent)));
        }
        for root in roots.iter().filter(|r| r.is_dir()) {
            if let Ok(children) = std::fs::read_dir(root) {
                for c in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::write(c.path().join("freezer.state"), "THAWED");
                    let _ = std::fs::write(c.path().join("cgroup.freeze"), "0");
                    for pid in std::fs::read_to_string(c.path().join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                    {
                        if let Ok(pid) = pid.parse::<i32>() {
                            // SAFETY: kill has no memory preconditions.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            let _ = std::fs::remove_dir(root);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn code(r: ttrpc::Result<impl Sized>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        Err(e) => panic!("not an RPC status: {e:?}"),
        Ok(_) => Code::OK,
    }
}

#[tokio::test]
async fn exit_code_stdout_and_stderr() {
    let Some(a) = Agent::start("exit").await else {
        return;
    };
    a.run(
        "c1",
        a.spec(&["sh", "-c", "echo out; echo err >&2; exit 3"], |_| {}),
    )
    .await;
    assert_eq!(a.read_all("c1", "", false).await, "out\n");
    assert_eq!(a.read_all("c1", "", true).await, "err\n");
    assert_eq!(a.wait("c1", "").await.exit_status, 3);
    a.remove("c1").await;
}

#[tokio::test]
async fn stdin_reaches_the_process() {
    let Some(a) = Agent::start("stdin").await else {
        return;
    };
    a.run("c1", a.spec(&["cat"], |_| {})).await;
    let req = WriteStreamRequest {
        container_id: "c1".into(),
        data: b"hello\n".to_vec(),
        ..Default::default()
    };
    assert_eq!(a.client.write_stdin(ctx(), &req).await.unwrap().len, 6);
    let req = CloseStdinRequest {
        container_id: "c1".into(),
        ..Default::default()
    };
    a.client.close_stdin(ctx(), &req).await.unwrap();
    assert_eq!(a.read_all("c1", "", false).await, "hello\n");
    assert_eq!(a.wait("c1", "").await.exit_status, 0);
    a.remove("c1").await;
}

#[tokio::test]
async fn exec_signals_and_duplicate_exec_ids() {
    let Some(a) = Agent::start("exec").await else {
        return;
    };
    a.run("c1", a.spec(&["sleep", "1000"], |_| {})).await;
    a.exec("c1", "e1", &["sh", "-c", "echo in-exec; exit 7"])
        .await
        .unwrap();
    assert_eq!(a.read_all("c1", "e1", false).await, "in-exec\n");
    assert_eq!(a.wait("c1", "e1").await.exit_status, 7);
    assert_eq!(
        code(a.exec("c1", "e1", &["true"]).await),
        Code::ALREADY_EXISTS
    );
    // An exec sees the init process in the container's own pid namespace as PID 1.
    a.exec(
        "c1",
        "e2",
        &["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"],
    )
    .await
    .unwrap();
    assert_eq!(a.read_all("c1", "e2", false).await, "sleep 1000 ");
    a.exec("c1", "e3", &["sleep", "1000"]).await.unwrap();
    a.signal("c1", "e3", libc::SIGTERM, false).await.unwrap();
    let w = a.wait("c1", "e3").await;
    assert_eq!(
        (w.exit_status, w.signal),
        (128 + libc::SIGTERM, libc::SIGTERM as u32)
    );
    a.signal("c1", "", libc::SIGKILL, true).await.unwrap();
    assert_eq!(a.wait("c1", "").await.exit_status, 128 + libc::SIGKILL);
    assert_eq!(
        code(a.signal("c1", "", libc::SIGKILL, false).await),
        Code::NOT_FOUND
    );
    a.remove("c1").await;
}

#[tokio::test]
async fn errors_have_precise_codes_and_the_agent_keeps_serving() {
    let Some(a) = Agent::start("errors").await else {
        return;
    };
    let start = |id: &str| StartContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    assert_eq!(
        code(a.client.start_container(ctx(), &start("nope")).await),
        Code::NOT_FOUND
    );
    let wait = WaitProcessRequest {
        container_id: "nope".into(),
        ..Default::default()
    };
    assert_eq!(
        code(a.client.wait_process(ctx(), &wait).await),
        Code::NOT_FOUND
    );
    assert_eq!(
        code(a.create("bad/id", a.spec(&["true"], |_| {})).await),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(
        code(a.create("c1", b"{not json".to_vec()).await),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(
        code(a.create("c1", a.spec(&[], |_| {})).await),
        Code::INVALID_ARGUMENT
    );
    a.create("c1", a.spec(&["true"], |_| {})).await.unwrap();
    assert_eq!(
        code(a.create("c1", a.spec(&["true"], |_| {})).await),
        Code::ALREADY_EXISTS
    );
    assert_eq!(
        code(a.exec("c1", "e1", &["true"]).await),
        Code::FAILED_PRECONDITION
    );
    // An interface named by neither MAC nor name.
    let upd = carapace_protocol::agent::UpdateInterfaceRequest::new();
    assert_eq!(
        code(a.client.update_interface(ctx(), &upd).await),
        Code::INVALID_ARGUMENT
    );
    let r = a.client.check(ctx(), &CheckRequest::new()).await.unwrap();
    assert!(r.serving);
    a.client.start_container(ctx(), &start("c1")).await.unwrap();
    assert_eq!(
        code(a.client.start_container(ctx(), &start("c1")).await),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(a.wait("c1", "").await.exit_status, 0);
    a.remove("c1").await;
    let req = RemoveContainerRequest {
        container_id: "c1".into(),
        ..Default::default()
    };
    assert_eq!(
        code(a.client.remove_container(ctx(), &req).await),
        Code::NOT_FOUND
    );
}

#[tokio::test]
async fn pids_limit_refuses_fork() {
    let Some(a) = Agent::start("pids").await else {
        return;
    };
    let spec = a.spec(
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; echo forked",
        ],
        |s| {
            let mut linux = s.linux().clone().unwrap();
            let json = serde_json::json!({"pids": {"limit": 4}});
            linux.set_resources(Some(serde_json::from_value(json).unwrap()));
            s.set_linux(Some(linux));
        },
    );
    a.run("c1", spec).await;
    let stats = a.stats("c1").await;
    assert_eq!(stats.pids.limit, 4);
    let err = a.read_all("c1", "", true).await;
    assert!(err.contains("fork"), "no fork failure reported: {err:?}");
    a.kill_and_remove("c1").await;
}

#[tokio::test]
async fn pause_resume_and_stats_that_move() {
    let Some(a) = Agent::start("pause").await else {
        return;
    };
    a.run(
        "c1",
        a.spec(&["sh", "-c", "while true; do :; done"], |_| {}),
    )
    .await;
    let cpu = |s: &StatsContainerResponse| s.cpu.usage_usec;
    let s0 = a.stats("c1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s1 = a.stats("c1").await;
    assert!(
        cpu(&s1) > cpu(&s0),
        "cpu usage did not move: {} -> {}",
        cpu(&s0),
        cpu(&s1)
    );
    assert!(s1.pids.current >= 1);
    assert!(s1.memory.usage_bytes > 0);
    let pause = PauseContainerRequest {
        container_id: "c1".into(),
        ..Default::default()
    };
    a.client.pause_container(ctx(), &pause).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let p0 = a.stats("c1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p1 = a.stats("c1").await;
    assert_eq!(cpu(&p0), cpu(&p1), "a paused container used CPU");
    let resume = ResumeContainerRequest {
        container_id: "c1".into(),
        ..Default::default()
    };
    a.client.resume_container(ctx(), &resume).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        cpu(&a.stats("c1").await) > cpu(&p1),
        "a resumed container did not run"
    );
    a.remove("c1").await;
}

#[tokio::test]
async fn memory_limit_reports_an_oom_event() {
    let Some(a) = Agent::start("oom").await else {
        return;
    };
    let spec = a.spec(&["sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"], |s| {
        let mut linux = s.linux().clone().unwrap();
        let json = serde_json::json!({"memory": {"limit": 16 * 1024 * 1024, "swap": 16 * 1024 * 1024}});
        linux.set_resources(Some(serde_json::from_value(json).unwrap()));
        s.set_linux(Some(linux));
    });
    a.run("c1", spec).await;
    let ev = a
        .client
        .get_oom_event(ctx(), &GetOOMEventRequest::new())
        .await
        .expect("GetOOMEvent");
    assert_eq!(ev.container_id, "c1");
    let w = a.wait("c1", "").await;
    assert_eq!(w.signal, libc::SIGKILL as u32);
    a.remove("c1").await;
}

#[tokio::test]
async fn terminal_process_gets_a_pty() {
    let Some(a) = Agent::start("tty").await else {
        return;
    };
    let spec = a.spec(&["sh", "-c", "tty; stty size; exit 2"], |s| {
        let mut p = s.process().clone().unwrap();
        p.set_terminal(Some(true));
        s.set_process(Some(p));
    });
    a.create("c1", spec).await.unwrap();
    let req = TtyWinResizeRequest {
        container_id: "c1".into(),
        rows: 33,
        columns: 101,
        ..Default::default()
    };
    a.client.tty_win_resize(ctx(), &req).await.unwrap();
    let start = StartContainerRequest {
        container_id: "c1".into(),
        ..Default::default()
    };
    a.client.start_container(ctx(), &start).await.unwrap();
    let out = a.read_all("c1", "", false).await;
    assert!(out.contains("/dev/pts/"), "not a pty: {out:?}");
    assert!(out.contains("33 101"), "window size not applied: {out:?}");
    assert_eq!(a.wait("c1", "").await.exit_status, 2);
    a.remove("c1").await;
}

/// Twenty create/start/wait/remove cycles leave nothing behind (remove() checks cgroups,
/// mounts and state); prints the figure "CreateContainer to process running" (the end of
/// StartContainer: the container's process has exec'd).
#[tokio::test]
async fn twenty_cycles_leave_nothing_and_report_create_to_running() {
    let Some(a) = Agent::start("cycles").await else {
        return;
    };
    let mut times = Vec::new();
    for i in 0..20 {
        let id = format!("c{i}");
        let spec = a.spec(&["true"], |_| {});
        let t = Instant::now();
        a.run(&id, spec).await;
        times.push(t.elapsed());
        assert_eq!(a.wait(&id, "").await.exit_status, 0);
        a.remove(&id).await;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "figure: CreateContainer to process running (host, over a unix socket): median {:.1} ms, min {:.1}, max {:.1}, 20 runs",
        ms(times[10]),
        ms(times[0]),
        ms(times[19])
    );
}

impl Agent {
    async fn list(&self, id: &str) -> ttrpc::Result<Vec<u32>> {
        let req = ListProcessesRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.client
            .list_processes(ctx(), &req)
            .await
            .map(|r| r.pids)
    }
}

#[tokio::test]
async fn list_processes_names_every_process_of_the_cgroup() {
    let Some(a) = Agent::start("ps").await else {
        return;
    };
    a.run(
        "c1",
        a.spec(&["sh", "-c", "sleep 1000 & sleep 1000"], |_| {}),
    )
    .await;
    // sh and its two sleeps (busybox sh may exec the last one): at least two processes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pids = loop {
        let pids = a.list("c1").await.expect("ListProcesses");
        if pids.len() >= 2 || Instant::now() > deadline {
            break pids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(pids.len() >= 2, "the container's processes: {pids:?}");
    assert!(pids.windows(2).all(|w| w[0] < w[1]), "ascending: {pids:?}");
    // The agent shares the test's pid namespace: the pids are processes running sleep or sh.
    for pid in &pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            cmdline.contains("sleep") || cmdline.starts_with("sh"),
            "pid {pid} runs {cmdline:?}"
        );
    }
    a.exec("c1", "e1", &["sleep", "1000"]).await.unwrap();
    let with_exec = a.list("c1").await.unwrap();
    assert_eq!(
        with_exec.len(),
        pids.len() + 1,
        "{pids:?} then {with_exec:?}"
    );

    assert_eq!(code(a.list("nope").await), Code::NOT_FOUND);
    a.signal("c1", "", libc::SIGKILL, true).await.unwrap();
    a.wait("c1", "").await;
    a.wait("c1", "e1").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.list("c1").await.unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.list("c1").await.unwrap(), Vec::<u32>::new());
    a.remove("c1").await;
}

#[tokio::test]
async fn wait_reports_when_the_process_was_reaped() {
    let Some(a) = Agent::start("exited-at").await else {
        return;
    };
    let before = std::time::SystemTime::now();
    a.run("c1", a.spec(&["true"], |_| {})).await;
    // Wait long after the exit: exited_at is the reaping time, not the time of the wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = a.wait("c1", "").await;
    let waited = std::time::SystemTime::now();
    assert_eq!(r.exit_status, 0);
    let at: std::time::SystemTime = r
        .exited_at
        .clone()
        .into_option()
        .expect("exited_at is set")
        .into();
    assert!(at >= before, "exited {at:?}, started {before:?}");
    assert!(
        waited.duration_since(at).unwrap() >= Duration::from_secs(1),
        "exited {at:?}, waited {waited:?}"
    );
    a.remove("c1").await;
}

/// A spec edit that gives the container the seccomp `profile` (OCI JSON).
fn with_seccomp(profile: serde_json::Value) -> impl FnOnce(&mut Spec) {
    move |s| {
        let mut linux = s.linux().clone().unwrap();
        linux.set_seccomp(Some(serde_json::from_value(profile).unwrap()));
        s.set_linux(Some(linux));
    }
}

/// An exec's OCI process as containerd sends one: `sh -c script` as root, its capability
/// sets named, CAP_KILL alone (bit 5) in the bounding, effective and permitted ones.
fn kill_only_process(script: &str, no_new_privs: bool) -> serde_json::Value {
    let kill = serde_json::json!(["CAP_KILL"]);
    serde_json::json!({
        "args": ["sh", "-c", script], "cwd": "/", "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0}, "noNewPrivileges": no_new_privs,
        "capabilities": {"bounding": kill, "effective": kill, "permitted": kill},
    })
}

#[tokio::test]
async fn execs_run_under_the_containers_seccomp_filter_with_their_own_capabilities() {
    let Some(a) = Agent::start("seccomp").await else {
        return;
    };
    // A profile that refuses mkdir with EPERM and allows the rest.
    let profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    });
    a.run("c1", a.spec(&["sleep", "1000"], with_seccomp(profile)))
        .await;
    let show =
        "grep -E '^(Seccomp|NoNewPrivs|CapInh|CapBnd|CapEff|CapPrm|CapAmb):' /proc/self/status; \
        mkdir /tmp/made 2>&1 || echo refused";
    // As containerd sends them: capabilities named, with and without no_new_privs. CAP_KILL
    // alone: bit 5. Without no_new_privs the exec is lent CAP_SYS_ADMIN and CAP_SETPCAP to
    // install the filter and must not keep them.
    for (exec, no_new_privs) in [("e1", false), ("e2", true)] {
        a.exec_process("c1", exec, kill_only_process(show, no_new_privs))
            .await
            .unwrap();
        let out = a.read_all("c1", exec, false).await;
        assert_eq!(a.wait("c1", exec).await.exit_status, 0, "{out}");
        let lines: Vec<String> = out
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let nnp = if no_new_privs { "1" } else { "0" };
        assert_eq!(
            lines,
            [
                "CapInh: 0000000000000000".to_string(),
                "CapPrm: 0000000000000020".to_string(),
                "CapEff: 0000000000000020".to_string(),
                "CapBnd: 0000000000000020".to_string(),
                "CapAmb: 0000000000000000".to_string(),
                format!("NoNewPrivs: {nnp}"),
                "Seccomp: 2".to_string(),
                "mkdir: can't create directory '/tmp/made': Operation not permitted".to_string(),
                "refused".to_string(),
            ],
            "exec {exec} (no_new_privs {no_new_privs})"
        );
    }
    a.kill_and_remove("c1").await;
}

#[tokio::test]
async fn a_profile_that_fakes_the_capability_drops_cannot_keep_what_an_exec_was_lent() {
    let Some(a) = Agent::start("seccomp-fake").await else {
        return;
    };
    // prctl, capget and capset "succeed" without doing anything.
    let profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["prctl", "capget", "capset"], "action": "SCMP_ACT_ERRNO", "errnoRet": 0}],
    });
    a.run("c1", a.spec(&["sleep", "1000"], with_seccomp(profile)))
        .await;
    let show = "grep -E '^Cap(Prm|Eff|Bnd):' /proc/self/status";
    a.exec_process("c1", "e1", kill_only_process(show, false))
        .await
        .unwrap();
    let out = a.read_all("c1", "e1", false).await;
    a.wait("c1", "e1").await;
    for line in out.lines() {
        assert!(
            line.ends_with("0000000000000020"),
            "no lent capability past execve: {out}"
        );
    }
    assert_eq!(out.lines().count(), 3, "{out}");
    a.kill_and_remove("c1").await;
}

#[tokio::test]
async fn terminals_work_with_the_longest_ids_cri_uses() {
    let Some(a) = Agent::start("tty-ids").await else {
        return;
    };
    // 64 hex characters each, as CRI's container and exec ids are.
    let (id, exec) = ("c".repeat(64), "e".repeat(64));
    let spec = a.spec(&["sleep", "1000"], |s| {
        let mut p = s.process().clone().unwrap();
        p.set_terminal(Some(true));
        s.set_process(Some(p));
    });
    a.run(&id, spec).await;
    let process = serde_json::json!({
        "args": ["sh", "-c", "tty"], "cwd": "/", "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0}, "terminal": true,
    });
    a.exec_process(&id, &exec, process).await.unwrap();
    let out = a.read_all(&id, &exec, false).await;
    assert!(out.contains("/dev/pts/"), "the exec has no pty: {out:?}");
    assert_eq!(a.wait(&id, &exec).await.exit_status, 0);
    let consoles: Vec<_> = std::fs::read_dir(a.dir.join("state/consoles"))
        .unwrap()
        .collect();
    assert!(consoles.is_empty(), "console sockets left: {consoles:?}");
    a.kill_and_remove(&id).await;
}

#[tokio::test]
async fn the_rootfs_propagation_containerd_sends_is_taken() {
    let Some(a) = Agent::start("propagation").await else {
        return;
    };
    for (id, value) in [("c1", "rshared"), ("c2", "rslave")] {
        let spec = a.spec(&["sh", "-c", "echo started"], |s| {
            let mut linux = s.linux().clone().unwrap();
            linux.set_rootfs_propagation(Some(value.into()));
            s.set_linux(Some(linux));
        });
        a.run(id, spec).await;
        assert_eq!(a.read_all(id, "", false).await, "started\n", "{value}");
        assert_eq!(a.wait(id, "").await.exit_status, 0, "{value}");
        a.remove(id).await;
    }
}

#[tokio::test]
async fn a_container_joins_the_sandbox_containers_ipc_uts_and_pid_namespaces() {
    let Some(a) = Agent::start("pod-ns").await else {
        return;
    };
    a.run("sb", a.spec(&["sleep", "1000"], |_| {})).await;
    let namespaces = "for n in ipc uts pid; do readlink /proc/self/ns/$n; done";
    let show = format!("{namespaces}; ps -o args | grep -c '^sleep 1000'");
    let req = CreateContainerRequest {
        container_id: "app".into(),
        oci_spec: a.spec(&["sh", "-c", &show], |_| {}),
        rootfs: a.rootfs(),
        share_namespaces_of: "sb".into(),
        shared_namespaces: vec!["ipc".into(), "uts".into(), "pid".into()],
        ..Default::default()
    };
    a.client.create_container(ctx(), &req).await.unwrap();
    let start = StartContainerRequest {
        container_id: "app".into(),
        ..Default::default()
    };
    a.client.start_container(ctx(), &start).await.unwrap();
    let out = a.read_all("app", "", false).await;
    assert_eq!(a.wait("app", "").await.exit_status, 0, "{out}");
    // The sandbox's namespaces, as its own exec sees them.
    a.exec("sb", "e1", &["sh", "-c", namespaces]).await.unwrap();
    let sandbox = a.read_all("sb", "e1", false).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..3].join("\n") + "\n",
        sandbox,
        "the app's namespaces are the sandbox's"
    );
    assert_eq!(lines[3], "1", "the app sees the sandbox's sleep: {out}");
    // Only those types, and only of a container that is there.
    let mut bad = req.clone();
    bad.container_id = "bad".into();
    bad.shared_namespaces = vec!["mnt".into()];
    assert_eq!(
        code(a.client.create_container(ctx(), &bad).await),
        Code::INVALID_ARGUMENT
    );
    bad.shared_namespaces = vec!["ipc".into()];
    bad.share_namespaces_of = "gone".into();
    assert_eq!(
        code(a.client.create_container(ctx(), &bad).await),
        Code::FAILED_PRECONDITION
    );
    a.remove("app").await;
    a.kill_and_remove("sb").await;
}

#[tokio::test]
async fn an_apparmor_profile_the_guest_cannot_enforce_does_not_stop_a_container() {
    let Some(a) = Agent::start("lsm").await else {
        return;
    };
    if std::path::Path::new("/sys/module/apparmor/parameters/enabled").exists() {
        eprintln!("skipped: this kernel has AppArmor, which the guest's has not");
        return;
    }
    // As containerd's CRI plugin writes it on an AppArmor host.
    let profile = "cri-containerd.apparmor.d";
    let spec = a.spec(&["sleep", "1000"], |s| {
        let mut p = s.process().clone().unwrap();
        p.set_apparmor_profile(Some(profile.into()));
        s.set_process(Some(p));
    });
    a.run("c1", spec).await;
    let process = serde_json::json!({
        "args": ["echo", "exec-ran"], "cwd": "/", "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0}, "apparmorProfile": profile,
    });
    a.exec_process("c1", "e1", process).await.unwrap();
    assert_eq!(a.read_all("c1", "e1", false).await, "exec-ran\n");
    assert_eq!(a.wait("c1", "e1").await.exit_status, 0);
    a.kill_and_remove("c1").await;
}

#[tokio::test]
async fn a_pod_memory_subpath_is_a_directory_of_its_volume_and_a_planted_link_is_refused() {
    let Some(a) = Agent::start("subpath").await else {
        return;
    };
    let volume = format!(
        "{}/empty-dir-subpath-{}",
        carapace_protocol::POD_MEMORY_DIR,
        std::process::id()
    );
    let bind = |destination: &str, source: String| {
        oci_spec::runtime::MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(vec!["rbind".to_string(), "rw".to_string()])
            .build()
            .unwrap()
    };
    let with_mounts = |mounts: Vec<oci_spec::runtime::Mount>| {
        move |s: &mut Spec| {
            let mut all = s.mounts().clone().unwrap_or_default();
            all.extend(mounts);
            s.set_mounts(Some(all));
        }
    };
    // The subPath a/b is made in the volume, and is the volume's a/b; a container of the pod
    // that mounts the whole volume plants a link in it.
    let spec = a.spec(
        &[
            "sh",
            "-c",
            "echo in-sub >/sub/f && cat /cache/a/b/f && ln -s /etc /cache/evil",
        ],
        with_mounts(vec![
            bind("/sub", format!("{volume}/a/b")),
            bind("/cache", volume.clone()),
        ]),
    );
    a.run("c1", spec).await;
    assert_eq!(a.read_all("c1", "", false).await, "in-sub\n");
    assert_eq!(a.wait("c1", "").await.exit_status, 0);
    a.remove("c1").await;
    // A subPath through that link is refused: the bind never leaves the volume.
    let planted = "carapace-subpath-test-x";
    let spec = a.spec(
        &["true"],
        with_mounts(vec![bind("/x", format!("{volume}/evil/{planted}"))]),
    );
    assert_eq!(code(a.create("c2", spec).await), Code::INVALID_ARGUMENT);
    assert!(
        !Path::new("/etc").join(planted).exists(),
        "nothing made through the link"
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", a.child.id())).unwrap();
    assert!(
        !mountinfo.contains("/subpaths/"),
        "no subpath bind is left: {mountinfo}"
    );
    // A subPath that climbs out of the volume is refused as it is named.
    let spec = a.spec(
        &["true"],
        with_mounts(vec![bind("/x", format!("{volume}/../shm"))]),
    );
    assert_eq!(code(a.create("c3", spec).await), Code::INVALID_ARGUMENT);
    // The volume's tmpfs went with the agent's mount namespace; its empty mount point and
    // the pod-memory directory the agent made on this file system go too.
    drop(a);
    let _ = std::fs::remove_dir(&volume);
    let _ = std::fs::remove_dir(carapace_protocol::POD_MEMORY_DIR);
    let _ = std::fs::remove_dir("/run/carapace");
}
