//! `make bench-cri`: the CRI's pod and container start, runc against carapace, in one lab
//! session (containerd's CRI plugin with the reference CNI plugins, see tests/src/cri.rs).
//! `CARAPACE_CRI_RUNS` rounds (default 10), the handlers alternating: RunPodSandbox until it
//! returns (the pod's network and sandbox ready), then CreateContainer and StartContainer of a
//! busybox `sleep`, then the pod removed. Prints each phase's median and min/max per handler
//! and carapace's ratio to runc's medians; figures are printed, never asserted.

use std::process::Command;
use std::time::{Duration, Instant};

use carapace_tests::cri::{Cri, HANDLERS};
use carapace_tests::lab::inside;

const PHASES: [&str; 3] = ["RunPodSandbox", "CreateContainer", "StartContainer"];

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench() {
    let runs: usize = std::env::var("CARAPACE_CRI_RUNS")
        .ok()
        .map(|v| v.parse().expect("CARAPACE_CRI_RUNS is a number"))
        .unwrap_or(10);
    let c = Cri::start();
    // [handler][phase] -> durations
    let mut times = vec![vec![Vec::new(); PHASES.len()]; HANDLERS.len()];
    for round in 0..runs {
        for (h, handler) in HANDLERS.iter().enumerate() {
            let name = format!("bench-{handler}-{round}");
            let pod = c.pod_config(&name);
            let t = Instant::now();
            let sid = c
                .run_pod(handler, &pod)
                .unwrap_or_else(|e| panic!("RunPodSandbox with {handler}: {e}\n{}", c.log()));
            times[h][0].push(t.elapsed());
            let request = carapace_tests::cri::v1::CreateContainerRequest {
                pod_sandbox_id: sid.clone(),
                config: Some(c.container_config("app", &["sleep", "3600"])),
                sandbox_config: Some(pod.clone()),
            };
            let t = Instant::now();
            let id = c
                .call(|mut r| async move { r.create_container(request).await })
                .unwrap_or_else(|e| panic!("CreateContainer with {handler}: {e}"))
                .container_id;
            times[h][1].push(t.elapsed());
            let start = carapace_tests::cri::v1::StartContainerRequest { container_id: id };
            let t = Instant::now();
            c.call(|mut r| async move { r.start_container(start).await })
                .unwrap_or_else(|e| panic!("StartContainer with {handler}: {e}"));
            times[h][2].push(t.elapsed());
            c.remove_pod(&sid);
        }
    }
    println!("CRI start-up in the lab, {runs} runs per handler (ms: median [min-max]):");
    let mut medians = vec![vec![Duration::ZERO; PHASES.len()]; HANDLERS.len()];
    for (h, handler) in HANDLERS.iter().enumerate() {
        let mut line = format!("  {handler:<9}");
        for (p, phase) in PHASES.iter().enumerate() {
            let v = &mut times[h][p];
            let m = median(v);
            medians[h][p] = m;
            line.push_str(&format!(
                " {phase} {} [{}-{}]",
                m.as_millis(),
                v[0].as_millis(),
                v[v.len() - 1].as_millis()
            ));
        }
        println!("{line}");
    }
    let ratios: Vec<String> = PHASES
        .iter()
        .enumerate()
        .map(|(p, phase)| {
            format!(
                "{phase} {:.2}x",
                medians[1][p].as_secs_f64() / medians[0][p].as_secs_f64().max(1e-9)
            )
        })
        .collect();
    println!("  carapace/runc medians: {}", ratios.join(", "));
}

fn main() {
    if inside() {
        bench();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let status = Command::new(carapace_tests::repo_root().join("tests/lab/run"))
        .args(["--timeout", "3600", "--"])
        .arg(exe)
        .status()
        .expect("run tests/lab/run");
    assert!(
        status.success(),
        "the CRI bench failed in the lab: {status}"
    );
}
