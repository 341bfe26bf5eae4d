//! The checks of a configuration's values, in one pass that returns the first problem: the
//! rules of the schema itself here, the VMM's limits as [`Limits`] and the host's state (files
//! present, socket paths free) through the [`HostChecks`] the VMM supplies, each asked at its
//! place in the pass.

use std::path::Path;

use crate::{parse_mac, ConfigError, Serial, VmConfig, MAX_MEMORY_MIB, MIN_MEMORY_MIB};

/// The longest socket path accepted: sun_path holds 108 bytes and vsock adds `_<port>`.
pub const SOCKET_PATH_MAX: usize = 96;

/// What the VMM reading the configuration can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most vCPUs it boots.
    pub max_vcpus: u8,
    /// The size of the kernel's command line, in bytes.
    pub cmdline_max: usize,
    /// The part of the command line the VMM keeps for its own device entries.
    pub cmdline_reserved: usize,
    /// How many virtio devices (of every kind together) it can give interrupts.
    pub virtio_slots: usize,
    /// The longest virtio-fs tag, in bytes.
    pub fs_tag_len: usize,
}

/// The host's side of the checks, which the VMM answers from the file system; each returns
/// the error for `key` when the host is not as the configuration needs.
pub trait HostChecks {
    /// `path` is a regular file (a kernel, an initramfs, a disk image).
    fn regular_file(&self, key: &str, path: &Path) -> Result<(), ConfigError>;
    /// `path` is a directory (a virtio-fs share).
    fn directory(&self, key: &str, path: &Path) -> Result<(), ConfigError>;
    /// Nothing exists at `path` yet (a socket the VMM will create there).
    fn free_path(&self, key: &str, path: &Path) -> Result<(), ConfigError>;
}

impl VmConfig {
    /// Checks every value against the schema's rules, `limits` and `host`; the first problem
    /// found is returned.
    pub fn check(&self, limits: &Limits, host: &dyn HostChecks) -> Result<(), ConfigError> {
        host.regular_file("kernel", &self.kernel)?;
        if let Some(p) = &self.initramfs {
            host.regular_file("initramfs", p)?;
        }
        if self.vcpus == 0 || self.vcpus > limits.max_vcpus {
            return Err(bad(
                "vcpus",
                format!(
                    "must be between 1 and {}, not {}",
                    limits.max_vcpus, self.vcpus
                ),
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
        if self.cmdline.len() >= limits.cmdline_max - limits.cmdline_reserved {
            return Err(bad(
                "cmdline",
                format!(
                    "{} bytes is too long (the kernel takes {} with the VMM's device entries)",
                    self.cmdline.len(),
                    limits.cmdline_max
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
            check_socket_path(host, "api_socket", p)?;
        }
        let devices = self.block.len()
            + self.net.len()
            + self.fs.len()
            + usize::from(self.rng)
            + usize::from(self.vsock.is_some());
        if devices > limits.virtio_slots {
            return Err(bad(
                "block",
                format!(
                    "{devices} virtio devices; at most {} fit",
                    limits.virtio_slots
                ),
            ));
        }
        for (i, b) in self.block.iter().enumerate() {
            host.regular_file(&format!("block[{i}].path"), &b.path)?;
            check_rate_limit(&format!("block[{i}].rate_limit"), b.rate_limit.as_ref())?;
        }
        for (i, n) in self.net.iter().enumerate() {
            check_rate_limit(&format!("net[{i}].rx_rate_limit"), n.rx_rate_limit.as_ref())?;
            check_rate_limit(&format!("net[{i}].tx_rate_limit"), n.tx_rate_limit.as_ref())?;
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
            check_socket_path(host, "vsock.socket", &v.socket)?;
        }
        for (i, f) in self.fs.iter().enumerate() {
            if f.tag.is_empty() || f.tag.len() > limits.fs_tag_len {
                return Err(bad(
                    format!("fs[{i}].tag"),
                    format!("`{}` must be 1 to {} bytes", f.tag, limits.fs_tag_len),
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
            host.directory(&format!("fs[{i}].path"), &f.path)?;
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
        if let Some(j) = &self.jail {
            if !j.root.is_absolute() || j.root.parent().is_none() {
                return Err(bad(
                    "jail.root",
                    format!("`{}` must be an absolute path below /", j.root.display()),
                ));
            }
            // Not asked of the host here: the VMM validates again inside its jail, where the
            // root's path need not be visible; entering the jail checks it.
            // The jail's network namespace is new and empty: a tap opened there by name would
            // not be the host's.
            if let Some(i) = self.net.iter().position(|n| n.tap.is_some()) {
                return Err(bad(
                    format!("net[{i}].tap"),
                    "a jailed VMM takes its taps as descriptors (`tap_fd`)",
                ));
            }
            match (j.uid, j.gid) {
                (Some(_), None) | (None, Some(_)) => {
                    return Err(bad("jail.uid", "give both `uid` and `gid`, or neither"))
                }
                (Some(_), Some(_)) if !self.fs.is_empty() => {
                    return Err(bad(
                        "jail.uid",
                        "the virtio-fs passthrough acts for the guest's users as root: \
                         no uid with an fs share",
                    ))
                }
                (Some(0), _) | (_, Some(0)) => {
                    return Err(bad("jail.uid", "an unprivileged uid and gid, not 0"))
                }
                _ => {}
            }
            if j.max_processes == Some(0) || j.max_open_files == Some(0) {
                return Err(bad("jail.max_processes", "limits must be at least 1"));
            }
        }
        Ok(())
    }
}

/// A bucket holds at least one token and refills in at least a millisecond.
fn check_rate_limit(key: &str, limit: Option<&crate::RateLimitConfig>) -> Result<(), ConfigError> {
    let Some(l) = limit else { return Ok(()) };
    for (name, b) in [("bandwidth", &l.bandwidth), ("ops", &l.ops)] {
        if let Some(b) = b {
            if b.size == 0 || b.refill_time_ms == 0 {
                return Err(bad(
                    format!("{key}.{name}"),
                    "size and refill_time_ms must be at least 1",
                ));
            }
            // Bounds that keep the bucket's arithmetic (tokens times nanoseconds) exact.
            if b.size > 1 << 40 || b.refill_time_ms > 3_600_000 {
                return Err(bad(
                    format!("{key}.{name}"),
                    "at most 2^40 tokens and an hour of refill",
                ));
            }
        }
    }
    Ok(())
}

fn bad(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::new(key, why)
}

/// A socket path fits sun_path with room for vsock's suffix, then is free on the host.
fn check_socket_path(host: &dyn HostChecks, key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() || path.as_os_str().len() > SOCKET_PATH_MAX {
        return Err(bad(
            key,
            format!(
                "`{}` must be a path of 1 to {SOCKET_PATH_MAX} bytes",
                path.display()
            ),
        ));
    }
    host.free_path(key, path)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::{BlockConfig, FsCache, FsConfig, NetConfig, VsockConfig};

    const LIMITS: Limits = Limits {
        max_vcpus: 32,
        cmdline_max: 2048,
        cmdline_reserved: 256,
        virtio_slots: 19,
        fs_tag_len: 36,
    };

    /// A host where everything is as the configuration needs, except the keys in `refuse`;
    /// it records the keys it was asked about, in order.
    #[derive(Default)]
    struct FakeHost {
        refuse: Vec<&'static str>,
        asked: RefCell<Vec<String>>,
    }

    impl FakeHost {
        fn answer(&self, kind: &str, key: &str) -> Result<(), ConfigError> {
            self.asked.borrow_mut().push(format!("{kind} {key}"));
            if self.refuse.contains(&key) {
                return Err(ConfigError::new(key, "refused by the host"));
            }
            Ok(())
        }
    }

    impl HostChecks for FakeHost {
        fn regular_file(&self, key: &str, _: &Path) -> Result<(), ConfigError> {
            self.answer("file", key)
        }
        fn directory(&self, key: &str, _: &Path) -> Result<(), ConfigError> {
            self.answer("dir", key)
        }
        fn free_path(&self, key: &str, _: &Path) -> Result<(), ConfigError> {
            self.answer("free", key)
        }
    }

    fn share(tag: &str) -> FsConfig {
        FsConfig {
            tag: tag.into(),
            path: "/p".into(),
            cache: FsCache::Never,
            dax: false,
            read_only: false,
            allow_devices: false,
        }
    }

    fn devices() -> VmConfig {
        let mut c = VmConfig::new("/k".into());
        c.initramfs = Some("/i".into());
        c.api_socket = Some("/a.sock".into());
        c.block.push(BlockConfig {
            path: "/d".into(),
            read_only: false,
            rate_limit: None,
        });
        c.net.push(NetConfig {
            tap: Some("tap0".into()),
            tap_fd: None,
            mac: Some("02:00:00:00:00:01".into()),
            rx_rate_limit: None,
            tx_rate_limit: None,
        });
        c.vsock = Some(VsockConfig {
            cid: 3,
            socket: "/v.sock".into(),
        });
        c.fs.push(share("t"));
        c
    }

    #[test]
    fn the_host_is_asked_about_every_path_in_order() {
        let host = FakeHost::default();
        devices().check(&LIMITS, &host).unwrap();
        assert_eq!(
            *host.asked.borrow(),
            [
                "file kernel",
                "file initramfs",
                "free api_socket",
                "file block[0].path",
                "free vsock.socket",
                "dir fs[0].path"
            ]
        );
        let host = FakeHost {
            refuse: vec!["block[0].path"],
            ..FakeHost::default()
        };
        assert_eq!(
            devices().check(&LIMITS, &host).unwrap_err().key,
            "block[0].path"
        );
        assert_eq!(
            host.asked.borrow().len(),
            4,
            "the pass stops at the first problem"
        );
    }

    #[test]
    fn an_empty_bucket_is_refused() {
        let mut c = devices();
        c.block[0].rate_limit = Some(crate::RateLimitConfig {
            bandwidth: Some(crate::BucketConfig {
                size: 0,
                refill_time_ms: 100,
            }),
            ops: None,
        });
        let e = c.check(&LIMITS, &FakeHost::default()).unwrap_err();
        assert_eq!(e.key, "block[0].rate_limit.bandwidth");
        c.block[0].rate_limit = None;
        c.net[0].tx_rate_limit = Some(crate::RateLimitConfig {
            bandwidth: None,
            ops: Some(crate::BucketConfig {
                size: 1,
                refill_time_ms: 0,
            }),
        });
        let e = c.check(&LIMITS, &FakeHost::default()).unwrap_err();
        assert_eq!(e.key, "net[0].tx_rate_limit.ops");
    }

    #[test]
    fn a_jail_is_checked_before_the_vmm_starts() {
        use crate::JailConfig;
        let jail = |uid, gid| JailConfig {
            root: "/run/carapace/p/jail".into(),
            uid,
            gid,
            max_file_size: None,
            max_processes: Some(64),
            max_open_files: None,
        };
        let host = FakeHost::default();
        let mut c = devices();
        c.jail = Some(jail(None, None));
        assert_eq!(c.check(&LIMITS, &host).unwrap_err().key, "net[0].tap");
        c.net[0].tap = None;
        c.net[0].tap_fd = Some(5);
        let host = FakeHost::default();
        c.check(&LIMITS, &host).unwrap();
        let refused = |c: &VmConfig| c.check(&LIMITS, &FakeHost::default()).unwrap_err();
        // The fs share's passthrough needs root: no uid with it.
        c.jail = Some(jail(Some(1000), Some(1000)));
        let e = refused(&c);
        assert_eq!(e.key, "jail.uid");
        assert!(e.why.contains("fs share"), "{e:?}");
        c.fs.clear();
        c.check(&LIMITS, &FakeHost::default()).unwrap();
        for (uid, gid) in [(Some(0), Some(1)), (Some(1), None)] {
            c.jail = Some(jail(uid, gid));
            assert_eq!(refused(&c).key, "jail.uid", "{uid:?} {gid:?}");
        }
        c.jail = Some(JailConfig {
            root: "jail".into(),
            ..jail(None, None)
        });
        assert_eq!(refused(&c).key, "jail.root");
        c.jail = Some(JailConfig {
            max_processes: Some(0),
            ..jail(None, None)
        });
        assert_eq!(refused(&c).key, "jail.max_processes");
    }

    #[test]
    fn the_first_problem_is_the_one_returned() {
        // A missing kernel is reported before values checked later in the pass.
        let host = FakeHost {
            refuse: vec!["kernel"],
            ..FakeHost::default()
        };
        let mut c = devices();
        c.vcpus = 0;
        assert_eq!(c.check(&LIMITS, &host).unwrap_err().key, "kernel");
        assert_eq!(
            c.check(&LIMITS, &FakeHost::default()).unwrap_err().key,
            "vcpus"
        );
    }

    #[test]
    fn values_are_held_to_the_limits_given() {
        let host = FakeHost::default();
        let check = |f: &dyn Fn(&mut VmConfig), key: &str, why: &str| {
            let mut c = devices();
            f(&mut c);
            let err = c.check(&LIMITS, &host).unwrap_err();
            assert_eq!((err.key.as_str(), err.why.as_str()), (key, why));
        };
        check(
            &|c| c.vcpus = 33,
            "vcpus",
            "must be between 1 and 32, not 33",
        );
        check(
            &|c| c.memory_mib = MAX_MEMORY_MIB + 1,
            "memory_mib",
            "must be between 32 and 1048576, not 1048577",
        );
        check(
            &|c| c.cmdline = "x".repeat(1792),
            "cmdline",
            "1792 bytes is too long (the kernel takes 2048 with the VMM's device entries)",
        );
        check(
            &|c| c.cmdline = "é".into(),
            "cmdline",
            "must be printable ASCII",
        );
        check(
            &|c| c.serial = Serial::File("".into()),
            "serial.file",
            "empty path",
        );
        check(
            &|c| c.api_socket = Some(format!("/{}", "s".repeat(96)).into()),
            "api_socket",
            &format!("`/{}` must be a path of 1 to 96 bytes", "s".repeat(96)),
        );
        check(
            &|c| c.block.extend(vec![c.block[0].clone(); 16]),
            "block",
            "20 virtio devices; at most 19 fit",
        );
        check(
            &|c| c.net[0].tap = Some("a-name-too-long-".into()),
            "net[0].tap",
            "`a-name-too-long-` is not a valid interface name (1 to 15 bytes)",
        );
        check(
            &|c| c.net[0].tap_fd = Some(3),
            "net[0]",
            "give exactly one of `tap` (a name) and `tap_fd`",
        );
        check(
            &|c| {
                c.net[0].tap = None;
                c.net[0].tap_fd = Some(-1);
            },
            "net[0].tap_fd",
            "-1 is not a file descriptor",
        );
        check(
            &|c| c.net[0].mac = Some("03:00:00:00:00:01".into()),
            "net[0].mac",
            "03:00:00:00:00:01 is a multicast address",
        );
        check(
            &|c| c.vsock.as_mut().unwrap().cid = u64::from(u32::MAX),
            "vsock.cid",
            "4294967295 is reserved or too large (use 3 to 4294967294)",
        );
        check(
            &|c| c.fs[0].tag = "t".repeat(37),
            "fs[0].tag",
            &format!("`{}` must be 1 to 36 bytes", "t".repeat(37)),
        );
        check(
            &|c| c.fs[0].tag = "a\0b".into(),
            "fs[0].tag",
            "must not contain NUL",
        );
        check(
            &|c| c.fs.push(share("t")),
            "fs[1].tag",
            "`t` is already the tag of another share",
        );
        check(
            &|c| c.fs[0].dax = true,
            "fs[0].dax",
            "DAX is not implemented; leave it false",
        );
        let mut c = devices();
        c.fs[0].tag = "t".repeat(36);
        c.check(&LIMITS, &host).unwrap();
    }

    #[test]
    fn a_share_path_must_be_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let mut c = devices();
        c.fs[0].path = std::ffi::OsStr::from_bytes(b"/p\xff").into();
        let err = c.check(&LIMITS, &FakeHost::default()).unwrap_err();
        assert_eq!(
            (err.key.as_str(), err.why.as_str()),
            ("fs[0].path", "must be UTF-8")
        );
    }
}
