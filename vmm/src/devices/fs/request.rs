//! One FUSE request: the structural checks on the guest's descriptor chain and FUSE header
//! made before fuse-backend-rs's server sees it, the hand-over to the server, and the error
//! reply when any of these fails.
//!
//! The server trusts the header's opcode more than it should (`Opcode::from` transmutes any
//! value below 50, gaps included, when its trace logging is on) and does not check that the
//! header's length fits the chain, so both are checked here first. Nothing here decides what
//! the share allows: the guest can rewrite its request between any check made here and the
//! server's own reading of it, so the share's rules are enforced by [`super::guard::Guard`] on
//! the arguments the server parsed.

use std::mem::size_of;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, InitIn, OutHeader};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::{Server, MAX_BUFFER_SIZE, MAX_REQ_PAGES};
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use fuse_virtio_queue::DescriptorChain;
use fuse_vm_memory::{Bytes as _, GuestAddress as AliasAddress, GuestMemory as _};

use super::guard::Guard;
use super::memory::AliasMemory;
use super::MAX_DESCRIPTORS;
use crate::devices::virtio::chain::{self, ChainError, Layout};

/// The passthrough file system as the device serves it, behind the share's guard.
pub type FsServer = Server<Arc<SharedGuard>>;

/// The guard over the passthrough file system (shared by the server and the device).
pub type SharedGuard = Guard<PassthroughFs<()>>;

const IN_HEADER_LEN: usize = size_of::<InHeader>();
const OUT_HEADER_LEN: usize = size_of::<OutHeader>();

// FUSE opcodes the checks below name (include/uapi/linux/fuse.h).
const FUSE_FORGET: u32 = 2;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_NOTIFY_REPLY: u32 = 41;
const FUSE_BATCH_FORGET: u32 = 42;
const FUSE_SYNCFS: u32 = 50;
const FUSE_TMPFILE: u32 = 51;
const FUSE_STATX: u32 = 52;

/// Whether fuse-backend-rs's server has a handler for `opcode` (every value of its `Opcode`
/// below `MaxOpcode`: 1..=49 without 7 and 19).
fn server_knows(opcode: u32) -> bool {
    matches!(opcode, 1..=6 | 8..=18 | 20..=49)
}

/// Requests the guest sends without waiting for a reply (NOTIFY_REPLY answers a request the
/// device never makes).
fn no_reply(opcode: u32) -> bool {
    matches!(
        opcode,
        FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT | FUSE_NOTIFY_REPLY
    )
}

// FUSE_INIT flags (include/uapi/linux/fuse.h) this device adds to the server's answer.
const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES: u32 = 1 << 22;

/// Largest read or write the guest is told to send: what the server accepts in one request
/// (1 MiB, 256 pages). The driver also caps requests at the queue size (no indirect
/// descriptors), which [`super::QUEUE_SIZE`] leaves room for.
const MAX_IO_PAGES: u16 = MAX_REQ_PAGES;
const _: () = assert!(MAX_IO_PAGES as u32 * 4096 <= MAX_BUFFER_SIZE);
const _: () = assert!(MAX_IO_PAGES as usize + 4 <= super::QUEUE_SIZE as usize);

/// Why a request was refused as malformed.
#[derive(Debug, thiserror::Error)]
pub enum FsRequestError {
    /// The chain's structure: empty, unterminated, outside guest memory, or a device-readable
    /// descriptor after a device-writable one.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The request is shorter than a FUSE header.
    #[error("{0} readable bytes cannot hold a FUSE header")]
    ShortHeader(usize),
    /// The header's length is impossible or past the chain's readable bytes.
    #[error("the FUSE header says {len} bytes, the chain carries {readable}")]
    Length {
        /// The header's length field.
        len: u32,
        /// Readable bytes in the chain.
        readable: usize,
    },
    /// An opcode FUSE does not define.
    #[error("unknown FUSE opcode {0}")]
    Opcode(u32),
    /// A request that needs a reply came without room for one.
    #[error("FUSE opcode {0} has no writable buffer for its reply")]
    NoReplyBuffer(u32),
    /// The FUSE server could not decode the request or encode its reply.
    #[error("FUSE opcode {opcode}: {why}")]
    Server {
        /// The request's opcode.
        opcode: u32,
        /// The server's error.
        why: String,
    },
}

/// How one request ended.
#[derive(Debug)]
pub enum Outcome {
    /// Answered by the server (possibly with an error the file system returned).
    Served,
    /// Answered here with an errno: an opcode newer than the server.
    Denied(i32),
    /// Malformed: counted, and answered with an error when the chain has room.
    Refused(FsRequestError),
}

/// A request's outcome and the used length to give back.
#[derive(Debug)]
pub struct Done {
    /// Bytes written into the chain.
    pub used_len: u32,
    /// What happened.
    pub outcome: Outcome,
}

/// Serves one request chain.
pub fn serve<F: FileSystem + Sync>(
    server: &Server<F>,
    mem: &AliasMemory,
    chain: DescriptorChain<&AliasMemory>,
) -> Done {
    let refused = |used_len, e| Done {
        used_len,
        outcome: Outcome::Refused(e),
    };
    let (readable, writable) = match check_chain(mem, chain.clone()) {
        Ok(sizes) => sizes,
        // Not a request at all (buffers outside memory, out of order, no end): its reply
        // area is not well defined, so it goes back unanswered (and counted).
        Err(e) => return refused(0, e),
    };
    let reply = |unique, errno| reply_error(mem, &chain, writable, unique, errno);
    if readable < IN_HEADER_LEN {
        return refused(
            reply(0, libc::EINVAL),
            FsRequestError::ShortHeader(readable),
        );
    }
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        // check_chain found every buffer in memory: only an overflow gets here.
        Err(e) => {
            return refused(
                reply(0, libc::EINVAL),
                FsRequestError::Server {
                    opcode: 0,
                    why: e.to_string(),
                },
            )
        }
    };
    let header: InHeader = match reader.clone().read_obj() {
        Ok(h) => h,
        Err(_) => {
            return refused(
                reply(0, libc::EINVAL),
                FsRequestError::ShortHeader(readable),
            )
        }
    };
    let unique = header.unique;
    if (header.len as usize) < IN_HEADER_LEN || header.len as usize > readable {
        return refused(
            reply(unique, libc::EINVAL),
            FsRequestError::Length {
                len: header.len,
                readable,
            },
        );
    }
    let opcode = header.opcode;
    if !server_knows(opcode) {
        if matches!(opcode, FUSE_SYNCFS | FUSE_TMPFILE | FUSE_STATX) {
            // FUSE opcodes newer than fuse-backend-rs: the guest falls back when told ENOSYS.
            return Done {
                used_len: reply(unique, libc::ENOSYS),
                outcome: Outcome::Denied(libc::ENOSYS),
            };
        }
        return refused(reply(unique, libc::ENOSYS), FsRequestError::Opcode(opcode));
    }
    if !no_reply(opcode) && writable < OUT_HEADER_LEN {
        return refused(0, FsRequestError::NoReplyBuffer(opcode));
    }
    // From here on every request that expects a reply gets one: a used length of 0 leaves the
    // guest's reply header as it was, which its driver reads as success.
    let fail = |errno| {
        if no_reply(opcode) {
            0
        } else {
            reply(unique, errno)
        }
    };
    let init_flags = (opcode == FUSE_INIT).then(|| init_flags(&reader)).flatten();
    let writer = match VirtioFsWriter::new(mem, chain.clone()) {
        Ok(w) => Writer::from(w),
        Err(e) => {
            return refused(
                fail(libc::EIO),
                FsRequestError::Server {
                    opcode,
                    why: e.to_string(),
                },
            )
        }
    };
    match server.handle_message(reader, writer, None, None) {
        Ok(0) if !no_reply(opcode) => {
            // The server answers DESTROY (and nothing else that waits) without a reply; the
            // guest waits for one.
            let errno = if opcode == FUSE_DESTROY { 0 } else { libc::EIO };
            Done {
                used_len: reply(unique, errno),
                outcome: Outcome::Served,
            }
        }
        Ok(n) => {
            if let Some(offered) = init_flags {
                widen_init_reply(mem, &chain, n, offered);
            }
            Done {
                used_len: u32::try_from(n).unwrap_or(u32::MAX),
                outcome: Outcome::Served,
            }
        }
        Err(e) => refused(
            fail(libc::EIO),
            FsRequestError::Server {
                opcode,
                why: e.to_string(),
            },
        ),
    }
}

/// The flags of a FUSE_INIT request (`reader` is positioned at the header; read from a copy).
fn init_flags(reader: &Reader<'_, ()>) -> Option<u32> {
    let mut body = reader.clone();
    body.read_obj::<InHeader>().ok()?;
    body.read_obj::<InitIn>().ok().map(|i| i.flags)
}

/// Lets the guest send reads and writes of up to 1 MiB. fuse-backend-rs's passthrough file
/// system never asks for FUSE_BIG_WRITES or FUSE_MAX_PAGES at INIT, so its server answers
/// `max_write` 4096 and the guest splits every write into 4 KiB requests (and every read into
/// 128 KiB ones): 25,600 round trips for 100 MiB, minutes under emulation. The server itself
/// accepts requests up to 1 MiB, so its successful INIT reply (`len` bytes in the chain's
/// writable buffers) is amended here, with only the flags the guest `offered`.
fn widen_init_reply(
    mem: &AliasMemory,
    chain: &DescriptorChain<&AliasMemory>,
    len: usize,
    offered: u32,
) {
    // struct fuse_init_out after the reply header: flags at 12, max_write at 20,
    // max_pages at 28 (a 7.23+ reply is at least 64 bytes; older ones carry no max_pages).
    const FLAGS: usize = OUT_HEADER_LEN + 12;
    const MAX_WRITE: usize = OUT_HEADER_LEN + 20;
    const MAX_PAGES: usize = OUT_HEADER_LEN + 28;
    if len < MAX_PAGES + 2 || offered & FUSE_MAX_PAGES == 0 {
        return;
    }
    let mut reply = vec![0u8; MAX_PAGES + 2];
    let mut spans = Vec::new();
    let mut at = 0;
    for d in chain.clone().writable() {
        if at == reply.len() {
            break;
        }
        let n = (d.len() as usize).min(reply.len() - at);
        if mem.read_slice(&mut reply[at..at + n], d.addr()).is_err() {
            return;
        }
        spans.push((d.addr(), at, n));
        at += n;
    }
    if at < reply.len() || reply[4..8] != [0; 4] {
        // Short (cannot happen after a full reply) or an error reply: leave it.
        return;
    }
    let word = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let flags = word(&reply, FLAGS) | FUSE_MAX_PAGES | (offered & FUSE_BIG_WRITES);
    reply[FLAGS..FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
    let max_write = u32::from(MAX_IO_PAGES) * 4096;
    reply[MAX_WRITE..MAX_WRITE + 4].copy_from_slice(&max_write.to_le_bytes());
    reply[MAX_PAGES..MAX_PAGES + 2].copy_from_slice(&MAX_IO_PAGES.to_le_bytes());
    for (addr, from, n) in spans {
        if let Err(e) = mem.write_slice(&reply[from..from + n], addr) {
            log::debug!("fs: cannot amend the INIT reply: {e}");
            return;
        }
    }
}

/// Checks that the chain ends properly, lies in guest memory and puts every device-readable
/// buffer before the device-writable ones (the shared chain checks); returns its readable and
/// writable byte counts.
fn check_chain(
    mem: &AliasMemory,
    chain: DescriptorChain<&AliasMemory>,
) -> Result<(usize, usize), FsRequestError> {
    let in_memory = |addr, len: u32| mem.check_range(AliasAddress(addr), len as usize);
    let lengths =
        chain::collect(chain, MAX_DESCRIPTORS).check(in_memory, Layout::ReadThenWriteBytes)?;
    // At most MAX_DESCRIPTORS buffers of u32 bytes each: the sums fit a 64-bit usize.
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    Ok((size(lengths.readable), size(lengths.writable)))
}

/// Writes a FUSE reply carrying only `-errno` (0: success without a body) into the chain's
/// writable buffers; returns the bytes written (0 when there is no room for a reply header).
fn reply_error(
    mem: &AliasMemory,
    chain: &DescriptorChain<&AliasMemory>,
    writable: usize,
    unique: u64,
    errno: i32,
) -> u32 {
    if writable < OUT_HEADER_LEN {
        return 0;
    }
    let header = OutHeader {
        len: OUT_HEADER_LEN as u32,
        error: -errno,
        unique,
    };
    match VirtioFsWriter::new(mem, chain.clone()).and_then(|mut w| {
        w.write_obj(header)
            .map_err(fuse_backend_rs::transport::Error::IoError)
    }) {
        Ok(()) => OUT_HEADER_LEN as u32,
        Err(e) => {
            log::debug!("fs: cannot write an error reply: {e}");
            0
        }
    }
}
