//! virtio-vsock (virtio 1.2 section 5.10) with a hybrid Unix-socket backend, as Firecracker's:
//! the device, its queues, and the checks every guest packet passes. Host processes reach
//! guest ports through one Unix socket (`CONNECT <port>\n`, answered `OK <host port>\n`);
//! guest connections to host port P reach the Unix socket `<path>_P`.
//!
//! The process must ignore SIGPIPE (Rust binaries do unless told otherwise): a host socket
//! whose peer went away then fails writes with EPIPE, and its connection is reset.
//!
//! Files: `mod.rs` the device and its queues, `packet.rs` the packet header,
//! `muxer.rs` the sockets and connection table, `connection.rs` one connection's state and
//! credit, `tests.rs` the tests driving it with mock queues, `fuzz.rs` its fuzz target's body.

mod connection;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz;
mod muxer;
mod packet;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;

use crate::devices::virtio::common::{ActiveState, VirtioCommon};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, DeviceCounters, GuestMemory, Interrupt, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use muxer::Muxer;
use packet::{
    chain_is_terminated, Header, HDR_LEN, MAX_PKT_DATA, OP_CREDIT_REQUEST, OP_REQUEST, TYPE_STREAM,
};

/// Queue indices.
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256; 3];

/// Event data of the backend's epoll fd in the event loop.
const BACKEND_TOKEN: u32 = 0;

/// Why a guest request was refused (logged and counted as a bad request), or why the guest
/// connection it belonged to was reset.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VsockError {
    /// The descriptor chain loops, or a descriptor points outside the table or memory.
    #[error("the descriptor chain does not end (a loop, or a next index past the table)")]
    UnterminatedChain,
    /// `virtio_vsock` refused the chain (too short, bad addresses, wrong directions, ...).
    #[error("the descriptor chain does not hold a valid packet: {0}")]
    Packet(virtio_vsock::packet::Error),
    /// An rx buffer with no room past the header.
    #[error("the rx buffer has no room for data")]
    NoRxData,
    /// The packet does not come from the guest's CID.
    #[error("the packet's source CID {0} is not the guest's")]
    WrongSourceCid(u64),
    /// Only stream sockets are offered.
    #[error("the packet type {0} is not stream (1)")]
    NotStream(u16),
    /// An op outside 1..=7.
    #[error("unknown operation {0}")]
    UnknownOp(u16),
    /// The guest sent more than the credit the device gave it.
    #[error("the guest sent {len} bytes with room for {room} (credit exceeded)")]
    CreditExceeded {
        /// Payload length.
        len: usize,
        /// Room left in the connection's buffer.
        room: usize,
    },
}

/// A virtio-vsock device whose host side is a Unix socket (see the module docs).
pub struct Vsock {
    guest_cid: u64,
    /// Features and what activation handed over (rx, tx and event queues, in that order).
    common: VirtioCommon,
    muxer: Muxer,
    counters: DeviceCounters,
    /// The backend's epoll fd is registered with the event loop (it stays across resets).
    registered: bool,
}

impl Vsock {
    /// A device giving the guest CID `guest_cid`, whose host side listens at `uds_path`.
    /// Fails if `guest_cid` is reserved (0-2) or above 32 bits, or if `uds_path` exists (the
    /// caller removes stale sockets). The socket file is removed when the device is dropped.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> io::Result<Vsock> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the guest CID {guest_cid} is reserved or does not fit 32 bits"),
            ));
        }
        Ok(Vsock {
            guest_cid,
            common: VirtioCommon::new(VIRTIO_F_VERSION_1, QUEUE_SIZES.len()),
            muxer: Muxer::new(guest_cid, uds_path)?,
            counters: DeviceCounters::default(),
            registered: false,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The Unix socket host processes connect to.
    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// Serves every ready backend socket, then fills rx buffers (what
    /// [`VirtioDevice::process_backend`] does, without the event loop).
    fn process_backend_events(&mut self) {
        self.muxer.process_events();
        if self.process_rx() {
            self.signal();
        }
    }

    fn signal(&self) {
        if let Some(a) = self.common.active() {
            a.interrupt.signal_used_queue();
        }
    }

    /// Hands pending packets to the guest while it has rx buffers. Returns whether any
    /// buffer was used.
    fn process_rx(&mut self) -> bool {
        let Some(ActiveState { mem, queues, .. }) = self.common.active_mut() else {
            return false;
        };
        let queue = &mut queues[RXQ];
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(mut chain) = queue.pop_descriptor_chain(&*mem) else {
                break;
            };
            let head = chain.head_index();
            let len = if !chain_is_terminated(&chain) {
                self.counters
                    .bad_request("vsock", VsockError::UnterminatedChain);
                0
            } else {
                match VsockPacket::from_rx_virtq_chain(&*mem, &mut chain, MAX_PKT_DATA) {
                    Err(e) => {
                        self.counters.bad_request("vsock", VsockError::Packet(e));
                        0
                    }
                    Ok(pkt) if pkt.data_slice().is_none() => {
                        self.counters.bad_request("vsock", VsockError::NoRxData);
                        0
                    }
                    Ok(mut pkt) => match self.muxer.recv_pkt(&mut pkt) {
                        Some(data_len) => {
                            self.counters.completed(u64::from(data_len));
                            HDR_LEN as u32 + data_len
                        }
                        None => {
                            // Nothing to send after all: leave the buffer to the guest.
                            queue.go_to_previous_position();
                            break;
                        }
                    },
                }
            };
            if let Err(e) = queue.add_used(&*mem, head, len) {
                log::error!("vsock: cannot return an rx buffer: {e:?}");
            }
            used = true;
        }
        used
    }

    /// Takes every packet the guest queued for sending. Returns whether any was.
    fn process_tx(&mut self) -> bool {
        let Some(ActiveState { mem, queues, .. }) = self.common.active_mut() else {
            return false;
        };
        let queue = &mut queues[TXQ];
        let mut used = false;
        while let Some(mut chain) = queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let original = chain.clone();
            let result = if chain_is_terminated(&chain) {
                match VsockPacket::from_tx_virtq_chain(&*mem, &mut chain, MAX_PKT_DATA) {
                    Ok(pkt) => {
                        let hdr = Header::of(&pkt);
                        check_tx(&hdr, self.guest_cid)
                            .and_then(|()| self.muxer.send_pkt(&hdr, pkt.data_slice()))
                            .map(|()| hdr.len)
                    }
                    // Linux sends data spread over several descriptors (skb fragments), which
                    // `virtio_vsock` takes for a too-short data buffer: gather it instead.
                    Err(virtio_vsock::packet::Error::DescriptorLengthTooSmall) => {
                        gather_tx(&*mem, original).and_then(|(hdr, mut data)| {
                            check_tx(&hdr, self.guest_cid)?;
                            let slice = (hdr.len > 0)
                                .then(|| vm_memory::VolatileSlice::from(&mut data[..]));
                            self.muxer.send_pkt(&hdr, slice.as_ref())?;
                            Ok(hdr.len)
                        })
                    }
                    Err(e) => Err(VsockError::Packet(e)),
                }
            } else {
                Err(VsockError::UnterminatedChain)
            };
            match result {
                Ok(len) => self.counters.completed(u64::from(len)),
                Err(e) => self.counters.bad_request("vsock", e),
            }
            // The device writes nothing into tx buffers.
            if let Err(e) = queue.add_used(&*mem, head, 0) {
                log::error!("vsock: cannot return a tx buffer: {e:?}");
            }
            used = true;
        }
        used
    }
}

/// Reads a tx packet whose header and data span any number of device-readable descriptors:
/// its header and exactly `len` bytes of data.
fn gather_tx<M>(
    mem: &GuestMemory,
    chain: virtio_queue::DescriptorChain<M>,
) -> Result<(Header, Vec<u8>), VsockError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemoryBackend,
{
    use vm_memory::Bytes;
    let mut bytes = Vec::new();
    for desc in chain {
        if desc.is_write_only() {
            return Err(VsockError::Packet(
                virtio_vsock::packet::Error::UnexpectedWriteOnlyDescriptor,
            ));
        }
        let have = bytes.len();
        let want = desc.len() as usize;
        if have + want > HDR_LEN + MAX_PKT_DATA as usize {
            return Err(VsockError::Packet(
                virtio_vsock::packet::Error::InvalidHeaderLen(want as u32),
            ));
        }
        bytes.resize(have + want, 0);
        mem.read_slice(&mut bytes[have..], desc.addr())
            .map_err(|_| {
                VsockError::Packet(virtio_vsock::packet::Error::DescriptorLengthTooSmall)
            })?;
    }
    let hdr = Header::parse(&bytes).ok_or(VsockError::Packet(
        virtio_vsock::packet::Error::DescriptorLengthTooSmall,
    ))?;
    if hdr.len > MAX_PKT_DATA || bytes.len() - HDR_LEN < hdr.len as usize {
        return Err(VsockError::Packet(
            virtio_vsock::packet::Error::DescriptorLengthTooSmall,
        ));
    }
    bytes.truncate(HDR_LEN + hdr.len as usize);
    Ok((hdr, bytes.split_off(HDR_LEN)))
}

/// The checks on a guest packet's header that do not depend on connections.
fn check_tx(hdr: &Header, guest_cid: u64) -> Result<(), VsockError> {
    if hdr.src_cid != guest_cid {
        return Err(VsockError::WrongSourceCid(hdr.src_cid));
    }
    if hdr.type_ != TYPE_STREAM {
        return Err(VsockError::NotStream(hdr.type_));
    }
    if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&hdr.op) {
        return Err(VsockError::UnknownOp(hdr.op));
    }
    Ok(())
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &str {
        "vsock"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.common.avail_features()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.common.ack_features(features);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.common.check_queue_count(&queues)?;
        self.muxer.start()?;
        self.common.set_active(mem, interrupt, queues);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        let used = match index {
            RXQ => self.process_rx(),
            // Replies (RESPONSE, RST, CREDIT_UPDATE) and data the new credit lets through go
            // out in the same turn.
            TXQ => self.process_tx() | self.process_rx(),
            // The device sends no events (only TRANSPORT_RESET exists, for migration).
            EVQ => false,
            _ => {
                log::debug!("vsock: notification for unknown queue {index}");
                false
            }
        };
        if used {
            self.signal();
        }
    }

    fn register_backend(&mut self, ops: &mut EventOps) {
        if self.registered {
            return;
        }
        let fd = self.muxer.epoll_fd();
        match ops.add(Events::with_data_raw(fd, BACKEND_TOKEN, EventSet::IN)) {
            Ok(()) => self.registered = true,
            Err(e) => log::error!("vsock: cannot watch the backend sockets: {e:?}"),
        }
    }

    fn process_backend(&mut self, _events: Events, _ops: &mut EventOps) {
        self.process_backend_events();
    }

    fn reset(&mut self) -> bool {
        self.muxer.reset();
        self.common.reset();
        true
    }

    fn counters(&self) -> &DeviceCounters {
        &self.counters
    }
}
