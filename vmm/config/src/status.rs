//! carapace-vmm's exit statuses, defined once for the VMM that exits with them and the shim
//! that reports why a pod's VM ended.

/// The guest powered off or rebooted (carapace guests reboot to power off), or the control
/// API stopped the VM.
pub const OK: i32 = 0;
/// The VMM failed (its log says why).
pub const ERROR: i32 = 1;
/// The configuration or command line was refused.
pub const REFUSED: i32 = 2;
/// A vCPU triple-faulted.
pub const TRIPLE_FAULT: i32 = 3;
/// A VMM thread made a syscall outside its seccomp filter: 128 + SIGSYS (31), the status a
/// shell gives a process that signal killed.
pub const BAD_SYSCALL: i32 = 128 + 31;

/// What a carapace-vmm exit status means, in words (for logs).
pub fn describe(status: i32) -> String {
    match status {
        OK => "the guest powered off or rebooted".into(),
        ERROR => "the VMM failed".into(),
        REFUSED => "the VMM refused its configuration".into(),
        TRIPLE_FAULT => "the guest triple-faulted".into(),
        BAD_SYSCALL => "a VMM thread made a syscall outside its seccomp filter".into(),
        s if s > 128 => format!("the VMM was killed by signal {}", s - 128),
        s => format!("the VMM exited with status {s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_has_its_words() {
        assert_eq!(describe(TRIPLE_FAULT), "the guest triple-faulted");
        assert!(describe(BAD_SYSCALL).contains("seccomp"));
        assert_eq!(describe(128 + 9), "the VMM was killed by signal 9");
        assert_eq!(describe(42), "the VMM exited with status 42");
    }
}
