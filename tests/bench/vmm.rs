//! Benchmarks of carapace-vmm (`make bench`): figures printed, never asserted.
//!
//! On the host (kvm-pvm's /dev/kvm, native for everything up to the first KVM_RUN): CPU time
//! from process start to the first KVM_RUN and the VMM's resident memory beyond guest memory
//! at that point. In the lab (one session): time from VMM start to the guest init's marker,
//! carapace-vmm and QEMU microvm alternating on the same kernel and initramfs, medians and
//! their ratio, and the VMM's memory overhead with a booted guest (from its control socket).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use carapace_tests::artifacts::{guest_kernel, test_initramfs, vmm_binary};
use carapace_tests::lab::{inside, ms};
use carapace_tests::vm::{carapace_vmm, qemu_microvm, Console};

const RUNS: usize = 7;
const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 quiet carapace.test=wait";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Host: CPU time and RSS at the first KVM_RUN, as the VMM reports them.
fn host_startup() {
    let (kernel, initrd) = (guest_kernel(), test_initramfs());
    let mut cpu = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..20 {
        let mut child = Command::new(vmm_binary())
            .arg("--kernel")
            .arg(&kernel)
            .arg("--initramfs")
            .arg(&initrd)
            .args(["--memory-mib", "128", "--serial", "off"])
            .env("CARAPACE_VMM_STARTUP_REPORT", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start carapace-vmm");
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        // "carapace-vmm: first KVM_RUN after N us of CPU, overhead RSS M KiB"
        let nums: Vec<f64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(nums.len(), 2, "unexpected startup report: {line:?}");
        cpu.push(nums[0] / 1000.0);
        rss.push(nums[1]);
    }
    println!(
        "bench host: carapace-vmm CPU time from exec to first KVM_RUN: median {:.2} ms (min {:.2}, max {:.2}; 20 runs, 128 MiB guest, target < 5 ms)",
        median(cpu.clone()),
        cpu.iter().cloned().fold(f64::MAX, f64::min),
        cpu.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "bench host: resident memory beyond guest memory at first KVM_RUN: median {:.0} KiB",
        median(rss)
    );
}

fn api(sock: &std::path::Path, op: &str) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    writeln!(s, r#"{{"op": "{op}"}}"#).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

/// Lab: start to init marker, carapace-vmm vs QEMU microvm, alternating.
fn lab_boot() {
    let (kernel, initrd) = (guest_kernel(), test_initramfs());
    let mut ours = Vec::new();
    let mut qemu = Vec::new();
    let mut overhead = Vec::new();
    for run in 0..RUNS {
        let sock = std::env::temp_dir().join(format!("carapace-bench-{run}.sock"));
        let mut cmd = carapace_vmm(&kernel, &initrd, CMDLINE, 1, 256);
        cmd.arg("--api-socket").arg(&sock);
        let mut vm = Console::spawn(&mut cmd);
        ours.push(ms(vm.wait_for_line(
            "carapace-test: init reached",
            Duration::from_secs(120),
        )));
        vm.wait_for_line("waiting", Duration::from_secs(60));
        let status = api(&sock, "status");
        if let Some(kib) = status
            .split("\"overhead_rss_kib\":")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse::<f64>().ok())
        {
            overhead.push(kib);
        }
        api(&sock, "shutdown");
        vm.wait_exit(Duration::from_secs(30));

        let mut cmd = qemu_microvm(&kernel, &initrd, CMDLINE, 1, 256);
        let mut vm = Console::spawn(&mut cmd);
        qemu.push(ms(vm.wait_for_line(
            "carapace-test: init reached",
            Duration::from_secs(120),
        )));
    }
    let (o, q) = (median(ours.clone()), median(qemu.clone()));
    println!("bench lab: start to init marker, 1 vCPU, 256 MiB, {RUNS} runs each, alternating:");
    println!("bench lab:   carapace-vmm  median {o:.0} ms  {ours:.0?}");
    println!("bench lab:   QEMU microvm  median {q:.0} ms  {qemu:.0?}");
    println!(
        "bench lab:   ratio carapace-vmm / QEMU microvm = {:.2} (target <= 1.00)",
        o / q
    );
    if !overhead.is_empty() {
        println!(
            "bench lab: carapace-vmm resident memory beyond guest memory with the guest booted: median {:.0} KiB (target < 5120)",
            median(overhead)
        );
    }
}

fn main() {
    // `cargo bench` passes --bench; a filter, if any, is ignored.
    if inside() {
        lab_boot();
        return;
    }
    host_startup();
    let exe = std::env::current_exe().unwrap();
    let status = Command::new(carapace_tests::repo_root().join("tests/lab/run"))
        .arg("--")
        .arg(exe)
        .status()
        .expect("run tests/lab/run");
    assert!(
        status.success(),
        "the lab part of the benchmark failed: {status}"
    );
}
