//! The inside of `make demo`: containerd runs a busybox container with runc, and carapace-vmm
//! boots the carapace guest kernel and initramfs under KVM. It runs wherever /dev/kvm boots
//! Linux guests: on a KVM host directly, or in the lab (tests/demo decides).
//!
//! carapace's own runtime (`io.containerd.carapace.v2`) does not exist yet; until the agent
//! and shim land, the demo shows the pieces that do and says so.

use std::time::{Duration, Instant};

use carapace_tests::artifacts::{
    busybox_image, guest_kernel, initramfs, AGENT_BOOT_MARKER, BUSYBOX_IMAGE,
};
use carapace_tests::containerd::Containerd;
use carapace_tests::lab::ms;
use carapace_tests::vm::{carapace_vmm, Console};

fn main() {
    let where_ = if carapace_tests::lab::inside() {
        "inside the lab"
    } else {
        "on this host"
    };
    println!("demo: starting a private containerd {where_}");
    let c = Containerd::start();
    c.import(&busybox_image());
    println!("demo: imported {BUSYBOX_IMAGE}");

    let start = Instant::now();
    let out = c.ctr_output([
        "run",
        "--rm",
        BUSYBOX_IMAGE,
        "demo-runc",
        "sh",
        "-c",
        "echo hello from $(uname -n) in a runc container",
    ]);
    let runc = start.elapsed();
    assert!(
        out.status.success(),
        "ctr run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("demo: ctr run --rm with runc took {:.0} ms", ms(runc));

    let mut cmd = carapace_vmm(
        &guest_kernel(),
        &initramfs(),
        "console=ttyS0 quiet reboot=k panic=1",
        2,
        256,
    );
    let mut guest = Console::spawn(&mut cmd);
    let at = guest.wait_for_line(AGENT_BOOT_MARKER, Duration::from_secs(120));
    let line = guest
        .text()
        .lines()
        .find(|l| l.contains(AGENT_BOOT_MARKER))
        .unwrap_or_default()
        .to_owned();
    println!(
        "demo: carapace-vmm booted the carapace guest kernel under KVM to its init in {:.0} ms:",
        ms(at)
    );
    println!("  {line}");
    drop(guest); // the agent serves until stopped: end the VM
    println!("demo: not yet: a container in a carapace microVM through containerd (the agent and shim issues build it)");
}
