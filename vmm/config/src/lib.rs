//! carapace-vmm-config: the JSON configuration of a carapace-vmm VM, defined once for the VMM
//! that reads it (`--config`) and the shim that writes it.
//!
//! [`schema`] holds the serde types (keys, defaults, unknown keys refused); [`check`] the
//! checks of values against the limits a VMM states and the host probes it supplies;
//! [`status`] the VMM's exit statuses and what each means. The
//! crate depends on serde alone, so the shim can use it without pulling in the VMM's KVM
//! crates.

use std::fmt;

pub mod check;
pub mod schema;
pub mod status;

pub use check::{HostChecks, Limits};
pub use schema::{
    parse_mac, BlockConfig, BucketConfig, FsCache, FsConfig, JailConfig, NetConfig,
    RateLimitConfig, Serial, VmConfig, VsockConfig, DEFAULT_CMDLINE, MAX_MEMORY_MIB,
    MIN_MEMORY_MIB,
};

/// A configuration the VMM refuses, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key (dotted path) at fault.
    pub key: String,
    /// What is wrong with it.
    pub why: String,
}

impl ConfigError {
    /// The error for `key`, saying `why`.
    pub fn new(key: impl Into<String>, why: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            why: why.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.why)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_key() {
        let e = ConfigError::new("vsock.cid", "2 is reserved");
        assert_eq!(e.to_string(), "config key `vsock.cid`: 2 is reserved");
    }
}
