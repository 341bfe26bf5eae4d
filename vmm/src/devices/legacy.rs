//! Legacy x86 devices on the port I/O bus: the 8250 UART that carries the guest's console
//! (vm-superio's `Serial`), the bounded file the console can be written to, and the i8042
//! controller whose reset command ends the VM.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::exit::{ExitReason, VmExit};
use crate::uds::LogLimit;

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

/// Most bytes the console log file grows to (4 MiB). When the guest's output would take it
/// past this, the file is renamed to `<file>.1` (replacing an older one) and a new, empty
/// `<file>` is started: a guest printing forever keeps at most twice this on the host's
/// disk, and the newest output is always in `<file>`.
pub const CONSOLE_LOG_CAP: u64 = 4 << 20;

static ROTATE_FAILURES: LogLimit = LogLimit::new();

/// The console log file, kept under a size cap by rotation (see [`CONSOLE_LOG_CAP`]). The
/// files are created mode 0600: the guest's console can carry secrets.
pub struct ConsoleLog {
    path: PathBuf,
    rotated: PathBuf,
    file: File,
    len: u64,
    cap: u64,
}

fn open_log(path: &Path, truncate: bool) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .and_then(|f| {
            if truncate {
                f.set_len(0)?;
            }
            Ok(f)
        })
}

impl ConsoleLog {
    /// Appends to `path` (created if missing), capped at [`CONSOLE_LOG_CAP`].
    pub fn open(path: &Path) -> io::Result<ConsoleLog> {
        Self::with_cap(path, CONSOLE_LOG_CAP)
    }

    /// Appends to `path`, capped at `cap` bytes (at least 1).
    pub fn with_cap(path: &Path, cap: u64) -> io::Result<ConsoleLog> {
        let file = open_log(path, false)?;
        let len = file.metadata()?.len();
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        Ok(ConsoleLog {
            path: path.to_path_buf(),
            rotated: rotated.into(),
            file,
            len,
            cap: cap.max(1),
        })
    }

    /// Moves the full file to `<file>.1` and starts an empty one. If that fails, the file is
    /// emptied in place; if even that fails, output is dropped: the cap holds either way.
    fn rotate(&mut self) -> io::Result<()> {
        let result = std::fs::rename(&self.path, &self.rotated)
            .and_then(|()| open_log(&self.path, true))
            .map(|f| self.file = f)
            .or_else(|e| {
                if let Some(n) = ROTATE_FAILURES.hit() {
                    log::warn!(
                        "serial: cannot rotate {} ({n} times so far): {e}; emptying it instead",
                        self.path.display()
                    );
                }
                self.file.set_len(0)
            });
        if result.is_ok() {
            self.len = 0;
        }
        result
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.len >= self.cap && self.rotate().is_err() {
            // Dropped rather than written past the cap.
            return Ok(buf.len());
        }
        let room = usize::try_from(self.cap - self.len).unwrap_or(usize::MAX);
        let n = self.file.write(&buf[..buf.len().min(room)])?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uds::testutil::OpenTempDir;
    use std::os::unix::fs::PermissionsExt;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// Byte `i` of the guest's endless output.
    fn byte(i: usize) -> u8 {
        b'a' + (i % 23) as u8
    }

    #[test]
    fn a_guest_printing_forever_keeps_at_most_twice_the_cap_and_the_newest_output_last() {
        let dir = OpenTempDir::new("console");
        let path = dir.0.join("console.log");
        let cap = 1000;
        let out = ConsoleLog::with_cap(&path, cap).unwrap();
        let mut serial = SerialConsole::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(out));
        let total = 10 * cap as usize + 123;
        // The guest writes its transmit register, one byte at a time.
        for i in 0..total {
            serial.write(0, &[byte(i)]);
        }
        let newest = std::fs::read(&path).unwrap();
        let older = std::fs::read(dir.0.join("console.log.1")).unwrap();
        assert!(newest.len() as u64 <= cap, "{}", newest.len());
        assert_eq!(older.len() as u64, cap);
        let expected: Vec<u8> = (total - newest.len() - older.len()..total)
            .map(byte)
            .collect();
        assert_eq!(
            [older, newest].concat(),
            expected,
            "the newest bytes, in order"
        );
        let on_disk: u64 = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= 2 * cap, "{on_disk}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn large_writes_are_split_at_the_cap_and_an_existing_file_counts() {
        let dir = OpenTempDir::new("console");
        let path = dir.0.join("console.log");
        std::fs::write(&path, vec![b'x'; 700]).unwrap();
        let mut log = ConsoleLog::with_cap(&path, 1000).unwrap();
        let data: Vec<u8> = (0..2500).map(byte).collect();
        log.write_all(&data).unwrap();
        log.flush().unwrap();
        let newest = std::fs::read(&path).unwrap();
        let older = std::fs::read(dir.0.join("console.log.1")).unwrap();
        // 300 bytes completed the old file; then 1000 (rotated away), then 1000, then 200.
        assert_eq!(newest, &data[2300..]);
        assert_eq!(older, &data[1300..2300]);
    }

    #[test]
    fn when_rotation_fails_the_file_is_emptied_in_place() {
        let dir = OpenTempDir::new("console");
        let path = dir.0.join("console.log");
        let mut log = ConsoleLog::with_cap(&path, 100).unwrap();
        // A directory in the way of `<file>.1` makes the rename fail.
        std::fs::create_dir(dir.0.join("console.log.1")).unwrap();
        std::fs::write(dir.0.join("console.log.1").join("keep"), b"").unwrap();
        let data: Vec<u8> = (0..350).map(byte).collect();
        log.write_all(&data).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), &data[300..]);
    }
}
