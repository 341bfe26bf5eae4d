//! The virtio-mmio transport (virtio 1.2 section 4.2, version 2 register layout): the
//! registers a vCPU reads and writes, queue set-up, device status and activation, and the
//! event-loop subscriber that turns queue notifications (ioeventfds) into device work.
//!
//! When the device side cannot go on (invalid queues or a failed activation at DRIVER_OK,
//! DRIVER_OK without FEATURES_OK, a reset the device cannot do) the transport sets
//! DEVICE_NEEDS_RESET and raises a configuration-change interrupt, as virtio 1.2 section
//! 2.1.2 asks; FAILED is the driver's bit and the device never sets it.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::common::QueueConfig;
use super::status::{
    ACKNOWLEDGE as STATUS_ACKNOWLEDGE, DEVICE_NEEDS_RESET as STATUS_NEEDS_RESET,
    DRIVER as STATUS_DRIVER, DRIVER_OK as STATUS_DRIVER_OK, FEATURES_OK as STATUS_FEATURES_OK,
};
use super::{GuestMemory, Interrupt, VirtioDevice, TRANSPORT_EVENT_BASE, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;

/// Size of one device's MMIO window.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of the QueueNotify register (ioeventfds are bound to it).
pub const NOTIFY_OFFSET: u64 = regs::QUEUE_NOTIFY;

/// Register offsets in a device's window (virtio 1.2 section 4.2.2).
pub mod regs {
    /// MagicValue: "virt".
    pub const MAGIC_VALUE: u64 = 0x00;
    /// Version: 2, the non-legacy layout.
    pub const VERSION: u64 = 0x04;
    /// DeviceID: the virtio device type.
    pub const DEVICE_ID: u64 = 0x08;
    /// VendorID.
    pub const VENDOR_ID: u64 = 0x0c;
    /// DeviceFeatures: 32 bits of the offered features, chosen by DeviceFeaturesSel.
    pub const DEVICE_FEATURES: u64 = 0x10;
    /// DeviceFeaturesSel.
    pub const DEVICE_FEATURES_SEL: u64 = 0x14;
    /// DriverFeatures: 32 bits of the accepted features, chosen by DriverFeaturesSel.
    pub const DRIVER_FEATURES: u64 = 0x20;
    /// DriverFeaturesSel.
    pub const DRIVER_FEATURES_SEL: u64 = 0x24;
    /// QueueSel: the queue the queue registers below act on.
    pub const QUEUE_SEL: u64 = 0x30;
    /// QueueNumMax: the selected queue's largest size.
    pub const QUEUE_NUM_MAX: u64 = 0x34;
    /// QueueNum: the selected queue's size.
    pub const QUEUE_NUM: u64 = 0x38;
    /// QueueReady.
    pub const QUEUE_READY: u64 = 0x44;
    /// QueueNotify: the driver kicks a queue (bound to ioeventfds).
    pub const QUEUE_NOTIFY: u64 = 0x50;
    /// InterruptStatus.
    pub const INTERRUPT_STATUS: u64 = 0x60;
    /// InterruptACK.
    pub const INTERRUPT_ACK: u64 = 0x64;
    /// Status: the device status bits ([`crate::devices::virtio::status`]).
    pub const STATUS: u64 = 0x70;
    /// QueueDescLow: the descriptor table's address, low half.
    pub const QUEUE_DESC_LOW: u64 = 0x80;
    /// QueueDescHigh.
    pub const QUEUE_DESC_HIGH: u64 = 0x84;
    /// QueueDriverLow: the available ring's address, low half.
    pub const QUEUE_AVAIL_LOW: u64 = 0x90;
    /// QueueDriverHigh.
    pub const QUEUE_AVAIL_HIGH: u64 = 0x94;
    /// QueueDeviceLow: the used ring's address, low half.
    pub const QUEUE_USED_LOW: u64 = 0xa0;
    /// QueueDeviceHigh.
    pub const QUEUE_USED_HIGH: u64 = 0xa4;
    /// ConfigGeneration.
    pub const CONFIG_GENERATION: u64 = 0xfc;
    /// Start of the device's configuration space.
    pub const CONFIG: u64 = 0x100;
}

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4341_5250; // "PRAC"

const ACTIVATE_TOKEN: u32 = TRANSPORT_EVENT_BASE + 0xfff0;

/// One virtio device behind its MMIO registers.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    activate_evt: EventFd,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    /// DRIVER_OK was written; the event loop activates the device on its next turn.
    pending_activation: bool,
    activated: bool,
}

impl MmioTransport {
    /// Wraps `device`; its queues are sized by the device's maximums until the driver says.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemory) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("queue: {e:?}"))
            })?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new()?),
            queues,
            queue_evts,
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            pending_activation: false,
            activated: false,
        })
    }

    /// The device's name, for logs and the command line.
    pub fn name(&self) -> &str {
        self.device.name()
    }

    /// The interrupt line (bound to a GSI by the machine).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// One eventfd per queue, to bind to QueueNotify with KVM_IOEVENTFD (datamatch = index).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The wrapped device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the driver has set DRIVER_OK (and not reset the device since).
    pub fn driver_ok(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        // Queue set-up is only legal before DRIVER_OK (spec 4.2.3.2).
        if self.status & STATUS_DRIVER_OK != 0 {
            log::warn!(
                "{}: queue register written after DRIVER_OK; ignored",
                self.name()
            );
            return;
        }
        if let Some(q) = self.selected_queue() {
            f(q)
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            regs::MAGIC_VALUE => MAGIC,
            regs::VERSION => VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => {
                let features = self.device.avail_features() | VIRTIO_F_VERSION_1;
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            regs::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            regs::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            regs::INTERRUPT_STATUS => self.interrupt.status(),
            regs::STATUS => self.status,
            regs::CONFIG_GENERATION => self.config_generation,
            _ => {
                log::debug!("{}: read of unknown register {offset:#x}", self.name());
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            regs::DRIVER_FEATURES => {
                if self.status & STATUS_FEATURES_OK != 0 {
                    log::warn!(
                        "{}: features written after FEATURES_OK; ignored",
                        self.name()
                    );
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            regs::QUEUE_SEL => self.queue_sel = v,
            regs::QUEUE_NUM => self.with_queue(|q| q.set_size(v as u16)),
            regs::QUEUE_READY => self.with_queue(|q| q.set_ready(v == 1)),
            regs::QUEUE_NOTIFY => {
                // A notification that did not go through the ioeventfd (it always should).
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            regs::INTERRUPT_ACK => self.interrupt.ack(v),
            regs::STATUS => self.write_status(v),
            regs::QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            regs::QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            regs::QUEUE_AVAIL_LOW => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            regs::QUEUE_AVAIL_HIGH => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            regs::QUEUE_USED_LOW => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            regs::QUEUE_USED_HIGH => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => log::debug!("{}: write of unknown register {offset:#x}", self.name()),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let new_bits = v & !self.status;
        if v & self.status != self.status {
            log::warn!(
                "{}: driver cleared status bits ({:#x} -> {v:#x}); ignored",
                self.name(),
                self.status
            );
            return;
        }
        if new_bits & STATUS_FEATURES_OK != 0 {
            let offered = self.device.avail_features() | VIRTIO_F_VERSION_1;
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                log::warn!(
                    "{}: driver asked for features {:#x} beyond the offered {offered:#x} (or without VERSION_1); refusing FEATURES_OK",
                    self.name(),
                    self.driver_features
                );
                self.status = v & !STATUS_FEATURES_OK;
                return;
            }
            self.device.set_acked_features(self.driver_features);
        }
        if new_bits & STATUS_DRIVER_OK != 0 {
            let needed = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
            if v & needed != needed {
                log::warn!(
                    "{}: DRIVER_OK before FEATURES_OK; the device needs a reset",
                    self.name()
                );
                self.status = v;
                self.needs_reset();
                return;
            }
            self.pending_activation = true;
            let _ = self.activate_evt.write(1);
        }
        self.status = v;
    }

    fn reset(&mut self) {
        if self.activated || self.pending_activation {
            if !self.device.reset() {
                log::warn!(
                    "{}: the device cannot be reset after activation",
                    self.name()
                );
                self.needs_reset();
                return;
            }
            self.activated = false;
            self.pending_activation = false;
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
        for q in &mut self.queues {
            q.reset();
        }
    }

    /// The device cannot go on until the driver resets it: DEVICE_NEEDS_RESET, and a
    /// configuration-change interrupt so the driver looks at the status.
    fn needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    /// Activates the device if DRIVER_OK is pending (event loop thread).
    fn activate_if_pending(&mut self, ops: &mut EventOps) {
        if !self.pending_activation {
            return;
        }
        self.pending_activation = false;
        let ready: Vec<Queue> = self
            .queues
            .iter()
            .filter(|q| q.ready())
            .map(copy_queue)
            .collect();
        for (i, q) in ready.iter().enumerate() {
            if !q.is_valid(&self.mem) {
                log::warn!(
                    "{}: queue {i} is not valid (bad addresses or size); the device needs a reset",
                    self.name()
                );
                self.needs_reset();
                return;
            }
        }
        match self
            .device
            .activate(self.mem.clone(), self.interrupt.clone(), ready)
        {
            Ok(()) => {
                self.activated = true;
                self.device.register_backend(ops);
                log::debug!("{}: activated", self.name());
            }
            Err(e) => {
                log::warn!(
                    "{}: activation failed: {e}; the device needs a reset",
                    self.name()
                );
                self.needs_reset();
            }
        }
    }
}

/// A queue with the same configuration as `q` (virtio-queue's `Queue` is not `Clone`): the
/// device gets its own and the transport keeps its copy for register reads.
fn copy_queue(q: &Queue) -> Queue {
    QueueConfig::of(q)
        .to_queue()
        .expect("the max size was valid for the original")
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            self.device.read_config(offset - regs::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            log::debug!(
                "{}: {}-byte register read at {offset:#x} refused",
                self.name(),
                data.len()
            );
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            self.device.write_config(offset - regs::CONFIG, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "{}: {}-byte register write at {offset:#x} refused",
                self.name(),
                data.len()
            );
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

/// The event-loop side of a transport: activation and queue notifications.
pub struct MmioSubscriber(pub Arc<Mutex<MmioTransport>>);

impl MutEventSubscriber for MmioSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (i, evt) in t.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(
                evt,
                TRANSPORT_EVENT_BASE + i as u32,
                EventSet::IN,
            )) {
                log::error!("{}: cannot watch queue {i}: {e:?}", t.name());
            }
        }
        if let Err(e) = ops.add(Events::with_data(
            &t.activate_evt,
            ACTIVATE_TOKEN,
            EventSet::IN,
        )) {
            log::error!("{}: cannot watch activation: {e:?}", t.name());
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let data = events.data();
        if data == ACTIVATE_TOKEN {
            let _ = t.activate_evt.read();
            t.activate_if_pending(ops);
        } else if data >= TRANSPORT_EVENT_BASE {
            let index = (data - TRANSPORT_EVENT_BASE) as usize;
            if let Some(evt) = t.queue_evts.get(index) {
                let _ = evt.read();
            }
            t.activate_if_pending(ops);
            if t.activated {
                t.device.process_queue(index);
            }
        } else if t.activated {
            t.device.process_backend(events, ops);
        }
    }
}

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz;
#[cfg(test)]
mod tests;
