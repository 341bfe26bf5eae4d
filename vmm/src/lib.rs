//! carapace-vmm: the KVM microVM monitor. It owns the VM and its vCPUs, guest memory, direct
//! kernel boot, the devices the guest sees (serial, i8042, virtio-mmio), the control API, and
//! the owner-only Unix sockets the API and the vsock device listen on (`uds`), its
//! per-thread syscall filters (`seccomp`) and the jail it confines itself to (`jail`); with
//! the `fuzzing` feature (and in tests), the bodies of its fuzz targets (`fuzz`) and the
//! scratch paths they and the tests use (`scratch`).

pub mod api;
pub mod arch;
pub mod bus;
pub mod config;
pub mod devices;
pub mod exit;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod jail;
#[cfg(any(test, feature = "fuzzing"))]
pub mod scratch;
pub mod seccomp;
pub mod uds;
pub mod vcpu;
pub mod vm;
