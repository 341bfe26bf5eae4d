//! Host-side mounts of a pod: containerd's rootfs mounts in the pod's private tree (nosuid,
//! nodev, on a directory made and opened without following links, see [`crate::hostfs`]),
//! the block-copy stop-gap's ext4 image, and unmounting everything under a directory.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;

use crate::error::{Result, ShimError};
use crate::hostfs::{self, BindFlags, Dir};

/// Mounts containerd's rootfs `mounts` (in order) on `rel` beneath the pod's private tree
/// `mnt`, each with nosuid and nodev added; with none, bind-mounts `root_dir`, the directory
/// the spec's `root.path` names ([`crate::spec::host_root_dir`]). Returns the rootfs's host
/// path.
pub async fn mount_rootfs(
    mounts: &[Mount],
    root_dir: &Path,
    mnt: &Dir,
    rel: &Path,
) -> Result<PathBuf> {
    let path = mnt.path().join(rel);
    if mounts.is_empty() {
        hostfs::bind(mnt, root_dir, rel, BindFlags::default())?;
        return Ok(path);
    }
    let target = mnt.mkdir_all(rel, 0o755)?;
    for m in mounts {
        let mut m = m.clone();
        for flag in ["nosuid", "nodev"] {
            if !m.options.iter().any(|o| o == flag) {
                m.options.push(flag.to_string());
            }
        }
        // containerd's helper takes a path: the descriptor's magic link names exactly the
        // directory opened above, whatever is done to its name meanwhile.
        containerd_shim::util::mount_rootfs(&m, target.proc_path())
            .await
            .map_err(|e| {
                ShimError::Internal(format!(
                    "mounting the rootfs ({} {}) on {}: {e}",
                    m.type_,
                    m.source,
                    path.display()
                ))
            })?;
    }
    Ok(path)
}

/// Mount points at or under `dir` in this mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

/// Unmounts everything at or under `dir` (lazily, so a busy mount cannot block teardown;
/// never following a symlink in a mount point's last component).
pub fn unmount_under(dir: &Path) -> Result<()> {
    // A mount point can be stacked several times: repeat until nothing is left.
    for _ in 0..8 {
        let found = mounts_under(dir);
        if found.is_empty() {
            return Ok(());
        }
        for m in found {
            if let Err(e) = hostfs::unmount(&m) {
                if e != rustix::io::Errno::INVAL && e != rustix::io::Errno::NOENT {
                    return Err(ShimError::io(
                        format!("unmounting {}", m.display()),
                        std::io::Error::from(e),
                    ));
                }
            }
        }
    }
    let left = mounts_under(dir);
    if left.is_empty() {
        Ok(())
    } else {
        Err(ShimError::Internal(format!(
            "mounts left under {}: {left:?}",
            dir.display()
        )))
    }
}

/// Bytes used by the files under `dir` (not following symlinks or other mounts).
fn tree_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            total += md.blocks() * 512 + 4096;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// STOP-GAP until carapace-vmm has virtio-fs (`share = "block-copy"`): copies `dir` into a
/// fresh ext4 image at `image` with `mkfs.ext4 -d`, leaving room to write.
pub async fn ext4_image(dir: &Path, image: &Path) -> Result<()> {
    let mib = tree_size(dir) / (1 << 20) * 2 + 64;
    let out = tokio::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(image)
        .arg(format!("{mib}M"))
        .output()
        .await
        .map_err(|e| ShimError::io("running mkfs.ext4", e))?;
    if !out.status.success() {
        return Err(ShimError::Internal(format!(
            "mkfs.ext4 -d {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn nothing_is_mounted_under_a_fresh_dir() {
        let d = std::env::temp_dir().join(format!("carapace-shim-mounts-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert!(mounts_under(&d).is_empty());
        unmount_under(&d).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
