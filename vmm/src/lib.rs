//! carapace-vmm: the KVM microVM monitor. It owns the VM and its vCPUs, guest memory, direct
//! kernel boot, the devices the guest sees (serial, i8042, virtio-mmio) and the control API.

pub mod api;
pub mod arch;
pub mod bus;
pub mod config;
pub mod devices;
pub mod vcpu;
pub mod vm;
