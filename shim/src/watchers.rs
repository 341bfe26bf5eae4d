//! The pod's background watchers: each started process's exit (drained output, then
//! TaskExit after its start event), the VM ending on its own (logged with the VMM's log and
//! the guest console), and the agent's OOM events (TaskOOM).

use std::sync::Arc;
use std::time::Duration;

use carapace_protocol::agent as ag;
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics::{TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC};
use tokio::sync::watch;

use crate::agent::{ctx, Agent};
use crate::convert::Exit;
use crate::pod::host::{EventSink, Vm};
use crate::process::Proc;

/// How long an exited process's output may take to drain.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Watches one started process until it exits, then drains its output and publishes
/// TaskExit (after its start event, which `lifecycle` orders).
pub fn exit(
    events: Arc<dyn EventSink>,
    proc: Arc<Proc>,
    agent: Arc<dyn Agent>,
    mut vmm: watch::Receiver<Option<i32>>,
    pid: u32,
) {
    tokio::spawn(async move {
        let req = ag::WaitProcessRequest {
            container_id: proc.container_id.clone(),
            exec_id: proc.exec_id.wire().to_string(),
            ..Default::default()
        };
        let exit = tokio::select! {
            r = agent.wait_process(ctx(), &req) => match r {
                Ok(r) => Exit::from(&r),
                Err(e) => {
                    log::error!("{}/{}: WaitProcess: {e}", proc.container_id, proc.exec_id);
                    Exit::now(255)
                }
            },
            _ = vmm.wait_for(Option::is_some) => {
                log::error!("{}/{}: the VM ended under the process", proc.container_id, proc.exec_id);
                Exit::now(255)
            }
        };
        if let Some(p) = proc.pumps() {
            p.drain(DRAIN).await;
            p.stop_stdin();
        }
        let _order = proc.lifecycle.lock().await;
        events
            .publish(
                TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: proc.container_id.clone(),
                    id: proc.event_id().to_string(),
                    pid,
                    exit_status: exit.status,
                    exited_at: MessageField::some(exit.at.clone()),
                    ..Default::default()
                }),
            )
            .await;
        log::info!(
            "{}/{} exited with {}",
            proc.container_id,
            proc.exec_id,
            exit.status
        );
        proc.set_exited(exit);
    });
}

/// Logs why the VM ended when it ends on its own (a crash, a guest panic): the VMM's log
/// and the guest console go to containerd's log before teardown removes them.
pub fn vm(sandbox: &Arc<dyn Vm>) {
    let mut exit = sandbox.exit_watch();
    let sandbox = Arc::downgrade(sandbox);
    tokio::spawn(async move {
        let status = match exit.wait_for(Option::is_some).await {
            Ok(s) => *s,
            Err(_) => return,
        };
        let Some(s) = sandbox.upgrade() else { return };
        if !s.stopping() {
            log::error!(
                "pod {}: the VM ended on its own: {} (status {status:?})\n--- vmm log ---\n{}\n--- guest console ---\n{}",
                s.id(),
                status.map_or_else(|| "unknown".into(), carapace_vmm_config::status::describe),
                s.vmm_log_tail(),
                s.console_tail()
            );
        }
    });
}

/// Forwards the agent's OOM events until the VM ends.
pub fn oom(events: Arc<dyn EventSink>, agent: Arc<dyn Agent>) {
    tokio::spawn(async move {
        while let Ok(ev) = agent
            .get_oom_event(ctx(), &ag::GetOOMEventRequest::new())
            .await
        {
            log::info!("OOM in container {}", ev.container_id);
            events
                .publish(
                    TASK_OOM_EVENT_TOPIC,
                    Box::new(TaskOOM {
                        container_id: ev.container_id,
                        ..Default::default()
                    }),
                )
                .await;
        }
    });
}
