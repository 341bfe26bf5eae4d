//! TEMP STUB
#![allow(missing_docs)]
pub struct Rng;
impl Rng { pub fn new() -> Rng { Rng } }
impl crate::devices::virtio::VirtioDevice for Rng { fn name(&self) -> &str { "blk" } fn device_type(&self) -> u32 { 2 } fn queue_max_sizes(&self) -> &[u16] { &[256] } fn avail_features(&self) -> u64 { 0 } fn set_acked_features(&mut self, _: u64) {} fn read_config(&self, _: u64, _: &mut [u8]) {} fn activate(&mut self, _: crate::devices::virtio::GuestMemory, _: std::sync::Arc<crate::devices::virtio::Interrupt>, _: Vec<virtio_queue::Queue>) -> Result<(), crate::devices::virtio::ActivateError> { Ok(()) } fn process_queue(&mut self, _: usize) {} fn counters(&self) -> &crate::devices::virtio::DeviceCounters { unimplemented!() } }
