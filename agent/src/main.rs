//! carapace-agent: PID 1 inside every carapace microVM, serving the shim over ttrpc.
//!
//! As PID 1 it prints the boot marker, mounts the pseudo filesystems, logs to the serial
//! console, reaps orphans, and serves on `vsock://-1:1024`; it ends the VM on DestroySandbox or
//! when serving fails. Run as an ordinary process (`--listen unix:///path`, for host tests)
//! it only serves: no mounts, no hostname, no reboot.
//!
//! The runtime is single-threaded on purpose: libcontainer forks with a raw `clone3`, which is
//! only safe in a process with one thread, and it lets the reaper never race libcontainer's
//! own `waitpid` (see `reaper`).

mod cgroup;
mod container;
mod forward;
mod init;
mod initramfs;
mod network;
mod oom;
mod process;
mod reaper;
mod sandbox;
mod seccomp;
mod service;

// The request checks live in the library, where the fuzz target reaches them; `crate::error`
// and `crate::spec` name them here as before.
use carapace_agent::{error, spec};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// Command-line options.
struct Options {
    listen: String,
    state_dir: PathBuf,
    cgroup_parent: String,
}

const USAGE: &str = "usage: carapace-agent [--listen vsock://-1:1024|unix:///path] [--state-dir DIR] [--cgroup-parent /PATH]";

fn parse_args(is_init: bool) -> anyhow::Result<Options> {
    let mut o = Options {
        listen: format!("vsock://-1:{}", carapace_protocol::AGENT_VSOCK_PORT),
        state_dir: PathBuf::from("/run/carapace-agent"),
        cgroup_parent: "/carapace".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--listen" => o.listen = value()?,
            "--state-dir" => o.state_dir = PathBuf::from(value()?),
            "--cgroup-parent" => o.cgroup_parent = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // The kernel passes unknown boot parameters to init: ignore them as PID 1.
            _ if is_init => {}
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if !o.cgroup_parent.starts_with('/') {
        anyhow::bail!("--cgroup-parent must be an absolute cgroup path");
    }
    Ok(o)
}

fn main() {
    let started = monotonic_ns();
    let is_init = std::process::id() == 1;
    if is_init {
        if initramfs::on_initial_rootfs() {
            // Containers cannot start without it, but the agent still serves (health, guest
            // details) so the shim can report why.
            if let Err(e) = initramfs::leave() {
                eprintln!("carapace-agent: cannot leave the initramfs: {e:#}");
            }
        }
        init::print_marker();
        if let Err(e) = init::setup() {
            eprintln!("carapace-agent: fatal: {e:#}");
            init::power_off();
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    let result = parse_args(is_init).and_then(|o| run(o, is_init, started));
    if let Err(e) = result {
        eprintln!("carapace-agent: fatal: {e:#}");
        if is_init {
            init::power_off();
        }
        std::process::exit(1);
    }
}

fn run(o: Options, is_init: bool, started: u64) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let reaper = reaper::Reaper::default();
        tokio::spawn(reaper.clone().run());
        let (oom_tx, oom_rx) = tokio::sync::mpsc::unbounded_channel();
        let layout = container::Layout {
            state_dir: o.state_dir.clone(),
            cgroup_parent: o.cgroup_parent.clone(),
        };
        let containers = Arc::new(
            container::Containers::new(layout, reaper, oom_tx)
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?,
        );
        // OOM kills: reported as inotify sees memory.events change, and by a slow poll for
        // what a watch cannot cover (cgroup v1; see oom.rs).
        let watched = containers.clone();
        tokio::spawn(async move { watched.watch_oom_events().await });
        let polled = containers.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                polled.poll_oom();
            }
        });
        let net = network::Netlink::connect().map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        if is_init {
            // Containers share the pod's network namespace, whose loopback starts down.
            if let Err(e) = net.link_up("lo").await {
                tracing::warn!("bringing lo up: {}", e.message());
            }
        }
        let agent = service::Agent {
            containers,
            net,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
            is_init,
        };
        let services = carapace_protocol::agent_ttrpc::create_agent_service(Arc::new(agent));
        if let Some(path) = o.listen.strip_prefix("unix://") {
            let _ = std::fs::remove_file(path);
        }
        let mut server = ttrpc::r#async::Server::new()
            .bind(&o.listen)
            .with_context(|| format!("listening on {}", o.listen))?
            .register_service(services);
        server.start().await.context("starting the ttrpc server")?;
        if is_init {
            tokio::spawn(async {
                if let Err(e) = forward::serve().await {
                    tracing::error!("port forward: cannot listen: {e}");
                }
            });
        }
        // The figure "agent start to serving": from exec (as PID 1: the kernel starting /init).
        let ready_ms = monotonic_ns().saturating_sub(started) as f64 / 1e6;
        tracing::info!(
            listen = o.listen,
            ready_ms = format!("{ready_ms:.1}"),
            "serving"
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        term.recv().await;
        tracing::info!("SIGTERM: stopping");
        let _ = server.shutdown().await;
        Ok(())
    })
}

/// CLOCK_MONOTONIC now, in nanoseconds (the start-up figure spans the agent's start to serving).
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
