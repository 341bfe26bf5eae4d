//! What the lab can tell about a VM that stopped making progress, printed when a test gives
//! up on one: each thread of its process with its kernel state (`wchan`, the syscall it is
//! in, its kernel stack), the KVM exits its vCPUs take over a short sample (none: the vCPU is
//! stuck below KVM; the same exit over and over: a loop KVM or the guest cannot leave), and
//! the end of the lab kernel's log after asking it for its blocked tasks and CPUs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

const TRACING: &str = "/sys/kernel/tracing";

/// Everything below, for the process `pid` (a VMM, say): its threads and its KVM exits.
pub fn vm_process(pid: u32) -> String {
    let mut out = threads(pid);
    out.push_str(&kvm_exits(pid, Duration::from_secs(2)));
    out
}

/// The whole lab: the VM-like processes (VMMs, shims, QEMU) with their threads (and the
/// VMMs' KVM exits), and the lab kernel's log after a SysRq dump of blocked tasks and CPU backtraces (where the lab kernel
/// has SysRq).
pub fn lab() -> String {
    let mut out = String::new();
    for pid in pids() {
        let comm = read(&format!("/proc/{pid}/comm"));
        if ["carapace", "qemu", "containerd-shim", "firecracker"]
            .iter()
            .any(|p| comm.starts_with(p))
        {
            out.push_str(&threads(pid));
            if ["carapace-vmm", "qemu", "firecracker"]
                .iter()
                .any(|p| comm.starts_with(p))
            {
                out.push_str(&kvm_exits(pid, Duration::from_secs(1)));
            }
        }
    }
    out.push_str(&kernel_log());
    out
}

/// One line per thread of `pid`: name, state, wchan, syscall, then its kernel stack.
pub fn threads(pid: u32) -> String {
    let mut out = String::new();
    let state = crate::carapace::status_field(pid, "State").unwrap_or_else(|| "gone".into());
    let _ = writeln!(
        out,
        "process {pid} ({}): {state}",
        read(&format!("/proc/{pid}/comm")).trim()
    );
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    let mut tids: Vec<u32> = tasks
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    for tid in tids {
        let t = format!("/proc/{pid}/task/{tid}");
        let stat = read(&format!("{t}/stat"));
        // The state is the first field after the parenthesised name.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("?");
        let syscall = read(&format!("{t}/syscall"));
        let syscall = syscall.split(' ').next().unwrap_or("?").trim();
        let _ = writeln!(
            out,
            "  thread {tid} {:<16} state {state} wchan {} syscall {syscall}",
            read(&format!("{t}/comm")).trim(),
            read(&format!("{t}/wchan")).trim(),
        );
        for frame in read(&format!("{t}/stack")).lines().take(12) {
            let _ = writeln!(out, "      {frame}");
        }
    }
    out
}

/// The KVM exits the threads of `pid` took during `sample`, counted by reason and guest RIP,
/// from a trace instance of the lab kernel's own (the suite's triple-fault count uses the
/// main one).
pub fn kvm_exits(pid: u32, sample: Duration) -> String {
    let tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let instance = Path::new(TRACING).join("instances/carapace-diagnose");
    if !Path::new(TRACING).join("events").exists() {
        // Mounted by tests/lab/retry-failed in the suite; not when a test runs alone.
        let _ = output_within(
            std::process::Command::new("mount").args(["-t", "tracefs", "tracefs", TRACING]),
        );
    }
    if !Path::new(TRACING).join("events/kvm/kvm_exit").exists() {
        return "kvm exits: not sampled (the lab kernel has no KVM trace events)\n".into();
    }
    let _ = std::fs::remove_dir(&instance);
    if let Err(e) = std::fs::create_dir(&instance) {
        return format!("kvm exits: not sampled (trace instance: {e})\n");
    }
    let enable = instance.join("events/kvm/kvm_exit/enable");
    let trace = if std::fs::write(&enable, "1").is_ok() {
        std::thread::sleep(sample);
        let _ = std::fs::write(&enable, "0");
        read(&instance.join("trace").to_string_lossy())
    } else {
        String::new()
    };
    let _ = std::fs::remove_dir(&instance);
    // "<comm>-<tid> [cpu] flags ts: kvm_exit: vcpu N reason R rip 0xRIP info1 ..."
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut total = 0;
    for line in trace.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, event)) = line.split_once("kvm_exit: ") else {
            continue;
        };
        let task = head.split_whitespace().next().unwrap_or("");
        let tid = task.rsplit('-').next().unwrap_or("");
        if !tids.iter().any(|t| t == tid) {
            continue;
        }
        let field = |name: &str| {
            event
                .split_once(&format!("{name} "))
                .and_then(|(_, r)| r.split(' ').next())
                .unwrap_or("?")
                .to_string()
        };
        *counts.entry((field("reason"), field("rip"))).or_default() += 1;
        total += 1;
    }
    let mut out = format!(
        "kvm exits of process {pid} in {:.1} s: {total}\n",
        sample.as_secs_f64()
    );
    let mut top: Vec<_> = counts.into_iter().collect();
    top.sort_by_key(|b| std::cmp::Reverse(b.1));
    top.truncate(10);
    let names = symbols(top.iter().map(|((_, rip), _)| rip.as_str()));
    for (((reason, rip), n), name) in top.into_iter().zip(names) {
        let _ = writeln!(out, "  {n:>7} reason {reason} rip {rip} <{name}>");
    }
    out
}

/// The guest kernel's function at each address (`CARAPACE_GUEST_KERNEL`, by addr2line), or
/// "?".
fn symbols<'a>(rips: impl Iterator<Item = &'a str>) -> Vec<String> {
    let rips: Vec<&str> = rips.collect();
    let named = std::env::var_os("CARAPACE_GUEST_KERNEL").and_then(|kernel| {
        let text = output_within(
            std::process::Command::new("addr2line")
                .arg("-f")
                .arg("-e")
                .arg(kernel)
                .args(&rips),
        )?;
        // Two lines per address: the function, then file:line.
        let names: Vec<String> = text.lines().step_by(2).map(str::to_string).collect();
        (names.len() == rips.len()).then_some(names)
    });
    named.unwrap_or_else(|| vec!["?".to_string(); rips.len()])
}

/// The end of the lab kernel's log, after asking it (SysRq w and l) for its blocked tasks and
/// each CPU's backtrace.
pub fn kernel_log() -> String {
    let sysrq = Path::new("/proc/sysrq-trigger");
    let asked =
        sysrq.exists() && std::fs::write(sysrq, "w").is_ok() && std::fs::write(sysrq, "l").is_ok();
    if asked {
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = kmsg();
    let lines: Vec<&str> = log.lines().collect();
    let mut out = format!(
        "the lab kernel's log, last 80 lines{}:\n",
        if asked {
            " (after SysRq w and l)"
        } else {
            " (no SysRq in the lab kernel)"
        }
    );
    for l in &lines[lines.len().saturating_sub(80)..] {
        let _ = writeln!(out, "  {l}");
    }
    out
}

/// The kernel's log buffer, read from /dev/kmsg (no program started: when the lab's file
/// sharing stalls, starting one can hang), one record per line without its header.
fn kmsg() -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return "(no /dev/kmsg)\n".into();
    };
    let mut out = String::new();
    let mut record = vec![0u8; 8192];
    // One record per read; EAGAIN at the end, EPIPE for records overwritten meanwhile.
    loop {
        match f.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&record[..n]);
                let (head, msg) = text.split_once(';').unwrap_or(("", &text));
                let usec: u64 = head
                    .split(',')
                    .nth(2)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let msg = msg.lines().next().unwrap_or("");
                let _ = writeln!(
                    out,
                    "[{:>5}.{:06}] {msg}",
                    usec / 1_000_000,
                    usec % 1_000_000
                );
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    out
}

/// Runs `cmd` and returns its stdout, or `None` if it fails or has not ended within 5 s
/// (it is then killed and left: a program read over a stalled share cannot be waited for).
fn output_within(cmd: &mut std::process::Command) -> Option<String> {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                return None;
            }
        }
    }
    let mut text = String::new();
    child.stdout.take()?.read_to_string(&mut text).ok()?;
    Some(text)
}

fn pids() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_names_every_thread_of_a_process_with_its_state() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let parked = std::thread::Builder::new()
            .name("diag-parked".into())
            .spawn(move || {
                // The new thread names itself once it runs.
                started.send(()).unwrap();
                rx.recv()
            })
            .unwrap();
        running.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let text = threads(std::process::id());
        drop(tx);
        let _ = parked.join();
        assert!(
            text.starts_with(&format!("process {} (", std::process::id())),
            "{text}"
        );
        let line = text
            .lines()
            .find(|l| l.contains("diag-parked"))
            .unwrap_or_else(|| panic!("the parked thread is missing:\n{text}"));
        // Blocked in futex(2) (syscall 202 on x86_64), sleeping.
        assert!(line.contains("state S"), "{line}");
        assert!(
            text.lines().filter(|l| l.starts_with("  thread ")).count() >= 2,
            "{text}"
        );
        assert!(threads(u32::MAX).contains("gone"));
    }

    #[test]
    fn the_kernel_log_is_read_without_starting_a_program() {
        if !Path::new("/dev/kmsg").exists() || std::fs::File::open("/dev/kmsg").is_err() {
            eprintln!("skipped: /dev/kmsg cannot be read here");
            return;
        }
        let log = kmsg();
        let first = log.lines().next().unwrap_or_else(|| panic!("an empty log"));
        assert!(first.starts_with('[') && first.contains("] "), "{first}");
        assert_eq!(
            output_within(std::process::Command::new("echo").arg("hi")).as_deref(),
            Some("hi\n")
        );
        assert_eq!(
            output_within(&mut std::process::Command::new("false")).as_deref(),
            Some("")
        );
    }
}
