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

use super::{GuestMemory, Interrupt, VirtioDevice, TRANSPORT_EVENT_BASE, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;

/// Size of one device's MMIO window.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of the QueueNotify register (ioeventfds are bound to it).
pub const NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4341_5250; // "PRAC"

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;

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
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let features = self.device.avail_features() | VIRTIO_F_VERSION_1;
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => {
                log::debug!("{}: read of unknown register {offset:#x}", self.name());
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => {
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
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => self.with_queue(|q| q.set_size(v as u16)),
            0x44 => self.with_queue(|q| q.set_ready(v == 1)),
            0x50 => {
                // A notification that did not go through the ioeventfd (it always should).
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.write_status(v),
            0x80 => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            0x84 => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            0x90 => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            0x94 => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            0xa0 => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            0xa4 => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
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
    let mut c = Queue::new(q.max_size()).expect("the max size was valid for the original");
    c.set_size(q.size());
    c.set_desc_table_address(
        Some(q.desc_table() as u32),
        Some((q.desc_table() >> 32) as u32),
    );
    c.set_avail_ring_address(
        Some(q.avail_ring() as u32),
        Some((q.avail_ring() >> 32) as u32),
    );
    c.set_used_ring_address(
        Some(q.used_ring() as u32),
        Some((q.used_ring() >> 32) as u32),
    );
    c.set_ready(q.ready());
    c
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
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
        if offset >= 0x100 {
            self.device.write_config(offset - 0x100, data);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{ActivateError, DeviceCounters, INT_CONFIG_CHANGE};
    use event_manager::{EventManager, SubscriberOps};
    use vm_memory::GuestAddress;

    const STATUS_FAILED: u32 = 0x80;
    const MEM: u64 = 0x10000;

    /// A device with one queue whose activation fails when `fail` is set.
    struct Dummy {
        fail: bool,
        activated: Arc<Mutex<bool>>,
        counters: DeviceCounters,
    }

    impl VirtioDevice for Dummy {
        fn name(&self) -> &str {
            "dummy"
        }
        fn device_type(&self) -> u32 {
            0x1234
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn set_acked_features(&mut self, _features: u64) {}
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn activate(
            &mut self,
            _mem: GuestMemory,
            _interrupt: Arc<Interrupt>,
            _queues: Vec<Queue>,
        ) -> Result<(), ActivateError> {
            if self.fail {
                return Err(ActivateError::Backend(std::io::Error::other("no backend")));
            }
            *self.activated.lock().unwrap() = true;
            Ok(())
        }
        fn process_queue(&mut self, _index: usize) {}
        fn reset(&mut self) -> bool {
            true
        }
        fn counters(&self) -> &DeviceCounters {
            &self.counters
        }
    }

    fn write(t: &Arc<Mutex<MmioTransport>>, offset: u64, v: u32) {
        t.lock().unwrap().write(offset, &v.to_le_bytes());
    }

    fn read(t: &Arc<Mutex<MmioTransport>>, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.lock().unwrap().read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// A transport over `Dummy`, set up by a driver up to DRIVER_OK with queue 0's rings at
    /// `ring_base`, and activated by an event loop turn.
    fn driver_ok(fail: bool, ring_base: u64) -> (Arc<Mutex<MmioTransport>>, Arc<Mutex<bool>>) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let activated = Arc::new(Mutex::new(false));
        let dev = Dummy {
            fail,
            activated: activated.clone(),
            counters: DeviceCounters::default(),
        };
        let t = Arc::new(Mutex::new(MmioTransport::new(Box::new(dev), mem).unwrap()));
        let base = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
        write(&t, 0x70, base);
        write(&t, 0x24, 1);
        write(&t, 0x20, 1); // VERSION_1, bit 32
        write(&t, 0x70, base | STATUS_FEATURES_OK);
        write(&t, 0x30, 0);
        write(&t, 0x38, 16);
        write(&t, 0x80, ring_base as u32);
        write(&t, 0x90, (ring_base + 0x100) as u32);
        write(&t, 0xa0, (ring_base + 0x200) as u32);
        write(&t, 0x44, 1);
        write(&t, 0x70, base | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        let mut em: EventManager<Box<dyn MutEventSubscriber + Send>> = EventManager::new().unwrap();
        em.add_subscriber(Box::new(MmioSubscriber(t.clone())));
        em.run_with_timeout(1000).unwrap();
        (t, activated)
    }

    fn assert_needs_reset(t: &Arc<Mutex<MmioTransport>>) {
        let status = read(t, 0x70);
        assert_ne!(status & STATUS_NEEDS_RESET, 0, "{status:#x}");
        assert_eq!(
            status & STATUS_FAILED,
            0,
            "FAILED is the driver's: {status:#x}"
        );
        assert_ne!(read(t, 0x60) & INT_CONFIG_CHANGE, 0);
        assert!(t.lock().unwrap().interrupt().eventfd().read().unwrap() >= 1);
        // The driver's reset clears it.
        write(t, 0x70, 0);
        assert_eq!(read(t, 0x70), 0);
    }

    #[test]
    fn a_device_that_activates_gets_no_needs_reset() {
        let (t, activated) = driver_ok(false, 0x1000);
        assert!(*activated.lock().unwrap());
        assert_eq!(read(&t, 0x70) & STATUS_NEEDS_RESET, 0);
        assert_eq!(read(&t, 0x60), 0);
    }

    #[test]
    fn a_failed_activation_sets_needs_reset_and_signals_a_config_change() {
        let (t, activated) = driver_ok(true, 0x1000);
        assert!(!*activated.lock().unwrap());
        assert_needs_reset(&t);
    }

    #[test]
    fn an_invalid_queue_sets_needs_reset_and_the_device_is_not_activated() {
        // Rings past the end of guest memory.
        let (t, activated) = driver_ok(false, MEM + 0x1000);
        assert!(!*activated.lock().unwrap());
        assert_needs_reset(&t);
    }

    #[test]
    fn driver_ok_without_features_ok_sets_needs_reset() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let dev = Dummy {
            fail: false,
            activated: Arc::new(Mutex::new(false)),
            counters: DeviceCounters::default(),
        };
        let t = Arc::new(Mutex::new(MmioTransport::new(Box::new(dev), mem).unwrap()));
        write(
            &t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        assert!(!t.lock().unwrap().pending_activation);
        assert_needs_reset(&t);
    }
}
