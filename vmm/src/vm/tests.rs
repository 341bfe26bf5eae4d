//! Unit tests of the machine: its error types and their chains.

use std::error::Error as _;

use super::*;

fn os(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

#[test]
fn kvm_and_vm_errors_keep_their_text_and_cause() {
    // What the VMM prints is the chain; each message alone names only its context.
    let kvm = kvm_ioctls::Error::new(libc::ENOENT);
    let e = MachineError::KvmOpen(kvm);
    assert_eq!(error_chain(&e), format!("/dev/kvm: {kvm}"));
    assert!(e.source().is_some());
    let e = MachineError::KvmIoctl {
        what: "KVM_CREATE_VM",
        source: kvm,
    };
    assert_eq!(error_chain(&e), format!("/dev/kvm: KVM_CREATE_VM: {kvm}"));
    assert!(e.source().is_some());
    let e = vm_err("KVM_CREATE_IRQCHIP")(kvm);
    assert_eq!(error_chain(&e), format!("KVM_CREATE_IRQCHIP: {kvm}"));
    assert!(e.source().is_some());
}

#[test]
fn device_errors_keep_their_text_and_cause() {
    let e = device_err("block[0]")(os(libc::ENOENT));
    assert_eq!(error_chain(&e), format!("block[0]: {}", os(libc::ENOENT)));
    assert!(e.source().is_some());
    let e = MachineError::SerialFile {
        path: "/nonexistent/console.log".into(),
        source: os(libc::ENOENT),
    };
    assert_eq!(
        error_chain(&e),
        format!("serial file /nonexistent/console.log: {}", os(libc::ENOENT))
    );
    // A share's error is terse: the chain carries its causes.
    let e = MachineError::Fs {
        index: 1,
        source: crate::devices::fs::FsError::Share {
            path: "/srv".into(),
            source: os(libc::EACCES),
        },
    };
    assert_eq!(
        error_chain(&e),
        format!("fs[1]: cannot share /srv: {}", os(libc::EACCES))
    );
    assert!(e.source().is_some());
    assert_eq!(
        e.to_string(),
        "fs[1]",
        "the message does not repeat its source"
    );
}
