//! The virtio-net device: features and configuration space, the transmit and receive paths
//! between the guest's queues and the tap, and the tap's registration in the event loop.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::{
    tap, ETH_HLEN, MAX_DESCRIPTORS, MAX_FRAME_LEN, QUEUE_SIZE, RX_QUEUE, TAP_EVENT, TX_QUEUE,
    VNET_HDR_LEN,
};
use crate::config::RateLimitConfig;
use crate::devices::rate_limiter::RateLimiter;
use crate::devices::virtio::chain::{check_chain, in_guest_memory, ChainError, Layout};
use crate::devices::virtio::common::VirtioCommon;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, DeviceCounters, GuestMemory, Interrupt, LogCounter,
    VirtioDevice, VIRTIO_F_VERSION_1,
};

/// Configuration space: mac[6] and status of struct virtio_net_config.
const CONFIG_LEN: usize = 8;

/// Why a chain was refused.
#[derive(Debug, thiserror::Error)]
enum NetChainError {
    /// The chain's structure: empty, unterminated, outside guest memory, or a descriptor of
    /// the wrong direction for the queue (tx chains are device-readable, rx ones writable).
    #[error(transparent)]
    Chain(#[from] ChainError),
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

/// Event data of the rx and tx rate limiters' timers (the tap's is [`TAP_EVENT`]).
const RX_RATE_EVENT: u32 = TAP_EVENT + 1;
const TX_RATE_EVENT: u32 = TAP_EVENT + 2;

/// A virtio-net device backed by a tap.
#[derive(Debug)]
pub struct Net {
    tap: File,
    tap_name: String,
    mac: Option<[u8; 6]>,
    common: VirtioCommon,
    config: [u8; CONFIG_LEN],
    counters: DeviceCounters,
    /// A frame read from the tap (header included) waiting for an rx buffer.
    rx_frame: Vec<u8>,
    /// Length of the frame in `rx_frame`; 0 when there is none.
    rx_frame_len: usize,
    tx_frame: Vec<u8>,
    /// Frames lost on the host side (tap errors, runts from the tap).
    dropped_frames: LogCounter,
    /// The tap is in the event loop (registrations outlive resets).
    registered: bool,
    /// An error or hang-up of the tap was logged.
    warned_tap_state: bool,
    /// Limits on what the guest receives, and on what it sends.
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
    /// The limiters' timers are in the event loop.
    timers_registered: bool,
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
            common: VirtioCommon::new(avail_features, 2),
            config,
            counters: DeviceCounters::default(),
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_frame_len: 0,
            tx_frame: vec![0; MAX_FRAME_LEN],
            dropped_frames: LogCounter::default(),
            registered: false,
            warned_tap_state: false,
            rx_limiter: None,
            tx_limiter: None,
            timers_registered: false,
        }
    }

    /// Limits what the guest receives (`rx`) and sends (`tx`), as the configurations say.
    pub fn with_rate_limits(
        mut self,
        rx: Option<&RateLimitConfig>,
        tx: Option<&RateLimitConfig>,
    ) -> io::Result<Net> {
        self.rx_limiter = rx.map(RateLimiter::new).transpose()?.flatten();
        self.tx_limiter = tx.map(RateLimiter::new).transpose()?.flatten();
        Ok(self)
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
        self.common.acked_features()
    }

    /// Frames lost on the host side: tap write errors, unreadable or runt frames from the tap.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames.get()
    }

    /// Whether a frame read from the tap is waiting for the guest to post rx buffers.
    pub fn rx_deferred(&self) -> bool {
        self.rx_frame_len != 0
    }

    /// Sends every chain of the tx queue to the tap, then raises one interrupt.
    fn process_tx(&mut self) {
        let Some(active) = self.common.active_mut() else {
            return;
        };
        let tx = &mut active.queues[TX_QUEUE];
        let mem = &active.mem;
        let mut used_any = false;
        loop {
            // Over its limit, the tx queue waits for the limiter's timer.
            if self.tx_limiter.as_mut().is_some_and(|l| !l.ready()) {
                break;
            }
            let Some(chain) = tx.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match gather(mem, chain, &mut self.tx_frame) {
                Ok(len) => {
                    if let Some(l) = self.tx_limiter.as_mut() {
                        l.charge((len - VNET_HDR_LEN) as u64);
                    }
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
            match tx.add_used(mem, head, 0) {
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
        let Some(active) = self.common.active_mut() else {
            return;
        };
        let rx = &mut active.queues[RX_QUEUE];
        let mem = &active.mem;
        let mut used_any = false;
        loop {
            // Over its limit, frames wait in the tap (or in hand) for the limiter's timer.
            if self.rx_limiter.as_mut().is_some_and(|l| !l.ready()) {
                break;
            }
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
            let Some(chain) = rx.pop_descriptor_chain(mem) else {
                // No buffer: keep the frame; the guest's next rx kick resumes.
                break;
            };
            let head = chain.head_index();
            let frame_len = self.rx_frame_len;
            let used_len = match scatter(mem, chain, &mut self.rx_frame[..frame_len]) {
                Ok(()) => {
                    self.counters.completed((frame_len - VNET_HDR_LEN) as u64);
                    if let Some(l) = self.rx_limiter.as_mut() {
                        l.charge((frame_len - VNET_HDR_LEN) as u64);
                    }
                    self.rx_frame_len = 0;
                    // frame_len <= MAX_FRAME_LEN.
                    frame_len as u32
                }
                Err(e @ NetChainError::FrameTooBig { .. }) => {
                    // The guest's buffer is fine for smaller frames: keep it for the next one.
                    self.counters.bad_request("net", e);
                    self.rx_frame_len = 0;
                    rx.go_to_previous_position();
                    continue;
                }
                Err(e) => {
                    // A malformed chain goes back empty; the frame waits for the next chain.
                    self.counters.bad_request("net", e);
                    0
                }
            };
            match rx.add_used(mem, head, used_len) {
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
fn host_drop(dropped: &mut LogCounter, tap_name: &str, why: std::fmt::Arguments<'_>) {
    if let Some(n) = dropped.count() {
        log::warn!("net {tap_name}: dropped a frame ({n} so far): {why}");
    }
}

/// Copies a tx chain (header and frame) into `buf`; returns its length.
fn gather(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut [u8],
) -> Result<usize, NetChainError> {
    let chain = check_chain(
        chain,
        MAX_DESCRIPTORS,
        in_guest_memory(mem),
        Layout::ReadOnly,
    )?;
    let mut len = 0usize;
    for d in &chain.descs {
        let n = d.len() as usize;
        let end = len
            .checked_add(n)
            .filter(|&end| end <= buf.len())
            .ok_or(NetChainError::LongFrame)?;
        mem.read_slice(&mut buf[len..end], d.addr())
            .map_err(|_| ChainError::OutsideMemory {
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
    let chain = check_chain(
        chain,
        MAX_DESCRIPTORS,
        in_guest_memory(mem),
        Layout::WriteOnly,
    )?;
    let capacity = chain.lengths.writable;
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
    for d in &chain.descs {
        if off == frame.len() {
            break;
        }
        let n = (d.len() as usize).min(frame.len() - off);
        mem.write_slice(&frame[off..off + n], d.addr())
            .map_err(|_| ChainError::OutsideMemory {
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
        self.common.avail_features()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.common.ack_features(features);
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
        // Queue RX_QUEUE receives, TX_QUEUE transmits.
        self.common.activate(mem, interrupt, queues)
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
        if !self.timers_registered {
            for (l, data) in [
                (&self.rx_limiter, RX_RATE_EVENT),
                (&self.tx_limiter, TX_RATE_EVENT),
            ] {
                if let Some(l) = l {
                    if let Err(e) = ops.add(Events::with_data(l.timer(), data, EventSet::IN)) {
                        log::error!(
                            "net {}: cannot watch a rate limiter's timer: {e}",
                            self.tap_name
                        );
                    }
                }
            }
            self.timers_registered = true;
        }
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
        match events.data() {
            RX_RATE_EVENT => {
                if let Some(l) = self.rx_limiter.as_mut() {
                    l.timer_fired();
                }
                self.process_rx();
                return;
            }
            TX_RATE_EVENT => {
                if let Some(l) = self.tx_limiter.as_mut() {
                    l.timer_fired();
                }
                self.process_tx();
                return;
            }
            _ => {}
        }
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
        self.common.reset();
        self.rx_frame_len = 0;
        true
    }

    fn counters(&self) -> &DeviceCounters {
        &self.counters
    }
}
