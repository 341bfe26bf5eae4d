//! Where the tests find what the build made: the guest kernel, the initramfs and the busybox
//! OCI image. `make test` builds them on the host and passes their paths in `CARAPACE_*`
//! variables; without those, the build scripts are run (they are cached and print the path
//! last).

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn from_env_or_script(var: &str, script: &str, args: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(p.exists(), "{var}={} does not exist", p.display());
        return p;
    }
    let path = crate::repo_root().join(script);
    let out = Command::new(&path)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(out.status.success(), "{script} failed: {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().trim();
    let p = PathBuf::from(last);
    assert!(
        p.exists(),
        "{script} printed '{last}', which does not exist"
    );
    p
}

/// The guest kernel (`vmlinux`, PVH-bootable).
pub fn guest_kernel() -> PathBuf {
    from_env_or_script("CARAPACE_GUEST_KERNEL", "guest-kernel/build", &[])
}

/// The guest initramfs with the agent as `/init`.
pub fn initramfs() -> PathBuf {
    from_env_or_script("CARAPACE_INITRAMFS", "images/build-initramfs", &[])
}

/// The VMM tests' initramfs: busybox, tests/guest/init and carapace-vsock-probe.
pub fn test_initramfs() -> PathBuf {
    from_env_or_script(
        "CARAPACE_TEST_INITRAMFS",
        "images/build-test-initramfs",
        &[],
    )
}

/// The carapace-vmm binary built by cargo for this test run.
pub fn vmm_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CARAPACE_VMM") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test> -> target/<profile>/carapace-vmm
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("carapace-vmm"))
        .expect("the test binary lives in target/<profile>/deps");
    assert!(
        p.exists(),
        "{} does not exist: build it first (cargo build -p carapace-vmm)",
        p.display()
    );
    p
}

/// The directory holding the binaries cargo built for this test run (carapace-vmm,
/// containerd-shim-carapace-v2): `CARAPACE_VMM`'s directory, else the test binary's target.
pub fn bin_dir() -> PathBuf {
    vmm_binary()
        .parent()
        .expect("a binary lives in a directory")
        .to_path_buf()
}

/// The busybox OCI image tarball, named [`BUSYBOX_IMAGE`] once imported.
pub fn busybox_image() -> PathBuf {
    from_env_or_script("CARAPACE_BUSYBOX_IMAGE", "images/build-busybox-image", &[])
}

/// The reference the busybox image carries in containerd.
pub const BUSYBOX_IMAGE: &str = "localhost/carapace/busybox:latest";

/// The marker the guest's init prints on the serial console once it runs.
pub const AGENT_BOOT_MARKER: &str = "carapace-agent: init reached";

/// carapace-fs-probe, linked statically (built by images/build-test-initramfs, which the
/// lab suite runs first): for containers that need xattr calls busybox lacks.
pub fn fs_probe() -> PathBuf {
    test_initramfs();
    let p = crate::repo_root().join("target/x86_64-unknown-linux-gnu/release/carapace-fs-probe");
    assert!(
        p.exists(),
        "{} does not exist (images/build-test-initramfs builds it)",
        p.display()
    );
    p
}
