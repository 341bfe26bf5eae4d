//! Scratch paths for the unit tests and the fuzz targets: one per call, unique to the
//! process, removed (a file or a whole tree) when dropped. The one definition behind the
//! devices' temporary disks, shared trees and socket directories.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// `<temp dir>/carapace-<name>-<pid>-<n>`, removed on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh path, with nothing there yet (a leftover of an earlier process that had the
    /// same pid is removed). The caller makes the file or directory.
    pub fn new(name: &str) -> Scratch {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("carapace-{name}-{}-{n}", std::process::id()));
        let scratch = Scratch(path);
        scratch.remove();
        scratch
    }

    /// A fresh directory (and any missing parents), or None where it cannot be made.
    pub fn dir(name: &str) -> Option<Scratch> {
        let scratch = Scratch::new(name);
        std::fs::create_dir_all(&scratch.0).ok()?;
        Some(scratch)
    }

    fn remove(&self) {
        if std::fs::remove_dir_all(&self.0).is_err() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_path_is_unique_and_leaves_nothing() {
        let (file, dir) = (
            Scratch::new("scratch-test"),
            Scratch::dir("scratch-test").unwrap(),
        );
        assert_ne!(&*file, &*dir);
        std::fs::write(&file, b"x").unwrap();
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/c"), b"y").unwrap();
        let (f, d) = (file.to_path_buf(), dir.to_path_buf());
        drop((file, dir));
        assert!(!f.exists() && !d.exists());
    }
}
