//! Shared pieces of carapace's end-to-end tests: entering the KVM lab, finding the built
//! kernels and images, booting VMs, and a private containerd for tests to drive with `ctr`.

pub mod agent;
pub mod artifacts;
pub mod carapace;
pub mod containerd;
pub mod cri;
pub mod diagnose;
pub mod lab;
pub mod vm;

/// The checkout's root directory.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}
