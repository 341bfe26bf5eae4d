//! containerd-shim-carapace-v2: the containerd shim v2 that runs each pod in its own
//! carapace microVM. containerd finds it on PATH for the runtime `io.containerd.carapace.v2`.
//!
//! Logging goes through the `log` crate because the `containerd-shim` crate's logger (which
//! writes to the log fifo containerd reads) is a `log` logger.

mod agent;
mod config;
mod convert;
mod error;
mod events;
mod mounts;
mod process;
mod sandbox;
mod service;
mod shim;
mod spec;
mod stdio;
mod vmm;

use std::sync::Arc;

use anyhow::Context;

/// The runtime name containerd knows the shim by.
const RUNTIME_ID: &str = "io.containerd.carapace.v2";

fn main() -> anyhow::Result<()> {
    let path = config::Config::path();
    let config = config::Config::load(&path).context("the carapace configuration")?;
    let shim_config = containerd_shim::Config {
        default_log_level: config.log_level.clone(),
        // The shim's only child is the VMM, which tokio waits for itself; the crate's reaper
        // would take its exit status away from tokio.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    let _ = shim::CONFIG.set(Arc::new(config));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(containerd_shim::asynchronous::run::<shim::CarapaceShim>(
        RUNTIME_ID,
        Some(shim_config),
    ));
    Ok(())
}
