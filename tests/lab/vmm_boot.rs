//! carapace-vmm boots the guest kernel to its init, with the vCPUs asked for, ends cleanly
//! when the guest reboots, refuses bad configurations by name, and obeys its control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use carapace_tests::artifacts::{guest_kernel, test_initramfs, vmm_binary};
use carapace_tests::lab::{ms, wait_for};
use carapace_tests::lab_test;
use carapace_tests::vm::{carapace_vmm, qemu_microvm, Console};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 quiet";

lab_test! {
    fn vmm_boots_the_guest_to_init_with_two_vcpus() {
        let (kernel, initrd) = (guest_kernel(), test_initramfs());
        let mut cmd = carapace_vmm(&kernel, &initrd, CMDLINE, 2, 256);
        let mut guest = Console::spawn(&mut cmd);
        let marker = guest.wait_for_line("carapace-test: init reached", Duration::from_secs(120));
        let status = guest.wait_exit(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "the VMM should exit 0 on a guest reboot:\n{}", guest.text());
        assert!(guest.text().contains("cpus=2"), "the guest did not see 2 vCPUs:\n{}", guest.text());
        println!("lab figure: carapace-vmm start to init marker {:.0} ms", ms(marker));
    }
}

/// The guest's `cpu:` report (tests/guest/init, scenario `cpu`) under `cmd`, or the console
/// of a guest that never finished it.
fn cpu_report(cmd: &mut Command) -> Result<String, String> {
    let mut guest = Console::spawn(cmd);
    guest
        .try_wait_for_line("carapace-test: done", Duration::from_secs(120))
        .map_err(|e| format!("{e:?}; console:\n{}", guest.text()))?;
    // The report is complete: the VM is not waited for (QEMU microvm, restarting a guest
    // that rebooted, does not always exit) and is killed when `guest` drops.
    guest.drain();
    Ok(guest
        .text()
        .lines()
        .filter(|l| l.starts_with("cpu: "))
        .collect::<Vec<_>>()
        .join("\n"))
}

fn cpu_flags(report: &str) -> std::collections::BTreeSet<String> {
    report
        .lines()
        .find_map(|l| l.strip_prefix("cpu: flags:"))
        .unwrap_or_else(|| panic!("no flags in the guest's report:\n{report}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

lab_test! {
    fn the_guest_sees_one_package_with_a_tsc_deadline_timer_and_a_named_cpu() {
        // What Firecracker-style VMMs normalise before the first KVM_RUN, seen from inside:
        // without the TSC-deadline bit the guest calibrates its LAPIC timer with the PIT and
        // runs the IO-APIC timer check; without the topology leaf's core level it counts one
        // package per vCPU and declares its TSCs unsynchronized.
        let (kernel, initrd) = (guest_kernel(), test_initramfs());
        let cmdline = "console=ttyS0 reboot=k panic=1 carapace.test=cpu";
        let ours = cpu_report(&mut carapace_vmm(&kernel, &initrd, cmdline, 2, 256)).unwrap_or_else(|e| panic!("{e}"));
        let flags = cpu_flags(&ours);
        for flag in ["tsc_deadline_timer", "arat", "hypervisor", "x2apic"] {
            assert!(flags.contains(flag), "the guest's CPU lacks {flag}:\n{ours}");
        }
        assert!(ours.contains("TSC deadline timer available"), "{ours}");
        assert!(ours.contains("cpu: packages: 0 0"), "two vCPUs should be one package:\n{ours}");
        assert!(!ours.contains("..TIMER"), "the guest ran the IO-APIC timer check:\n{ours}");
        assert!(!ours.contains("TSCs unsynchronized"), "{ours}");
        let name = ours
            .lines()
            .find_map(|l| l.strip_prefix("cpu: model name:"))
            .unwrap_or_default()
            .trim();
        assert!(
            name.chars().filter(|c| c.is_ascii_alphabetic()).count() >= 3,
            "the CPU has no brand string (the guest calls it {name:?}):\n{ours}"
        );
        // Nothing QEMU's `-cpu host` offers the same guest on the same KVM is missing. QEMU's
        // guests die in the lab too (`make lab-stress`); one that does is named, not compared.
        match cpu_report(&mut qemu_microvm(&kernel, &initrd, cmdline, 2, 256)) {
            Ok(theirs) => {
                let missing: Vec<_> = cpu_flags(&theirs).difference(&flags).cloned().collect();
                assert!(missing.is_empty(), "flags QEMU gives the guest and carapace-vmm does not: {missing:?}");
            }
            Err(e) => println!("lab: QEMU microvm's guest did not finish its report, flags not compared: {}", e.lines().next().unwrap_or("")),
        }
        println!("lab figure: the guest's CPU under carapace-vmm: {name}, {} flags", flags.len());
    }
}

lab_test! {
    fn vmm_reports_a_guest_triple_fault_with_status_3_and_logs_serial_to_a_file() {
        // reboot=t makes the guest reboot by triple-faulting instead of through the i8042.
        let (kernel, initrd) = (guest_kernel(), test_initramfs());
        let dir = tempdir();
        let log = dir.join("serial.log");
        let mut cmd = carapace_vmm(&kernel, &initrd, "console=ttyS0 reboot=t panic=1 quiet", 1, 128);
        cmd.arg("--serial").arg(&log);
        let mut guest = Console::spawn(&mut cmd);
        let status = guest.wait_exit(Duration::from_secs(120));
        let serial = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(status.code(), Some(3), "a triple fault should end the VMM with 3:\n{serial}");
        assert!(serial.contains("carapace-test: done"), "the serial log lacks the guest's output:\n{serial}");
        assert!(guest.text().is_empty(), "serial output leaked to stdout: {}", guest.text());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

lab_test! {
    fn vmm_refuses_bad_configurations_naming_the_problem() {
        let run = |args: &[&str]| {
            let out = Command::new(vmm_binary()).args(args).output().expect("run carapace-vmm");
            (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let kernel = guest_kernel();
        let k = kernel.to_str().unwrap();
        let (code, err) = run(&["--kernel", "/nonexistent/vmlinux"]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("kernel") && err.contains("/nonexistent/vmlinux"), "{err}");
        let (code, err) = run(&["--kernel", k, "--vcpus", "0"]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("vcpus"), "{err}");
        let (code, err) = run(&["--kernel", k, "--frobnicate", "1"]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("--frobnicate"), "{err}");
        let dir = tempdir();
        let cfg = dir.join("vm.json");
        std::fs::write(&cfg, format!(r#"{{"kernel": "{k}", "memory": 128}}"#)).unwrap();
        let (code, err) = run(&["--config", cfg.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("`memory`"), "{err}");
        // Not an ELF kernel: refused at start, nothing left behind.
        let bogus = dir.join("bogus");
        std::fs::write(&bogus, vec![0u8; 4096]).unwrap();
        let sock = dir.join("api.sock");
        let (code, err) = run(&["--kernel", bogus.to_str().unwrap(), "--api-socket", sock.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("bogus"), "{err}");
        assert!(!sock.exists(), "the control socket was left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "carapace-vmm-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

fn request(sock: &std::path::Path, op: &str) -> String {
    let mut s = UnixStream::connect(sock).expect("connect to the control socket");
    writeln!(s, r#"{{"op": "{op}"}}"#).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

lab_test! {
    fn vmm_control_socket_pauses_resumes_and_shuts_down() {
        let (kernel, initrd) = (guest_kernel(), test_initramfs());
        let dir = tempdir();
        let sock = dir.join("api.sock");
        let mut cmd = carapace_vmm(&kernel, &initrd, &format!("{CMDLINE} carapace.test=wait"), 1, 128);
        cmd.arg("--api-socket").arg(&sock);
        let mut guest = Console::spawn(&mut cmd);
        guest.wait_for_line("waiting", Duration::from_secs(120));
        let status = request(&sock, "status");
        assert!(status.contains(r#""state":"running""#), "{status}");
        assert!(status.contains(r#""overhead_rss_kib""#), "{status}");
        let paused = request(&sock, "pause");
        assert!(paused.contains(r#""ok":true"#), "{paused}");
        assert!(request(&sock, "status").contains(r#""state":"paused""#));
        let resumed = request(&sock, "resume");
        assert!(resumed.contains(r#""state":"running""#), "{resumed}");
        let bad = request(&sock, "explode");
        assert!(bad.contains(r#""ok":false"#) && bad.contains("explode"), "{bad}");
        let bye = request(&sock, "shutdown");
        assert!(bye.contains(r#""ok":true"#), "{bye}");
        let status = guest.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}", guest.text());
        assert!(wait_for(Duration::from_secs(2), || (!sock.exists()).then_some(())).is_some(),
            "the control socket was left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

lab_test! {
    fn vmm_stops_in_order_on_sigterm_and_removes_its_sockets() {
        let (kernel, initrd) = (guest_kernel(), test_initramfs());
        let dir = tempdir();
        let (api, vsock) = (dir.join("api.sock"), dir.join("v.sock"));
        let mut cmd = carapace_vmm(&kernel, &initrd, &format!("{CMDLINE} carapace.test=wait"), 1, 128);
        cmd.arg("--api-socket").arg(&api).arg("--vsock").arg(format!("3,{}", vsock.display()));
        let mut guest = Console::spawn(&mut cmd);
        guest.wait_for_line("waiting", Duration::from_secs(120));
        assert!(api.exists() && vsock.exists());
        // SAFETY: kill(2) sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(guest.pid() as i32, libc::SIGTERM) }, 0);
        let status = guest.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}", guest.text());
        assert!(!api.exists() && !vsock.exists(), "sockets were left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
