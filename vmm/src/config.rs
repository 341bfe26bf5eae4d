//! carapace-vmm's side of its configuration: the schema of the `carapace-vmm-config` crate
//! (re-exported here, the one definition the shim writes too) held to this VMM's limits and
//! to the host (files present, socket paths free) by [`Validate`].

use std::path::Path;

pub use carapace_vmm_config::{
    parse_mac, BlockConfig, BucketConfig, ConfigError, FsCache, FsConfig, HostChecks, JailConfig,
    Limits, NetConfig, RateLimitConfig, Serial, VmConfig, VsockConfig, DEFAULT_CMDLINE,
    MAX_MEMORY_MIB, MIN_MEMORY_MIB,
};

use crate::arch::mptable::MAX_VCPUS;

/// What this VMM can do: its vCPUs (the MP table), the kernel command line it writes (with
/// 256 bytes kept for its virtio-mmio entries), its virtio interrupt lines and fs tags.
pub const LIMITS: Limits = Limits {
    max_vcpus: MAX_VCPUS,
    cmdline_max: crate::arch::CMDLINE_MAX,
    cmdline_reserved: 256,
    virtio_slots: (crate::arch::IRQ_MAX - crate::arch::VIRTIO_IRQ_START + 1) as usize,
    fs_tag_len: crate::devices::fs::TAG_LEN,
};

/// A configuration checked before anything starts.
pub trait Validate {
    /// Checks every value against the schema, [`LIMITS`] and the host's files; the first
    /// problem found is returned.
    fn validate(&self) -> Result<(), ConfigError>;
}

impl Validate for VmConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.check(&LIMITS, &HostFiles)
    }
}

/// The host checks answered from the file system (metadata that follows symlinks).
struct HostFiles;

impl HostChecks for HostFiles {
    fn regular_file(&self, key: &str, path: &Path) -> Result<(), ConfigError> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(ConfigError::new(
                key,
                format!("{} is not a regular file", path.display()),
            )),
            Err(e) => Err(ConfigError::new(key, format!("{}: {e}", path.display()))),
        }
    }

    fn directory(&self, key: &str, path: &Path) -> Result<(), ConfigError> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(ConfigError::new(
                key,
                format!("{} is not a directory", path.display()),
            )),
            Err(e) => Err(ConfigError::new(key, format!("{}: {e}", path.display()))),
        }
    }

    fn free_path(&self, key: &str, path: &Path) -> Result<(), ConfigError> {
        if path.exists() {
            return Err(ConfigError::new(
                key,
                format!(
                    "{} already exists (another VMM, or a stale socket to remove)",
                    path.display()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn kernel() -> PathBuf {
        // Any regular file will do for validation.
        std::env::current_exe().unwrap()
    }

    #[test]
    fn defaults_fill_what_is_missing() {
        let text = format!(r#"{{"kernel": "{}"}}"#, kernel().display());
        let c = VmConfig::from_json(&text).unwrap();
        assert_eq!(c, VmConfig::new(kernel()));
        c.validate().unwrap();
        let c = VmConfig::from_json(r#"{"kernel": "/k", "serial": {"file": "/tmp/s"}}"#).unwrap();
        assert_eq!(c.serial, Serial::File("/tmp/s".into()));
        let c = VmConfig::from_json(r#"{"kernel": "/k", "serial": "off"}"#).unwrap();
        assert_eq!(c.serial, Serial::Off);
    }

    #[test]
    fn impossible_values_name_their_key() {
        let check = |f: &dyn Fn(&mut VmConfig), key: &str| {
            let mut c = VmConfig::new(kernel());
            f(&mut c);
            assert_eq!(c.validate().unwrap_err().key, key);
        };
        check(&|c| c.vcpus = 0, "vcpus");
        check(&|c| c.vcpus = 200, "vcpus");
        check(&|c| c.memory_mib = 4, "memory_mib");
        check(&|c| c.kernel = "/nonexistent/vmlinux".into(), "kernel");
        check(&|c| c.initramfs = Some("/".into()), "initramfs");
        check(&|c| c.cmdline = "x".repeat(4000), "cmdline");
        check(
            &|c| {
                c.block.push(BlockConfig {
                    path: "/nonexistent".into(),
                    read_only: false,
                    rate_limit: None,
                })
            },
            "block[0].path",
        );
        check(
            &|c| {
                c.net.push(NetConfig {
                    tap: Some("tap0".into()),
                    tap_fd: None,
                    mac: Some("zz".into()),
                    rx_rate_limit: None,
                    tx_rate_limit: None,
                })
            },
            "net[0].mac",
        );
        check(
            &|c| {
                c.net.push(NetConfig {
                    tap: None,
                    tap_fd: None,
                    mac: None,
                    rx_rate_limit: None,
                    tx_rate_limit: None,
                })
            },
            "net[0]",
        );
        check(
            &|c| {
                c.vsock = Some(VsockConfig {
                    cid: 2,
                    socket: "/tmp/x.sock".into(),
                })
            },
            "vsock.cid",
        );
        check(&|c| c.api_socket = Some("/".into()), "api_socket");
        let share = |tag: &str, path: &str| FsConfig {
            tag: tag.into(),
            path: path.into(),
            cache: FsCache::Never,
            dax: false,
            read_only: false,
            allow_devices: false,
        };
        check(&|c| c.fs.push(share("", "/tmp")), "fs[0].tag");
        check(&|c| c.fs.push(share(&"t".repeat(37), "/tmp")), "fs[0].tag");
        check(&|c| c.fs.push(share("t", "/nonexistent")), "fs[0].path");
        check(
            &|c| c.fs.push(share("t", c.kernel.to_str().unwrap())),
            "fs[0].path",
        );
        check(
            &|c| c.fs.extend([share("t", "/tmp"), share("t", "/tmp")]),
            "fs[1].tag",
        );
        check(
            &|c| {
                let mut s = share("t", "/tmp");
                s.dax = true;
                c.fs.push(s)
            },
            "fs[0].dax",
        );
        let mut c = VmConfig::new(kernel());
        c.fs.push(share(&"t".repeat(36), "/tmp"));
        c.validate().unwrap();
    }

    #[test]
    fn host_checks_say_what_is_wrong_with_the_path() {
        let host = HostFiles;
        let e = host.regular_file("kernel", Path::new("/")).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.why.as_str()),
            ("kernel", "/ is not a regular file")
        );
        let e = host
            .regular_file("kernel", Path::new("/nonexistent"))
            .unwrap_err();
        assert!(e.why.starts_with("/nonexistent: "), "{e}");
        host.regular_file("kernel", &kernel()).unwrap();
        let e = host.directory("fs[0].path", &kernel()).unwrap_err();
        assert_eq!(e.why, format!("{} is not a directory", kernel().display()));
        host.directory("fs[0].path", Path::new("/")).unwrap();
        let e = host.free_path("api_socket", Path::new("/")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config key `api_socket`: / already exists (another VMM, or a stale socket to remove)"
        );
        host.free_path("api_socket", Path::new("/nonexistent/api.sock"))
            .unwrap();
    }
}
