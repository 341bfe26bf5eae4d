//! `make lab-stress`: how often guests die, carapace-vmm against QEMU microvm, in one lab
//! session. Each VMM boots the agent guest (same kernel, initramfs, vCPUs, memory and busybox
//! disk) `CARAPACE_STRESS_BOOTS` times (default 200), alternating with the other, and runs
//! `CARAPACE_STRESS_CYCLES` container cycles in each boot (default 10: create, start, exec,
//! read its output, wait, kill, wait, remove). Every boot ends as one of: completed, triple
//! fault (carapace-vmm's exit status 3; QEMU's reset, which `-no-reboot` turns into an
//! exit), kernel panic, hang (the agent stopped answering with the VM running), or another
//! error. Figures are printed, never asserted. `CARAPACE_STRESS_BASELINE` may name another
//! carapace-vmm build (the one before a change) to run alternating with the two.
//!
//! When a guest dies, the lab kernel's KVM trace events (`kvm_exit`, `kvm_entry`,
//! `kvm_inj_exception` from tracefs, cleared at each boot) are saved with the console under
//! `$CARAPACE_LAB_OUT/stress/`, and the RIPs of the last exits are mapped to symbols of the
//! guest kernel: on AMD the VMCB is reset at a SHUTDOWN intercept, so the registers the VMM
//! reads afterwards are the reset state, while the trace records them at the exit.
//! `CARAPACE_STRESS_EXPLAIN=<file.trace>` prints that analysis for a saved trace, on the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use carapace_protocol::agent::*;
use carapace_protocol::agent_ttrpc::AgentServiceClient;
use carapace_tests::agent::{
    agent_client, busybox_disk, create_and_start, ctx, disk_sandbox, exec, read_all, remove,
    vsock_connect, wait, AGENT_PORT,
};
use carapace_tests::artifacts::{guest_kernel, initramfs, vmm_binary};
use carapace_tests::lab::{inside, ms};
use carapace_tests::vm::{carapace_vmm_at, qemu_microvm, Console, Ended};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 quiet";
/// The guest's vsock CID under both VMMs (one VM runs at a time).
const GUEST_CID: u32 = 3;
const MEMORY_MIB: u32 = 256;

/// The other carapace-vmm build to compare with, if any.
fn baseline() -> Option<PathBuf> {
    std::env::var_os("CARAPACE_STRESS_BASELINE").map(PathBuf::from)
}

fn env_number(var: &str, default: u32) -> u32 {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be a number, got {v:?}")),
        Err(_) => default,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Vmm {
    Carapace,
    /// The carapace-vmm at `CARAPACE_STRESS_BASELINE`.
    Baseline,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Carapace => "carapace-vmm",
            Vmm::Baseline => "baseline",
            Vmm::Qemu => "QEMU microvm",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Vmm::Carapace => "carapace",
            Vmm::Baseline => "baseline",
            Vmm::Qemu => "qemu",
        }
    }

    fn spawn(self, dir: &Path, disk: &Path, vcpus: u32) -> Console {
        let (kernel, initrd) = (guest_kernel(), initramfs());
        let mut cmd = match self {
            Vmm::Carapace | Vmm::Baseline => {
                let binary = match self {
                    Vmm::Baseline => {
                        baseline().expect("a baseline run has CARAPACE_STRESS_BASELINE")
                    }
                    _ => vmm_binary(),
                };
                let mut cmd =
                    carapace_vmm_at(&binary, &kernel, &initrd, CMDLINE, vcpus, MEMORY_MIB);
                cmd.arg("--vsock")
                    .arg(format!("{GUEST_CID},{}", dir.join("v.sock").display()))
                    .arg("--block")
                    .arg(disk);
                cmd
            }
            Vmm::Qemu => {
                let mut cmd = qemu_microvm(&kernel, &initrd, CMDLINE, vcpus, MEMORY_MIB);
                cmd.args([
                    "-device",
                    &format!("vhost-vsock-device,guest-cid={GUEST_CID}"),
                ])
                .arg("-drive")
                .arg(format!(
                    "id=disk0,file={},format=raw,if=none",
                    disk.display()
                ))
                .args(["-device", "virtio-blk-device,drive=disk0"]);
                cmd
            }
        };
        Console::spawn(&mut cmd)
    }

    /// A ttrpc client of the guest's agent (call inside a tokio runtime).
    async fn connect(self, dir: &Path) -> std::io::Result<AgentServiceClient> {
        match self {
            Vmm::Carapace | Vmm::Baseline => {
                let s = vsock_connect(&dir.join("v.sock"), AGENT_PORT, Duration::from_secs(30))?;
                Ok(agent_client(s))
            }
            Vmm::Qemu => {
                let addr = format!("vsock://{GUEST_CID}:{AGENT_PORT}");
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match ttrpc::r#async::transport::Socket::connect(&addr).await {
                        Ok(s) => {
                            return Ok(AgentServiceClient::new(ttrpc::r#async::Client::new(s)))
                        }
                        Err(e) if Instant::now() >= deadline => return Err(e),
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        }
    }
}

/// How one boot ended.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Outcome {
    Completed,
    TripleFault,
    Panic,
    Hang,
    Other(String),
}

impl Outcome {
    fn label(&self) -> String {
        match self {
            Outcome::Completed => "completed".into(),
            Outcome::TripleFault => "triple fault".into(),
            Outcome::Panic => "kernel panic".into(),
            Outcome::Hang => "hang".into(),
            Outcome::Other(why) => format!("other: {why}"),
        }
    }
}

/// How a VM that exited on its own died, from its exit status and console.
fn death(vmm: Vmm, status: std::process::ExitStatus, console: &str) -> Outcome {
    if console.contains("Kernel panic") {
        return Outcome::Panic;
    }
    match (vmm, status.code()) {
        (Vmm::Carapace | Vmm::Baseline, Some(3)) => Outcome::TripleFault,
        // QEMU resets the machine on a shutdown exit (and a guest reboot would too, but the
        // agent never reboots on its own); -no-reboot makes the reset an exit with status 0.
        (Vmm::Qemu, Some(0)) => Outcome::TripleFault,
        _ => Outcome::Other(format!("the VMM exited with {status}")),
    }
}

/// The container cycles of one boot; `Err` names the call that failed.
async fn cycles(
    c: &AgentServiceClient,
    boot: u32,
    count: u32,
    done: &mut u32,
) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: ttrpc::Error| format!("{what}: {err:?}")
    };
    c.create_sandbox(ctx(), &disk_sandbox("pod", "stress"))
        .await
        .map_err(e("CreateSandbox"))?;
    for i in 0..count {
        let id = format!("c{boot}-{i}");
        create_and_start(c, &id, &["sleep", "600"])
            .await
            .map_err(e("CreateContainer+StartContainer"))?;
        exec(c, &id, "e", &["echo", "cycle"])
            .await
            .map_err(e("ExecProcess"))?;
        let out = read_all(c, &id, "e", false)
            .await
            .map_err(e("ReadStdout"))?;
        if out != "cycle\n" {
            return Err(format!("exec printed {out:?}"));
        }
        wait(c, &id, "e").await.map_err(e("WaitProcess (exec)"))?;
        let kill = SignalProcessRequest {
            container_id: id.clone(),
            signal: 9,
            ..Default::default()
        };
        c.signal_process(ctx(), &kill)
            .await
            .map_err(e("SignalProcess"))?;
        wait(c, &id, "").await.map_err(e("WaitProcess"))?;
        remove(c, &id).await.map_err(e("RemoveContainer"))?;
        *done += 1;
    }
    Ok(())
}

/// The lab kernel's KVM trace events, when it has tracefs.
struct Trace {
    dir: Option<PathBuf>,
}

impl Trace {
    fn enable() -> Trace {
        let dir = PathBuf::from("/sys/kernel/tracing");
        if !dir.join("trace").exists() {
            let _ = Command::new("mount")
                .args(["-t", "tracefs", "tracefs"])
                .arg(&dir)
                .status();
        }
        let events = ["kvm_exit", "kvm_entry", "kvm_inj_exception"];
        let ok = dir.join("trace").exists()
            && std::fs::write(dir.join("buffer_size_kb"), "2048").is_ok()
            && events
                .iter()
                .all(|ev| std::fs::write(dir.join(format!("events/kvm/{ev}/enable")), "1").is_ok())
            && std::fs::write(dir.join("tracing_on"), "1").is_ok();
        if ok {
            println!("stress: tracing {} of the lab's KVM", events.join(", "));
            Trace { dir: Some(dir) }
        } else {
            println!(
                "stress: the lab kernel has no KVM trace events; deaths are counted without traces"
            );
            Trace { dir: None }
        }
    }

    fn clear(&self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::write(dir.join("trace"), "");
        }
    }

    fn read(&self) -> Option<String> {
        self.dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("trace")).ok())
    }
}

/// The guest kernel's text symbols, for naming RIPs.
struct Symbols(Vec<(u64, String)>);

impl Symbols {
    fn load(vmlinux: &Path) -> Symbols {
        let out = Command::new("nm").arg("-n").arg(vmlinux).output();
        let mut v = Vec::new();
        if let Ok(out) = out {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut f = line.split_whitespace();
                if let (Some(a), Some(t), Some(n)) = (f.next(), f.next(), f.next()) {
                    if matches!(t, "t" | "T" | "W" | "w") {
                        if let Ok(a) = u64::from_str_radix(a, 16) {
                            v.push((a, n.to_string()));
                        }
                    }
                }
            }
        }
        Symbols(v)
    }

    fn name(&self, rip: u64) -> String {
        if self.0.is_empty() {
            return "?".into();
        }
        let i = self.0.partition_point(|(a, _)| *a <= rip);
        match i.checked_sub(1).map(|i| &self.0[i]) {
            Some((a, n)) if rip - a < 0x10_0000 => format!("{n}+{:#x}", rip - a),
            _ => "?".into(),
        }
    }
}

/// A field `name 0x...` of a trace line.
fn hex_field(line: &str, name: &str) -> Option<u64> {
    line.split(&format!("{name} 0x"))
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|h| u64::from_str_radix(h, 16).ok())
}

/// An SVM EXITINTINFO (`intr_info`) and its error code, in words: the event that was being
/// delivered when the exit happened.
fn delivering(intr_info: u64, error_code: u64) -> String {
    if intr_info & (1 << 31) == 0 {
        return "no event being delivered".into();
    }
    let vector = intr_info & 0xff;
    let kind = match (intr_info >> 8) & 7 {
        0 => "interrupt",
        2 => "NMI",
        3 => "exception",
        4 => "software interrupt",
        _ => "event",
    };
    let name = match ((intr_info >> 8) & 7, vector) {
        (3, 8) => "#DF".to_string(),
        (3, 13) => "#GP".to_string(),
        (3, 14) => {
            let access = if error_code & 0x10 != 0 {
                "instruction fetch"
            } else if error_code & 2 != 0 {
                "write"
            } else {
                "read"
            };
            let page = if error_code & 1 != 0 {
                "protection"
            } else {
                "page not present"
            };
            format!("#PF ({access}, {page})")
        }
        _ => format!("vector {vector:#x}"),
    };
    let code = if intr_info & (1 << 11) != 0 {
        format!(", error code {error_code:#x}")
    } else {
        String::new()
    };
    format!("delivering {kind} {name}{code}")
}

/// The events of the vCPU that shut down (or, with none, of the whole trace) up to its last
/// exit, each RIP named, and a line saying what that exit was.
fn explain(trace: &str, syms: &Symbols, keep: usize) -> (String, Option<String>) {
    let lines: Vec<&str> = trace.lines().filter(|l| !l.starts_with('#')).collect();
    let shutdown = lines.iter().rposition(|l| l.contains("reason shutdown"));
    let chosen: Vec<&str> = match shutdown {
        Some(at) => {
            // The task name (vcpuN-TID) of the vCPU thread that shut down.
            let thread = lines[at].split_whitespace().next().unwrap_or("");
            let mut mine: Vec<&str> = lines[..=at]
                .iter()
                .filter(|l| l.split_whitespace().next() == Some(thread))
                .copied()
                .collect();
            mine.drain(..mine.len().saturating_sub(keep));
            mine
        }
        None => lines[lines.len().saturating_sub(keep)..].to_vec(),
    };
    let mut text = String::new();
    for l in &chosen {
        text.push_str(l.trim());
        if let Some(rip) = hex_field(l, "rip") {
            text.push_str(&format!("   <{}>", syms.name(rip)));
        }
        text.push('\n');
    }
    let last = chosen
        .iter()
        .rev()
        .find(|l| l.contains("kvm_exit:"))
        .map(|l| {
            let reason = l
                .split("reason ")
                .nth(1)
                .and_then(|s| s.split(" rip").next())
                .unwrap_or("?");
            let event = delivering(
                hex_field(l, "intr_info").unwrap_or(0),
                hex_field(l, "error_code").unwrap_or(0),
            );
            match hex_field(l, "rip") {
                Some(rip) => format!(
                    "last exit: {reason} at {rip:#x} <{}>, {event}",
                    syms.name(rip)
                ),
                None => format!("last exit: {reason}, {event}"),
            }
        });
    (text, last)
}

#[derive(Default)]
struct Tally {
    boots: u32,
    cycles: u32,
    outcomes: BTreeMap<Outcome, u32>,
    serving: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn report(tallies: &BTreeMap<Vmm, Tally>, vcpus: u32) {
    println!("stress: {vcpus} vCPUs, {MEMORY_MIB} MiB, agent guest, alternating VMMs:");
    for (vmm, t) in tallies {
        let deaths: u32 = t
            .outcomes
            .iter()
            .filter(|(o, _)| **o != Outcome::Completed)
            .map(|(_, n)| n)
            .sum();
        let kinds: Vec<String> = t
            .outcomes
            .iter()
            .map(|(o, n)| format!("{} {n}", o.label()))
            .collect();
        println!(
            "stress:   {:<13} {} boots, {} container cycles, {deaths} died ({:.1} per 100 boots): {}; boot to agent serving median {:.0} ms",
            vmm.name(),
            t.boots,
            t.cycles,
            100.0 * f64::from(deaths) / f64::from(t.boots.max(1)),
            kinds.join(", "),
            median(t.serving.clone()),
        );
    }
    if let Some(q) = tallies.get(&Vmm::Qemu) {
        for (vmm, t) in tallies.iter().filter(|(v, _)| **v != Vmm::Qemu) {
            println!(
                "stress:   ratio of boot to agent serving, {} / QEMU microvm = {:.2}",
                vmm.name(),
                median(t.serving.clone()) / median(q.serving.clone())
            );
        }
    }
}

/// What every boot of a stress run shares.
struct Run {
    cycles_per_boot: u32,
    vcpus: u32,
    /// Scratch space: the busybox disk and each boot's sockets.
    work: PathBuf,
    /// Where the consoles and traces of guests that died are kept.
    out: PathBuf,
    trace: Trace,
    syms: Symbols,
}

/// One boot of `vmm`: boot, connect, cycles, kill. Returns how it ended.
fn one_boot(run: &Run, vmm: Vmm, boot: u32, tally: &mut Tally) -> Outcome {
    let Run {
        cycles_per_boot,
        vcpus,
        work,
        out,
        trace,
        syms,
    } = run;
    let (cycles_per_boot, vcpus) = (*cycles_per_boot, *vcpus);
    let dir = work.join(format!("{}-{boot}", vmm.slug()));
    std::fs::create_dir_all(&dir).unwrap();
    trace.clear();
    let mut vm = vmm.spawn(&dir, &work.join("rootfs.ext4"), vcpus);
    let outcome = match vm.try_wait_for_line("serving", Duration::from_secs(90)) {
        Err(Ended::Timeout) => Outcome::Hang,
        Err(Ended::Exited(status)) => death(vmm, status, vm.text()),
        Ok(at) => {
            tally.serving.push(ms(at));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // A watchdog over the whole boot: one run stopped making progress after 100 boots
            // of each VMM with the lab idle (session 8), in a wait this did not bound.
            let limit = Duration::from_secs(60 + 30 * u64::from(cycles_per_boot));
            let result = rt.block_on(async {
                let work = async {
                    let c = vmm
                        .connect(&dir)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    cycles(&c, boot, cycles_per_boot, &mut tally.cycles).await
                };
                match tokio::time::timeout(limit, work).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("watchdog: deadline elapsed after {limit:?}")),
                }
            });
            match result {
                Ok(()) => Outcome::Completed,
                Err(why) => match vm.exited_within(Duration::from_secs(3)) {
                    Some(status) => death(vmm, status, vm.text()),
                    None if why.contains("deadline elapsed") => Outcome::Hang,
                    None => Outcome::Other(why),
                },
            }
        }
    };
    vm.drain();
    // The lab kernel's trace is the VMM-independent witness: a guest whose vCPU shut down
    // (QEMU may reset and reboot it rather than exit) died of a triple fault.
    let trace_text = trace.read();
    let outcome = match (&outcome, &trace_text) {
        (Outcome::Completed, _) => outcome,
        (_, Some(t)) if t.contains("reason shutdown") => Outcome::TripleFault,
        _ => outcome,
    };
    if outcome != Outcome::Completed {
        let base = out.join(format!("{}-boot{boot}", vmm.slug()));
        let _ = std::fs::write(base.with_extension("console"), vm.text());
        if let Some(t) = &trace_text {
            let _ = std::fs::write(base.with_extension("trace"), t);
        }
        let console_tail: Vec<&str> = vm.text().lines().rev().take(15).collect();
        println!(
            "stress: {} boot {boot}: {} (console and trace in {})",
            vmm.name(),
            outcome.label(),
            out.display()
        );
        for l in console_tail.iter().rev() {
            println!("stress:   console| {l}");
        }
        if let Some(t) = trace_text {
            let (tail, last) = explain(&t, syms, 12);
            for l in tail.lines() {
                println!("stress:   trace| {l}");
            }
            if let Some(last) = last {
                println!("stress:   {last}");
            }
        }
    }
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn stress() {
    let boots = env_number("CARAPACE_STRESS_BOOTS", 200);
    let cycles_per_boot = env_number("CARAPACE_STRESS_CYCLES", 10);
    let vcpus = env_number("CARAPACE_STRESS_VCPUS", 2);
    let only = std::env::var("CARAPACE_STRESS_VMM").ok();
    let vmms: Vec<Vmm> = [Vmm::Carapace, Vmm::Baseline, Vmm::Qemu]
        .into_iter()
        .filter(|v| *v != Vmm::Baseline || baseline().is_some())
        .filter(|v| only.as_deref().map_or(true, |o| o == v.slug()))
        .collect();
    let work = std::env::temp_dir().join(format!("carapace-stress-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    busybox_disk(&work, 32);
    let out = std::env::var_os("CARAPACE_LAB_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| work.clone())
        .join("stress");
    std::fs::create_dir_all(&out).unwrap();
    let run = Run {
        cycles_per_boot,
        vcpus,
        work: work.clone(),
        out,
        trace: Trace::enable(),
        syms: Symbols::load(&guest_kernel()),
    };
    let mut tallies: BTreeMap<Vmm, Tally> = vmms.iter().map(|v| (*v, Tally::default())).collect();
    let start = Instant::now();
    if let Some(b) = baseline() {
        println!("stress: baseline is {}", b.display());
    }
    println!(
        "stress: {boots} boots per VMM, {cycles_per_boot} container cycles per boot, {vcpus} vCPUs: {}",
        vmms.iter().map(|v| v.name()).collect::<Vec<_>>().join(" and ")
    );
    for boot in 0..boots {
        for &vmm in &vmms {
            let tally = tallies.get_mut(&vmm).unwrap();
            let outcome = one_boot(&run, vmm, boot, tally);
            tally.boots += 1;
            *tally.outcomes.entry(outcome).or_default() += 1;
        }
        if (boot + 1) % 20 == 0 && boot + 1 < boots {
            println!(
                "stress: after {} boots each ({:.0} s):",
                boot + 1,
                start.elapsed().as_secs_f64()
            );
            report(&tallies, vcpus);
        }
    }
    println!("stress: finished in {:.0} s", start.elapsed().as_secs_f64());
    report(&tallies, vcpus);
    let _ = std::fs::remove_dir_all(&work);
}

fn main() {
    // CARAPACE_STRESS_EXPLAIN=<saved .trace>: the shutdown in a saved trace, RIPs named.
    if let Some(file) = std::env::var_os("CARAPACE_STRESS_EXPLAIN") {
        let trace = std::fs::read_to_string(&file).expect("read the trace");
        let (tail, last) = explain(&trace, &Symbols::load(&guest_kernel()), 12);
        print!("{tail}");
        println!(
            "{}",
            last.unwrap_or_else(|| "no kvm_exit in the trace".into())
        );
        return;
    }
    if inside() {
        stress();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let timeout = std::env::var("CARAPACE_STRESS_TIMEOUT").unwrap_or_else(|_| "7200".into());
    let status = Command::new(carapace_tests::repo_root().join("tests/lab/run"))
        .args(["--timeout", &timeout, "--"])
        .arg(exe)
        .status()
        .expect("run tests/lab/run");
    assert!(status.success(), "the lab stress run failed: {status}");
}
