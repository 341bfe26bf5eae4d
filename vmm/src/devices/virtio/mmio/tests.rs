//! Tests of the virtio-mmio transport against dummy devices, register by register as a
//! driver drives it: identity, feature negotiation, status transitions (DEVICE_NEEDS_RESET
//! included), queue configuration, interrupts and configuration space.

use super::*;
use crate::devices::virtio::common::QueueConfig;
use crate::devices::virtio::status::FAILED as STATUS_FAILED;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, DeviceCounters, INT_CONFIG_CHANGE, INT_USED_RING,
};
use event_manager::{EventManager, SubscriberOps};
use vm_memory::GuestAddress;

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
    write(&t, regs::STATUS, base);
    write(&t, regs::DRIVER_FEATURES_SEL, 1);
    write(&t, regs::DRIVER_FEATURES, 1); // VERSION_1, bit 32
    write(&t, regs::STATUS, base | STATUS_FEATURES_OK);
    write(&t, regs::QUEUE_SEL, 0);
    write(&t, regs::QUEUE_NUM, 16);
    write(&t, regs::QUEUE_DESC_LOW, ring_base as u32);
    write(&t, regs::QUEUE_AVAIL_LOW, (ring_base + 0x100) as u32);
    write(&t, regs::QUEUE_USED_LOW, (ring_base + 0x200) as u32);
    write(&t, regs::QUEUE_READY, 1);
    write(
        &t,
        regs::STATUS,
        base | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    let mut em: EventManager<Box<dyn MutEventSubscriber + Send>> = EventManager::new().unwrap();
    em.add_subscriber(Box::new(MmioSubscriber(t.clone())));
    em.run_with_timeout(1000).unwrap();
    (t, activated)
}

fn assert_needs_reset(t: &Arc<Mutex<MmioTransport>>) {
    let status = read(t, regs::STATUS);
    assert_ne!(status & STATUS_NEEDS_RESET, 0, "{status:#x}");
    assert_eq!(
        status & STATUS_FAILED,
        0,
        "FAILED is the driver's: {status:#x}"
    );
    assert_ne!(read(t, regs::INTERRUPT_STATUS) & INT_CONFIG_CHANGE, 0);
    assert!(t.lock().unwrap().interrupt().eventfd().read().unwrap() >= 1);
    // The driver's reset clears it.
    write(t, regs::STATUS, 0);
    assert_eq!(read(t, regs::STATUS), 0);
}

#[test]
fn a_device_that_activates_gets_no_needs_reset() {
    let (t, activated) = driver_ok(false, 0x1000);
    assert!(*activated.lock().unwrap());
    assert_eq!(read(&t, regs::STATUS) & STATUS_NEEDS_RESET, 0);
    assert_eq!(read(&t, regs::INTERRUPT_STATUS), 0);
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
        regs::STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
    );
    assert!(!t.lock().unwrap().pending_activation);
    assert_needs_reset(&t);
}

// Below: a device that records what the transport tells it, driven through the named
// registers.

/// Offered besides VERSION_1: bits 0 and 5, and bit 33 in the high half.
const OFFERED: u64 = VIRTIO_F_VERSION_1 | 1 | 1 << 5 | 1 << 33;
const CONFIG: [u8; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

/// What the recording device was told.
#[derive(Default)]
struct Seen {
    acked: Option<u64>,
    queues: Option<Vec<QueueConfig>>,
    config_writes: Vec<(u64, Vec<u8>)>,
    resets: u32,
}

/// A device with two queues (16 and 32), a 10-byte configuration space, and a reset that
/// works unless `resettable` is false.
struct Recorder {
    seen: Arc<Mutex<Seen>>,
    resettable: bool,
    counters: DeviceCounters,
}

impl VirtioDevice for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 32]
    }
    fn avail_features(&self) -> u64 {
        OFFERED
    }
    fn set_acked_features(&mut self, features: u64) {
        self.seen.lock().unwrap().acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&CONFIG, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.seen
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _mem: GuestMemory,
        _interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.seen.lock().unwrap().queues = Some(queues.iter().map(QueueConfig::of).collect());
        Ok(())
    }
    fn process_queue(&mut self, _index: usize) {}
    fn reset(&mut self) -> bool {
        self.seen.lock().unwrap().resets += 1;
        self.resettable
    }
    fn counters(&self) -> &DeviceCounters {
        &self.counters
    }
}

fn recorder(resettable: bool) -> (Arc<Mutex<MmioTransport>>, Arc<Mutex<Seen>>) {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let dev = Recorder {
        seen: seen.clone(),
        resettable,
        counters: DeviceCounters::default(),
    };
    let t = Arc::new(Mutex::new(MmioTransport::new(Box::new(dev), mem).unwrap()));
    (t, seen)
}

/// Writes the 64 bits of `features` through DriverFeaturesSel 0 and 1.
fn write_features(t: &Arc<Mutex<MmioTransport>>, features: u64) {
    write(t, regs::DRIVER_FEATURES_SEL, 0);
    write(t, regs::DRIVER_FEATURES, features as u32);
    write(t, regs::DRIVER_FEATURES_SEL, 1);
    write(t, regs::DRIVER_FEATURES, (features >> 32) as u32);
}

/// Sets queue `index` up with `size` and rings at `base`, and makes it ready.
fn set_up_queue(t: &Arc<Mutex<MmioTransport>>, index: u32, size: u32, base: u64) {
    write(t, regs::QUEUE_SEL, index);
    write(t, regs::QUEUE_NUM, size);
    write(t, regs::QUEUE_DESC_LOW, base as u32);
    write(t, regs::QUEUE_DESC_HIGH, (base >> 32) as u32);
    write(t, regs::QUEUE_AVAIL_LOW, (base + 0x400) as u32);
    write(t, regs::QUEUE_AVAIL_HIGH, 0);
    write(t, regs::QUEUE_USED_LOW, (base + 0x800) as u32);
    write(t, regs::QUEUE_USED_HIGH, 0);
    write(t, regs::QUEUE_READY, 1);
}

/// One event loop turn over the transport (activation, queue notifications).
fn run_event_loop(t: &Arc<Mutex<MmioTransport>>) {
    let mut em: EventManager<Box<dyn MutEventSubscriber + Send>> = EventManager::new().unwrap();
    em.add_subscriber(Box::new(MmioSubscriber(t.clone())));
    em.run_with_timeout(1000).unwrap();
}

const NEGOTIATING: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER;

#[test]
fn identity_registers() {
    let (t, _) = recorder(true);
    assert_eq!(read(&t, regs::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read(&t, regs::VERSION), 2);
    assert_eq!(read(&t, regs::DEVICE_ID), 4);
    assert_eq!(read(&t, regs::VENDOR_ID), VENDOR_ID);
    assert_eq!(read(&t, regs::STATUS), 0);
    assert_eq!(NOTIFY_OFFSET, regs::QUEUE_NOTIFY);
}

#[test]
fn device_features_are_read_32_bits_at_a_time() {
    let (t, _) = recorder(true);
    assert_eq!(read(&t, regs::DEVICE_FEATURES), OFFERED as u32);
    write(&t, regs::DEVICE_FEATURES_SEL, 1);
    assert_eq!(read(&t, regs::DEVICE_FEATURES), (OFFERED >> 32) as u32);
    // Past the 64 bits: nothing.
    write(&t, regs::DEVICE_FEATURES_SEL, 2);
    assert_eq!(read(&t, regs::DEVICE_FEATURES), 0);
}

#[test]
fn offered_features_are_accepted_at_features_ok() {
    let (t, seen) = recorder(true);
    write(&t, regs::STATUS, NEGOTIATING);
    let wanted = VIRTIO_F_VERSION_1 | 1 << 5 | 1 << 33;
    write_features(&t, wanted);
    // A selector past 1 writes nothing.
    write(&t, regs::DRIVER_FEATURES_SEL, 2);
    write(&t, regs::DRIVER_FEATURES, u32::MAX);
    write(&t, regs::STATUS, NEGOTIATING | STATUS_FEATURES_OK);
    assert_eq!(read(&t, regs::STATUS), NEGOTIATING | STATUS_FEATURES_OK);
    assert_eq!(seen.lock().unwrap().acked, Some(wanted));
    // Features are fixed once FEATURES_OK is set.
    write_features(&t, VIRTIO_F_VERSION_1);
    assert_eq!(t.lock().unwrap().driver_features, wanted);
}

#[test]
fn features_beyond_the_offer_or_without_version_1_are_refused() {
    for features in [OFFERED | 1 << 7, OFFERED | 1 << 40, 1 | 1 << 5] {
        let (t, seen) = recorder(true);
        write(&t, regs::STATUS, NEGOTIATING);
        write_features(&t, features);
        write(&t, regs::STATUS, NEGOTIATING | STATUS_FEATURES_OK);
        // FEATURES_OK does not stick and the device hears of nothing.
        assert_eq!(read(&t, regs::STATUS), NEGOTIATING, "{features:#x}");
        assert_eq!(seen.lock().unwrap().acked, None, "{features:#x}");
        // DRIVER_OK without FEATURES_OK: the device needs a reset.
        write(&t, regs::STATUS, NEGOTIATING | STATUS_DRIVER_OK);
        assert_ne!(read(&t, regs::STATUS) & STATUS_NEEDS_RESET, 0);
        assert!(!t.lock().unwrap().pending_activation);
    }
}

#[test]
fn the_driver_cannot_clear_status_bits_but_a_reset_clears_everything() {
    let (t, seen) = recorder(true);
    write(&t, regs::STATUS, NEGOTIATING);
    write_features(&t, VIRTIO_F_VERSION_1);
    write(&t, regs::STATUS, NEGOTIATING | STATUS_FEATURES_OK);
    // Dropping DRIVER is ignored.
    write(&t, regs::STATUS, STATUS_ACKNOWLEDGE | STATUS_FEATURES_OK);
    assert_eq!(read(&t, regs::STATUS), NEGOTIATING | STATUS_FEATURES_OK);
    write(&t, regs::QUEUE_SEL, 1);
    write(&t, regs::QUEUE_NUM, 8);
    write(&t, regs::DEVICE_FEATURES_SEL, 1);
    // Reset before activation: the device is not asked, the transport forgets everything.
    write(&t, regs::STATUS, 0);
    assert_eq!(read(&t, regs::STATUS), 0);
    assert_eq!(seen.lock().unwrap().resets, 0);
    let tr = t.lock().unwrap();
    assert_eq!(tr.driver_features, 0);
    assert_eq!((tr.queue_sel, tr.device_features_sel), (0, 0));
    assert_eq!(
        tr.queues[1].size(),
        32,
        "the queue is back at its maximum size"
    );
}

/// A driver's whole set-up of the recorder: features, both queues, DRIVER_OK, one event loop
/// turn.
fn activated_recorder(resettable: bool) -> (Arc<Mutex<MmioTransport>>, Arc<Mutex<Seen>>) {
    let (t, seen) = recorder(resettable);
    write(&t, regs::STATUS, NEGOTIATING);
    write_features(&t, VIRTIO_F_VERSION_1);
    write(&t, regs::STATUS, NEGOTIATING | STATUS_FEATURES_OK);
    set_up_queue(&t, 0, 8, 0x1000);
    set_up_queue(&t, 1, 32, 0x2000);
    write(
        &t,
        regs::STATUS,
        NEGOTIATING | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert!(t.lock().unwrap().driver_ok());
    run_event_loop(&t);
    (t, seen)
}

#[test]
fn queue_registers_configure_the_queues_the_device_gets() {
    let (t, _) = recorder(true);
    write(&t, regs::QUEUE_SEL, 0);
    assert_eq!(read(&t, regs::QUEUE_NUM_MAX), 16);
    write(&t, regs::QUEUE_SEL, 1);
    assert_eq!(read(&t, regs::QUEUE_NUM_MAX), 32);
    assert_eq!(read(&t, regs::QUEUE_READY), 0);
    // A queue that does not exist reads as absent and ignores writes.
    write(&t, regs::QUEUE_SEL, 2);
    assert_eq!(read(&t, regs::QUEUE_NUM_MAX), 0);
    write(&t, regs::QUEUE_READY, 1);
    assert_eq!(read(&t, regs::QUEUE_READY), 0);

    let (t, seen) = activated_recorder(true);
    assert!(t.lock().unwrap().activated);
    let queues = seen.lock().unwrap().queues.clone().unwrap();
    let expect = |max_size, size, base: u64| QueueConfig {
        max_size,
        size,
        desc_table: base,
        avail_ring: base + 0x400,
        used_ring: base + 0x800,
        ready: true,
    };
    assert_eq!(queues, [expect(16, 8, 0x1000), expect(32, 32, 0x2000)]);
    write(&t, regs::QUEUE_SEL, 0);
    assert_eq!(read(&t, regs::QUEUE_READY), 1);
    // Queue set-up is over once DRIVER_OK is set.
    write(&t, regs::QUEUE_NUM, 4);
    write(&t, regs::QUEUE_READY, 0);
    write(&t, regs::QUEUE_DESC_LOW, 0x8000);
    assert_eq!(read(&t, regs::QUEUE_READY), 1);
    let tr = t.lock().unwrap();
    assert_eq!(QueueConfig::of(&tr.queues[0]), expect(16, 8, 0x1000));
}

#[test]
fn only_ready_queues_reach_the_device() {
    let (t, seen) = recorder(true);
    write(&t, regs::STATUS, NEGOTIATING);
    write_features(&t, VIRTIO_F_VERSION_1);
    write(&t, regs::STATUS, NEGOTIATING | STATUS_FEATURES_OK);
    set_up_queue(&t, 1, 32, 0x2000);
    write(
        &t,
        regs::STATUS,
        NEGOTIATING | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    run_event_loop(&t);
    let queues = seen.lock().unwrap().queues.clone().unwrap();
    assert_eq!(queues.len(), 1);
    assert_eq!(queues[0].desc_table, 0x2000);
}

#[test]
fn a_reset_after_activation_resets_the_device_or_asks_for_a_reset() {
    let (t, seen) = activated_recorder(true);
    write(&t, regs::STATUS, 0);
    assert_eq!(seen.lock().unwrap().resets, 1);
    assert_eq!(read(&t, regs::STATUS), 0);
    assert!(!t.lock().unwrap().activated);

    let (t, seen) = activated_recorder(false);
    let before = read(&t, regs::STATUS);
    write(&t, regs::STATUS, 0);
    assert_eq!(seen.lock().unwrap().resets, 1);
    assert_eq!(read(&t, regs::STATUS), before | STATUS_NEEDS_RESET);
    assert_ne!(read(&t, regs::INTERRUPT_STATUS) & INT_CONFIG_CHANGE, 0);
    assert!(t.lock().unwrap().activated, "the device still runs");
}

#[test]
fn interrupt_status_is_acked_through_its_register_and_notify_kicks_the_queue() {
    let (t, _) = recorder(true);
    t.lock().unwrap().interrupt().signal_used_queue();
    t.lock().unwrap().interrupt().signal_config_change();
    assert_eq!(
        read(&t, regs::INTERRUPT_STATUS),
        INT_USED_RING | INT_CONFIG_CHANGE
    );
    write(&t, regs::INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(read(&t, regs::INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    // A notification written to the register reaches the queue's eventfd; a bad index none.
    write(&t, regs::QUEUE_NOTIFY, 1);
    write(&t, regs::QUEUE_NOTIFY, 7);
    let tr = t.lock().unwrap();
    assert_eq!(tr.queue_evts()[1].read().unwrap(), 1);
    assert!(tr.queue_evts()[0].read().is_err(), "queue 0 was not kicked");
}

#[test]
fn config_space_reads_any_width_and_past_the_end_as_zero() {
    let (t, seen) = recorder(true);
    let mut one = [0xffu8; 1];
    t.lock().unwrap().read(regs::CONFIG + 3, &mut one);
    assert_eq!(one, [4]);
    let mut two = [0u8; 2];
    t.lock().unwrap().read(regs::CONFIG + 8, &mut two);
    assert_eq!(two, [9, 10]);
    assert_eq!(read(&t, regs::CONFIG + 4), u32::from_le_bytes([5, 6, 7, 8]));
    assert_eq!(
        read(&t, regs::CONFIG + 8),
        u32::from_le_bytes([9, 10, 0, 0])
    );
    assert_eq!(read(&t, regs::CONFIG + 0x200), 0);
    // Writes reach the device and bump the generation.
    assert_eq!(read(&t, regs::CONFIG_GENERATION), 0);
    t.lock().unwrap().write(regs::CONFIG + 2, &[0xaa, 0xbb]);
    assert_eq!(read(&t, regs::CONFIG_GENERATION), 1);
    assert_eq!(
        seen.lock().unwrap().config_writes,
        [(2u64, vec![0xaa, 0xbb])]
    );
}

#[test]
fn register_accesses_other_than_aligned_32_bits_are_refused() {
    let (t, _) = recorder(true);
    let mut b = [0xffu8; 2];
    t.lock().unwrap().read(regs::MAGIC_VALUE, &mut b);
    assert_eq!(b, [0, 0]);
    let mut w = [0xffu8; 4];
    t.lock().unwrap().read(regs::MAGIC_VALUE + 1, &mut w);
    assert_eq!(w, [0; 4]);
    // A 2-byte or misaligned status write does nothing.
    t.lock().unwrap().write(regs::STATUS, &[1, 0]);
    t.lock()
        .unwrap()
        .write(regs::STATUS + 1, &STATUS_ACKNOWLEDGE.to_le_bytes());
    assert_eq!(read(&t, regs::STATUS), 0);
    // Unknown registers read as zero.
    assert_eq!(read(&t, 0xc0), 0);
}
