//! Tests that need a real KVM: each runs inside the lab (see tests/lab/run and LAB.md).
//! One file per feature.

mod agent_vsock;
mod containerd_runc;
mod cri;
mod guest_boot;
mod isolation;
mod kvm;
mod shim_ctr;
mod shim_install;
mod shim_logs;
mod shim_net;
mod shim_pod;
mod shim_tasks;
mod vmm_boot;
mod vmm_devices;
mod vmm_fs;
