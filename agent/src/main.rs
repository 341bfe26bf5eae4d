//! carapace-agent: PID 1 inside every carapace microVM.
//!
//! Until the agent issue lands this is the placeholder init the foundation needs: it mounts
//! /proc, prints the boot marker the lab tests look for on the serial console, and ends the VM
//! by rebooting (the VMMs run the guest with `reboot=t`/`-no-reboot`, so a reboot is an exit;
//! x86 without ACPI has no power-off method a VMM could see).

use std::io::Write;

/// Printed on the console once init runs; tests and benchmarks wait for this line.
const BOOT_MARKER: &str = "carapace-agent: init reached";

fn main() {
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .or_else(|| {
            std::fs::create_dir_all("/proc").ok()?;
            nix::mount::mount(
                Some("proc"),
                "/proc",
                Some("proc"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .ok()?;
            std::fs::read_to_string("/proc/uptime").ok()
        })
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{BOOT_MARKER} (uptime {uptime} s, {cpus} cpus, pid {})",
        std::process::id()
    );
    let _ = out.flush();
    drop(out);
    if std::process::id() == 1 {
        // Flush the page cache we never wrote to, then end the VM.
        nix::unistd::sync();
        let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        eprintln!("carapace-agent: reboot failed: {err:?}");
        // PID 1 must not exit: that would panic the guest kernel.
        loop {
            std::thread::park();
        }
    }
}
