//! Benchmarks of carapace-vmm (`make bench`): figures printed, never asserted.
//!
//! On the host (kvm-pvm's /dev/kvm, native for everything up to the first KVM_RUN): CPU time
//! from process start to the first KVM_RUN and the VMM's resident memory beyond guest memory
//! at that point, with the syscall filters off, on, and on in a jail. In the lab (one session): time from VMM start to the guest init's marker,
//! carapace-vmm and QEMU microvm alternating on the same kernel and initramfs, medians and
//! their ratio, and the VMM's memory overhead with a booted guest (from its control socket).
//! Also in the lab: sequential write (dd, conv=fsync) and read (after dropping the guest's
//! caches) of 256 MiB through the virtio-fs share and through ext4 on a virtio-blk disk in
//! the same guest, in MB/s, and their ratio.

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

/// The private memory (clean and dirty) of process `pid`, in KiB.
fn private_kib(pid: u32) -> f64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum()
}

/// One start-up on the host: (CPU ms, overhead RSS KiB) at the first KVM_RUN, as the VMM
/// reports them (in a jail, the VMM counts the CPU time its process spent before it forked
/// into its PID namespace), booting from `config`; and the private memory of the process
/// started, which in a jail is the VMM's supervisor (the VMM is its child).
fn one_startup(config: &std::path::Path) -> (f64, f64, f64) {
    let mut child = Command::new(vmm_binary())
        .arg("--config")
        .arg(config)
        .env("CARAPACE_VMM_STARTUP_REPORT", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start carapace-vmm");
    // "carapace-vmm: first KVM_RUN after N us of CPU, overhead RSS M KiB" (after any warning)
    let line = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("first KVM_RUN"))
        .unwrap_or_default();
    let started = private_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 2, "unexpected startup report: {line:?}");
    (nums[0] / 1000.0, nums[1], started)
}

/// Host: CPU time and RSS at the first KVM_RUN, with the syscall filters off, on (the
/// default), and on in a jail (the shim's default), alternating run to run.
fn host_startup() {
    let (kernel, initrd) = (guest_kernel(), test_initramfs());
    let dir = std::env::temp_dir().join(format!("carapace-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("jail")).unwrap();
    let base = serde_json::json!({
        "kernel": kernel, "initramfs": initrd, "memory_mib": 128, "serial": "off",
    });
    let variants = [
        ("filters off", serde_json::json!({"seccomp": false})),
        ("filters on", serde_json::json!({})),
        (
            "filters and jail",
            serde_json::json!({"jail": {"root": dir.join("jail")}}),
        ),
    ];
    let mut figures: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); variants.len()];
    let mut supervisor = Vec::new();
    let configs: Vec<std::path::PathBuf> = variants
        .iter()
        .enumerate()
        .map(|(i, (_, extra))| {
            let mut c = base.clone();
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            let p = dir.join(format!("vm{i}.json"));
            std::fs::write(&p, c.to_string()).unwrap();
            p
        })
        .collect();
    for _ in 0..20 {
        for (i, config) in configs.iter().enumerate() {
            let (cpu, rss, started) = one_startup(config);
            figures[i].0.push(cpu);
            figures[i].1.push(rss);
            if i == variants.len() - 1 {
                supervisor.push(started);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let base_cpu = median(figures[0].0.clone());
    let base_rss = median(figures[0].1.clone());
    for ((name, _), (cpu, rss)) in variants.iter().zip(figures) {
        let (c, r) = (median(cpu.clone()), median(rss));
        println!(
            "bench host: carapace-vmm, {name}: CPU time from exec to first KVM_RUN median {c:.2} ms (min {:.2}, max {:.2}; +{:.2} ms), resident memory beyond guest memory median {r:.0} KiB (+{:.0} KiB); 20 runs, 128 MiB guest, target < 5 ms",
            cpu.iter().cloned().fold(f64::MAX, f64::min),
            cpu.iter().cloned().fold(0.0, f64::max),
            c - base_cpu,
            r - base_rss,
        );
    }
    println!(
        "bench host: carapace-vmm, filters and jail: the supervisor outside the VMM's PID namespace holds median {:.0} KiB of private memory (on top of the VMM's figure above)",
        median(supervisor)
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

/// MB/s for 256 MiB moved in `cs` hundredths of a second.
fn mb_per_s(cs: f64) -> f64 {
    256.0 * 1.048_576 / (cs.max(1.0) / 100.0)
}

/// Lab: 256 MiB written and read through virtio-fs and through ext4 on virtio-blk.
fn lab_fs_throughput() {
    let (kernel, initrd) = (guest_kernel(), test_initramfs());
    let dir = std::env::temp_dir().join(format!("carapace-bench-fs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let disk = dir.join("disk.ext4");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(&disk)
        .status()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(mkfs.success(), "mkfs.ext4 failed");
    let mut runs: Vec<[f64; 4]> = Vec::new();
    for _ in 0..3 {
        let mut cmd = carapace_vmm(
            &kernel,
            &initrd,
            "console=ttyS0 reboot=k panic=1 quiet carapace.test=fs-bench",
            2,
            512,
        );
        cmd.arg("--fs")
            .arg(format!("carapace,{}", share.display()))
            .arg("--block")
            .arg(&disk);
        let mut vm = Console::spawn(&mut cmd);
        vm.wait_for_line("carapace-test: done", Duration::from_secs(900));
        vm.wait_exit(Duration::from_secs(60));
        let text = vm.text().to_string();
        let figures = |target: &str| -> [f64; 2] {
            let l = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("bench: {target} ")))
                .unwrap_or_else(|| panic!("no figures for {target}:\n{text}"));
            let n: Vec<f64> = l
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            [mb_per_s(n[0]), mb_per_s(n[1])]
        };
        let [fw, fr] = figures("/mnt");
        let [bw, br] = figures("/disk");
        runs.push([fw, fr, bw, br]);
    }
    let med = |i: usize| median(runs.iter().map(|r| r[i]).collect());
    let (fw, fr, bw, br) = (med(0), med(1), med(2), med(3));
    println!(
        "bench lab: sequential 256 MiB in one guest (2 vCPUs, 512 MiB), median of {} runs:",
        runs.len()
    );
    println!("bench lab:   virtio-fs (cache=never)  write {fw:.1} MB/s  read {fr:.1} MB/s");
    println!("bench lab:   virtio-blk + ext4        write {bw:.1} MB/s  read {br:.1} MB/s");
    println!(
        "bench lab:   ratio virtio-fs / virtio-blk: write {:.2}  read {:.2}",
        fw / bw,
        fr / br
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // `cargo bench` passes --bench; a filter, if any, is ignored. CARAPACE_BENCH=fs runs only
    // the virtio-fs figures, CARAPACE_BENCH=host only the host's.
    let only_fs = std::env::var("CARAPACE_BENCH").is_ok_and(|v| v == "fs");
    if std::env::var("CARAPACE_BENCH").is_ok_and(|v| v == "host") {
        host_startup();
        return;
    }
    if inside() {
        if !only_fs {
            lab_boot();
        }
        lab_fs_throughput();
        return;
    }
    if only_fs {
        let exe = std::env::current_exe().unwrap();
        let status = Command::new(carapace_tests::repo_root().join("tests/lab/run"))
            .arg("--")
            .arg(exe)
            .status()
            .expect("run tests/lab/run");
        assert!(status.success(), "the lab benchmark failed: {status}");
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
