//! The configuration's serde types: every key, its default, and the refusal of unknown keys.
//!
//! Writing leaves out what is absent (`None`) or empty (no devices of a kind), so a written
//! configuration holds only what was set and reads back to the same value.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// Smallest guest the VMM boots (the kernel and an initramfs must fit).
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest memory accepted.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// A whole VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The guest kernel: an uncompressed `vmlinux` with a PVH entry.
    pub kernel: PathBuf,
    /// The initramfs (cpio, optionally compressed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// The kernel command line; the VMM appends its virtio-mmio devices.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Where the guest's serial console goes.
    #[serde(default)]
    pub serial: Serial,
    /// The control socket's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<PathBuf>,
    /// Block devices (the guest sees them as /dev/vda, /dev/vdb, ... in this order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<BlockConfig>,
    /// Network devices backed by tap interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    /// The vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// Whether the guest gets a virtio-rng device.
    #[serde(default)]
    pub rng: bool,
    /// Host directories shared with the guest over virtio-fs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsConfig>,
    /// Whether every VMM thread runs under its seccomp filter (on unless turned off, for
    /// debugging only: the VMM warns when it runs without).
    #[serde(default = "default_seccomp", skip_serializing_if = "is_true")]
    pub seccomp: bool,
    /// The jail the VMM confines itself to once its devices are open; none: no jail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailConfig>,
}

/// How the VMM confines itself (in the spirit of Firecracker's jailer, done in-process): new
/// mount, IPC, UTS and network namespaces, a root holding only the directories it still uses
/// by path, reduced capabilities, no_new_privs and resource limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// An empty directory the VMM mounts its new root (a private tmpfs) on.
    pub root: PathBuf,
    /// The user the VMM becomes once set up; only without virtio-fs shares, whose
    /// passthrough acts for the guest's users as root with a few capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The group the VMM becomes with `uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// RLIMIT_FSIZE: the largest file the VMM may write, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_size: Option<u64>,
    /// RLIMIT_NPROC: the most processes (threads count) the VMM's user may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u64>,
    /// RLIMIT_NOFILE: the most open files; default: the VMM's own raised limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open_files: Option<u64>,
}

fn default_seccomp() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}
fn default_vcpus() -> u8 {
    1
}
fn default_memory() -> u64 {
    128
}

/// Where the serial console's output goes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Serial {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Discarded.
    Off,
    /// Appended to a file.
    File(PathBuf),
}

/// A block device backed by a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// The backing file.
    pub path: PathBuf,
    /// Refuse guest writes.
    #[serde(default)]
    pub read_only: bool,
    /// Limits on the guest's requests (bytes, operations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
}

/// A device queue's rate limits, as Firecracker's: a token bucket for bytes, one for
/// operations (requests, frames), either or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<BucketConfig>,
    /// Operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<BucketConfig>,
}

/// A token bucket: `size` tokens, refilled continuously at `size` per `refill_time_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full (the burst).
    pub size: u64,
    /// Milliseconds to refill it from empty.
    pub refill_time_ms: u64,
}

impl BucketConfig {
    /// The bucket for `per_second` tokens a second: a tenth of a second's worth (at least
    /// one token), refilled in the time that gives that rate (rounded to the millisecond), so
    /// the burst stays a tenth of a second and the rate is within a millisecond's rounding.
    pub fn per_second(per_second: u64) -> BucketConfig {
        let n = per_second.max(1);
        let size = (n / 10).max(1);
        BucketConfig {
            size,
            refill_time_ms: ((size as u128 * 1000 + u128::from(n) / 2) / u128::from(n)).max(1)
                as u64,
        }
    }
}

/// A network device backed by a tap interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap interface's name (opened by the VMM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// An already-open tap file descriptor inherited from the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_fd: Option<i32>,
    /// The guest's MAC address ("aa:bb:cc:dd:ee:ff").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Limits on what the guest receives (bytes, frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limit: Option<RateLimitConfig>,
    /// Limits on what the guest sends (bytes, frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limit: Option<RateLimitConfig>,
}

/// The vsock device and its host-side Unix socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub cid: u64,
    /// Host connections arrive here; guest connections to port P go to `<socket>_P`.
    pub socket: PathBuf,
}

/// How the guest may cache a virtio-fs share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsCache {
    /// No data cache; host changes are seen at once (shared writable mmap is refused).
    #[default]
    Never,
    /// Close-to-open consistency, metadata cached for a second.
    Auto,
    /// The guest caches freely: only for a share the guest has to itself.
    Always,
}

/// A host directory shared with the guest over virtio-fs (`mount -t virtiofs TAG DIR`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The mount tag (1 to 36 bytes).
    pub tag: String,
    /// The shared directory.
    pub path: PathBuf,
    /// The guest's cache policy.
    #[serde(default)]
    pub cache: FsCache,
    /// DAX window (not implemented: `true` is refused).
    #[serde(default)]
    pub dax: bool,
    /// Refuse every change from the guest (EROFS).
    #[serde(default)]
    pub read_only: bool,
    /// Let the guest create block and character device nodes in the share (`mknod` of
    /// S_IFBLK/S_IFCHR). Off by default: they are refused with EPERM, except overlayfs's
    /// whiteout (a character device 0:0); FIFOs, sockets and regular files are always allowed.
    /// The host still mounts the share `nodev`.
    #[serde(default)]
    pub allow_devices: bool,
}

/// Parses a MAC address written as six colon-separated hex bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: PathBuf) -> Self {
        VmConfig {
            kernel,
            initramfs: None,
            cmdline: default_cmdline(),
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            serial: Serial::default(),
            api_socket: None,
            block: Vec::new(),
            net: Vec::new(),
            vsock: None,
            rng: false,
            fs: Vec::new(),
            seccomp: default_seccomp(),
            jail: None,
        }
    }

    /// Parses a JSON configuration; unknown keys are refused with their name.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(|e| {
            let msg = e.to_string();
            // serde names unknown and missing fields in its message: keep it whole.
            let key = msg
                .split('`')
                .nth(1)
                .filter(|_| msg.contains("field"))
                .unwrap_or("(file)")
                .to_string();
            ConfigError::new(key, msg)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with every key set to something other than its default.
    fn full() -> VmConfig {
        VmConfig {
            kernel: "/k".into(),
            initramfs: Some("/i".into()),
            cmdline: "console=ttyS0 quiet".into(),
            vcpus: 4,
            memory_mib: 512,
            serial: Serial::File("/s".into()),
            api_socket: Some("/a.sock".into()),
            block: vec![
                BlockConfig {
                    path: "/d0".into(),
                    read_only: true,
                    rate_limit: None,
                },
                BlockConfig {
                    path: "/d1".into(),
                    read_only: false,
                    rate_limit: None,
                },
            ],
            net: vec![
                NetConfig {
                    tap: Some("tap0".into()),
                    tap_fd: None,
                    mac: Some("02:00:00:00:00:01".into()),
                    rx_rate_limit: None,
                    tx_rate_limit: None,
                },
                NetConfig {
                    tap: None,
                    tap_fd: Some(7),
                    mac: None,
                    rx_rate_limit: None,
                    tx_rate_limit: None,
                },
            ],
            vsock: Some(VsockConfig {
                cid: 3,
                socket: "/v.sock".into(),
            }),
            rng: true,
            fs: vec![FsConfig {
                tag: "carapace".into(),
                path: "/run/carapace/p/shared".into(),
                cache: FsCache::Auto,
                dax: true,
                read_only: true,
                allow_devices: true,
            }],
            // Written only when off (the default is on).
            seccomp: false,
            jail: Some(JailConfig {
                root: "/run/carapace/p/jail".into(),
                uid: Some(65534),
                gid: Some(65534),
                max_file_size: Some(1 << 30),
                max_processes: Some(64),
                max_open_files: Some(4096),
            }),
        }
    }

    #[test]
    fn a_full_config_reads_back_as_written() {
        let c = full();
        let text = serde_json::to_string_pretty(&c).unwrap();
        assert_eq!(VmConfig::from_json(&text).unwrap(), c);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "api_socket",
                "block",
                "cmdline",
                "fs",
                "initramfs",
                "jail",
                "kernel",
                "memory_mib",
                "net",
                "rng",
                "seccomp",
                "serial",
                "vcpus",
                "vsock"
            ],
            "every key is written"
        );
        assert_eq!(v["serial"]["file"], "/s");
        assert_eq!(v["fs"][0]["cache"], "auto");
        assert_eq!(v["net"][1], serde_json::json!({"tap_fd": 7}));
        for serial in [Serial::Stdout, Serial::Off] {
            let c = VmConfig { serial, ..full() };
            let text = serde_json::to_string(&c).unwrap();
            assert_eq!(VmConfig::from_json(&text).unwrap(), c);
        }
    }

    #[test]
    fn what_is_absent_or_empty_is_not_written() {
        let c = VmConfig::new("/k".into());
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kernel": "/k", "cmdline": DEFAULT_CMDLINE, "vcpus": 1,
                "memory_mib": 128, "serial": "stdout", "rng": false})
        );
        assert_eq!(VmConfig::from_json(&v.to_string()).unwrap(), c);
    }

    #[test]
    fn a_rate_per_second_is_a_tenth_of_a_second_bucket_near_that_rate() {
        for (n, size, ms) in [
            (1_048_576, 104_857, 100),
            (50, 5, 100),
            (19, 1, 53),
            (5, 1, 200),
            (1, 1, 1000),
        ] {
            assert_eq!(
                BucketConfig::per_second(n),
                BucketConfig {
                    size,
                    refill_time_ms: ms
                },
                "{n}"
            );
        }
    }

    #[test]
    fn defaults_are_those_documented() {
        let c = VmConfig::from_json(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(c, VmConfig::new("/k".into()));
        assert_eq!(c.initramfs, None);
        assert_eq!(c.cmdline, "console=ttyS0 reboot=k panic=1");
        assert_eq!((c.vcpus, c.memory_mib), (1, 128));
        assert_eq!(c.serial, Serial::Stdout);
        assert_eq!(c.api_socket, None);
        assert!(c.block.is_empty() && c.net.is_empty() && c.fs.is_empty());
        assert_eq!(c.vsock, None);
        assert!(!c.rng);
        assert!(c.seccomp, "the filters are on unless turned off");
        let c = VmConfig::from_json(
            r#"{"kernel": "/k", "block": [{"path": "/d"}], "net": [{}],
                "fs": [{"tag": "t", "path": "/p"}]}"#,
        )
        .unwrap();
        assert!(!c.block[0].read_only);
        assert_eq!(
            c.net[0],
            NetConfig {
                tap: None,
                tap_fd: None,
                mac: None,
                rx_rate_limit: None,
                tx_rate_limit: None,
            }
        );
        assert_eq!(c.fs[0].cache, FsCache::Never);
        assert!(!c.fs[0].dax && !c.fs[0].read_only && !c.fs[0].allow_devices);
    }

    #[test]
    fn unknown_keys_are_refused_at_every_level() {
        for (text, key) in [
            (r#"{"kernel": "/k", "memory": 128}"#, "memory"),
            (r#"{"kernel": "/k", "net": [{"tap": "t", "fd": 3}]}"#, "fd"),
            (
                r#"{"kernel": "/k", "vsock": {"cid": 3, "socket": "/v", "port": 1}}"#,
                "port",
            ),
            (
                r#"{"kernel": "/k", "fs": [{"tag": "a", "path": "/", "devices": true}]}"#,
                "devices",
            ),
        ] {
            let err = VmConfig::from_json(text).unwrap_err();
            assert_eq!(err.key, key, "{text}");
            assert!(
                err.to_string().starts_with(&format!(
                    "config key `{key}`: unknown field `{key}`, expected"
                )),
                "{err}"
            );
        }
        let err = VmConfig::from_json("{").unwrap_err();
        assert_eq!(err.key, "(file)");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = VmConfig::from_json(r#"{"kernel": "/k", "vcpu": 2}"#).unwrap_err();
        assert_eq!(err.key, "vcpu");
        let err = VmConfig::from_json(r#"{"kernel": "/k", "block": [{"path": "/x", "ro": true}]}"#)
            .unwrap_err();
        assert_eq!(err.key, "ro");
        let err = VmConfig::from_json(r#"{"vcpus": 1}"#).unwrap_err();
        assert_eq!(err.key, "kernel");
    }

    #[test]
    fn fs_shares_parse_with_defaults() {
        let c = VmConfig::from_json(
            r#"{"kernel": "/k", "fs": [{"tag": "carapace", "path": "/run/carapace/x/shared"},
                {"tag": "b", "path": "/b", "cache": "always", "dax": false, "read_only": true,
                 "allow_devices": true}]}"#,
        )
        .unwrap();
        assert_eq!(c.fs[0].cache, FsCache::Never);
        assert!(!c.fs[0].dax && !c.fs[0].read_only && !c.fs[0].allow_devices);
        assert_eq!(c.fs[1].cache, FsCache::Always);
        assert!(c.fs[1].read_only && c.fs[1].allow_devices);
        let err = VmConfig::from_json(
            r#"{"kernel": "/k", "fs": [{"tag": "a", "path": "/", "ro": true}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.key, "ro");
        assert!(VmConfig::from_json(
            r#"{"kernel": "/k", "fs": [{"tag": "a", "path": "/", "cache": "sometimes"}]}"#
        )
        .is_err());
    }

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:0g"), None);
    }
}
