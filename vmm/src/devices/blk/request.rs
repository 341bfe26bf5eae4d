//! One virtio-blk request: checking the guest's descriptor chain, decoding the request header
//! and serving IN, OUT, FLUSH and GET_ID against the backing file.
//!
//! The chain is read as a byte stream (virtio 1.x devices must not rely on how the driver
//! splits a request into descriptors): the device-readable bytes are the 16-byte header then
//! the data of a write, the device-writable bytes are the data of a read (or the serial of
//! GET_ID) then the one status byte.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile, VolatileMemoryError, VolatileSlice,
    WriteVolatile,
};

use super::{MAX_DESCRIPTORS, SECTOR_SIZE, SERIAL_LEN};
use crate::devices::virtio::chain::{self, in_guest_memory, ChainError, Collected, Layout};
use crate::devices::virtio::GuestMemory;

/// Size of the request header (struct virtio_blk_outhdr: type, ioprio, sector).
const HEADER_LEN: u64 = 16;

/// Why the device refused a request chain.
#[derive(Debug, thiserror::Error)]
pub(super) enum BlkRequestError {
    /// The chain's structure: empty, unterminated, outside guest memory, or a device-readable
    /// descriptor after a device-writable one.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// Fewer than 16 device-readable bytes: no room for the header.
    #[error("the request header needs {HEADER_LEN} device-readable bytes, the chain has {0}")]
    ShortHeader(u64),
    /// No device-writable byte to hold the status.
    #[error("the chain has no device-writable status byte")]
    NoStatus,
    /// Data the device would read in a request that only writes to the guest.
    #[error("a {kind} request carries {len} bytes of device-readable data")]
    UnexpectedReadable {
        /// The request type's name.
        kind: &'static str,
        /// Bytes of readable data after the header.
        len: u64,
    },
    /// Data the device would write in a request that only reads from the guest.
    #[error("a {kind} request carries {len} bytes of device-writable data")]
    UnexpectedWritable {
        /// The request type's name.
        kind: &'static str,
        /// Bytes of writable data before the status.
        len: u64,
    },
    /// Read or write data that is not a whole number of sectors.
    #[error("{kind} data of {len} bytes is not a whole number of {SECTOR_SIZE}-byte sectors")]
    Unaligned {
        /// The request type's name.
        kind: &'static str,
        /// Bytes of data.
        len: u64,
    },
    /// A write to a disk the guest was told is read-only.
    #[error("a write to a read-only disk")]
    ReadOnly,
    /// A request type the device does not offer.
    #[error("request type {0} is not supported")]
    Unsupported(u32),
}

/// How serving one chain went.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Served; `bytes` of data moved between the disk and the guest.
    Done {
        /// Data bytes read or written.
        bytes: u64,
    },
    /// Well formed but failed on the host side (I/O error, sectors past the end); status
    /// IOERR.
    Failed(io::Error),
    /// Refused as malformed (status IOERR or UNSUPP when there is a status byte).
    Refused(BlkRequestError),
}

/// The result of one chain: what to put in the used ring and what happened.
#[derive(Debug)]
pub(super) struct Completion {
    /// Bytes the device wrote into the chain (the used element's length).
    pub used_len: u32,
    /// What happened.
    pub outcome: Outcome,
}

/// The backing file of a disk.
#[derive(Debug)]
pub(super) struct Disk {
    /// The file, opened read-only when `read_only`.
    pub file: File,
    /// Size in sectors.
    pub capacity: u64,
    /// Writes are refused.
    pub read_only: bool,
    /// GET_ID answer, NUL padded.
    pub serial: [u8; SERIAL_LEN],
}

/// A guest buffer, checked to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    addr: GuestAddress,
    len: u32,
}

/// A decoded request whose buffers all lie in guest memory.
#[derive(Debug)]
struct Request {
    kind: u32,
    sector: u64,
    /// The data buffers: device-readable for OUT, device-writable for IN and GET_ID.
    data: Vec<Segment>,
    data_len: u64,
    status: GuestAddress,
}

/// Serves one request chain of the guest.
pub(super) fn serve(
    disk: &Disk,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> Completion {
    let chain = chain::collect(chain, MAX_DESCRIPTORS);
    let request = match parse(mem, &chain) {
        Ok(r) => r,
        Err(e) => {
            // Still tell the driver the request failed when the chain has a usable status byte.
            let used_len = match status_byte(mem, &chain.descs, chain.terminated) {
                Some(addr) => write_status(mem, addr, VIRTIO_BLK_S_IOERR),
                None => 0,
            };
            return Completion {
                used_len,
                outcome: Outcome::Refused(e),
            };
        }
    };
    let (status, written, outcome) = execute(disk, mem, &request);
    let status_len = write_status(mem, request.status, status);
    Completion {
        used_len: written.saturating_add(status_len),
        outcome,
    }
}

/// Runs a decoded request: the status to report, the data bytes written into the chain and
/// the outcome.
fn execute(disk: &Disk, mem: &GuestMemory, req: &Request) -> (u32, u32, Outcome) {
    let kind_name = kind_name(req.kind);
    match req.kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            if req.kind == VIRTIO_BLK_T_OUT && disk.read_only {
                let e = BlkRequestError::ReadOnly;
                return (VIRTIO_BLK_S_IOERR, 0, Outcome::Refused(e));
            }
            let result = disk_offset(disk, req.sector, req.data_len).and_then(|offset| {
                let mut at = FileAt {
                    file: &disk.file,
                    offset,
                };
                for seg in &req.data {
                    let len = seg.len as usize;
                    let r = if req.kind == VIRTIO_BLK_T_IN {
                        mem.read_exact_volatile_from(seg.addr, &mut at, len)
                    } else {
                        mem.write_all_volatile_to(seg.addr, &mut at, len)
                    };
                    r.map_err(|e| {
                        io::Error::other(format!("{kind_name} at byte {}: {e}", at.offset))
                    })?;
                }
                Ok(())
            });
            match result {
                Ok(()) => {
                    // An IN's data length fits in the chain's u32 byte count.
                    let written = if req.kind == VIRTIO_BLK_T_IN {
                        u32::try_from(req.data_len).unwrap_or(u32::MAX)
                    } else {
                        0
                    };
                    let bytes = req.data_len;
                    (VIRTIO_BLK_S_OK, written, Outcome::Done { bytes })
                }
                Err(e) => (VIRTIO_BLK_S_IOERR, 0, Outcome::Failed(e)),
            }
        }
        VIRTIO_BLK_T_FLUSH => match disk.file.sync_data() {
            Ok(()) => (VIRTIO_BLK_S_OK, 0, Outcome::Done { bytes: 0 }),
            Err(e) => (VIRTIO_BLK_S_IOERR, 0, Outcome::Failed(e)),
        },
        VIRTIO_BLK_T_GET_ID => {
            let n = usize::try_from(req.data_len)
                .unwrap_or(usize::MAX)
                .min(SERIAL_LEN);
            match write_bytes(mem, &req.data, &disk.serial[..n]) {
                // n <= SERIAL_LEN, so it fits in u32.
                Ok(()) => (VIRTIO_BLK_S_OK, n as u32, Outcome::Done { bytes: n as u64 }),
                Err(e) => (VIRTIO_BLK_S_IOERR, 0, Outcome::Failed(e)),
            }
        }
        other => (
            VIRTIO_BLK_S_UNSUPP,
            0,
            Outcome::Refused(BlkRequestError::Unsupported(other)),
        ),
    }
}

/// The byte offset of `sector`, if `len` bytes from there stay inside the disk.
fn disk_offset(disk: &Disk, sector: u64, len: u64) -> io::Result<u64> {
    let end = sector.checked_add(len / SECTOR_SIZE);
    match end {
        // sector <= capacity, and capacity * SECTOR_SIZE is the file size: no overflow.
        Some(end) if end <= disk.capacity => Ok(sector * SECTOR_SIZE),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} sectors from sector {sector} go past the end of the disk ({} sectors)",
                len / SECTOR_SIZE,
                disk.capacity
            ),
        )),
    }
}

fn kind_name(kind: u32) -> &'static str {
    match kind {
        VIRTIO_BLK_T_IN => "IN",
        VIRTIO_BLK_T_OUT => "OUT",
        VIRTIO_BLK_T_FLUSH => "FLUSH",
        VIRTIO_BLK_T_GET_ID => "GET_ID",
        _ => "unknown",
    }
}

/// Checks a chain's shape and decodes its header.
fn parse(mem: &GuestMemory, chain: &Collected<Descriptor>) -> Result<Request, BlkRequestError> {
    // The header and a write's data, then a read's data and the status.
    let lengths = chain.check(in_guest_memory(mem), Layout::ReadThenWrite)?;
    let (readable_len, writable_len) = (lengths.readable, lengths.writable);
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for d in &chain.descs {
        let seg = Segment {
            addr: d.addr(),
            len: d.len(),
        };
        if d.is_write_only() {
            writable.push(seg);
        } else {
            readable.push(seg);
        }
    }
    if readable_len < HEADER_LEN {
        return Err(BlkRequestError::ShortHeader(readable_len));
    }
    if writable_len == 0 {
        return Err(BlkRequestError::NoStatus);
    }
    let mut header = [0u8; HEADER_LEN as usize];
    read_bytes(mem, &sub_range(&readable, 0, HEADER_LEN), &mut header).map_err(|_| {
        ChainError::OutsideMemory {
            addr: readable[0].addr.0,
            len: readable[0].len,
        }
    })?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);

    let status = sub_range(&writable, writable_len - 1, 1)
        .first()
        .map(|s| s.addr)
        .ok_or(BlkRequestError::NoStatus)?;
    let read_data_len = readable_len - HEADER_LEN;
    let write_data_len = writable_len - 1;
    let name = kind_name(kind);
    let (data, data_len) = match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID | VIRTIO_BLK_T_FLUSH if read_data_len != 0 => {
            return Err(BlkRequestError::UnexpectedReadable {
                kind: name,
                len: read_data_len,
            });
        }
        VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_FLUSH if write_data_len != 0 => {
            return Err(BlkRequestError::UnexpectedWritable {
                kind: name,
                len: write_data_len,
            });
        }
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID => {
            (sub_range(&writable, 0, write_data_len), write_data_len)
        }
        VIRTIO_BLK_T_OUT => (
            sub_range(&readable, HEADER_LEN, read_data_len),
            read_data_len,
        ),
        // FLUSH carries no data; unknown types are answered UNSUPP without looking at data.
        _ => (Vec::new(), 0),
    };
    if (kind == VIRTIO_BLK_T_IN || kind == VIRTIO_BLK_T_OUT) && data_len % SECTOR_SIZE != 0 {
        return Err(BlkRequestError::Unaligned {
            kind: name,
            len: data_len,
        });
    }
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status,
    })
}

/// Where to report the failure of a malformed chain: the last byte of its last descriptor, if
/// the chain ended properly, that descriptor is device-writable and the byte is guest memory.
fn status_byte(mem: &GuestMemory, descs: &[Descriptor], terminated: bool) -> Option<GuestAddress> {
    let last = descs
        .last()
        .filter(|d| terminated && d.is_write_only() && d.len() > 0)?;
    let addr = last.addr().0.checked_add(u64::from(last.len()) - 1)?;
    GuestMemoryBackend::check_range(mem, GuestAddress(addr), 1).then_some(GuestAddress(addr))
}

/// Writes the status byte; returns the bytes written (1, or 0 if guest memory refused).
fn write_status(mem: &GuestMemory, addr: GuestAddress, status: u32) -> u32 {
    // Status values are 0..=2.
    match mem.write_slice(&[status as u8], addr) {
        Ok(()) => 1,
        Err(e) => {
            log::debug!("blk: cannot write the status byte at {:#x}: {e}", addr.0);
            0
        }
    }
}

/// The part of the byte stream `segs` that starts `skip` bytes in and is `len` bytes long (or
/// shorter when the stream ends first).
fn sub_range(segs: &[Segment], mut skip: u64, mut len: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    for s in segs {
        if len == 0 {
            break;
        }
        let seg_len = u64::from(s.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let take = (seg_len - skip).min(len);
        // Segments were checked to lie in guest memory, so this does not overflow; `take` is
        // at most the u32 segment length.
        if let Some(addr) = s.addr.0.checked_add(skip) {
            out.push(Segment {
                addr: GuestAddress(addr),
                len: take as u32,
            });
        }
        skip = 0;
        len -= take;
    }
    out
}

/// Fills `buf` from the byte stream `segs`.
fn read_bytes(mem: &GuestMemory, segs: &[Segment], buf: &mut [u8]) -> io::Result<()> {
    let mut off = 0;
    for s in segs {
        let n = (s.len as usize).min(buf.len() - off);
        mem.read_slice(&mut buf[off..off + n], s.addr)
            .map_err(io::Error::other)?;
        off += n;
    }
    Ok(())
}

/// Writes `bytes` at the start of the byte stream `segs` (which must be long enough).
fn write_bytes(mem: &GuestMemory, segs: &[Segment], bytes: &[u8]) -> io::Result<()> {
    let mut off = 0;
    for s in segs {
        if off == bytes.len() {
            break;
        }
        let n = (s.len as usize).min(bytes.len() - off);
        mem.write_slice(&bytes[off..off + n], s.addr)
            .map_err(io::Error::other)?;
        off += n;
    }
    Ok(())
}

/// The backing file seen from a position, for vm-memory's volatile copies: reads are `pread`
/// and writes `pwrite` at `offset`, which advances by what moved. std's `File` implements the
/// same traits with `read`/`write` at the file position; positioned I/O saves a `lseek` per
/// buffer and keeps the file position out of the device's state.
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl FileAt<'_> {
    fn off_t(&self) -> Result<libc::off_t, VolatileMemoryError> {
        libc::off_t::try_from(self.offset).map_err(|_| {
            VolatileMemoryError::IOError(io::Error::from_raw_os_error(libc::EOVERFLOW))
        })
    }
}

impl ReadVolatile for FileAt<'_> {
    /// Reads until `buf` is full or the file ends.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.offset(done)?;
            let guard = rest.ptr_guard_mut();
            let offset = self.off_t()?;
            // SAFETY: the fd is owned by `self.file`, which outlives the call; `guard` points
            // at `rest.len()` bytes of mapped guest memory that the VolatileSlice guarantees
            // valid for writes while the guard lives, and the kernel copies into it without
            // creating Rust references.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    guard.as_ptr().cast::<libc::c_void>(),
                    rest.len(),
                    offset,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                rest.bitmap().mark_dirty(0, rest.len());
                return Err(VolatileMemoryError::IOError(e));
            }
            // n >= 0 and at most rest.len().
            let n = n as usize;
            rest.bitmap().mark_dirty(0, n);
            if n == 0 {
                break;
            }
            done += n;
            self.offset += n as u64;
        }
        Ok(done)
    }
}

impl WriteVolatile for FileAt<'_> {
    /// Writes all of `buf` unless the file refuses.
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.offset(done)?;
            let guard = rest.ptr_guard();
            let offset = self.off_t()?;
            // SAFETY: the fd is owned by `self.file`, which outlives the call; `guard` points
            // at `rest.len()` bytes of mapped guest memory that the VolatileSlice guarantees
            // valid for reads while the guard lives.
            let n = unsafe {
                libc::pwrite(
                    self.file.as_raw_fd(),
                    guard.as_ptr().cast::<libc::c_void>(),
                    rest.len(),
                    offset,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(VolatileMemoryError::IOError(e));
            }
            // n >= 0 and at most rest.len().
            let n = n as usize;
            if n == 0 {
                break;
            }
            done += n;
            self.offset += n as u64;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn sub_range_cuts_across_segments() {
        let segs = [seg(0x1000, 10), seg(0x2000, 6), seg(0x3000, 4)];
        assert_eq!(sub_range(&segs, 0, 10), vec![seg(0x1000, 10)]);
        assert_eq!(sub_range(&segs, 8, 4), vec![seg(0x1008, 2), seg(0x2000, 2)]);
        assert_eq!(sub_range(&segs, 19, 1), vec![seg(0x3003, 1)]);
        assert_eq!(sub_range(&segs, 16, 100), vec![seg(0x3000, 4)]);
        assert!(sub_range(&segs, 20, 1).is_empty());
        assert!(sub_range(&segs, 0, 0).is_empty());
    }
}
