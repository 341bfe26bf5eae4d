//! The lab's /dev/kvm is a real KVM with AMD-V: it answers the API version and makes VMs.

use carapace_tests::lab_test;

lab_test! {
    fn kvm_creates_a_vm_with_a_vcpu() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
        assert!(cpuinfo.split_whitespace().any(|w| w == "svm"), "the lab's CPU shows no svm flag");
        let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
        assert_eq!(kvm.get_api_version(), 12, "KVM_GET_API_VERSION");
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        let regs = vcpu.get_regs().expect("KVM_GET_REGS");
        // A fresh x86 vCPU starts at the reset vector's RFLAGS value with bit 1 set.
        assert_eq!(regs.rflags & 0x2, 0x2, "RFLAGS of a new vCPU: {:#x}", regs.rflags);
        assert!(kvm.get_nr_vcpus() >= 2, "KVM_CAP_NR_VCPUS: {}", kvm.get_nr_vcpus());
    }
}
