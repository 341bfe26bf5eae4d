//! The pod's lifecycle against a fake agent, host, VM and event sink that write one shared
//! log: what a failed Create rolls back, the order Delete removes a container in, when the VM
//! is torn down, and which exec id the agent is sent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex as StdMutex;

use async_trait::async_trait;
use containerd_shim_protos::protobuf::MessageDyn;
use protobuf::well_known_types::empty::Empty;
use tokio::sync::watch;
use ttrpc::context::Context;

use super::host::{EventSink, Host, Vm};
use super::*;
use crate::agent::Agent;
use crate::sandbox::PodId;

/// What every fake saw, in order.
#[derive(Default)]
struct Log(StdMutex<Vec<String>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    /// Everything logged since the last call.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn refused(what: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        ttrpc::Code::INVALID_ARGUMENT,
        format!("{what} refused"),
    ))
}

/// Each process's exit, by container and exec id.
type Exits = HashMap<(String, String), watch::Sender<Option<i32>>>;

/// An agent in memory: logs each RPC, refuses those named in `fail`, and answers
/// WaitProcess once the test (or RemoveContainer, as the real agent does for a created
/// process) ends the process.
struct FakeAgent {
    log: Arc<Log>,
    fail: StdMutex<HashSet<&'static str>>,
    exits: StdMutex<Exits>,
}

impl FakeAgent {
    fn call(&self, rpc: &'static str, what: String) -> ttrpc::Result<()> {
        self.log.push(format!("agent {rpc} {what}"));
        if self.fail.lock().unwrap().contains(rpc) {
            return Err(refused(rpc));
        }
        Ok(())
    }

    fn exit_tx(&self, cid: &str, exec: &str) -> watch::Sender<Option<i32>> {
        self.exits
            .lock()
            .unwrap()
            .entry((cid.into(), exec.into()))
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// Ends a process with `status`.
    fn exit(&self, cid: &str, exec: &str, status: i32) {
        self.exit_tx(cid, exec).send_replace(Some(status));
    }

    fn fail(&self, rpc: &'static str) {
        self.fail.lock().unwrap().insert(rpc);
    }
}

#[async_trait]
impl Agent for FakeAgent {
    async fn create_container(
        &self,
        _: Context,
        r: &ag::CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.call("CreateContainer", r.container_id.clone())?;
        Ok(Empty::new())
    }
    async fn start_container(
        &self,
        _: Context,
        r: &ag::StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.call("StartContainer", r.container_id.clone())?;
        Ok(Empty::new())
    }
    async fn remove_container(
        &self,
        _: Context,
        r: &ag::RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.call("RemoveContainer", r.container_id.clone())?;
        let tx = self.exit_tx(&r.container_id, "");
        if tx.borrow().is_none() {
            tx.send_replace(Some(137));
        }
        Ok(Empty::new())
    }
    async fn update_container(
        &self,
        _: Context,
        r: &ag::UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.call("UpdateContainer", r.container_id.clone())?;
        Ok(Empty::new())
    }
    async fn stats_container(
        &self,
        _: Context,
        r: &ag::StatsContainerRequest,
    ) -> ttrpc::Result<ag::StatsContainerResponse> {
        self.call("StatsContainer", r.container_id.clone())?;
        Ok(Default::default())
    }
    async fn pause_container(
        &self,
        _: Context,
        r: &ag::PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.call("PauseContainer", r.container_id.clone())?;
        Ok(Empty::new())
    }
    async fn resume_container(
        &self,
        _: Context,
        r: &ag::ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.call("ResumeContainer", r.container_id.clone())?;
        Ok(Empty::new())
    }
    async fn exec_process(&self, _: Context, r: &ag::ExecProcessRequest) -> ttrpc::Result<Empty> {
        self.call("ExecProcess", format!("{}/{}", r.container_id, r.exec_id))?;
        Ok(Empty::new())
    }
    async fn signal_process(
        &self,
        _: Context,
        r: &ag::SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let what = format!("{}/{} {}", r.container_id, r.exec_id, r.signal);
        self.call("SignalProcess", what)?;
        Ok(Empty::new())
    }
    async fn wait_process(
        &self,
        _: Context,
        r: &ag::WaitProcessRequest,
    ) -> ttrpc::Result<ag::WaitProcessResponse> {
        let mut rx = self.exit_tx(&r.container_id, &r.exec_id).subscribe();
        let status = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ttrpc::Error::RemoteClosed)?
            .unwrap_or_default();
        Ok(ag::WaitProcessResponse {
            exit_status: status,
            ..Default::default()
        })
    }
    async fn list_processes(
        &self,
        _: Context,
        r: &ag::ListProcessesRequest,
    ) -> ttrpc::Result<ag::ListProcessesResponse> {
        self.call("ListProcesses", r.container_id.clone())?;
        Ok(ag::ListProcessesResponse {
            pids: vec![1, 7],
            ..Default::default()
        })
    }
    async fn write_stdin(
        &self,
        _: Context,
        _: &ag::WriteStreamRequest,
    ) -> ttrpc::Result<ag::WriteStreamResponse> {
        Err(ttrpc::Error::RemoteClosed)
    }
    async fn read_stdout(
        &self,
        _: Context,
        _: &ag::ReadStreamRequest,
    ) -> ttrpc::Result<ag::ReadStreamResponse> {
        Err(ttrpc::Error::RemoteClosed)
    }
    async fn read_stderr(
        &self,
        _: Context,
        _: &ag::ReadStreamRequest,
    ) -> ttrpc::Result<ag::ReadStreamResponse> {
        Err(ttrpc::Error::RemoteClosed)
    }
    async fn close_stdin(&self, _: Context, _: &ag::CloseStdinRequest) -> ttrpc::Result<Empty> {
        Err(ttrpc::Error::RemoteClosed)
    }
    async fn tty_win_resize(
        &self,
        _: Context,
        r: &ag::TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        self.call("TtyWinResize", format!("{}/{}", r.container_id, r.exec_id))?;
        Ok(Empty::new())
    }
    async fn get_oom_event(
        &self,
        _: Context,
        _: &ag::GetOOMEventRequest,
    ) -> ttrpc::Result<ag::OOMEvent> {
        std::future::pending().await
    }
}

/// A booted VM in memory.
struct FakeVm {
    id: PodId,
    agent: Arc<FakeAgent>,
    log: Arc<Log>,
    exit_tx: watch::Sender<Option<i32>>,
    stopping: AtomicBool,
}

#[async_trait]
impl Vm for FakeVm {
    fn id(&self) -> &PodId {
        &self.id
    }
    fn share(&self) -> Share {
        Share::Virtiofs
    }
    fn agent(&self) -> Arc<dyn Agent> {
        self.agent.clone()
    }
    fn pid(&self) -> u32 {
        4242
    }
    fn exited(&self) -> bool {
        self.exit_tx.borrow().is_some()
    }
    fn exit_watch(&self) -> watch::Receiver<Option<i32>> {
        self.exit_tx.subscribe()
    }
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
    fn console_tail(&self) -> String {
        String::new()
    }
    fn vmm_log_tail(&self) -> String {
        String::new()
    }
    async fn adopt_network(&self) -> Result<()> {
        self.log.push(format!("vm adopt network {}", self.id));
        Ok(())
    }
    async fn teardown(&self) -> Result<()> {
        self.stopping.store(true, Ordering::SeqCst);
        self.log.push(format!("vm teardown {}", self.id));
        Ok(())
    }
}

/// A host in memory: logs each step, fails those named in `fail`, keeps the VM it booted.
struct FakeHost {
    log: Arc<Log>,
    agent: Arc<FakeAgent>,
    fail: StdMutex<HashSet<&'static str>>,
    vm: StdMutex<Option<Arc<FakeVm>>>,
}

impl FakeHost {
    fn step(&self, step: &'static str, what: &str) -> Result<()> {
        self.log.push(format!("host {step} {what}"));
        if self.fail.lock().unwrap().contains(step) {
            return Err(ShimError::Internal(format!("{step} failed")));
        }
        Ok(())
    }

    fn fail(&self, step: &'static str) {
        self.fail.lock().unwrap().insert(step);
    }

    fn vm(&self) -> Arc<FakeVm> {
        self.vm.lock().unwrap().clone().expect("a booted VM")
    }
}

#[async_trait]
impl Host for FakeHost {
    fn prepare_dirs(&self, sid: &PodId) -> Result<()> {
        self.step("prepare_dirs", sid.as_str())
    }
    async fn mount_container(
        &self,
        _sid: &PodId,
        id: &str,
        _rootfs: &[Mount],
        _bundle: &Path,
        _oci: &mut Spec,
        _share: Share,
    ) -> Result<std::path::PathBuf> {
        self.step("mount", id)?;
        Ok(std::path::PathBuf::from("/nowhere").join(id))
    }
    async fn boot(
        &self,
        _config: &Config,
        sid: &PodId,
        _first: FirstContainer<'_>,
    ) -> Result<Arc<dyn Vm>> {
        self.step("boot", sid.as_str())?;
        let vm = Arc::new(FakeVm {
            id: sid.clone(),
            agent: self.agent.clone(),
            log: self.log.clone(),
            exit_tx: watch::channel(None).0,
            stopping: AtomicBool::new(false),
        });
        *self.vm.lock().unwrap() = Some(vm.clone());
        Ok(vm)
    }
    fn remove_dirs(&self, sid: &PodId) -> Result<()> {
        self.step("remove_dirs", sid.as_str())
    }
    fn cleanup_container(&self, _sid: &PodId, id: &str) -> Result<()> {
        self.step("cleanup_container", id)
    }
}

struct FakeEvents(Arc<Log>);

#[async_trait]
impl EventSink for FakeEvents {
    fn namespace(&self) -> &str {
        "test"
    }
    async fn publish(&self, topic: &str, _event: Box<dyn MessageDyn>) {
        self.0.push(format!("event {topic}"));
    }
}

struct Fixture {
    log: Arc<Log>,
    agent: Arc<FakeAgent>,
    host: Arc<FakeHost>,
    pod: Pod,
}

fn fixture() -> Fixture {
    let log = Arc::new(Log::default());
    let agent = Arc::new(FakeAgent {
        log: log.clone(),
        fail: Default::default(),
        exits: Default::default(),
    });
    let host = Arc::new(FakeHost {
        log: log.clone(),
        agent: agent.clone(),
        fail: Default::default(),
        vm: Default::default(),
    });
    let pod = Pod::new(
        Arc::new(Config::default()),
        host.clone(),
        Arc::new(FakeEvents(log.clone())),
    );
    Fixture {
        log,
        agent,
        host,
        pod,
    }
}

/// The spec of container `id`: the pod's own (`pod: None`) or one joining pod `pod`.
fn spec_of(pod: Option<&str>) -> Spec {
    let mut spec = Spec::default();
    if let Some(sid) = pod {
        spec.set_annotations(Some(
            [
                (spec::CONTAINER_TYPE.to_string(), "container".to_string()),
                (spec::SANDBOX_ID.to_string(), sid.to_string()),
            ]
            .into(),
        ));
    }
    spec
}

const NO_OUTPUT: Destination = Destination::Fifos {
    stdout: None,
    stderr: None,
};

impl Fixture {
    async fn create(&self, id: &str, pod: Option<&str>) -> Result<CreateTaskResponse> {
        let req = CreateTaskRequest {
            id: id.into(),
            bundle: format!("/nowhere/{id}"),
            ..Default::default()
        };
        let stdio = StdioPaths::default();
        self.pod.create(&req, spec_of(pod), stdio, &NO_OUTPUT).await
    }

    /// Creates container `c1`, the pod's first (the pod is `c1`), and forgets the log.
    async fn with_c1(self) -> Self {
        self.create("c1", None).await.unwrap();
        self.log.take();
        self
    }

    async fn status(&self, id: &str, exec: &ExecId) -> Status {
        self.pod
            .state(id, exec)
            .await
            .unwrap()
            .status
            .enum_value()
            .unwrap()
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn the_first_create_boots_the_vm_then_creates_the_container() {
    let f = fixture();
    let r = f.create("c1", None).await.unwrap();
    assert_eq!(r.pid, 4242, "the task pid is the VMM's");
    assert_eq!(
        f.log.take(),
        strs(&[
            "host prepare_dirs c1",
            "host mount c1",
            "host boot c1",
            "agent CreateContainer c1",
            "event /tasks/create",
        ])
    );
    assert_eq!(f.status("c1", &ExecId::Init).await, Status::CREATED);
    assert_eq!(f.pod.task_pid().await, 4242);
}

#[tokio::test]
async fn a_first_create_that_fails_before_the_vm_boots_removes_the_pod_directories() {
    for step in ["mount", "boot"] {
        let f = fixture();
        f.host.fail(step);
        let e = f.create("c1", None).await.unwrap_err();
        assert!(matches!(e, ShimError::Internal(_)), "{step}: {e}");
        let mut want = vec!["host prepare_dirs c1", "host mount c1"];
        if step == "boot" {
            want.push("host boot c1");
        }
        want.push("host remove_dirs c1");
        assert_eq!(f.log.take(), strs(&want), "{step}");
        assert_eq!(f.pod.task_pid().await, 0, "{step}: no VM kept");
        assert!(f.pod.state("c1", &ExecId::Init).await.is_err());
    }
}

#[tokio::test]
async fn a_first_create_the_agent_refuses_tears_the_new_vm_down_and_nothing_else() {
    let f = fixture();
    f.agent.fail("CreateContainer");
    let e = f.create("c1", None).await.unwrap_err();
    assert_eq!(
        e.code(),
        ttrpc::Code::INVALID_ARGUMENT,
        "the agent's code: {e}"
    );
    assert_eq!(
        f.log.take(),
        strs(&[
            "host prepare_dirs c1",
            "host mount c1",
            "host boot c1",
            "agent CreateContainer c1",
            // Teardown removes the whole state directory, the container's part with it.
            "vm teardown c1",
        ])
    );
    assert_eq!(f.pod.task_pid().await, 0, "the VM is forgotten");
    // The pod can be created again from scratch.
    f.agent.fail.lock().unwrap().clear();
    f.create("c1", None).await.unwrap();
    assert_eq!(f.log.take()[0], "host prepare_dirs c1");
}

#[tokio::test]
async fn a_second_create_that_fails_cleans_only_its_own_container() {
    let f = fixture().with_c1().await;
    f.agent.fail("CreateContainer");
    f.create("c2", Some("c1")).await.unwrap_err();
    assert_eq!(
        f.log.take(),
        strs(&[
            "host mount c2",
            "agent CreateContainer c2",
            "host cleanup_container c2",
        ]),
        "no directory made, no VM booted or torn down"
    );
    assert_eq!(f.pod.task_pid().await, 4242);
    assert_eq!(f.status("c1", &ExecId::Init).await, Status::CREATED);
    assert!(matches!(
        f.pod.state("c2", &ExecId::Init).await,
        Err(ShimError::NotFound(_))
    ));
}

#[tokio::test]
async fn creates_refused_up_front_touch_nothing() {
    let f = fixture().with_c1().await;
    let e = f.create("c1", None).await.unwrap_err();
    assert!(matches!(e, ShimError::AlreadyExists(_)), "{e}");
    let e = f.create("c2", Some("another-pod")).await.unwrap_err();
    assert!(matches!(e, ShimError::InvalidArgument(_)), "{e}");
    assert_eq!(f.log.take(), Vec::<String>::new());
}

#[tokio::test]
async fn delete_removes_in_order_and_only_the_last_container_tears_the_vm_down() {
    let f = fixture().with_c1().await;
    f.create("c2", Some("c1")).await.unwrap();
    f.pod.start("c1", &ExecId::Init).await.unwrap();
    f.log.take();

    // A running container is not deleted.
    let e = f.pod.delete("c1", &ExecId::Init).await.unwrap_err();
    assert!(matches!(e, ShimError::FailedPrecondition(_)), "{e}");
    assert_eq!(f.log.take(), Vec::<String>::new());

    f.agent.exit("c1", "", 3);
    assert_eq!(f.pod.wait("c1", &ExecId::Init).await.unwrap().status, 3);
    let d = f.pod.delete("c1", &ExecId::Init).await.unwrap();
    assert_eq!((d.pid, d.exit_status), (4242, 3));
    assert_eq!(
        f.log.take(),
        strs(&[
            "event /tasks/exit",
            "agent RemoveContainer c1",
            "host cleanup_container c1",
            "event /tasks/delete",
        ]),
        "c2 remains: the VM stays"
    );

    // c2 was created, never started: RemoveContainer ends it and its watcher records that.
    let d = f.pod.delete("c2", &ExecId::Init).await.unwrap();
    assert_eq!(d.exit_status, 137);
    assert_eq!(
        f.log.take(),
        strs(&[
            "agent RemoveContainer c2",
            "event /tasks/exit",
            "host cleanup_container c2",
            "event /tasks/delete",
            "vm teardown c1",
        ])
    );
    assert_eq!(f.pod.task_pid().await, 0);
    assert!(matches!(
        f.pod.start("c1", &ExecId::Init).await,
        Err(ShimError::NotFound(_))
    ));
}

#[tokio::test]
async fn delete_after_the_vm_ended_skips_the_agent_and_still_cleans_up() {
    let f = fixture().with_c1().await;
    f.host.vm().exit_tx.send_replace(Some(1));
    // The exit watcher sees the VM end under the process.
    assert_eq!(f.pod.wait("c1", &ExecId::Init).await.unwrap().status, 255);
    f.pod.delete("c1", &ExecId::Init).await.unwrap();
    assert_eq!(
        f.log.take(),
        strs(&[
            "event /tasks/exit",
            "host cleanup_container c1",
            "event /tasks/delete",
            "vm teardown c1",
        ])
    );
}

#[tokio::test]
async fn execs_are_named_to_the_agent_by_their_id_and_the_init_by_none() {
    let f = fixture().with_c1().await;
    let e1 = ExecId::Exec("e1".into());
    // No exec before the container runs.
    let e = f
        .pod
        .exec(
            "c1",
            "e1",
            StdioPaths::default(),
            b"{}".to_vec(),
            &NO_OUTPUT,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ShimError::FailedPrecondition(_)), "{e}");
    f.pod.start("c1", &ExecId::Init).await.unwrap();
    f.pod
        .exec(
            "c1",
            "e1",
            StdioPaths::default(),
            b"{}".to_vec(),
            &NO_OUTPUT,
        )
        .await
        .unwrap();
    f.pod.start("c1", &e1).await.unwrap();
    f.pod.kill("c1", &e1, 15, false).await.unwrap();
    f.pod.kill("c1", &ExecId::Init, 9, false).await.unwrap();
    f.pod.resize_pty("c1", &e1, 80, 24).await.unwrap();
    assert_eq!(
        f.log.take(),
        strs(&[
            "vm adopt network c1",
            "agent StartContainer c1",
            "event /tasks/start",
            "event /tasks/exec-added",
            "agent ExecProcess c1/e1",
            "event /tasks/exec-started",
            "agent SignalProcess c1/e1 15",
            "agent SignalProcess c1/ 9",
            "agent TtyWinResize c1/e1",
        ])
    );
    let s = f.pod.state("c1", &e1).await.unwrap();
    assert_eq!(s.exec_id, "e1");
    assert_eq!(f.pod.state("c1", &ExecId::Init).await.unwrap().exec_id, "");
    match f.pod.state("c1", &ExecId::Exec("e2".into())).await {
        Err(ShimError::NotFound(m)) => assert_eq!(m, "exec \"e2\" of container \"c1\""),
        other => panic!("{:?}", other.map(|s| s.status)),
    }
}

#[tokio::test]
async fn deleting_an_exec_forgets_it_and_leaves_the_container_and_vm() {
    let f = fixture().with_c1().await;
    let e1 = ExecId::Exec("e1".into());
    f.pod.start("c1", &ExecId::Init).await.unwrap();
    f.pod
        .exec(
            "c1",
            "e1",
            StdioPaths::default(),
            b"{}".to_vec(),
            &NO_OUTPUT,
        )
        .await
        .unwrap();
    f.pod.start("c1", &e1).await.unwrap();
    f.agent.exit("c1", "e1", 0);
    f.pod.wait("c1", &e1).await.unwrap();
    f.log.take();
    f.pod.delete("c1", &e1).await.unwrap();
    assert_eq!(
        f.log.take(),
        Vec::<String>::new(),
        "no agent, host or event"
    );
    assert!(matches!(
        f.pod.state("c1", &e1).await,
        Err(ShimError::NotFound(_))
    ));
    assert_eq!(f.status("c1", &ExecId::Init).await, Status::RUNNING);
}

#[tokio::test]
async fn shutdown_keeps_a_pod_with_containers_and_ends_an_empty_one() {
    let f = fixture().with_c1().await;
    assert!(!f.pod.shutdown().await.unwrap(), "c1 remains");
    assert_eq!(f.log.take(), Vec::<String>::new(), "nothing torn down");
    f.pod.delete("c1", &ExecId::Init).await.unwrap();
    assert_eq!(f.log.take().last().unwrap(), "vm teardown c1");
    assert!(f.pod.shutdown().await.unwrap());
    assert_eq!(f.log.take(), Vec::<String>::new(), "torn down once only");
}

#[tokio::test]
async fn pause_and_resume_follow_the_status() {
    let f = fixture().with_c1().await;
    let e = f.pod.pause("c1", true).await.unwrap_err();
    assert!(
        matches!(e, ShimError::FailedPrecondition(_)),
        "created: {e}"
    );
    f.pod.start("c1", &ExecId::Init).await.unwrap();
    f.pod.pause("c1", true).await.unwrap();
    assert_eq!(f.status("c1", &ExecId::Init).await, Status::PAUSED);
    let e = f.pod.delete("c1", &ExecId::Init).await.unwrap_err();
    assert!(matches!(e, ShimError::FailedPrecondition(_)), "paused: {e}");
    f.pod.pause("c1", false).await.unwrap();
    assert_eq!(f.status("c1", &ExecId::Init).await, Status::RUNNING);
    assert_eq!(
        f.log.take(),
        strs(&[
            "vm adopt network c1",
            "agent StartContainer c1",
            "event /tasks/start",
            "agent PauseContainer c1",
            "event /tasks/paused",
            "agent ResumeContainer c1",
            "event /tasks/resumed",
        ])
    );
}
