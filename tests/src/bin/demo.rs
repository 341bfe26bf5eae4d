//! The inside of `make demo`: a private containerd runs a busybox container with runc and
//! then with carapace (`io.containerd.carapace.v2`: the container in its own KVM microVM),
//! printing each one's output and how long `ctr run --rm` took. It runs wherever /dev/kvm
//! boots Linux guests: on a KVM host directly, or in the lab (tests/demo decides).
//!
//! `carapace-demo --bench N` instead times `ctr run --rm busybox true` N times with each
//! runtime, in the same session, and prints the medians and their ratio.

use std::time::{Duration, Instant};

use carapace_tests::artifacts::{busybox_image, BUSYBOX_IMAGE};
use carapace_tests::carapace::{self, Carapace, RUNTIME};
use carapace_tests::containerd::Containerd;
use carapace_tests::lab::ms;

/// Runs `ctr run --rm` with `runtime` (None: containerd's default, runc) and times it.
fn ctr_run(c: &Containerd, runtime: Option<&str>, id: &str, cmd: &[&str]) -> (String, Duration) {
    let mut args = vec!["run", "--rm"];
    if let Some(r) = runtime {
        args.extend(["--runtime", r]);
    }
    args.extend([BUSYBOX_IMAGE, id]);
    args.extend(cmd);
    let start = Instant::now();
    let out = c.ctr_output(&args);
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "ctr {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(c: &Containerd, runs: usize) {
    println!("bench: ctr run --rm busybox true, {runs} runs each, same session");
    let mut runc = Vec::new();
    let mut cara = Vec::new();
    for i in 0..runs {
        runc.push(ctr_run(c, None, &format!("bench-runc-{i}"), &["true"]).1);
        cara.push(ctr_run(c, Some(RUNTIME), &format!("bench-carapace-{i}"), &["true"]).1);
    }
    let show = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("bench: runc     ms: {}", show(&runc));
    println!("bench: carapace ms: {}", show(&cara));
    let (r, k) = (median(runc), median(cara));
    println!(
        "bench: median runc {:.0} ms, carapace {:.0} ms, ratio {:.1}x",
        ms(r),
        ms(k),
        k.as_secs_f64() / r.as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let where_ = if carapace_tests::lab::inside() {
        "inside the lab"
    } else {
        "on this host"
    };
    println!("demo: starting a private containerd {where_}, with the carapace shim on its PATH");
    let c = Carapace::start();
    c.import(&busybox_image());
    println!("demo: imported {BUSYBOX_IMAGE}");
    if args.first().map(String::as_str) == Some("--bench") {
        let runs = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10);
        bench(&c, runs);
        return;
    }

    let say = [
        "sh",
        "-c",
        "echo hello from $(uname -n), kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpus",
    ];
    let (out, runc) = ctr_run(&c, None, "demo-runc", &say);
    print!("runc:     {out}");
    let (out, cara) = ctr_run(&c, Some(RUNTIME), "demo-carapace", &say);
    print!("carapace: {out}");
    println!(
        "demo: ctr run --rm took {:.0} ms with runc and {:.0} ms with carapace (its own microVM: boot, agent, container, teardown)",
        ms(runc),
        ms(cara)
    );
    if carapace::share() == "block-copy" {
        println!("demo: note: the rootfs reached the guest by the block-copy stop-gap (CARAPACE_SHARE=block-copy), not virtio-fs");
    }
    let left = c.leftovers();
    assert!(left.is_empty(), "carapace left traces: {left:?}");
    println!("demo: nothing left on the host (no VMM, shim, mount or state directory)");
}
