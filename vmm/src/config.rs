//! The VM's configuration: the JSON file given with `--config`, the flags for the common
//! case, and the checks that refuse unknown keys and impossible values before anything starts.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::arch::mptable::MAX_VCPUS;

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
    #[serde(default)]
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
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// Block devices (the guest sees them as /dev/vda, /dev/vdb, ... in this order).
    #[serde(default)]
    pub block: Vec<BlockConfig>,
    /// Network devices backed by tap interfaces.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// The vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Whether the guest gets a virtio-rng device.
    #[serde(default)]
    pub rng: bool,
    /// Host directories shared with the guest over virtio-fs.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
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
}

/// A network device backed by a tap interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap interface's name (opened by the VMM).
    #[serde(default)]
    pub tap: Option<String>,
    /// An already-open tap file descriptor inherited from the parent.
    #[serde(default)]
    pub tap_fd: Option<i32>,
    /// The guest's MAC address ("aa:bb:cc:dd:ee:ff").
    #[serde(default)]
    pub mac: Option<String>,
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

/// A configuration the VMM refuses, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key (dotted path) at fault.
    pub key: String,
    /// What is wrong with it.
    pub why: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.why)
    }
}

impl std::error::Error for ConfigError {}

fn bad(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        why: why.into(),
    }
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
            bad(key, msg)
        })
    }

    /// Checks every value; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_file("kernel", &self.kernel)?;
        if let Some(p) = &self.initramfs {
            check_file("initramfs", p)?;
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(bad(
                "vcpus",
                format!("must be between 1 and {MAX_VCPUS}, not {}", self.vcpus),
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(bad(
                "memory_mib",
                format!(
                    "must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, not {}",
                    self.memory_mib
                ),
            ));
        }
        if self.cmdline.len() >= crate::arch::CMDLINE_MAX - 256 {
            return Err(bad(
                "cmdline",
                format!(
                    "{} bytes is too long (the kernel takes {} with the VMM's device entries)",
                    self.cmdline.len(),
                    crate::arch::CMDLINE_MAX
                ),
            ));
        }
        if self.cmdline.contains('\0') || !self.cmdline.is_ascii() {
            return Err(bad("cmdline", "must be printable ASCII"));
        }
        if let Serial::File(p) = &self.serial {
            if p.as_os_str().is_empty() {
                return Err(bad("serial.file", "empty path"));
            }
        }
        if let Some(p) = &self.api_socket {
            check_socket_path("api_socket", p)?;
        }
        let devices = self.block.len()
            + self.net.len()
            + self.fs.len()
            + usize::from(self.rng)
            + usize::from(self.vsock.is_some());
        let slots = (crate::arch::IRQ_MAX - crate::arch::VIRTIO_IRQ_START + 1) as usize;
        if devices > slots {
            return Err(bad(
                "block",
                format!("{devices} virtio devices; at most {slots} fit"),
            ));
        }
        for (i, b) in self.block.iter().enumerate() {
            check_file(&format!("block[{i}].path"), &b.path)?;
        }
        for (i, n) in self.net.iter().enumerate() {
            match (&n.tap, n.tap_fd) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(bad(
                        format!("net[{i}]"),
                        "give exactly one of `tap` (a name) and `tap_fd`",
                    ))
                }
                (Some(name), None) if name.is_empty() || name.len() >= 16 => {
                    return Err(bad(
                        format!("net[{i}].tap"),
                        format!("`{name}` is not a valid interface name (1 to 15 bytes)"),
                    ))
                }
                (None, Some(fd)) if fd < 0 => {
                    return Err(bad(
                        format!("net[{i}].tap_fd"),
                        format!("{fd} is not a file descriptor"),
                    ))
                }
                _ => {}
            }
            if let Some(mac) = &n.mac {
                match parse_mac(mac) {
                    Some(m) if m[0] & 1 == 0 => {}
                    Some(_) => {
                        return Err(bad(
                            format!("net[{i}].mac"),
                            format!("{mac} is a multicast address"),
                        ))
                    }
                    None => {
                        return Err(bad(
                            format!("net[{i}].mac"),
                            format!("`{mac}` is not a MAC address like 02:00:00:00:00:01"),
                        ))
                    }
                }
            }
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 || v.cid >= u64::from(u32::MAX) {
                return Err(bad(
                    "vsock.cid",
                    format!("{} is reserved or too large (use 3 to 4294967294)", v.cid),
                ));
            }
            check_socket_path("vsock.socket", &v.socket)?;
        }
        for (i, f) in self.fs.iter().enumerate() {
            if f.tag.is_empty() || f.tag.len() > crate::devices::fs::TAG_LEN {
                return Err(bad(
                    format!("fs[{i}].tag"),
                    format!("`{}` must be 1 to 36 bytes", f.tag),
                ));
            }
            if f.tag.contains('\0') {
                return Err(bad(format!("fs[{i}].tag"), "must not contain NUL"));
            }
            if self.fs[..i].iter().any(|g| g.tag == f.tag) {
                return Err(bad(
                    format!("fs[{i}].tag"),
                    format!("`{}` is already the tag of another share", f.tag),
                ));
            }
            match std::fs::metadata(&f.path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(bad(
                        format!("fs[{i}].path"),
                        format!("{} is not a directory", f.path.display()),
                    ))
                }
                Err(e) => {
                    return Err(bad(
                        format!("fs[{i}].path"),
                        format!("{}: {e}", f.path.display()),
                    ))
                }
            }
            if f.path.to_str().is_none() {
                return Err(bad(format!("fs[{i}].path"), "must be UTF-8"));
            }
            if f.dax {
                return Err(bad(
                    format!("fs[{i}].dax"),
                    "DAX is not implemented; leave it false",
                ));
            }
        }
        Ok(())
    }
}

fn check_file(key: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(bad(
            key,
            format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(bad(key, format!("{}: {e}", path.display()))),
    }
}

fn check_socket_path(key: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    // sun_path holds 108 bytes; vsock adds "_<port>" to its path.
    if path.as_os_str().is_empty() || path.as_os_str().len() > 96 {
        return Err(bad(
            key,
            format!("`{}` must be a path of 1 to 96 bytes", path.display()),
        ));
    }
    if path.exists() {
        return Err(bad(
            key,
            format!(
                "{} already exists (another VMM, or a stale socket to remove)",
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> PathBuf {
        // Any regular file will do for validation.
        std::env::current_exe().unwrap()
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
