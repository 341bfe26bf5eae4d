//! The state every virtio device keeps the same way, embedded by each device (as Cloud
//! Hypervisor's `VirtioCommon`): the features offered and those the driver acked, what
//! activation hands over (guest memory, the interrupt, the queues) until a reset takes it
//! back, and the copy of a queue's configuration the transport gives a device.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::{ActivateError, GuestMemory, Interrupt};

/// What a device holds between activation and reset.
#[derive(Debug)]
pub struct ActiveState<M = GuestMemory, Q = Queue> {
    /// The device's interrupt line.
    pub interrupt: Arc<Interrupt>,
    /// The queues the driver made ready, in index order.
    pub queues: Vec<Q>,
    /// Guest memory (declared last: dropped after the queues and whatever refers to it).
    pub mem: M,
}

/// Features and activation state, the part of a device that is the same in every device.
/// `M` and `Q` are the memory and queue types the device works with (the fs device keeps
/// them in fuse-backend-rs's versions).
#[derive(Debug)]
pub struct VirtioCommon<M = GuestMemory, Q = Queue> {
    avail_features: u64,
    acked_features: u64,
    queue_count: usize,
    active: Option<ActiveState<M, Q>>,
}

impl<M, Q> VirtioCommon<M, Q> {
    /// A device offering `avail_features` (VIRTIO_F_VERSION_1 included) with `queue_count`
    /// queues, not yet activated.
    pub fn new(avail_features: u64, queue_count: usize) -> Self {
        VirtioCommon {
            avail_features,
            acked_features: 0,
            queue_count,
            active: None,
        }
    }

    /// Features the device offers.
    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The driver accepted `features`; only offered ones are kept.
    pub fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    /// Checks that the driver set up as many queues as the device has.
    pub fn check_queue_count<T>(&self, queues: &[T]) -> Result<(), ActivateError> {
        if queues.len() != self.queue_count {
            return Err(ActivateError::QueueCount {
                expected: self.queue_count,
                got: queues.len(),
            });
        }
        Ok(())
    }

    /// Keeps what activation handed over; the device serves its queues from now on.
    pub fn set_active(&mut self, mem: M, interrupt: Arc<Interrupt>, queues: Vec<Q>) {
        self.active = Some(ActiveState {
            interrupt,
            queues,
            mem,
        });
    }

    /// What activation handed over, while the device is active.
    pub fn active(&self) -> Option<&ActiveState<M, Q>> {
        self.active.as_ref()
    }

    /// What activation handed over, while the device is active.
    pub fn active_mut(&mut self) -> Option<&mut ActiveState<M, Q>> {
        self.active.as_mut()
    }

    /// Whether the device was activated and not reset since.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The default reset: memory, interrupt and queues dropped, acked features forgotten.
    pub fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}

impl VirtioCommon {
    /// The default activation: the queue count checked, then memory, interrupt and queues
    /// kept.
    pub fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.check_queue_count(&queues)?;
        self.set_active(mem, interrupt, queues);
        Ok(())
    }
}

/// The configuration a driver wrote for one queue. virtio-queue's `Queue` is not `Clone`:
/// the transport keeps its queues for register reads and hands a device copies made from
/// this (and the fs device builds its own queue type from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Largest size the device allows.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
    /// The driver made the queue ready.
    pub ready: bool,
}

impl QueueConfig {
    /// The configuration of `q`.
    pub fn of(q: &Queue) -> QueueConfig {
        QueueConfig {
            max_size: q.max_size(),
            size: q.size(),
            desc_table: q.desc_table(),
            avail_ring: q.avail_ring(),
            used_ring: q.used_ring(),
            ready: q.ready(),
        }
    }

    /// A queue set up with this configuration.
    pub fn to_queue(&self) -> Result<Queue, virtio_queue::Error> {
        let mut q = Queue::new(self.max_size)?;
        q.set_size(self.size);
        let (lo, hi) = split_address(self.desc_table);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split_address(self.avail_ring);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split_address(self.used_ring);
        q.set_used_ring_address(lo, hi);
        q.set_ready(self.ready);
        Ok(q)
    }
}

/// A 64-bit guest address as the low and high halves queue set-up takes.
pub fn split_address(addr: u64) -> (Option<u32>, Option<u32>) {
    (Some(addr as u32), Some((addr >> 32) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::VIRTIO_F_VERSION_1;
    use vm_memory::GuestAddress;

    #[test]
    fn acked_features_are_cut_to_the_offered_ones_and_reset_forgets_them() {
        let mut c: VirtioCommon = VirtioCommon::new(VIRTIO_F_VERSION_1 | 1, 1);
        c.ack_features(u64::MAX);
        assert_eq!(c.acked_features(), VIRTIO_F_VERSION_1 | 1);
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        let err = c
            .activate(mem.clone(), irq.clone(), Vec::new())
            .unwrap_err();
        assert!(matches!(
            err,
            ActivateError::QueueCount {
                expected: 1,
                got: 0
            }
        ));
        assert!(!c.is_active());
        c.activate(mem, irq, vec![Queue::new(16).unwrap()]).unwrap();
        assert!(c.is_active());
        c.reset();
        assert!(!c.is_active());
        assert_eq!(c.acked_features(), 0);
    }

    #[test]
    fn a_queue_copy_has_the_same_configuration() {
        let mut q = Queue::new(256).unwrap();
        q.set_size(64);
        q.set_desc_table_address(Some(0x1000), Some(0x2));
        q.set_avail_ring_address(Some(0x3000), Some(0));
        q.set_used_ring_address(Some(0x4000), Some(0x1));
        q.set_ready(true);
        let cfg = QueueConfig::of(&q);
        assert_eq!(cfg.desc_table, 0x2_0000_1000);
        assert_eq!(cfg.used_ring, 0x1_0000_4000);
        let c = cfg.to_queue().unwrap();
        assert_eq!(QueueConfig::of(&c), cfg);
    }
}
