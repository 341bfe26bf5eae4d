//! How a VM ends: the reason ([`ExitReason`]) and the one place it is announced
//! ([`VmExit`]), shared by the machine, its vCPU threads and the legacy devices; and how
//! the VMM prints the error that ends it ([`error_chain`]).

use std::sync::Mutex;

use carapace_vmm_config::status;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest rebooted (i8042 reset or a reset system event); carapace guests reboot to
    /// power off.
    Reset,
    /// The guest powered off (a shutdown system event).
    PowerOff,
    /// A vCPU triple-faulted.
    TripleFault,
    /// The control API asked the VM to stop.
    Shutdown,
    /// The VMM hit an error it cannot recover from.
    Error(String),
}

impl ExitReason {
    /// The VMM's exit status for this reason ([`status`]): 0 for an orderly end, 3 for a
    /// triple fault, 1 for an error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::PowerOff | ExitReason::Shutdown => status::OK,
            ExitReason::TripleFault => status::TRIPLE_FAULT,
            ExitReason::Error(_) => status::ERROR,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "guest reset"),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::TripleFault => write!(f, "guest triple fault"),
            ExitReason::Shutdown => write!(f, "shut down through the control API"),
            ExitReason::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// Where the VM's end is announced: the first reason wins, and an eventfd wakes the loop.
pub struct VmExit {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl VmExit {
    /// A VM that has not ended.
    pub fn new() -> std::io::Result<Self> {
        Ok(VmExit {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Ends the VM for `reason` (later reasons are ignored).
    pub fn exit(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            log::debug!("VM exit: {reason}");
            *r = Some(reason);
        }
        let _ = self.evt.write(1);
    }

    /// The reason the VM ended, once it has.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The eventfd written on every exit, for the event loop to wake on.
    pub(crate) fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// `err` followed by each of its causes, `: `-separated: how the VMM prints an error (each
/// error's own message names only its context, never repeating its source).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}
