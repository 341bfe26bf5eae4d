//! The MMIO transport's fuzz target's body: a driver's register reads and writes from the
//! input (device and configuration space included), with event-loop turns between them that
//! activate the device and deliver its queue notifications, over guest memory from the input;
//! and the corpus's seeds.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use super::{regs, MmioSubscriber, MmioTransport};
use crate::bus::BusDevice;
use crate::devices::blk::fuzz::FuzzDisk;
use crate::devices::blk::Block;
use crate::devices::net::fuzz::device as net_device;
use crate::devices::rng::Rng;
use crate::devices::virtio::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
use crate::devices::virtio::test_utils::{with_fuzz_memory, FuzzInput};
use crate::devices::virtio::VirtioDevice;

/// Bytes of one register access in the input.
const OP_LEN: usize = 7;

/// Access kinds (the low two bits of an op's first byte).
const OP_READ: u8 = 0;
const OP_WRITE: u8 = 1;
const OP_TURN: u8 = 2;
const OP_WRITE_TURN: u8 = 3;

/// Access sizes, chosen by bits 2-3 (the guest may use any; only 4 reaches registers).
const SIZES: [usize; 4] = [4, 1, 2, 8];

/// Runs one input: control byte (the device behind the transport: 0 rng, 1 net over a
/// socket pair, 2 blk over an 8 KiB file), the length of the access section as a u16, the
/// accesses ([`OP_LEN`] bytes each: kind and size, offset as a u16 within the window, value
/// as a u32), guest memory.
pub fn run(data: &[u8]) {
    let mut input = FuzzInput::new(data);
    let control = input.u8();
    let ops_len = usize::from(input.u16());
    let ops = input.bytes(ops_len);
    let mut disk = None;
    let mut host = None;
    let device: Box<dyn VirtioDevice> = match control % 3 {
        0 => Box::new(Rng::new()),
        1 => {
            let Some((dev, h)) = net_device() else {
                return;
            };
            host = Some(h);
            Box::new(dev)
        }
        _ => {
            let d = FuzzDisk::new();
            let Ok(dev) = Block::new(&d.0, false) else {
                return;
            };
            disk = Some(d);
            Box::new(dev)
        }
    };
    with_fuzz_memory(input.rest(), move |mem| {
        let Ok(t) = MmioTransport::new(device, mem.clone()) else {
            return;
        };
        let t = Arc::new(Mutex::new(t));
        let Ok(mut em) = EventManager::<Box<dyn MutEventSubscriber + Send>>::new() else {
            return;
        };
        em.add_subscriber(Box::new(MmioSubscriber(t.clone())));
        for op in ops.chunks(OP_LEN) {
            let mut op = FuzzInput::new(op);
            let kind = op.u8();
            let offset = u64::from(op.u16() & 0xfff);
            let value = u64::from(op.u32());
            let mut buf = value.to_le_bytes();
            let data = &mut buf[..SIZES[usize::from(kind >> 2 & 3)]];
            match kind & 3 {
                OP_READ => t.lock().unwrap().read(offset, data),
                OP_WRITE => t.lock().unwrap().write(offset, data),
                OP_TURN => {
                    let _ = em.run_with_timeout(0);
                }
                OP_WRITE_TURN => {
                    t.lock().unwrap().write(offset, data);
                    let _ = em.run_with_timeout(0);
                }
                _ => unreachable!("two bits"),
            }
        }
        // The event loop and the transport (with the device) go before the memory.
        drop(em);
        drop(t);
    });
    drop(host);
    drop(disk);
}

/// One access.
fn op(kind: u8, offset: u64, value: u32) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&(offset as u16).to_le_bytes());
    v.extend_from_slice(&value.to_le_bytes());
    v
}

/// A driver's probe and set-up of every queue (rings at 0x1000 + 0x1000 * queue), then a
/// notification of each: what Linux's virtio-mmio driver does, for each device.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (control, name, queues) in [
        (0u8, "rng-probe", 1u32),
        (1, "net-probe", 2),
        (2, "blk-probe", 1),
    ] {
        let mut ops = Vec::new();
        for r in [
            regs::MAGIC_VALUE,
            regs::VERSION,
            regs::DEVICE_ID,
            regs::VENDOR_ID,
        ] {
            ops.extend(op(OP_READ, r, 0));
        }
        ops.extend(op(OP_WRITE, regs::STATUS, 0));
        ops.extend(op(OP_WRITE, regs::STATUS, ACKNOWLEDGE));
        ops.extend(op(OP_WRITE, regs::STATUS, ACKNOWLEDGE | DRIVER));
        for sel in 0..2 {
            ops.extend(op(OP_WRITE, regs::DEVICE_FEATURES_SEL, sel));
            ops.extend(op(OP_READ, regs::DEVICE_FEATURES, 0));
        }
        ops.extend(op(OP_WRITE, regs::DRIVER_FEATURES_SEL, 1));
        ops.extend(op(OP_WRITE, regs::DRIVER_FEATURES, 1));
        ops.extend(op(
            OP_WRITE,
            regs::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK,
        ));
        ops.extend(op(OP_READ, regs::STATUS, 0));
        ops.extend(op(OP_READ, regs::CONFIG, 0));
        for q in 0..queues {
            let base = 0x1000 + 0x1000 * q;
            ops.extend(op(OP_WRITE, regs::QUEUE_SEL, q));
            ops.extend(op(OP_READ, regs::QUEUE_NUM_MAX, 0));
            ops.extend(op(OP_WRITE, regs::QUEUE_NUM, 16));
            ops.extend(op(OP_WRITE, regs::QUEUE_DESC_LOW, base));
            ops.extend(op(OP_WRITE, regs::QUEUE_DESC_HIGH, 0));
            ops.extend(op(OP_WRITE, regs::QUEUE_AVAIL_LOW, base + 0x100));
            ops.extend(op(OP_WRITE, regs::QUEUE_USED_LOW, base + 0x200));
            ops.extend(op(OP_WRITE, regs::QUEUE_READY, 1));
        }
        ops.extend(op(
            OP_WRITE_TURN,
            regs::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        ));
        for q in 0..queues {
            ops.extend(op(OP_WRITE_TURN, regs::QUEUE_NOTIFY, q));
        }
        ops.extend(op(OP_READ, regs::INTERRUPT_STATUS, 0));
        ops.extend(op(OP_WRITE, regs::INTERRUPT_ACK, 1));
        ops.extend(op(OP_WRITE, regs::STATUS, 0));
        let mut input = vec![control];
        input.extend_from_slice(&(ops.len() as u16).to_le_bytes());
        input.extend(ops);
        out.push((name, input));
    }
    out
}
