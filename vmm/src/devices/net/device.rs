//! The virtio-net device: features and configuration space, the transmit and receive paths
//! between the guest's queues and the tap, and the tap's registration in the event loop.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};

use super::{
    tap, ETH_HLEN, MAX_DESCRIPTORS, MAX_FRAME_LEN, QUEUE_SIZE, RX_QUEUE, TAP_EVENT, TX_QUEUE,
    VNET_HDR_LEN,
};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, DeviceCounters, GuestMemory, Interrupt, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Configuration space: mac[6] and status of struct virtio_net_config.
const CONFIG_LEN: usize = 8;

/// Why a chain was refused.
#[derive(Debug, thiserror::Error)]
enum NetChainError {
    /// The chain has no descriptor at all.
    #[error("the descriptor chain is empty (bad head index or descriptor table)")]
    Empty,
    /// A loop, a bad next index, or too many descriptors.
    #[error("the descriptor chain loops, has a bad next index or is longer than {MAX_DESCRIPTORS} descriptors")]
    Unterminated,
    /// A descriptor points outside guest memory.
    #[error("a {len}-byte descriptor at {addr:#x} lies outside guest memory")]
    OutsideMemory {
        /// Guest physical address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A descriptor of the wrong direction for the queue.
    #[error("a device-{found} descriptor in a {queue} chain")]
    WrongDirection {
        /// "readable" or "writable".
        found: &'static str,
        /// "rx" or "tx".
        queue: &'static str,
    },
    /// A transmitted frame too short to carry the header and an Ethernet header.
    #[error("a {0}-byte tx chain cannot hold the virtio-net header and an Ethernet header")]
    ShortFrame(usize),
    /// A transmitted frame longer than the device moves.
    #[error("a tx chain of more than {MAX_FRAME_LEN} bytes")]
    LongFrame,
    /// An rx chain smaller than the virtio-net header.
    #[error("a {0}-byte rx chain cannot hold the virtio-net header")]
    ShortBuffer(u64),
    /// A received frame larger than the guest's buffer (dropped; the buffer is kept).
    #[error("a {frame}-byte frame does not fit a {buffer}-byte rx chain; frame dropped")]
    FrameTooBig {
        /// Header and frame length.
        frame: usize,
        /// Bytes in the chain.
        buffer: u64,
    },
}

/// A virtio-net device backed by a tap.
#[derive(Debug)]
pub struct Net {
    tap: File,
    tap_name: String,
    mac: Option<[u8; 6]>,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    counters: DeviceCounters,
    /// A frame read from the tap (header included) waiting for an rx buffer.
    rx_frame: Vec<u8>,
    /// Length of the frame in `rx_frame`; 0 when there is none.
    rx_frame_len: usize,
    tx_frame: Vec<u8>,
    /// Frames lost on the host side (tap errors, runts from the tap).
    dropped_frames: u64,
    /// The tap is in the event loop (registrations outlive resets).
    registered: bool,
    /// An error or hang-up of the tap was logged.
    warned_tap_state: bool,
    active: Option<Active>,
}

/// What the device holds between activation and reset.
#[derive(Debug)]
struct Active {
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    rx: Queue,
    tx: Queue,
}

impl Net {
    /// Creates the tap `name` (or attaches to the existing one) through `/dev/net/tun`, with
    /// a 12-byte virtio-net header, non-blocking. `mac` is offered to the guest
    /// (VIRTIO_NET_F_MAC); without it the guest picks its own.
    pub fn with_tap_name(name: &str, mac: Option<[u8; 6]>) -> io::Result<Net> {
        let (tap, tap_name) = tap::open_named(name)?;
        Ok(Net::with_backend(tap, tap_name, mac))
    }

    /// Takes a tap someone else opened (for example in another network namespace). It must
    /// have been created with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR; its header size is set to
    /// 12 bytes and it is made non-blocking.
    pub fn with_tap_fd(fd: OwnedFd, mac: Option<[u8; 6]>) -> io::Result<Net> {
        let (tap, tap_name) = tap::adopt(fd)?;
        Ok(Net::with_backend(tap, tap_name, mac))
    }

    /// A device over any non-blocking packet fd that carries a 12-byte header before each
    /// frame, as a tap configured by [`Net::with_tap_fd`] does (tests use a datagram socket).
    pub(super) fn with_backend(tap: File, tap_name: String, mac: Option<[u8; 6]>) -> Net {
        let mut avail_features = VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_STATUS;
        let mut config = [0u8; CONFIG_LEN];
        if let Some(mac) = mac {
            avail_features |= 1 << VIRTIO_NET_F_MAC;
            config[..6].copy_from_slice(&mac);
        }
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Net {
            tap,
            tap_name,
            mac,
            avail_features,
            acked_features: 0,
            config,
            counters: DeviceCounters::default(),
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_frame_len: 0,
            tx_frame: vec![0; MAX_FRAME_LEN],
            dropped_frames: 0,
            registered: false,
            warned_tap_state: false,
            active: None,
        }
    }

    /// The tap's interface name.
    pub fn tap_name(&self) -> &str {
        &self.tap_name
    }

    /// The MAC address offered to the guest, if any.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.mac
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Frames lost on the host side: tap write errors, unreadable or runt frames from the tap.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames
    }

    /// Whether a frame read from the tap is waiting for the guest to post rx buffers.
    pub fn rx_deferred(&self) -> bool {
        self.rx_frame_len != 0
    }

    /// Sends every chain of the tx queue to the tap, then raises one interrupt.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = active.tx.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            match gather(&active.mem, chain, &mut self.tx_frame) {
                Ok(len) => {
                    // No offload was negotiated: the header carries nothing the tap may act on.
                    self.tx_frame[..VNET_HDR_LEN].fill(0);
                    match (&self.tap).write(&self.tx_frame[..len]) {
                        Ok(n) if n == len => self.counters.completed((len - VNET_HDR_LEN) as u64),
                        // A tap takes a frame whole or not at all; say so if one did not.
                        Ok(n) => host_drop(
                            &mut self.dropped_frames,
                            &self.tap_name,
                            format_args!("the tap took {n} of {len} bytes"),
                        ),
                        Err(e) => host_drop(
                            &mut self.dropped_frames,
                            &self.tap_name,
                            format_args!("tap write: {e}"),
                        ),
                    }
                }
                Err(why) => self.counters.bad_request("net", why),
            }
            match active.tx.add_used(&active.mem, head, 0) {
                Ok(()) => used_any = true,
                Err(e) => log::debug!("net: cannot return tx chain {head}: {e}"),
            }
        }
        if used_any {
            active.interrupt.signal_used_queue();
        }
    }

    /// Moves frames from the tap into the guest's rx buffers until the tap is drained or the
    /// guest has no buffer left (the frame in hand is then kept), then raises one interrupt.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        loop {
            if self.rx_frame_len == 0 {
                match (&self.tap).read(&mut self.rx_frame) {
                    // End of file: not a tap state, but a stand-in's; nothing to read.
                    Ok(0) => break,
                    Ok(n) if n < VNET_HDR_LEN + ETH_HLEN => {
                        host_drop(
                            &mut self.dropped_frames,
                            &self.tap_name,
                            format_args!("a {n}-byte frame from the tap is too short"),
                        );
                        continue;
                    }
                    Ok(n) => self.rx_frame_len = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        host_drop(
                            &mut self.dropped_frames,
                            &self.tap_name,
                            format_args!("tap read: {e}"),
                        );
                        break;
                    }
                }
            }
            let Some(chain) = active.rx.pop_descriptor_chain(&active.mem) else {
                // No buffer: keep the frame; the guest's next rx kick resumes.
                break;
            };
            let head = chain.head_index();
            let frame_len = self.rx_frame_len;
            let used_len = match scatter(&active.mem, chain, &mut self.rx_frame[..frame_len]) {
                Ok(()) => {
                    self.counters.completed((frame_len - VNET_HDR_LEN) as u64);
                    self.rx_frame_len = 0;
                    // frame_len <= MAX_FRAME_LEN.
                    frame_len as u32
                }
                Err(e @ NetChainError::FrameTooBig { .. }) => {
                    // The guest's buffer is fine for smaller frames: keep it for the next one.
                    self.counters.bad_request("net", e);
                    self.rx_frame_len = 0;
                    active.rx.go_to_previous_position();
                    continue;
                }
                Err(e) => {
                    // A malformed chain goes back empty; the frame waits for the next chain.
                    self.counters.bad_request("net", e);
                    0
                }
            };
            match active.rx.add_used(&active.mem, head, used_len) {
                Ok(()) => used_any = true,
                Err(e) => log::debug!("net: cannot return rx chain {head}: {e}"),
            }
        }
        if used_any {
            active.interrupt.signal_used_queue();
        }
    }
}

/// Counts a frame lost on the host side and logs why (rate-limited: the host's traffic must
/// not flood the logs).
fn host_drop(dropped: &mut u64, tap_name: &str, why: std::fmt::Arguments<'_>) {
    *dropped += 1;
    let n = *dropped;
    if n <= 10 || n.is_power_of_two() {
        log::warn!("net {tap_name}: dropped a frame ({n} so far): {why}");
    }
}

/// The descriptors of `chain` (at most `MAX_DESCRIPTORS`), checked to end properly and to lie
/// in guest memory. virtio-queue's iterator stops silently on loops, bad next indices and
/// unreadable descriptors; a chain cut short by any of these ends on a descriptor that still
/// says NEXT.
fn checked_descriptors(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> Result<Vec<Descriptor>, NetChainError> {
    let descs: Vec<Descriptor> = chain.take(MAX_DESCRIPTORS + 1).collect();
    match descs.last() {
        None => return Err(NetChainError::Empty),
        Some(last) if last.has_next() || descs.len() > MAX_DESCRIPTORS => {
            return Err(NetChainError::Unterminated)
        }
        Some(_) => {}
    }
    for d in &descs {
        if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return Err(NetChainError::OutsideMemory {
                addr: d.addr().0,
                len: d.len(),
            });
        }
    }
    Ok(descs)
}

/// Copies a tx chain (header and frame) into `buf`; returns its length.
fn gather(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut [u8],
) -> Result<usize, NetChainError> {
    let descs = checked_descriptors(mem, chain)?;
    let mut len = 0usize;
    for d in &descs {
        if d.is_write_only() {
            return Err(NetChainError::WrongDirection {
                found: "writable",
                queue: "tx",
            });
        }
        let n = d.len() as usize;
        let end = len
            .checked_add(n)
            .filter(|&end| end <= buf.len())
            .ok_or(NetChainError::LongFrame)?;
        mem.read_slice(&mut buf[len..end], d.addr())
            .map_err(|_| NetChainError::OutsideMemory {
                addr: d.addr().0,
                len: d.len(),
            })?;
        len = end;
    }
    if len < VNET_HDR_LEN + ETH_HLEN {
        return Err(NetChainError::ShortFrame(len));
    }
    Ok(len)
}

/// Writes a received frame (header included) into an rx chain, with the header zeroed but
/// for num_buffers = 1.
fn scatter(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    frame: &mut [u8],
) -> Result<(), NetChainError> {
    let descs = checked_descriptors(mem, chain)?;
    if descs.iter().any(|d| !d.is_write_only()) {
        return Err(NetChainError::WrongDirection {
            found: "readable",
            queue: "rx",
        });
    }
    let capacity: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if capacity < VNET_HDR_LEN as u64 {
        return Err(NetChainError::ShortBuffer(capacity));
    }
    if frame.len() as u64 > capacity {
        return Err(NetChainError::FrameTooBig {
            frame: frame.len(),
            buffer: capacity,
        });
    }
    // No offload was negotiated: flags and GSO fields stay zero whatever the tap said, and
    // without VIRTIO_NET_F_MRG_RXBUF every frame takes one buffer.
    frame[..VNET_HDR_LEN - 2].fill(0);
    frame[VNET_HDR_LEN - 2..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
    let mut off = 0;
    for d in &descs {
        if off == frame.len() {
            break;
        }
        let n = (d.len() as usize).min(frame.len() - off);
        mem.write_slice(&frame[off..off + n], d.addr())
            .map_err(|_| NetChainError::OutsideMemory {
                addr: d.addr().0,
                len: d.len(),
            })?;
        off += n;
    }
    Ok(())
}

impl VirtioDevice for Net {
    fn name(&self) -> &str {
        "net"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let Ok([rx, tx]) = <[Queue; 2]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        self.active = Some(Active {
            mem,
            interrupt,
            rx,
            tx,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            // New rx buffers: deliver the deferred frame and whatever else the tap holds.
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => log::warn!("net: notification for queue {index}, which does not exist"),
        }
    }

    fn register_backend(&mut self, ops: &mut EventOps) {
        if self.registered {
            return;
        }
        // Edge-triggered: the device reads until the tap is empty or the guest has no buffer,
        // and with no buffer it must not be woken again and again by the same frames; the
        // guest's rx kick resumes reading.
        let events = Events::with_data(
            &self.tap,
            TAP_EVENT,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        );
        match ops.add(events) {
            Ok(()) => self.registered = true,
            Err(e) => log::error!("net {}: cannot watch the tap: {e}", self.tap_name),
        }
    }

    fn process_backend(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() != TAP_EVENT {
            log::debug!("net: event for unknown data {}", events.data());
            return;
        }
        let set = events.event_set();
        if set.intersects(EventSet::ERROR | EventSet::HANG_UP) && !self.warned_tap_state {
            // Edge-triggered, so this cannot spin; say it once.
            log::warn!("net {}: the tap reported {set:?}", self.tap_name);
            self.warned_tap_state = true;
        }
        if set.contains(EventSet::IN) {
            self.process_rx();
        }
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        self.rx_frame_len = 0;
        true
    }

    fn counters(&self) -> &DeviceCounters {
        &self.counters
    }
}
