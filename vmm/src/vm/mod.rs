//! The machine: a KVM VM assembled from a [`VmConfig`] (memory, boot, legacy and virtio
//! devices, vCPUs), run until the guest resets, faults or is shut down, and the handle the
//! control API uses to pause, resume, stop and inspect it.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use linux_loader::loader::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch;
use crate::bus::{Bus, SharedDevice};
use crate::config::{Serial, Validate, VmConfig};
use crate::devices::legacy::{
    ConsoleLog, ResetTrigger, SerialConsole, I8042, I8042_PORT, SERIAL_IRQ, SERIAL_PORT,
};
use crate::devices::virtio::mmio::{MmioSubscriber, MmioTransport, MMIO_LEN, NOTIFY_OFFSET};
use crate::devices::virtio::VirtioDevice;
pub use crate::exit::error_chain;
use crate::exit::{ExitReason, VmExit};
use crate::seccomp::{Filters, SeccompError, Thread};
use crate::vcpu::{self, VcpuControl, VcpuRunner};

/// Why a machine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The configuration is refused.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The syscall filters cannot be built.
    #[error("seccomp")]
    Seccomp(#[source] SeccompError),
    /// /dev/kvm cannot be opened.
    #[error("/dev/kvm")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// A KVM system ioctl failed.
    #[error("/dev/kvm: {what}")]
    KvmIoctl {
        /// The ioctl.
        what: &'static str,
        /// The failure.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// /dev/kvm lacks a capability or CPUID support this VMM needs.
    #[error("/dev/kvm: {0}")]
    Kvm(String),
    /// A KVM VM ioctl failed.
    #[error("{what}")]
    Vm {
        /// The ioctl (and what it was for).
        what: &'static str,
        /// The failure.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A vCPU could not be created or given its boot state.
    #[error(transparent)]
    Vcpu(std::io::Error),
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The kernel, initramfs or boot structures could not be loaded.
    #[error(transparent)]
    Boot(#[from] arch::boot::BootError),
    /// An eventfd the machine needs could not be created.
    #[error(transparent)]
    EventFd(std::io::Error),
    /// The serial console's log file could not be opened.
    #[error("serial file {}", .path.display())]
    SerialFile {
        /// The file.
        path: std::path::PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Two devices claim the same bus range.
    #[error(transparent)]
    Bus(crate::bus::Overlap),
    /// The kernel command line cannot hold what the machine adds to it.
    #[error("cmdline")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The device event loop could not be created.
    #[error("epoll")]
    EventLoop(#[source] event_manager::Error),
    /// A virtio device or its transport could not be created (`what` names it, as
    /// `block[0]` or `vsock`).
    #[error("{what}")]
    Device {
        /// The device.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A virtio-fs share could not be created.
    #[error("fs[{index}]")]
    Fs {
        /// The share's index in the configuration.
        index: usize,
        /// The failure.
        #[source]
        source: crate::devices::fs::FsError,
    },
    /// A device's configuration cannot be used (no cause beyond the message).
    #[error("{0}")]
    DeviceConfig(String),
}

/// CPU time this process has used so far (user and system), in microseconds, counting
/// what it used before the jail forked it into its PID namespace (see
/// [`count_cpu_before_fork`]).
pub fn process_cpu_us() -> u64 {
    own_cpu_us() + CPU_BEFORE_FORK_US.load(Ordering::Relaxed)
}

/// The CPU time the process had used when it forked into its PID namespace, in µs: a forked
/// child's clock starts again at zero.
static CPU_BEFORE_FORK_US: AtomicU64 = AtomicU64::new(0);

/// Called right before the jail's fork (`crate::jail::enter_pid_namespace`): the child, which
/// goes on to be the VMM, then counts the time spent before it in [`process_cpu_us`].
pub fn count_cpu_before_fork() {
    CPU_BEFORE_FORK_US.store(own_cpu_us(), Ordering::Relaxed);
}

fn own_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Logs (at debug level) the CPU time spent when machine set-up reaches `phase`.
fn mark(phase: &str) {
    if log::log_enabled!(log::Level::Debug) {
        log::debug!("start-up: {phase} at {} us of CPU", process_cpu_us());
    }
}

fn vm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> MachineError {
    move |source| MachineError::Vm { what, source }
}

/// Names the device a creation error is about.
fn device_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MachineError {
    let what = what.into();
    move |source| MachineError::Device { what, source }
}

/// Counters of one virtio device, for the control API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceStatus {
    /// The device's name.
    pub name: String,
    /// Its MMIO window.
    pub mmio_base: u64,
    /// Its interrupt line.
    pub irq: u32,
    /// Whether the driver activated it.
    pub driver_ok: bool,
    /// Malformed requests refused.
    pub bad_requests: u64,
    /// Requests completed.
    pub requests: u64,
    /// Bytes moved.
    pub bytes: u64,
}

/// What the control API can do to a running machine.
#[derive(Clone)]
pub struct MachineHandle {
    control: Arc<VcpuControl>,
    exit: Arc<VmExit>,
    // Weak: a handle kept by the API thread must not keep devices alive after the machine
    // ends (their Drop removes host-side sockets).
    transports: Vec<(Weak<Mutex<MmioTransport>>, u64, u32)>,
    started: Instant,
    guest_ranges: Vec<(usize, usize)>,
    /// /proc/self/smaps, opened before the jail hides /proc (read again from its start).
    smaps: Option<Arc<std::fs::File>>,
    /// vCPU count.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// The threads' syscall filters; none when the configuration turns them off.
    filters: Option<Arc<Filters>>,
}

impl MachineHandle {
    /// Puts `thread`'s syscall filter on the calling thread (nothing when they are off).
    pub fn confine(&self, thread: Thread) -> Result<(), SeccompError> {
        match &self.filters {
            Some(f) => f.apply(thread),
            None => Ok(()),
        }
    }

    /// Ends the VM for an error of the VMM's own (a thread that cannot go on).
    pub fn fail(&self, why: String) {
        self.exit.exit(ExitReason::Error(why));
    }

    /// Pauses all vCPUs (devices keep their state; queues are not served while the guest
    /// cannot kick them).
    pub fn pause(&self) {
        self.control.pause();
    }

    /// Resumes the vCPUs.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// Stops the VM.
    pub fn shutdown(&self) {
        self.exit.exit(ExitReason::Shutdown);
    }

    /// Milliseconds since the machine started.
    pub fn uptime_ms(&self) -> u128 {
        self.started.elapsed().as_millis()
    }

    /// The virtio devices' counters.
    pub fn devices(&self) -> Vec<DeviceStatus> {
        use std::sync::atomic::Ordering::Relaxed;
        self.transports
            .iter()
            .filter_map(|(t, base, irq)| Some((t.upgrade()?, base, irq)))
            .map(|(t, base, irq)| {
                let t = t.lock().unwrap_or_else(|e| e.into_inner());
                let c = t.device().counters();
                DeviceStatus {
                    name: t.name().to_string(),
                    mmio_base: *base,
                    irq: *irq,
                    driver_ok: t.driver_ok(),
                    bad_requests: c.bad_requests.load(Relaxed),
                    requests: c.requests.load(Relaxed),
                    bytes: c.bytes.load(Relaxed),
                }
            })
            .collect()
    }

    /// Resident memory of this process outside guest memory, in KiB (from /proc/self/smaps).
    pub fn overhead_rss_kib(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let smaps = self.smaps.as_ref()?;
        let mut text = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // procfs regenerates the file for a read from offset 0.
            match smaps.read_at(&mut buf, text.len() as u64) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(_) => return None,
            }
        }
        overhead_rss_kib(&String::from_utf8_lossy(&text), &self.guest_ranges)
    }

    /// A handle to no machine (no vCPUs, no devices), for tests of the control API.
    #[cfg(test)]
    pub(crate) fn detached() -> MachineHandle {
        MachineHandle {
            control: Arc::new(VcpuControl::default()),
            exit: Arc::new(VmExit::new().expect("eventfd")),
            transports: Vec::new(),
            started: Instant::now(),
            guest_ranges: Vec::new(),
            smaps: None,
            vcpus: 1,
            memory_mib: 128,
            filters: None,
        }
    }

    /// Why the machine ended, if it has (tests).
    #[cfg(test)]
    pub(crate) fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.reason()
    }
}

/// Sums the resident size of every mapping of this process that is not guest memory.
fn overhead_rss_kib(smaps: &str, guest: &[(usize, usize)]) -> Option<u64> {
    let mut total = 0u64;
    let mut in_guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                in_guest = guest.iter().any(|&(s, len)| start >= s && end <= s + len);
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("Rss:") {
            if !in_guest {
                total += rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()?;
            }
        }
    }
    Some(total)
}

/// Watches the exit eventfd from the event loop.
struct ExitSubscriber(Arc<VmExit>);

impl MutEventSubscriber for ExitSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.eventfd(), EventSet::IN)) {
            log::error!("cannot watch the VM's exit event: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.eventfd().read();
    }
}

type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// A VM ready to run.
pub struct Machine {
    // Field order is drop order: vCPU threads are joined in `run`, then devices, then the VM.
    runners: Vec<VcpuRunner>,
    event_manager: EventManager<Subscriber>,
    handle: MachineHandle,
    _serial: SharedDevice,
    _vm: VmFd,
    _kvm: Kvm,
    _mem: GuestMemoryMmap,
}

/// Builds the virtio devices the configuration asks for, in command-line order.
fn virtio_devices(config: &VmConfig) -> Result<Vec<Box<dyn VirtioDevice>>, MachineError> {
    use crate::config::FsCache;
    use crate::devices::fs::{CacheMode, Fs, ShareOptions};
    use crate::devices::{blk::Block, net::Net, rng::Rng, vsock::Vsock};
    let mut out: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (i, b) in config.block.iter().enumerate() {
        let mut dev =
            Block::new(&b.path, b.read_only).map_err(device_err(format!("block[{i}]")))?;
        if let Some(limit) = &b.rate_limit {
            dev = dev
                .with_rate_limit(limit)
                .map_err(device_err(format!("block[{i}].rate_limit")))?;
        }
        out.push(Box::new(dev));
    }
    for (i, n) in config.net.iter().enumerate() {
        let mac = n.mac.as_deref().and_then(crate::config::parse_mac);
        let dev = match (&n.tap, n.tap_fd) {
            (Some(name), _) => Net::with_tap_name(name, mac),
            (None, Some(fd)) => {
                // SAFETY: the configuration hands the VMM this inherited descriptor to own;
                // validation checked it is a descriptor number, and fcntl below checks it is
                // open before ownership is taken.
                if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                    return Err(MachineError::DeviceConfig(format!(
                        "net[{i}].tap_fd: {fd} is not an open file descriptor"
                    )));
                }
                // SAFETY: `fd` is open (checked above) and nothing else in the VMM owns it.
                Net::with_tap_fd(unsafe { OwnedFd::from_raw_fd(fd) }, mac)
            }
            (None, None) => unreachable!("validated"),
        }
        .and_then(|d| d.with_rate_limits(n.rx_rate_limit.as_ref(), n.tx_rate_limit.as_ref()))
        .map_err(device_err(format!("net[{i}]")))?;
        out.push(Box::new(dev));
    }
    if let Some(v) = &config.vsock {
        let dev = Vsock::new(v.cid, v.socket.clone()).map_err(device_err("vsock"))?;
        out.push(Box::new(dev));
    }
    for (i, f) in config.fs.iter().enumerate() {
        let cache = match f.cache {
            FsCache::Never => CacheMode::Never,
            FsCache::Auto => CacheMode::Auto,
            FsCache::Always => CacheMode::Always,
        };
        let options = ShareOptions {
            cache,
            read_only: f.read_only,
            allow_devices: f.allow_devices,
            limits: None,
        };
        let dev = Fs::with_options(&f.tag, &f.path, options)
            .map_err(|source| MachineError::Fs { index: i, source })?;
        out.push(Box::new(dev));
    }
    if config.rng {
        out.push(Box::new(Rng::new()));
    }
    Ok(out)
}

impl Machine {
    /// Builds the VM: everything short of running its vCPUs.
    pub fn new(config: &VmConfig) -> Result<Machine, MachineError> {
        config.validate()?;
        // Built first: a VMM that cannot confine its threads does not start a guest.
        let filters = if config.seccomp {
            Some(Arc::new(Filters::new().map_err(MachineError::Seccomp)?))
        } else {
            log::warn!(
                "seccomp is OFF (the configuration's `seccomp: false`): every VMM thread may make \
                 any syscall, so a guest that escapes KVM or a device meets no filter. For \
                 debugging only."
            );
            None
        };
        let kvm = Kvm::new().map_err(MachineError::KvmOpen)?;
        for cap in [
            Cap::Irqchip,
            Cap::Ioeventfd,
            Cap::Irqfd,
            Cap::UserMemory,
            Cap::Pit2,
        ] {
            if !kvm.check_extension(cap) {
                return Err(MachineError::Kvm(format!("lacks the {cap:?} capability")));
            }
        }
        let vm = kvm.create_vm().map_err(|source| MachineError::KvmIoctl {
            what: "KVM_CREATE_VM",
            source,
        })?;
        vm.set_tss_address(arch::KVM_TSS_START as usize)
            .map_err(vm_err("KVM_SET_TSS_ADDR"))?;
        vm.set_identity_map_address(arch::KVM_IDENTITY_MAP_START)
            .map_err(vm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm.create_irq_chip().map_err(vm_err("KVM_CREATE_IRQCHIP"))?;
        vm.create_pit2(kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(vm_err("KVM_CREATE_PIT2"))?;

        mark("KVM VM created");
        // Guest memory, registered with KVM one slot per region.
        let mem_size = config.memory_mib << 20;
        let mem = arch::create_guest_memory(mem_size)
            .map_err(|e| MachineError::Memory(format!("{} MiB: {e}", config.memory_mib)))?;
        let mut guest_ranges = Vec::new();
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| MachineError::Memory(e.to_string()))?;
            guest_ranges.push((host as usize, region.len() as usize));
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping of `region.len()` bytes owned by `mem`,
            // which the Machine keeps alive for as long as the VM exists.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(vm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }

        mark("guest memory registered");
        // Devices: serial and i8042 on the port bus, virtio-mmio on the MMIO bus.
        let exit = Arc::new(VmExit::new().map_err(MachineError::EventFd)?);
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(MachineError::EventFd)?;
        vm.register_irqfd(&serial_irq, SERIAL_IRQ)
            .map_err(vm_err("KVM_IRQFD (serial)"))?;
        let out: Box<dyn Write + Send> = match &config.serial {
            Serial::Stdout => Box::new(std::io::stdout()),
            Serial::Off => Box::new(std::io::sink()),
            // Capped at CONSOLE_LOG_CAP by rotation to `<file>.1`.
            Serial::File(p) => {
                Box::new(
                    ConsoleLog::open(p).map_err(|source| MachineError::SerialFile {
                        path: p.clone(),
                        source,
                    })?,
                )
            }
        };
        let serial: SharedDevice = Arc::new(Mutex::new(SerialConsole::new(serial_irq, out)));
        let bus_err = MachineError::Bus;
        pio.insert(serial.clone(), SERIAL_PORT, 8)
            .map_err(bus_err)?;
        let i8042: SharedDevice = Arc::new(Mutex::new(I8042(vm_superio::I8042Device::new(
            ResetTrigger(exit.clone()),
        ))));
        pio.insert(i8042, I8042_PORT, 5).map_err(bus_err)?;

        let mut cmdline = Cmdline::new(arch::CMDLINE_MAX).map_err(MachineError::Cmdline)?;
        cmdline
            .insert_str(&config.cmdline)
            .map_err(MachineError::Cmdline)?;

        let mut event_manager: EventManager<Subscriber> =
            EventManager::new().map_err(MachineError::EventLoop)?;
        let mut transports = Vec::new();
        for (i, device) in virtio_devices(config)?.into_iter().enumerate() {
            let base = arch::VIRTIO_MMIO_START + i as u64 * MMIO_LEN;
            let irq = arch::VIRTIO_IRQ_START + i as u32;
            let name = device.name().to_string();
            let t = MmioTransport::new(device, mem.clone()).map_err(device_err(name))?;
            vm.register_irqfd(t.interrupt().eventfd(), irq)
                .map_err(vm_err("KVM_IRQFD (virtio)"))?;
            for (q, evt) in t.queue_evts().iter().enumerate() {
                vm.register_ioevent(evt, &IoEventAddress::Mmio(base + NOTIFY_OFFSET), q as u32)
                    .map_err(vm_err("KVM_IOEVENTFD"))?;
            }
            let t = Arc::new(Mutex::new(t));
            mmio.insert(t.clone(), base, MMIO_LEN).map_err(bus_err)?;
            event_manager.add_subscriber(Box::new(MmioSubscriber(t.clone())));
            cmdline
                .add_virtio_mmio_device(MMIO_LEN, GuestAddress(base), irq, None)
                .map_err(MachineError::Cmdline)?;
            transports.push((Arc::downgrade(&t), base, irq));
        }
        event_manager.add_subscriber(Box::new(ExitSubscriber(exit.clone())));

        mark("devices created");
        // Boot: kernel, initramfs, command line, start info, GDT, MP table.
        let kernel = arch::boot::load_kernel(&mem, mem_size, &config.kernel)?;
        mark("kernel loaded");
        let initramfs = match &config.initramfs {
            Some(p) => Some(arch::boot::load_initramfs(&mem, mem_size, kernel.end, p)?),
            None => None,
        };
        arch::boot::write_boot_info(&mem, mem_size, &cmdline, initramfs)?;
        arch::boot::write_gdt(&mem)?;
        arch::mptable::write(&mem, config.vcpus)
            .map_err(|e| MachineError::Memory(e.to_string()))?;

        mark("boot structures written");
        // vCPUs.
        let mut supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| MachineError::KvmIoctl {
                what: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        let host = arch::cpuid::HostFacts {
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        };
        arch::cpuid::normalize(&mut supported, host).map_err(MachineError::Kvm)?;
        let control = Arc::new(VcpuControl::default());
        let mut runners = Vec::new();
        for index in 0..config.vcpus {
            let fd = vcpu::create(&vm, &supported, index, config.vcpus, kernel.entry)
                .map_err(MachineError::Vcpu)?;
            runners.push(VcpuRunner {
                fd,
                index,
                pio: pio.clone(),
                mmio: mmio.clone(),
                exit: exit.clone(),
                control: control.clone(),
                on_first_run: None,
                gate: None,
                filters: None,
            });
        }

        mark("vCPUs created");
        Ok(Machine {
            runners,
            event_manager,
            handle: MachineHandle {
                control,
                exit,
                transports,
                started: Instant::now(),
                guest_ranges,
                smaps: std::fs::File::open("/proc/self/smaps").ok().map(Arc::new),
                vcpus: config.vcpus,
                memory_mib: config.memory_mib,
                filters,
            },
            _serial: serial,
            _vm: vm,
            _kvm: kvm,
            _mem: mem,
        })
    }

    /// The handle the control API drives the machine with.
    pub fn handle(&self) -> MachineHandle {
        self.handle.clone()
    }

    /// Runs `f` right before vCPU 0's first KVM_RUN.
    pub fn on_first_run(&mut self, f: Box<dyn FnOnce() + Send>) {
        if let Some(r) = self.runners.first_mut() {
            r.on_first_run = Some(f);
        }
    }

    /// Runs the VM on this thread (the device event loop) and its vCPUs on threads of their
    /// own, until it ends; returns why.
    pub fn run(mut self) -> ExitReason {
        if let Err(e) = vcpu::install_kick_handler() {
            return ExitReason::Error(format!("cannot install the vCPU kick handler: {e}"));
        }
        let control = self.handle.control.clone();
        let exit = self.handle.exit.clone();
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        // The vCPUs wait at the gate until this thread is confined: no guest code runs
        // before every thread's filter is on (each vCPU puts its own on before KVM_RUN).
        let gate = Arc::new(vcpu::Gate::default());
        for mut r in std::mem::take(&mut self.runners) {
            r.gate = Some(gate.clone());
            r.filters = self.handle.filters.clone();
            match r.spawn() {
                Ok(h) => threads.push(h),
                Err(e) => {
                    exit.exit(ExitReason::Error(format!(
                        "cannot start a vCPU thread: {e}"
                    )));
                    break;
                }
            }
        }
        if let Err(e) = self.handle.confine(Thread::EventLoop) {
            exit.exit(ExitReason::Error(format!(
                "event loop: {}",
                error_chain(&e)
            )));
        }
        gate.open();
        while exit.reason().is_none() {
            if let Err(e) = self.event_manager.run() {
                exit.exit(ExitReason::Error(format!("event loop: {e:?}")));
            }
        }
        vcpu::join_all(&control, threads, Duration::from_secs(2));
        exit.reason().unwrap_or(ExitReason::Shutdown)
    }
}

#[cfg(test)]
mod tests;
