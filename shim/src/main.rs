//! containerd-shim-carapace-v2: the containerd shim v2 that runs each pod in its own
//! carapace microVM. containerd finds it on PATH for the runtime `io.containerd.carapace.v2`.
//!
//! Logging goes through the `log` crate because the `containerd-shim` crate's logger (which
//! writes to the log fifo containerd reads) is a `log` logger.

mod agent;
mod cgroup;
mod config;
mod convert;
mod error;
mod events;
mod exec_id;
mod hooks;
mod hostfs;
mod limits;
mod mounts;
mod network;
mod output;
mod pod;
mod process;
mod sandbox;
mod service;
mod shim;
mod sizing;
mod spec;
mod stdio;
mod vmm;
mod watchers;

use std::sync::Arc;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = containerd_shim::parse(&args[1..]).context("parsing the command line")?;
    if flags.version {
        println!("containerd-shim-carapace-v2 {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let path = config::Config::path();
    let config = Arc::new(config::Config::load(&path).context("the carapace configuration")?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match flags.action.as_str() {
        "start" => rt.block_on(shim::start(&flags))?,
        "delete" => shim::delete(&flags)?,
        "" if !flags.socket.is_empty() => rt.block_on(shim::serve(&flags, config))?,
        other => anyhow::bail!("unknown action {other:?} (start, delete, or serving with -socket)"),
    }
    Ok(())
}
