//! The shim's configuration file, `/etc/carapace/config.toml`: every key has a built-in
//! default, a missing file means all defaults, and an unknown key is refused by name.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the configuration file is read from unless `CARAPACE_CONFIG` names another.
pub const DEFAULT_PATH: &str = "/etc/carapace/config.toml";
/// The environment variable that overrides [`DEFAULT_PATH`] (tests use it).
pub const PATH_ENV: &str = "CARAPACE_CONFIG";

/// How the pod's rootfs directories reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Share {
    /// The design: `/run/carapace/<sid>/shared` exported over virtio-fs (tag `carapace`) and
    /// mounted by the agent at [`crate::spec::GUEST_SHARE`].
    Virtiofs,
    /// STOP-GAP until carapace-vmm has virtio-fs: the first container's rootfs is copied into
    /// an ext4 image (`mkfs.ext4 -d`) given to the guest as virtio-blk. One container per
    /// VM; writes stay inside the guest. Remove once virtio-fs lands.
    BlockCopy,
}

/// The shim's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The VMM binary. Default: `carapace-vmm` (found on PATH).
    pub vmm: PathBuf,
    /// The guest kernel. Default: `/usr/local/share/carapace/vmlinux`.
    pub kernel: PathBuf,
    /// The guest initramfs (the agent as /init). Default:
    /// `/usr/local/share/carapace/initramfs.img`.
    pub initramfs: PathBuf,
    /// vCPUs of each pod's VM. Default: 1.
    pub vcpus: u8,
    /// Memory of each pod's VM in MiB. Default: 256.
    pub memory_mib: u64,
    /// The most vCPUs a pod may ask for (annotations, CPU limits); 0 means the host's CPU
    /// count. Default: 0.
    pub max_vcpus: u8,
    /// The most memory in MiB a pod may ask for. Default: 16384.
    pub max_memory_mib: u64,
    /// Extra kernel command line, appended to the VMM's default. Default: empty.
    pub kernel_params: String,
    /// The shim's log level (error, warn, info, debug, trace). Default: `info`.
    pub log_level: String,
    /// How long to wait for the agent to answer after the VMM starts, in seconds. Default: 30.
    pub agent_timeout_secs: u64,
    /// How rootfs directories reach the guest. Default: `virtiofs`.
    pub share: Share,
    /// Whether carapace-vmm runs every thread under its seccomp filter. Default: true; turn it
    /// off only to debug a VMM that dies of a forbidden syscall (the VMM warns in its log).
    pub vmm_seccomp: bool,
    /// Whether carapace-vmm confines itself to its jail (new mount, IPC, UTS and network
    /// namespaces, a root holding only the pod's state directory, reduced capabilities,
    /// no_new_privs). Default: true.
    pub vmm_jail: bool,
    /// The largest file a jailed VMM may write, in bytes (RLIMIT_FSIZE: its console log,
    /// files the guest writes on its shares); 0: no limit. Default: 0.
    pub vmm_max_file_size: u64,
    /// The most processes a jailed VMM's user may have (RLIMIT_NPROC); 0: no limit. Root is
    /// exempt from it, so it binds only with `vmm_user`. The kernel counts every process and
    /// thread of that user, so with one `vmm_user` for all pods it bounds their VMMs together:
    /// allow about 5 + vCPUs + 16 (API clients) threads per VMM. Default: 0.
    pub vmm_max_processes: u64,
    /// The most files a jailed VMM may have open (RLIMIT_NOFILE); 0: the VMM's own limit
    /// (131072 at most). Default: 0.
    pub vmm_max_open_files: u64,
    /// The uid:gid a jailed VMM becomes when it serves no virtio-fs share (`share =
    /// "block-copy"`), e.g. "65532:65532"; empty: it stays root with no capabilities. The
    /// pod's `vm/` directory (console log, sockets) becomes that user's. Take a uid no other
    /// process uses: the VMM is not dumpable once it drops root, so a process of the same
    /// user cannot trace it, but it could signal it. Default: empty.
    pub vmm_user: String,
    /// Disk bytes per second of each pod VM's virtio-blk device (0: no limit; annotation
    /// `io.carapace.blk.bytes-per-sec` may only lower it). Default: 0.
    pub blk_bytes_per_sec: u64,
    /// Disk operations per second (`io.carapace.blk.ops-per-sec`). Default: 0.
    pub blk_ops_per_sec: u64,
    /// Bytes per second each pod NIC delivers to the guest
    /// (`io.carapace.net.rx-bytes-per-sec`). Default: 0.
    pub net_rx_bytes_per_sec: u64,
    /// Bytes per second each pod NIC takes from the guest
    /// (`io.carapace.net.tx-bytes-per-sec`). Default: 0.
    pub net_tx_bytes_per_sec: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            vmm: PathBuf::from("carapace-vmm"),
            kernel: PathBuf::from("/usr/local/share/carapace/vmlinux"),
            initramfs: PathBuf::from("/usr/local/share/carapace/initramfs.img"),
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 0,
            max_memory_mib: 16384,
            kernel_params: String::new(),
            log_level: "info".into(),
            agent_timeout_secs: 30,
            share: Share::Virtiofs,
            vmm_seccomp: true,
            vmm_jail: true,
            vmm_max_file_size: 0,
            vmm_max_processes: 0,
            vmm_max_open_files: 0,
            vmm_user: String::new(),
            blk_bytes_per_sec: 0,
            blk_ops_per_sec: 0,
            net_rx_bytes_per_sec: 0,
            net_tx_bytes_per_sec: 0,
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or names an unknown key (toml's message names it).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's description, with the key and line.
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: key `{key}`: {why}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key at fault.
        key: &'static str,
        /// What is wrong.
        why: String,
    },
}

impl Config {
    /// The most vCPUs a pod VM may have: `max_vcpus`, or the host's CPU count when that is 0
    /// (never fewer than `vcpus`).
    pub fn vcpu_limit(&self) -> u8 {
        let max = match self.max_vcpus {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| u8::try_from(n.get()).unwrap_or(u8::MAX)),
            n => n,
        };
        max.max(self.vcpus)
    }

    /// The path to read: `$CARAPACE_CONFIG` or [`DEFAULT_PATH`].
    pub fn path() -> PathBuf {
        std::env::var_os(PATH_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses and checks the text of a configuration file.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let bad = |key, why: String| ConfigError::Value {
            path: path.to_path_buf(),
            key,
            why,
        };
        if c.vcpus == 0 {
            return Err(bad("vcpus", "must be at least 1".into()));
        }
        if c.memory_mib < 64 {
            return Err(bad(
                "memory_mib",
                format!("{} MiB is too small (64 at least)", c.memory_mib),
            ));
        }
        if c.max_vcpus != 0 && c.max_vcpus < c.vcpus {
            return Err(bad(
                "max_vcpus",
                format!("{} is below vcpus ({})", c.max_vcpus, c.vcpus),
            ));
        }
        if c.max_memory_mib < c.memory_mib {
            return Err(bad(
                "max_memory_mib",
                format!(
                    "{} MiB is below memory_mib ({})",
                    c.max_memory_mib, c.memory_mib
                ),
            ));
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&c.log_level.as_str()) {
            return Err(bad(
                "log_level",
                format!("{:?} is not error, warn, info, debug or trace", c.log_level),
            ));
        }
        if !c.vmm_user.is_empty() {
            match c.vmm_ids() {
                Some((0, _)) | Some((_, 0)) => {
                    return Err(bad(
                        "vmm_user",
                        "must be an unprivileged uid:gid, not 0".into(),
                    ))
                }
                Some(_) => {}
                None => {
                    return Err(bad(
                        "vmm_user",
                        format!("{:?} is not uid:gid (numbers)", c.vmm_user),
                    ))
                }
            }
        }
        Ok(c)
    }

    /// `vmm_user` as (uid, gid), when it is set and well formed.
    pub fn vmm_ids(&self) -> Option<(u32, u32)> {
        let (u, g) = self.vmm_user.split_once(':')?;
        Some((u.parse().ok()?, g.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_means_defaults() {
        let c = Config::load(Path::new("/nonexistent/carapace.toml")).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn keys_override_defaults() {
        let c = Config::parse(
            Path::new("c.toml"),
            "vcpus = 2\nmemory_mib = 512\nkernel = \"/k\"\nshare = \"block-copy\"\nvmm_seccomp = false\n",
        )
        .unwrap();
        assert!(!c.vmm_seccomp);
        let other = Config::parse(
            Path::new("c.toml"),
            "vmm_user = \"65534:65533\"\nvmm_jail = false\n",
        )
        .unwrap();
        assert_eq!(other.vmm_ids(), Some((65534, 65533)));
        assert!(!other.vmm_jail && Config::default().vmm_jail);
        for bad in ["0:1", "nobody", "1:"] {
            let e =
                Config::parse(Path::new("c.toml"), &format!("vmm_user = \"{bad}\"\n")).unwrap_err();
            assert!(e.to_string().contains("vmm_user"), "{bad}: {e}");
        }
        assert!(
            Config::default().vmm_seccomp,
            "the filters are on by default"
        );
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_mib, 512);
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.share, Share::BlockCopy);
        assert_eq!(c.initramfs, Config::default().initramfs);
    }

    #[test]
    fn the_example_file_documents_the_defaults() {
        let text = include_str!("../config.toml");
        assert_eq!(
            Config::parse(Path::new("c.toml"), text).unwrap(),
            Config::default()
        );
        // Uncommented, every documented value is the default and every key is known.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix('#')
                    .filter(|r| r.contains(" = "))
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(uncommented.matches(" = ").count() >= 11, "{uncommented}");
        assert_eq!(
            Config::parse(Path::new("c.toml"), &uncommented).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse(Path::new("c.toml"), "vcpu = 2\n").unwrap_err();
        assert!(e.to_string().contains("vcpu"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        for text in [
            "vcpus = 0",
            "memory_mib = 8",
            "vcpus = 4\nmax_vcpus = 2",
            "memory_mib = 512\nmax_memory_mib = 256",
            "log_level = \"loud\"",
        ] {
            assert!(Config::parse(Path::new("c.toml"), text).is_err(), "{text}");
        }
    }
}
