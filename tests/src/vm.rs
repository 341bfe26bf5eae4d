//! Booting guests in tests: the QEMU microvm command line carapace is measured against, and a
//! [`Console`] that collects a VM's serial output line by line with deadlines, killing the VM
//! if a test gives up on it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// QEMU's microvm with KVM booting `kernel` and `initrd` directly, serial console on stdout,
/// exiting when the guest reboots.
pub fn qemu_microvm(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    vcpus: u32,
    mem_mib: u32,
) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off",
    ])
    .args(["-enable-kvm", "-cpu", "host"])
    .args(["-smp", &vcpus.to_string(), "-m", &mem_mib.to_string()])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .args([
        "-chardev",
        "stdio,id=con,signal=off",
        "-serial",
        "chardev:con",
    ])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", cmdline]);
    cmd
}

/// carapace-vmm booting `kernel` and `initrd` with `vcpus` and `mem_mib`, serial console on
/// stdout; add devices with further arguments.
pub fn carapace_vmm(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    vcpus: u32,
    mem_mib: u32,
) -> Command {
    carapace_vmm_at(
        &crate::artifacts::vmm_binary(),
        kernel,
        initrd,
        cmdline,
        vcpus,
        mem_mib,
    )
}

/// [`carapace_vmm`] with the VMM binary at `vmm` (another build, to compare with).
pub fn carapace_vmm_at(
    vmm: &Path,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    vcpus: u32,
    mem_mib: u32,
) -> Command {
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel")
        .arg(kernel)
        .arg("--initramfs")
        .arg(initrd)
        .args(["--cmdline", cmdline])
        .args(["--vcpus", &vcpus.to_string()])
        .args(["--memory-mib", &mem_mib.to_string()]);
    cmd
}

/// Why [`Console::try_wait_for_line`] returned without the line.
#[derive(Debug)]
pub enum Ended {
    /// The time ran out with the VM still running.
    Timeout,
    /// The VM process exited first.
    Exited(ExitStatus),
}

/// A running VM process whose stdout is its console.
pub struct Console {
    child: Child,
    lines: Receiver<String>,
    text: String,
    start: Instant,
}

impl Console {
    /// Starts `cmd` with stdout captured; its stderr goes to the test's.
    pub fn spawn(cmd: &mut Command) -> Console {
        let start = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Console {
            child,
            lines,
            text: String::new(),
            start,
        }
    }

    /// Everything the VM printed so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Time since the VM process started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Waits for a line containing `needle`; returns when it came (since start). Panics with
    /// the console so far if it does not come within `timeout` or the VM stops first.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Duration {
        match self.try_wait_for_line(needle, timeout) {
            Ok(at) => at,
            Err(Ended::Timeout) => panic!(
                "no line with '{needle}' within {timeout:?}; console:\n{}\nthe VM process now:\n{}",
                self.text,
                crate::diagnose::vm_process(self.child.id())
            ),
            Err(Ended::Exited(status)) => panic!(
                "the VM exited ({status}) before printing '{needle}'; console:\n{}",
                self.text
            ),
        }
    }

    /// Waits for a line containing `needle`; returns when it came (since start), or why it
    /// did not.
    pub fn try_wait_for_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<Duration, Ended> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.text.push_str(&line);
                    self.text.push('\n');
                    if found {
                        return Ok(self.start.elapsed());
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Err(Ended::Timeout),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Ended::Exited(self.child.wait().expect("wait for the VM")))
                }
            }
        }
    }

    /// The VM process's exit status if it has exited by `timeout` from now (its console is
    /// collected up to that point), else `None`.
    pub fn exited_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain();
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.drain();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything printed so far, including lines no wait has read yet.
    pub fn drain(&mut self) -> &str {
        while let Ok(line) = self.lines.try_recv() {
            self.text.push_str(&line);
            self.text.push('\n');
        }
        &self.text
    }

    /// The VM process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the VM process to exit, collecting the rest of its console.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.text.push_str(&line);
                    self.text.push('\n');
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return self.child.wait().expect("wait for the VM")
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "the VM did not exit within {timeout:?}; console:\n{}\nthe VM process now:\n{}",
                        self.text,
                        crate::diagnose::vm_process(self.child.id())
                    )
                }
            }
        }
    }
}

impl Drop for Console {
    /// Kills the VM process if it still runs and reaps it. One that SIGKILL does not end
    /// within 30 s has a thread stuck in the lab's kernel: the lab is [`wedged`](crate::lab::wedged).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            if self.exited_within(Duration::from_secs(30)).is_none() {
                crate::lab::wedged(&format!(
                    "the VM process {} did not end within 30 s of SIGKILL",
                    self.child.id()
                ));
            }
        }
    }
}
