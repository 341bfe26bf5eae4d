//! The `carapace-vmm` binary: boots one microVM from a JSON config file (`--config`) or from
//! flags, serves the control socket, and exits with a status saying how the guest ended:
//! 0 reset, power-off or API shutdown; 3 triple fault; 1 error; 2 refused configuration;
//! 159 (128 + SIGSYS) a thread made a syscall outside its seccomp filter (`seccomp`).
//!
//! Before any device exists, the VMM raises its soft RLIMIT_NOFILE to the hard limit, at
//! most [`NOFILE_TARGET`] (131072): the fs device holds a descriptor per open guest inode
//! and handle and bounds them by the soft limit in force when it is created, and vsock
//! connections each take one. The usual soft default of 1024 would give the guest EMFILE
//! early; the accept loops survive EMFILE anyway (they back off and retry).

use std::path::PathBuf;
use std::process::ExitCode;

use carapace_vmm::api::ApiServer;
use carapace_vmm::config::Validate;
use carapace_vmm::config::{
    BlockConfig, BucketConfig, FsCache, FsConfig, NetConfig, Serial, VmConfig, VsockConfig,
};
use carapace_vmm::jail::{self, Jail};
use carapace_vmm::seccomp::Thread;
use carapace_vmm::vm::{error_chain, Machine, MachineError};
use carapace_vmm_config::status;

const USAGE: &str = "usage: carapace-vmm [--config FILE] [--kernel PATH] [--initramfs PATH]
       [--cmdline STR] [--vcpus N] [--memory-mib N] [--serial stdout|off|FILE]
       [--api-socket PATH] [--block PATH[,ro][,bps=N][,iops=N]]... [--net TAP|fd=N[,mac=MAC][,rx_bps=N][,tx_bps=N]]...
       [--vsock CID,PATH] [--rng] [--fs TAG,PATH[,cache=never|auto|always][,ro][,devices]]...
       [--seccomp on|off]
Flags override the config file's values; --block, --net and --fs add to its devices.
Set CARAPACE_VMM_STARTUP_REPORT=1 to print CPU time and RSS at the first KVM_RUN.";

/// The soft RLIMIT_NOFILE the VMM raises itself to, if the hard limit allows (else to the
/// hard limit): 131072 descriptors. The usual soft default, 1024, is too few for a guest
/// with many open files on its shares; 131072 is a quarter of systemd's default hard limit
/// (524288) and an eighth of the kernel's default `fs.nr_open` (1048576), so the raise
/// succeeds under common hard limits while keeping a runaway guest's descriptor use bounded.
const NOFILE_TARGET: u64 = 131_072;

/// Raises the soft RLIMIT_NOFILE to min(hard, [`NOFILE_TARGET`]) (never lowers it) and
/// returns the soft limit now in force. Makes system calls only (tests run it after fork).
fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let want = rl.rlim_max.min(NOFILE_TARGET as libc::rlim_t);
    if rl.rlim_cur < want {
        rl.rlim_cur = want;
        // SAFETY: setrlimit reads the rlimit we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(rl.rlim_cur)
}

/// A command line the VMM refuses.
#[derive(Debug)]
struct UsageError(String);

fn parse_args(args: Vec<String>) -> Result<VmConfig, UsageError> {
    let mut it = args.into_iter();
    let mut file: Option<VmConfig> = None;
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (flag.clone(), None),
        };
        let takes_value = !matches!(name.as_str(), "--rng" | "--help" | "-h");
        let value = if takes_value {
            match inline {
                Some(v) => Some(v),
                None => Some(
                    it.next()
                        .ok_or_else(|| UsageError(format!("{name} needs a value")))?,
                ),
            }
        } else {
            None
        };
        if name == "--config" {
            let path = value.unwrap_or_default();
            let text = std::fs::read_to_string(&path)
                .map_err(|e| UsageError(format!("--config {path}: {e}")))?;
            file = Some(
                VmConfig::from_json(&text)
                    .map_err(|e| UsageError(format!("--config {path}: {e}")))?,
            );
        } else {
            flags.push((name, value));
        }
    }
    let kernel = flags
        .iter()
        .rev()
        .find(|(n, _)| n == "--kernel")
        .and_then(|(_, v)| v.clone());
    let mut config = match (file, kernel) {
        (Some(c), _) => c,
        (None, Some(k)) => VmConfig::new(PathBuf::from(k)),
        (None, None) => return Err(UsageError("give --kernel or --config".into())),
    };
    for (name, value) in flags {
        let v = value.unwrap_or_default();
        let number = |what: &str| -> Result<u64, UsageError> {
            v.parse()
                .map_err(|_| UsageError(format!("{what}: `{v}` is not a number")))
        };
        match name.as_str() {
            "--kernel" => config.kernel = v.into(),
            "--initramfs" => config.initramfs = Some(v.into()),
            "--cmdline" => config.cmdline = v,
            "--vcpus" => {
                config.vcpus = u8::try_from(number("--vcpus")?)
                    .map_err(|_| UsageError(format!("--vcpus: {v} is too many")))?
            }
            "--memory-mib" => config.memory_mib = number("--memory-mib")?,
            "--serial" => {
                config.serial = match v.as_str() {
                    "stdout" => Serial::Stdout,
                    "off" => Serial::Off,
                    path => Serial::File(path.into()),
                }
            }
            "--api-socket" => config.api_socket = Some(v.into()),
            "--block" => {
                // PATH[,ro][,bps=N][,iops=N]
                let mut parts = v.split(',');
                let path = parts.next().unwrap_or_default();
                let mut block = BlockConfig {
                    path: path.into(),
                    read_only: false,
                    rate_limit: None,
                };
                for part in parts {
                    let per_second = |n: &str| {
                        n.parse()
                            .map(BucketConfig::per_second)
                            .map_err(|_| UsageError(format!("--block: `{part}` is not a number")))
                    };
                    if part == "ro" {
                        block.read_only = true;
                    } else if let Some(n) = part.strip_prefix("bps=") {
                        let b = per_second(n)?;
                        block
                            .rate_limit
                            .get_or_insert_with(Default::default)
                            .bandwidth = Some(b);
                    } else if let Some(n) = part.strip_prefix("iops=") {
                        let b = per_second(n)?;
                        block.rate_limit.get_or_insert_with(Default::default).ops = Some(b);
                    } else {
                        return Err(UsageError(format!("--block: unknown option `{part}`")));
                    }
                }
                config.block.push(block);
            }
            "--net" => {
                let mut net = NetConfig {
                    tap: None,
                    tap_fd: None,
                    mac: None,
                    rx_rate_limit: None,
                    tx_rate_limit: None,
                };
                for part in v.split(',') {
                    let per_second = |n: &str| {
                        n.parse()
                            .map(BucketConfig::per_second)
                            .map_err(|_| UsageError(format!("--net: `{part}` is not a number")))
                    };
                    if let Some(mac) = part.strip_prefix("mac=") {
                        net.mac = Some(mac.into());
                    } else if let Some(n) = part.strip_prefix("rx_bps=") {
                        net.rx_rate_limit
                            .get_or_insert_with(Default::default)
                            .bandwidth = Some(per_second(n)?);
                    } else if let Some(n) = part.strip_prefix("tx_bps=") {
                        net.tx_rate_limit
                            .get_or_insert_with(Default::default)
                            .bandwidth = Some(per_second(n)?);
                    } else if let Some(fd) = part.strip_prefix("fd=") {
                        net.tap_fd = Some(fd.parse().map_err(|_| {
                            UsageError(format!("--net: fd `{fd}` is not a number"))
                        })?);
                    } else {
                        net.tap = Some(part.into());
                    }
                }
                config.net.push(net);
            }
            "--vsock" => {
                let (cid, path) = v
                    .split_once(',')
                    .ok_or_else(|| UsageError(format!("--vsock: `{v}` is not CID,PATH")))?;
                config.vsock = Some(VsockConfig {
                    cid: cid
                        .parse()
                        .map_err(|_| UsageError(format!("--vsock: cid `{cid}` is not a number")))?,
                    socket: path.into(),
                });
            }
            "--rng" => config.rng = true,
            "--seccomp" => {
                config.seccomp = match v.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(UsageError(format!("--seccomp: {v:?} is not on or off"))),
                }
            }
            "--fs" => config.fs.push(parse_fs(&v)?),
            "--help" | "-h" => return Err(UsageError(String::new())),
            other => return Err(UsageError(format!("unknown option {other}"))),
        }
    }
    Ok(config)
}

/// `TAG,PATH[,cache=never|auto|always][,ro][,devices]`.
fn parse_fs(v: &str) -> Result<FsConfig, UsageError> {
    let mut parts = v.split(',');
    let (Some(tag), Some(path)) = (parts.next(), parts.next()) else {
        return Err(UsageError(format!("--fs: `{v}` is not TAG,PATH[,...]")));
    };
    let mut fs = FsConfig {
        tag: tag.into(),
        path: path.into(),
        cache: FsCache::Never,
        dax: false,
        read_only: false,
        allow_devices: false,
    };
    for opt in parts {
        match opt {
            "ro" => fs.read_only = true,
            "devices" => fs.allow_devices = true,
            "cache=never" => fs.cache = FsCache::Never,
            "cache=auto" => fs.cache = FsCache::Auto,
            "cache=always" => fs.cache = FsCache::Always,
            other => {
                return Err(UsageError(format!(
                    "--fs: unknown option `{other}` (cache=never|auto|always, ro, devices)"
                )))
            }
        }
    }
    Ok(fs)
}

fn main() -> ExitCode {
    env_logger_init();
    let config = match parse_args(std::env::args().skip(1).collect()) {
        Ok(c) => c,
        Err(UsageError(msg)) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(UsageError(msg)) => {
            eprintln!("carapace-vmm: {msg}\n{USAGE}");
            return ExitCode::from(status::REFUSED as u8);
        }
    };
    // Before the devices: the fs device sizes its bounds by the soft limit in force.
    match raise_nofile_limit() {
        Ok(n) => log::debug!("RLIMIT_NOFILE soft limit: {n}"),
        Err(e) => log::warn!("cannot raise RLIMIT_NOFILE: {e}"),
    }
    // SIGTERM, SIGINT and SIGHUP end the VM in order (sockets removed), like an API shutdown:
    // blocked here so every thread inherits the mask, and taken by one thread with sigwait.
    let signals = jail::signal_set(&jail::STOP_SIGNALS);
    // SAFETY: pthread_sigmask only reads the set we own.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };
    // Into the jail first, while this is the process's only thread; a refused configuration
    // is reported before (exit 2), with the host paths it names.
    let jail = match &config.jail {
        Some(j) => {
            if let Err(e) = config.validate() {
                eprintln!("carapace-vmm: {}", error_chain(&e));
                return ExitCode::from(status::REFUSED as u8);
            }
            // From here on this is the VMM in its own PID namespace; the process that started
            // as it waits outside (jail.rs).
            if let Err(e) = jail::enter_pid_namespace(config.seccomp) {
                eprintln!("carapace-vmm: {}", error_chain(&e));
                return ExitCode::from(status::ERROR as u8);
            }
            match Jail::enter(j, &jail::contents(&config)) {
                Ok(j) => Some(j),
                Err(e) => {
                    eprintln!("carapace-vmm: {}", error_chain(&e));
                    return ExitCode::from(status::ERROR as u8);
                }
            }
        }
        None => None,
    };
    // Machine::new validates the configuration before it touches KVM: a refused one exits 2.
    let mut machine = match Machine::new(&config) {
        Ok(m) => m,
        Err(e @ MachineError::Config(_)) => {
            eprintln!("carapace-vmm: {}", error_chain(&e));
            return ExitCode::from(status::REFUSED as u8);
        }
        Err(e) => {
            eprintln!("carapace-vmm: {}", error_chain(&e));
            return ExitCode::from(status::ERROR as u8);
        }
    };
    if std::env::var_os("CARAPACE_VMM_STARTUP_REPORT").is_some() {
        let handle = machine.handle();
        machine.on_first_run(Box::new(move || {
            eprintln!(
                "carapace-vmm: first KVM_RUN after {} us of CPU, overhead RSS {} KiB",
                carapace_vmm::vm::process_cpu_us(),
                handle.overhead_rss_kib().unwrap_or(0)
            );
        }));
    }
    let api = match &config.api_socket {
        Some(path) => match ApiServer::bind(path) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("carapace-vmm: {e}");
                return ExitCode::from(status::ERROR as u8);
            }
        },
        None => None,
    };
    // The jail sealed once everything is open and before any other thread starts.
    if let Some(j) = jail {
        if let Err(e) = j.seal(!config.fs.is_empty()) {
            eprintln!("carapace-vmm: {}", error_chain(&e));
            return ExitCode::from(status::ERROR as u8);
        }
    }
    let _api = match api.map(|a| a.serve(machine.handle())).transpose() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("carapace-vmm: control socket: {e}");
            return ExitCode::from(status::ERROR as u8);
        }
    };
    let handle = machine.handle();
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Err(e) = handle.confine(Thread::Signals) {
                handle.fail(format!("signals thread: {}", error_chain(&e)));
                return;
            }
            let mut sig = 0;
            // SAFETY: sigwait reads the set and writes the signal number into `sig`.
            if unsafe { libc::sigwait(&signals, &mut sig) } == 0 {
                eprintln!("carapace-vmm: signal {sig}: stopping the VM");
                handle.shutdown();
            }
        });
    let reason = machine.run();
    eprintln!("carapace-vmm: {reason}");
    ExitCode::from(reason.exit_code() as u8)
}

/// Log to stderr at the level in CARAPACE_LOG (error, warn, info, debug; default warn).
fn env_logger_init() {
    struct Stderr(log::LevelFilter);
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= self.0
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("carapace-vmm: {}: {}", r.level(), r.args());
            }
        }
        fn flush(&self) {}
    }
    let level = match std::env::var("CARAPACE_LOG").as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("info") => log::LevelFilter::Info,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        _ => log::LevelFilter::Warn,
    };
    log::set_max_level(level);
    static LOGGER: std::sync::OnceLock<Stderr> = std::sync::OnceLock::new();
    let _ = log::set_logger(LOGGER.get_or_init(|| Stderr(level)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn flags_build_a_config() {
        let c = parse_args(args(&[
            "--kernel",
            "/k",
            "--vcpus=2",
            "--memory-mib",
            "256",
            "--block",
            "/d,ro",
            "--net",
            "tap0,mac=02:00:00:00:00:01",
            "--vsock",
            "3,/tmp/v.sock",
            "--rng",
            "--serial",
            "off",
            "--fs",
            "carapace,/run/x",
            "--fs",
            "b,/b,cache=auto,ro,devices",
            "--seccomp",
            "off",
        ]))
        .unwrap();
        assert!(!c.seccomp);
        assert!(parse_args(args(&["--kernel", "/k"])).unwrap().seccomp);
        let e = parse_args(args(&["--kernel", "/k", "--seccomp", "maybe"])).unwrap_err();
        assert!(e.0.contains("--seccomp"), "{}", e.0);
        assert_eq!(c.fs[0].tag, "carapace");
        assert_eq!(c.fs[0].path, PathBuf::from("/run/x"));
        assert_eq!((c.fs[0].cache, c.fs[0].read_only), (FsCache::Never, false));
        assert_eq!((c.fs[1].cache, c.fs[1].read_only), (FsCache::Auto, true));
        assert!(!c.fs[0].allow_devices && c.fs[1].allow_devices);
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!((c.vcpus, c.memory_mib), (2, 256));
        assert!(c.block[0].read_only);
        let limited = parse_args(args(&[
            "--kernel",
            "/k",
            "--block",
            "/d,bps=1000000,iops=50",
        ]))
        .unwrap();
        let limit = limited.block[0].rate_limit.clone().unwrap();
        assert_eq!(limit.bandwidth, Some(BucketConfig::per_second(1_000_000)));
        assert_eq!(
            limit.ops,
            Some(BucketConfig {
                size: 5,
                refill_time_ms: 100
            })
        );
        assert!(parse_args(args(&["--kernel", "/k", "--block", "/d,fast"])).is_err());
        assert_eq!(c.net[0].tap.as_deref(), Some("tap0"));
        assert!(c.net[0].rx_rate_limit.is_none() && c.net[0].tx_rate_limit.is_none());
        let net = parse_args(args(&[
            "--kernel",
            "/k",
            "--net",
            "tap1,tx_bps=1048576,rx_bps=2000",
        ]))
        .unwrap()
        .net
        .remove(0);
        assert_eq!(net.tap.as_deref(), Some("tap1"));
        let bandwidth = |l: Option<carapace_vmm::config::RateLimitConfig>| l.unwrap().bandwidth;
        assert_eq!(
            bandwidth(net.tx_rate_limit),
            Some(BucketConfig::per_second(1_048_576))
        );
        assert_eq!(
            bandwidth(net.rx_rate_limit),
            Some(BucketConfig::per_second(2000))
        );
        assert!(parse_args(args(&["--kernel", "/k", "--net", "tap1,tx_bps=fast"])).is_err());
        assert_eq!(c.vsock.as_ref().unwrap().cid, 3);
        assert!(c.rng);
        assert_eq!(c.serial, Serial::Off);
    }

    #[test]
    fn the_soft_nofile_limit_is_raised_to_the_hard_limit_at_most_131072() {
        let get = || {
            let mut rl = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the rlimit we own.
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
            rl
        };
        let set = |cur: u64, max: u64| {
            let rl = libc::rlimit {
                rlim_cur: cur as libc::rlim_t,
                rlim_max: max as libc::rlim_t,
            };
            // SAFETY: setrlimit reads the rlimit we own.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) == 0 }
        };
        // In a child (it lowers its own limits), making system calls only.
        // SAFETY: the child makes system calls only and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let hard = get().rlim_max;
            let code = if !set(64, hard) {
                10
            } else if raise_nofile_limit().ok() != Some(hard.min(NOFILE_TARGET)) {
                11
            } else if get().rlim_cur != hard.min(NOFILE_TARGET) {
                12
            } else if !set(64, 1000) {
                13
            } else if raise_nofile_limit().ok() != Some(1000) || get().rlim_cur != 1000 {
                14
            } else if !set(500, 500) || raise_nofile_limit().ok() != Some(500) {
                15
            } else {
                0
            };
            // SAFETY: _exit ends the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waitpid writes the status of our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }

    #[test]
    fn bad_flags_are_named() {
        let e = parse_args(args(&["--kernel", "/k", "--vcpu", "2"])).unwrap_err();
        assert!(e.0.contains("--vcpu"), "{}", e.0);
        let e = parse_args(args(&["--kernel", "/k", "--vcpus", "two"])).unwrap_err();
        assert!(e.0.contains("--vcpus"), "{}", e.0);
        let e = parse_args(args(&["--kernel"])).unwrap_err();
        assert!(e.0.contains("--kernel"), "{}", e.0);
        assert!(parse_args(args(&["--vcpus", "1"])).is_err());
        let e = parse_args(args(&["--kernel", "/k", "--fs", "tag"])).unwrap_err();
        assert!(e.0.contains("--fs"), "{}", e.0);
        let e = parse_args(args(&["--kernel", "/k", "--fs", "t,/p,cache=sometimes"])).unwrap_err();
        assert!(e.0.contains("cache=sometimes"), "{}", e.0);
    }
}
