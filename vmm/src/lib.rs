//! carapace-vmm: the KVM microVM monitor (VM and vCPUs, guest memory, direct kernel boot,
//! virtio-mmio devices, control API). The machine itself lands with the VMM issue; today the
//! library only names what it will own.
