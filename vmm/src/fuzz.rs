//! The fuzz targets of every guest-facing parser of the VMM, one function per target taking
//! the fuzzer's input bytes: each virtio device's request handling driven through its queues
//! (the bodies live beside each device, in its `fuzz.rs`) and the MMIO transport's registers.
//! `vmm/fuzz/` runs them under libFuzzer (`make fuzz`); the corpus it keeps in
//! `vmm/fuzz/corpus/<target>/` is replayed here by `cargo test`, through the same functions.

use crate::devices;

/// A fuzz target: its name (its corpus directory and libFuzzer binary) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [Target; 6] = [
    ("blk", blk),
    ("fs", fs),
    ("mmio", mmio),
    ("net", net),
    ("rng", rng),
    ("vsock", vsock),
];

/// virtio-blk requests on a fresh 8 KiB backing file.
pub fn blk(data: &[u8]) {
    devices::blk::fuzz::run(data)
}

/// FUSE requests on virtio-fs over a fresh shared directory. The process must be under
/// [`fs_init`]'s limits.
pub fn fs(data: &[u8]) {
    devices::fs::fuzz::run(data)
}

/// The limits the fs target runs under (file sizes, as the jail bounds them), set once.
pub fn fs_init() {
    devices::fs::fuzz::init()
}

/// Register accesses to the virtio-mmio transport of an rng, net or blk device.
pub fn mmio(data: &[u8]) {
    devices::virtio::mmio::fuzz::run(data)
}

/// virtio-net frames both ways, over a socket pair standing in for the tap.
pub fn net(data: &[u8]) {
    devices::net::fuzz::run(data)
}

/// virtio-rng requests.
pub fn rng(data: &[u8]) {
    devices::rng::fuzz::run(data)
}

/// virtio-vsock packets, with host processes and services on Unix sockets.
pub fn vsock(data: &[u8]) {
    devices::vsock::fuzz::run(data)
}

/// The hand-built seeds of target `name`: valid requests as a Linux guest sends them.
pub fn seeds(name: &str) -> Vec<(&'static str, Vec<u8>)> {
    match name {
        "blk" => devices::blk::fuzz::seeds(),
        "fs" => devices::fs::fuzz::seeds(),
        "mmio" => devices::virtio::mmio::fuzz::seeds(),
        "net" => devices::net::fuzz::seeds(),
        "rng" => devices::rng::fuzz::seeds(),
        "vsock" => devices::vsock::fuzz::seeds(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn corpus(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(name)
    }

    /// Every input of target `name`'s corpus, sorted; the seeds must be among them.
    fn inputs(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = corpus(name);
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        v.sort();
        for (seed, bytes) in seeds(name) {
            assert!(
                v.iter().any(|(_, b)| *b == bytes),
                "the seed {name}/{seed} is not in {} (run the ignored test write_seeds)",
                dir.display()
            );
        }
        v
    }

    fn replay(name: &str) {
        let (_, body) = TARGETS.iter().find(|(n, _)| *n == name).unwrap();
        for (path, bytes) in inputs(name) {
            // A panic names the input that caused it.
            eprintln!("replaying {}", path.display());
            body(&bytes);
        }
    }

    #[test]
    fn the_blk_corpus_replays() {
        replay("blk");
    }

    #[test]
    fn the_fs_corpus_replays() {
        // In a child: the file size limit is process-wide, and other tests write files.
        let code = crate::uds::testutil::in_child(Duration::from_secs(120), || {
            fs_init();
            replay("fs");
            0
        });
        assert_eq!(
            code,
            Some(0),
            "an input of the fs corpus failed (see above)"
        );
    }

    #[test]
    fn the_mmio_corpus_replays() {
        replay("mmio");
    }

    #[test]
    fn the_net_corpus_replays() {
        replay("net");
    }

    #[test]
    fn the_rng_corpus_replays() {
        replay("rng");
    }

    #[test]
    fn the_vsock_corpus_replays() {
        replay("vsock");
    }

    /// Writes every target's seeds into its corpus (`seed-<name>`), after a change of an
    /// input format: `cargo test -p carapace-vmm write_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_seeds() {
        for (name, _) in TARGETS {
            let dir = corpus(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (seed, bytes) in seeds(name) {
                std::fs::write(dir.join(format!("seed-{seed}")), bytes).unwrap();
            }
        }
    }
}
