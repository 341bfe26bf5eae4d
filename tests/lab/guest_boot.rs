//! The guest kernel and initramfs boot under KVM inside the lab: QEMU's microvm (the reference
//! VMM carapace-vmm is measured against) runs them with -enable-kvm to the init's marker.

use std::time::Duration;

use carapace_tests::artifacts::{guest_kernel, initramfs, AGENT_BOOT_MARKER};
use carapace_tests::lab::ms;
use carapace_tests::lab_test;
use carapace_tests::vm::{qemu_microvm, Console};

lab_test! {
    fn guest_kernel_boots_to_init_under_qemu_kvm() {
        let (kernel, initrd) = (guest_kernel(), initramfs());
        let mut cmd = qemu_microvm(&kernel, &initrd, "console=ttyS0 quiet reboot=t panic=-1", 2, 256);
        let mut guest = Console::spawn(&mut cmd);
        let marker_at = guest.wait_for_line(AGENT_BOOT_MARKER, Duration::from_secs(120));
        assert!(guest.text().contains(", 2 cpus,"), "the guest did not bring up 2 vCPUs:\n{}", guest.text());
        println!("lab figure: QEMU microvm + KVM, start to init marker {:.0} ms", ms(marker_at));
        // The agent serves until told to stop; dropping the console stops QEMU.
    }
}
