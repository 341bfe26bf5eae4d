//! Legacy x86 devices on the port I/O bus: the 8250 UART that carries the guest's console
//! (vm-superio's `Serial`) and the i8042 controller whose reset command ends the VM.

use std::io::Write;
use std::sync::Arc;

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::vm::{ExitReason, VmExit};

/// Port and IRQ of the first serial port (COM1, ttyS0).
pub const SERIAL_PORT: u64 = 0x3f8;
/// The serial port's interrupt line.
pub const SERIAL_IRQ: u32 = 4;
/// The i8042 controller's ports (0x60 data .. 0x64 command).
pub const I8042_PORT: u64 = 0x60;

/// Raises an interrupt line through an eventfd bound to it with KVM_IRQFD.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// COM1: the guest's console output goes to `out` (the VMM's stdout or a file).
pub struct SerialConsole {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialConsole {
    /// A serial port writing to `out` and raising its interrupt through `irq`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialConsole {
            serial: Serial::new(IrqTrigger(irq), out),
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.serial.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            if let Err(e) = self.serial.write(offset as u8, data[0]) {
                log::debug!("serial: {e:?}");
            }
            // Line-at-a-time delivery would hold output back; the writer is unbuffered or
            // flushed here so a crash loses nothing.
            if offset == 0 {
                let _ = self.serial.writer_mut().flush();
            }
        }
    }
}

/// Ends the VM with [`ExitReason::Reset`] when the guest resets through the i8042.
pub struct ResetTrigger(pub Arc<VmExit>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.exit(ExitReason::Reset);
        Ok(())
    }
}

/// The i8042 keyboard controller: only the CPU reset command (0xfe to port 0x64) matters.
pub struct I8042(pub I8042Device<ResetTrigger>);

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() == 1 && offset < 5 {
            data[0] = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 5 {
            let _ = self.0.write(offset as u8, data[0]);
        }
    }
}
