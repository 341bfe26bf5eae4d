//! The virtio-vsock packet header (virtio 1.2 section 5.10.6) as the device keeps it: its
//! fields, the operation and flag values, and the checks a guest descriptor chain must pass
//! before `virtio_vsock::packet::VsockPacket` parses it.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::GuestMemory as GuestMemoryTrait;

/// The host's CID: every connection of this device has the host at one end.
pub(crate) const HOST_CID: u64 = 2;

/// Size of the packet header in guest memory.
pub(crate) const HDR_LEN: usize = PKT_HEADER_SIZE;

/// Largest payload of one packet in either direction (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE;
/// the guest drops larger packets).
pub(crate) const MAX_PKT_DATA: u32 = 64 * 1024;

/// `type` of a stream socket packet, the only type this device offers.
pub(crate) const TYPE_STREAM: u16 = 1;

/// Connection request.
pub(crate) const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub(crate) const OP_RESPONSE: u16 = 2;
/// Connection reset (refused, aborted, or closed).
pub(crate) const OP_RST: u16 = 3;
/// One or both directions shut down (see the `SHUTDOWN_*` flags).
pub(crate) const OP_SHUTDOWN: u16 = 4;
/// Payload.
pub(crate) const OP_RW: u16 = 5;
/// The sender's buf_alloc/fwd_cnt changed.
pub(crate) const OP_CREDIT_UPDATE: u16 = 6;
/// The sender asks for an OP_CREDIT_UPDATE.
pub(crate) const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub(crate) const SHUTDOWN_RECEIVE: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub(crate) const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub(crate) const SHUTDOWN_BOTH: u32 = SHUTDOWN_RECEIVE | SHUTDOWN_SEND;

/// A packet header, copied out of (or to be written into) guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// The header of a packet the guest placed on the tx queue.
    pub fn of<B: BitmapSlice>(pkt: &VsockPacket<'_, B>) -> Self {
        Header {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// A header from the first [`HDR_LEN`] bytes of `bytes` (little-endian, virtio layout).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..HDR_LEN)?;
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Some(Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }

    /// An RST answering `self` (a packet from the guest): addresses swapped, no credit.
    pub fn rst_reply(&self) -> Self {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        }
    }

    /// The little-endian wire layout.
    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses the wire layout (tests read what the device wrote into rx buffers).
    #[cfg(test)]
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// Whether the chain ends with a descriptor without NEXT. `VsockPacket` looks at the first two
/// descriptors only, and the chain iterator silently stops at a loop (after queue-size
/// descriptors), a next index past the table or an unreadable descriptor: all malformed.
pub(crate) fn chain_is_terminated<M>(chain: &DescriptorChain<M>) -> bool
where
    M: Deref + Clone,
    M::Target: GuestMemoryTrait,
{
    let mut last_has_next = true;
    for desc in chain.clone() {
        last_has_next = desc.has_next();
    }
    !last_has_next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_round_trip() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234,
            dst_port: 52,
            len: 7,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 1,
            buf_alloc: 4096,
            fwd_cnt: 99,
        };
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        let r = h.rst_reply();
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
            (2, 3, 52, 0x1234)
        );
        assert_eq!((r.op, r.len, r.buf_alloc), (OP_RST, 0, 0));
    }
}
