//! vCPUs: set-up of each vCPU's boot state and the thread that runs it, routing its port I/O
//! and MMIO exits to the buses, turning guest resets and faults into the VM's exit reason,
//! and parking it when the VM is paused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestAddress;
use vmm_sys_util::signal::register_signal_handler;

use crate::arch::{boot, cpuid};
use crate::bus::Bus;
use crate::exit::{error_chain, ExitReason, VmExit};
use crate::seccomp::{Filters, Thread};

/// The signal that kicks a vCPU out of KVM_RUN (its handler does nothing).
fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the no-op handler of the kick signal (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), noop).map_err(|e| e.errno()))
        .map_err(std::io::Error::from_raw_os_error)
}

/// Creates vCPU `index` of `count` and gives it the PVH boot state.
pub fn create(
    vm: &VmFd,
    supported_cpuid: &CpuId,
    index: u8,
    count: u8,
    entry: GuestAddress,
) -> std::io::Result<VcpuFd> {
    let ctx = |what: &'static str| {
        move |e: kvm_ioctls::Error| std::io::Error::other(format!("vCPU {index}: {what}: {e}"))
    };
    let fd = vm
        .create_vcpu(u64::from(index))
        .map_err(ctx("KVM_CREATE_VCPU"))?;
    let mut cpuid = supported_cpuid.clone();
    cpuid::for_vcpu(&mut cpuid, index, count);
    fd.set_cpuid2(&cpuid).map_err(ctx("KVM_SET_CPUID2"))?;
    let msrs = boot::boot_msrs();
    let set = fd.set_msrs(&msrs).map_err(ctx("KVM_SET_MSRS"))?;
    if set != msrs.as_slice().len() {
        return Err(std::io::Error::other(format!(
            "vCPU {index}: KVM took {set} of {} boot MSRs",
            msrs.as_slice().len()
        )));
    }
    fd.set_regs(&boot::boot_regs(entry))
        .map_err(ctx("KVM_SET_REGS"))?;
    let sregs = fd.get_sregs().map_err(ctx("KVM_GET_SREGS"))?;
    fd.set_sregs(&boot::boot_sregs(sregs))
        .map_err(ctx("KVM_SET_SREGS"))?;
    fd.set_fpu(&boot::boot_fpu()).map_err(ctx("KVM_SET_FPU"))?;
    let mut lapic = fd.get_lapic().map_err(ctx("KVM_GET_LAPIC"))?;
    boot::set_lint(&mut lapic);
    fd.set_lapic(&lapic).map_err(ctx("KVM_SET_LAPIC"))?;
    Ok(fd)
}

#[derive(Default)]
struct ControlState {
    pause: bool,
    paused: usize,
}

/// Shared between the vCPU threads and whoever pauses, resumes or stops them.
#[derive(Default)]
pub struct VcpuControl {
    state: Mutex<ControlState>,
    changed: Condvar,
    stop: AtomicBool,
    pause_requested: AtomicBool,
    threads: Mutex<Vec<libc::pthread_t>>,
}

impl VcpuControl {
    fn kick_all(&self) {
        for &t in self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            // SAFETY: `t` is the handle of a live vCPU thread: threads are removed from the
            // list before they exit (see `run`), and pthread_kill only sends a signal.
            unsafe {
                libc::pthread_kill(t, kick_signal());
            }
        }
    }

    /// Pauses every vCPU; returns once all of them are parked outside KVM_RUN.
    pub fn pause(&self) {
        self.pause_requested.store(true, Ordering::SeqCst);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.pause = true;
        while st.paused < self.live_threads() && !self.stop.load(Ordering::SeqCst) {
            drop(st);
            // A kick can land just before a vCPU enters KVM_RUN and be lost: repeat it.
            self.kick_all();
            st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st = self
                .changed
                .wait_timeout(st, Duration::from_millis(5))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        self.pause_requested.store(false, Ordering::SeqCst);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.pause = false;
        self.changed.notify_all();
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).pause
    }

    /// Stops every vCPU thread (they return from their loops).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.resume();
        self.kick_all();
    }

    fn live_threads(&self) -> usize {
        self.threads.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Parks the calling vCPU while a pause is requested.
    fn park(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.pause {
            return;
        }
        st.paused += 1;
        self.changed.notify_all();
        while st.pause && !self.stop.load(Ordering::SeqCst) {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.paused -= 1;
    }
}

/// Where vCPU threads wait until the VMM lets the guest run (once every other thread that
/// serves it is confined).
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    /// Lets every waiting (and later) vCPU through.
    pub fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What a vCPU thread needs.
pub struct VcpuRunner {
    /// The vCPU.
    pub fd: VcpuFd,
    /// Its index (and APIC id).
    pub index: u8,
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
    /// Where the VM's end is announced.
    pub exit: Arc<VmExit>,
    /// Pause and stop.
    pub control: Arc<VcpuControl>,
    /// Called once, right before the first KVM_RUN of vCPU 0 (start-up measurement).
    pub on_first_run: Option<Box<dyn FnOnce() + Send>>,
    /// Passed before the first KVM_RUN (none: at once).
    pub gate: Option<Arc<Gate>>,
    /// The syscall filters; the thread puts the vCPU's on before its first KVM_RUN (none:
    /// no filter).
    pub filters: Option<Arc<Filters>>,
}

impl VcpuRunner {
    /// Starts the vCPU on a thread of its own.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        let control = self.control.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .spawn(move || {
                // SAFETY: pthread_self has no preconditions.
                let me = unsafe { libc::pthread_self() };
                self.control
                    .threads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(me);
                let _ = tx.send(());
                let control = self.control.clone();
                self.run();
                control
                    .threads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|&t| t != me);
            })?;
        // The thread is in the kick list before anyone can try to pause it.
        let _ = rx.recv();
        drop(control);
        Ok(handle)
    }

    fn run(mut self) {
        let index = self.index;
        if let Some(gate) = self.gate.take() {
            gate.wait();
        }
        if let Some(f) = self.on_first_run.take() {
            f();
        }
        if let Some(filters) = self.filters.take() {
            if let Err(e) = filters.apply(Thread::Vcpu) {
                self.exit.exit(ExitReason::Error(format!(
                    "vcpu{index}: {}",
                    error_chain(&e)
                )));
                return;
            }
        }
        loop {
            if self.control.stop.load(Ordering::SeqCst) {
                return;
            }
            if self.control.pause_requested.load(Ordering::SeqCst) {
                self.control.park();
                continue;
            }
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.pio.read(u64::from(port), data);
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.mmio.read(addr, data) {
                        log::debug!("vcpu{index}: MMIO read of unowned {addr:#x}");
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !self.mmio.write(addr, data) {
                        log::debug!("vcpu{index}: MMIO write to unowned {addr:#x}");
                    }
                }
                Ok(VcpuExit::Hlt) => {}
                Ok(VcpuExit::Shutdown) => {
                    // KVM reports a triple fault as a shutdown exit. The registers go to the
                    // log: a guest that dies this way is a bug to find (ours or the guest's).
                    // On AMD they are the reset state (rip 0xfff0, cs 0xf000): KVM's SVM
                    // reinitializes the VMCB after a SHUTDOWN intercept, before this exit, so
                    // only Intel hosts show where the guest was.
                    log::error!("vcpu{index}: triple fault; {}", describe(&self.fd));
                    self.exit.exit(ExitReason::TripleFault);
                    return;
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    let reason = match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                        KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                        other => ExitReason::Error(format!("vcpu{index}: system event {other}")),
                    };
                    self.exit.exit(reason);
                    return;
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    self.exit.exit(ExitReason::Error(format!(
                        "vcpu{index}: KVM entry failed (hardware reason {reason:#x} on CPU {cpu}); {}",
                        describe(&self.fd)
                    )));
                    return;
                }
                Ok(VcpuExit::InternalError) => {
                    self.exit.exit(ExitReason::Error(format!(
                        "vcpu{index}: KVM internal error (emulation failure?); {}",
                        describe(&self.fd)
                    )));
                    return;
                }
                Ok(other) => {
                    self.exit.exit(ExitReason::Error(format!(
                        "vcpu{index}: unexpected exit {other:?}"
                    )));
                    return;
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // Kicked: the loop head looks at the pause and stop flags.
                }
                Err(e) => {
                    self.exit
                        .exit(ExitReason::Error(format!("vcpu{index}: KVM_RUN: {e}")));
                    return;
                }
            }
        }
    }
}

/// The vCPU's registers, for the log when the guest dies: where it was and in what mode.
fn describe(fd: &VcpuFd) -> String {
    let regs = match fd.get_regs() {
        Ok(r) => format!(
            "rip {:#x} rsp {:#x} rflags {:#x} rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx
        ),
        Err(e) => format!("registers unreadable ({e})"),
    };
    let sregs = match fd.get_sregs() {
        Ok(s) => format!(
            "cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} cs {:#x} ss {:#x} idt {:#x}+{:#x}",
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.selector,
            s.ss.selector,
            s.idt.base,
            s.idt.limit
        ),
        Err(e) => format!("special registers unreadable ({e})"),
    };
    format!("{regs}; {sregs}")
}

/// Stops `handles`' threads and waits for them, giving up on a thread after `timeout`.
pub fn join_all(control: &VcpuControl, handles: Vec<JoinHandle<()>>, timeout: Duration) {
    control.stop();
    let deadline = std::time::Instant::now() + timeout;
    for h in handles {
        while !h.is_finished() && std::time::Instant::now() < deadline {
            control.kick_all();
            std::thread::sleep(Duration::from_millis(2));
        }
        if h.is_finished() {
            let _ = h.join();
        } else {
            log::warn!("a vCPU thread did not stop in {timeout:?}");
        }
    }
}
