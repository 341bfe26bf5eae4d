//! OOM kills seen as they happen: an inotify watch on each container's cgroup
//! `memory.events` (cgroup v2 notifies a modification of the file on every event it counts),
//! each watch mapped to its container. The agent reads the `oom_kill` count when a watch
//! fires; a slow poll and the reads at exit and removal (`container.rs`) remain for what a
//! watch cannot cover (cgroup v1, a file missing when the container was created).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::sync::Mutex;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// tokio's AsyncFd wants `AsRawFd`, which nix's Inotify has only as `AsFd`.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The watches on the containers' `memory.events` files.
pub struct OomWatch {
    fd: AsyncFd<Fd>,
    ids: Mutex<HashMap<WatchDescriptor, String>>,
}

impl OomWatch {
    /// A watch set with nothing watched (needs a tokio runtime).
    pub fn new() -> std::io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: `Fd` owns the Inotify, whose descriptor stays open and the same until the
        // AsyncFd (which owns the `Fd`) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(inotify), Interest::READABLE) }?;
        Ok(Self {
            fd,
            ids: Mutex::new(HashMap::new()),
        })
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, HashMap<WatchDescriptor, String>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches `events` (a cgroup's `memory.events`) for container `id`.
    pub fn watch(&self, id: &str, events: &Path) -> std::io::Result<WatchDescriptor> {
        let wd = self
            .fd
            .get_ref()
            .0
            .add_watch(events, AddWatchFlags::IN_MODIFY)?;
        self.ids().insert(wd, id.to_string());
        Ok(wd)
    }

    /// Stops watching `wd` (the cgroup may already be gone, which ended the watch).
    pub fn unwatch(&self, wd: WatchDescriptor) {
        if self.ids().remove(&wd).is_some() {
            let _ = self.fd.get_ref().0.rm_watch(wd);
        }
    }

    /// Waits for watched files to change; returns the ids of their containers.
    pub async fn changed(&self) -> std::io::Result<Vec<String>> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(events)) => {
                    let mut ids = self.ids();
                    let mut changed: Vec<String> = Vec::new();
                    for ev in events {
                        if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                            // The file went away with its cgroup.
                            ids.remove(&ev.wd);
                        } else if let Some(id) = ids.get(&ev.wd) {
                            if !changed.contains(id) {
                                changed.push(id.clone());
                            }
                        }
                    }
                    if !changed.is_empty() {
                        return Ok(changed);
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_change_to_a_watched_file_names_its_container() {
        let dir = std::env::temp_dir().join(format!("carapace-oom-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.events"), dir.join("b.events"));
        std::fs::write(&a, "oom_kill 0\n").unwrap();
        std::fs::write(&b, "oom_kill 0\n").unwrap();
        let w = OomWatch::new().unwrap();
        w.watch("ca", &a).unwrap();
        let wb = w.watch("cb", &b).unwrap();
        std::fs::write(&b, "oom_kill 1\n").unwrap();
        let ids = tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("a change is seen")
            .unwrap();
        assert_eq!(ids, ["cb"]);
        // An unwatched file's changes are not reported; a watched one's still are.
        w.unwatch(wb);
        std::fs::write(&b, "oom_kill 2\n").unwrap();
        std::fs::write(&a, "oom_kill 1\n").unwrap();
        let ids = tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("a change is seen")
            .unwrap();
        assert_eq!(ids, ["ca"]);
        // A missing file cannot be watched, and says so.
        assert!(w.watch("cc", &dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
