//! The agent in a real guest: carapace-vmm boots the guest kernel with the agent as /init and
//! a busybox ext4 disk; the test talks ttrpc to the agent over the hybrid vsock and runs
//! containers (output, exit codes, exec, signals, stats, teardown). Also the agent's host
//! tests, run inside the lab where cgroup v2 is the only hierarchy (the host has v1).

use std::process::Command;
use std::time::Duration;

use carapace_protocol::agent::*;
use carapace_tests::agent::{
    agent_client, busybox_disk, create_and_start, ctx, disk_sandbox, exec, read_all, remove,
    vsock_connect, wait, AGENT_PORT,
};
use carapace_tests::artifacts::{guest_kernel, initramfs};
use carapace_tests::containerd::make_temp_dir;
use carapace_tests::lab::ms;
use carapace_tests::lab_test;
use carapace_tests::vm::{carapace_vmm, Console};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 quiet";

lab_test! {
    fn agent_runs_containers_over_vsock_in_a_carapace_vmm_guest() {
        let dir = make_temp_dir("agent-vsock");
        let disk = busybox_disk(&dir, 32);
        let vsock = dir.join("v.sock");
        let mut cmd = carapace_vmm(&guest_kernel(), &initramfs(), CMDLINE, 2, 256);
        cmd.arg("--vsock").arg(format!("3,{}", vsock.display())).arg("--block").arg(&disk);
        let mut guest = Console::spawn(&mut cmd);
        let serving_at = guest.wait_for_line("serving", Duration::from_secs(120));
        let ready_ms = guest
            .text()
            .split("ready_ms=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no ready_ms in the agent's serving line:\n{}", guest.text()));
        println!(
            "lab figure: agent start (/init exec) to serving {ready_ms} ms; VMM start to serving {:.0} ms",
            ms(serving_at)
        );
        let stream = vsock_connect(&vsock, AGENT_PORT, Duration::from_secs(10)).expect("vsock CONNECT 1024");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // On a failure, the guest's console (the agent's log) explains it.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(async {
            let c = agent_client(stream);
            let health = c.check(ctx(), &CheckRequest::new()).await.expect("Check");
            assert!(health.serving, "{health:?}");
            let details = c.get_guest_details(ctx(), &GetGuestDetailsRequest::new()).await.expect("GetGuestDetails");
            assert_eq!(details.vcpus, 2, "{details:?}");
            assert!(details.memory_total_bytes > 150 << 20 && details.memory_total_bytes <= 256 << 20, "{details:?}");

            let sandbox = disk_sandbox("pod", "carapace-pod");
            c.create_sandbox(ctx(), &sandbox).await.expect("CreateSandbox");

            // Output, both streams, exit code.
            create_and_start(&c, "c1", &["sh", "-c", "echo hello from $(hostname); echo oops >&2; exit 3"]).await.expect("CreateContainer+StartContainer");
            assert_eq!(read_all(&c, "c1", "", false).await.expect("reading a stream"), "hello from carapace-pod\n");
            assert_eq!(read_all(&c, "c1", "", true).await.expect("reading a stream"), "oops\n");
            assert_eq!(wait(&c, "c1", "").await.expect("WaitProcess").exit_status, 3);
            remove(&c, "c1").await.expect("RemoveContainer");

            // Exec into a running container; SIGKILL ends it with 137.
            create_and_start(&c, "c2", &["sleep", "300"]).await.expect("CreateContainer+StartContainer");
            exec(&c, "c2", "e1", &["sh", "-c", "echo exec in $(cat /proc/1/comm)"]).await.expect("ExecProcess");
            assert_eq!(read_all(&c, "c2", "e1", false).await.expect("reading a stream"), "exec in sleep\n");
            assert_eq!(wait(&c, "c2", "e1").await.expect("WaitProcess").exit_status, 0);
            let stats = c
                .stats_container(ctx(), &StatsContainerRequest { container_id: "c2".into(), ..Default::default() })
                .await
                .expect("StatsContainer");
            assert!(stats.memory.usage_bytes > 0 && stats.pids.current >= 1, "{stats:?}");
            let kill = SignalProcessRequest { container_id: "c2".into(), signal: 9, ..Default::default() };
            c.signal_process(ctx(), &kill).await.expect("SignalProcess");
            let status = wait(&c, "c2", "").await.expect("WaitProcess");
            assert_eq!((status.exit_status, status.signal), (137, 9));
            remove(&c, "c2").await.expect("RemoveContainer");

            // Unknown ids are NOT_FOUND and the agent keeps serving.
            let err = c
                .start_container(ctx(), &StartContainerRequest { container_id: "nope".into(), ..Default::default() })
                .await
                .unwrap_err();
            assert!(matches!(&err, ttrpc::Error::RpcStatus(s) if s.code() == ttrpc::Code::NOT_FOUND), "{err:?}");

            // CreateContainer to the process running, in the guest, 20 times.
            let mut times = Vec::new();
            for i in 0..20 {
                let id = format!("t{i}");
                times.push(create_and_start(&c, &id, &["true"]).await.expect("CreateContainer+StartContainer"));
                assert_eq!(wait(&c, &id, "").await.expect("WaitProcess").exit_status, 0);
                remove(&c, &id).await.expect("RemoveContainer");
            }
            times.sort();
            println!(
                "lab figure: in the guest, CreateContainer+StartContainer over vsock median {:.1} ms (min {:.1}, max {:.1}, 20 runs)",
                ms(times[10]), ms(times[0]), ms(times[19])
            );

            c.destroy_sandbox(ctx(), &DestroySandboxRequest::new()).await.expect("DestroySandbox");
        })));
        if let Err(panic) = result {
            std::thread::sleep(Duration::from_millis(500));
            eprintln!("--- the guest's console:\n{}", guest.drain());
            std::panic::resume_unwind(panic);
        }
        let status = guest.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}", guest.text());
        assert!(!vsock.exists(), "the vsock socket was left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

lab_test! {
    fn agent_host_tests_pass_under_cgroup_v2() {
        assert!(
            std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            "the lab has no cgroup v2 hierarchy at /sys/fs/cgroup"
        );
        let exe = std::env::var("CARAPACE_AGENT_HOST_TESTS")
            .expect("CARAPACE_AGENT_HOST_TESTS names the agent's host test binary (tests/lab/test sets it)");
        let status = Command::new(&exe)
            .args(["--test-threads=1", "--nocapture"])
            .status()
            .unwrap_or_else(|e| panic!("cannot run {exe}: {e}"));
        assert!(status.success(), "the agent's host tests failed under cgroup v2: {status}");
    }
}
