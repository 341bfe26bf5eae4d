//! The structural checks every descriptor chain from the guest passes before a device reads
//! a byte of it, and their one typed refusal, [`ChainError`]: the chain ends (no loop, no bad
//! next index, no more descriptors than the device allows), every buffer lies in guest memory,
//! and the buffers go in the directions the device expects. What the bytes mean (headers,
//! sizes) is each device's to check after these.
//!
//! virtio-queue's chain iterator stops silently on loops, bad next indices and unreadable
//! descriptors; a chain cut short by any of these ends on a descriptor that still says NEXT,
//! which is how an unterminated chain is told from a whole one.

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::GuestMemory;

/// What the checks read of a descriptor, for both virtio-queue versions in the build (the
/// fs device's queues are fuse-backend-rs's).
pub trait ChainDescriptor {
    /// Guest physical address of the buffer.
    fn addr(&self) -> u64;
    /// Its length in bytes.
    fn len(&self) -> u32;
    /// A zero-length buffer.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The device writes into it (VRING_DESC_F_WRITE).
    fn is_write_only(&self) -> bool;
    /// Another descriptor follows (VRING_DESC_F_NEXT).
    fn has_next(&self) -> bool;
}

/// The two versions' descriptors have the same accessors under the same names: one impl for
/// both.
macro_rules! impl_chain_descriptor {
    ($($descriptor:ty),+) => {$(
        impl ChainDescriptor for $descriptor {
            fn addr(&self) -> u64 {
                self.addr().0
            }
            fn len(&self) -> u32 {
                self.len()
            }
            fn is_write_only(&self) -> bool {
                self.is_write_only()
            }
            fn has_next(&self) -> bool {
                self.has_next()
            }
        }
    )+};
}

impl_chain_descriptor!(
    virtio_queue::desc::split::Descriptor,
    fuse_virtio_queue::desc::split::Descriptor
);

/// The directions a device accepts in one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Device-readable buffers, then device-writable ones (a request and room for its reply):
    /// no device-readable descriptor after any device-writable one, as virtio 1.2 section
    /// 2.7.4.2 asks of drivers.
    ReadThenWrite,
    /// As `ReadThenWrite`, but a zero-length device-writable descriptor does not end the
    /// readable part (it carries no byte either way). The fs device's rule, kept as it was.
    ReadThenWriteBytes,
    /// Device-readable buffers only (a transmit queue).
    ReadOnly,
    /// Device-writable buffers only (a receive queue, entropy requests).
    WriteOnly,
}

/// Why a descriptor chain was refused before its contents were looked at.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain has no descriptor at all (bad head index or unreadable descriptor table).
    #[error("the descriptor chain is empty (bad head index or descriptor table)")]
    Empty,
    /// A loop, a bad next index, or more descriptors than the device allows.
    #[error(
        "the descriptor chain loops, has a bad next index or is longer than {max} descriptors"
    )]
    Unterminated {
        /// Most descriptors the device allows in one chain.
        max: usize,
    },
    /// A descriptor points outside guest memory.
    #[error("a {len}-byte descriptor at {addr:#x} lies outside guest memory")]
    OutsideMemory {
        /// Guest physical address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable descriptor after a device-writable one.
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    /// A descriptor of a direction the chain may not have.
    #[error("a device-{found} descriptor in a chain of device-{expected} buffers only")]
    WrongDirection {
        /// "readable" or "writable": what the descriptor was.
        found: &'static str,
        /// What every descriptor of the chain must be.
        expected: &'static str,
    },
}

/// A chain's descriptors as read from the queue, before any check.
#[derive(Debug)]
pub struct Collected<D> {
    /// The descriptors, at most the device's maximum plus one.
    pub descs: Vec<D>,
    /// The chain ended properly: its last descriptor has no NEXT, within the maximum.
    pub terminated: bool,
    max: usize,
}

/// Byte counts of a chain that passed the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainLengths {
    /// Device-readable bytes.
    pub readable: u64,
    /// Device-writable bytes.
    pub writable: u64,
}

/// A chain that passed the checks.
#[derive(Debug)]
pub struct CheckedChain<D> {
    /// Its descriptors, in order.
    pub descs: Vec<D>,
    /// Its byte counts.
    pub lengths: ChainLengths,
}

/// Reads at most `max + 1` descriptors of `chain`, noting whether it ended within `max`.
pub fn collect<D: ChainDescriptor>(chain: impl IntoIterator<Item = D>, max: usize) -> Collected<D> {
    let descs: Vec<D> = chain.into_iter().take(max + 1).collect();
    let terminated = descs.len() <= max && descs.last().is_some_and(|d| !d.has_next());
    Collected {
        descs,
        terminated,
        max,
    }
}

impl<D: ChainDescriptor> Collected<D> {
    /// Checks the chain's end, then each descriptor in order: in guest memory (`in_memory`
    /// says whether `len` bytes at an address are), then of a direction `layout` allows.
    pub fn check(
        &self,
        in_memory: impl Fn(u64, u32) -> bool,
        layout: Layout,
    ) -> Result<ChainLengths, ChainError> {
        if self.descs.is_empty() {
            return Err(ChainError::Empty);
        }
        if !self.terminated {
            return Err(ChainError::Unterminated { max: self.max });
        }
        let mut lengths = ChainLengths {
            readable: 0,
            writable: 0,
        };
        let mut seen_writable = false;
        for d in &self.descs {
            if !in_memory(d.addr(), d.len()) {
                return Err(ChainError::OutsideMemory {
                    addr: d.addr(),
                    len: d.len(),
                });
            }
            let len = u64::from(d.len());
            match (layout, d.is_write_only()) {
                (Layout::ReadOnly, true) => {
                    return Err(ChainError::WrongDirection {
                        found: "writable",
                        expected: "readable",
                    })
                }
                (Layout::WriteOnly, false) => {
                    return Err(ChainError::WrongDirection {
                        found: "readable",
                        expected: "writable",
                    })
                }
                (Layout::ReadThenWrite, false) if seen_writable => {
                    return Err(ChainError::ReadableAfterWritable)
                }
                (Layout::ReadThenWriteBytes, false) if lengths.writable > 0 => {
                    return Err(ChainError::ReadableAfterWritable)
                }
                (_, true) => {
                    seen_writable = true;
                    lengths.writable += len;
                }
                (_, false) => lengths.readable += len,
            }
        }
        Ok(lengths)
    }
}

/// Collects and checks a chain in one step (see [`collect`] and [`Collected::check`]).
pub fn check_chain<D: ChainDescriptor>(
    chain: impl IntoIterator<Item = D>,
    max: usize,
    in_memory: impl Fn(u64, u32) -> bool,
    layout: Layout,
) -> Result<CheckedChain<D>, ChainError> {
    let collected = collect(chain, max);
    let lengths = collected.check(in_memory, layout)?;
    Ok(CheckedChain {
        descs: collected.descs,
        lengths,
    })
}

/// The memory check of [`Collected::check`] for the VMM's guest memory.
pub fn in_guest_memory(mem: &GuestMemory) -> impl Fn(u64, u32) -> bool + '_ {
    |addr, len| GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor as (addr, len, device-writable, NEXT).
    #[derive(Clone, Copy)]
    struct D(u64, u32, bool, bool);

    impl ChainDescriptor for D {
        fn addr(&self) -> u64 {
            self.0
        }
        fn len(&self) -> u32 {
            self.1
        }
        fn is_write_only(&self) -> bool {
            self.2
        }
        fn has_next(&self) -> bool {
            self.3
        }
    }

    fn below_64k(addr: u64, len: u32) -> bool {
        addr.checked_add(u64::from(len))
            .is_some_and(|end| end <= 0x1_0000)
    }

    fn check(descs: &[D], max: usize, layout: Layout) -> Result<ChainLengths, ChainError> {
        check_chain(descs.iter().copied(), max, below_64k, layout).map(|c| c.lengths)
    }

    #[test]
    fn whole_chains_pass_with_their_byte_counts() {
        let chain = [
            D(0, 16, false, true),
            D(0x100, 8, false, true),
            D(0x200, 1, true, false),
        ];
        assert_eq!(
            check(&chain, 4, Layout::ReadThenWrite),
            Ok(ChainLengths {
                readable: 24,
                writable: 1
            })
        );
        let rx = [D(0, 100, true, true), D(0x100, 200, true, false)];
        assert_eq!(check(&rx, 2, Layout::WriteOnly).unwrap().writable, 300);
        let tx = [D(0, 100, false, false)];
        assert_eq!(check(&tx, 1, Layout::ReadOnly).unwrap().readable, 100);
    }

    #[test]
    fn malformed_chains_are_refused() {
        assert_eq!(check(&[], 4, Layout::ReadThenWrite), Err(ChainError::Empty));
        // Cut short: the last descriptor still says NEXT.
        assert_eq!(
            check(&[D(0, 1, false, true)], 4, Layout::ReadThenWrite),
            Err(ChainError::Unterminated { max: 4 })
        );
        // Longer than the maximum, even though it ends.
        let long = [
            D(0, 1, false, true),
            D(0, 1, false, true),
            D(0, 1, false, false),
        ];
        assert_eq!(
            check(&long, 2, Layout::ReadThenWrite),
            Err(ChainError::Unterminated { max: 2 })
        );
        assert_eq!(
            check(&[D(0xffff, 2, true, false)], 4, Layout::WriteOnly),
            Err(ChainError::OutsideMemory {
                addr: 0xffff,
                len: 2
            })
        );
        assert_eq!(
            check(&[D(u64::MAX, 1, true, false)], 4, Layout::WriteOnly),
            Err(ChainError::OutsideMemory {
                addr: u64::MAX,
                len: 1
            })
        );
        let w_then_r = [D(0, 1, true, true), D(0, 1, false, false)];
        assert_eq!(
            check(&w_then_r, 4, Layout::ReadThenWrite),
            Err(ChainError::ReadableAfterWritable)
        );
        assert!(matches!(
            check(&w_then_r, 4, Layout::ReadOnly),
            Err(ChainError::WrongDirection {
                found: "writable",
                ..
            })
        ));
        assert!(matches!(
            check(&w_then_r, 4, Layout::WriteOnly),
            Err(ChainError::WrongDirection {
                found: "readable",
                ..
            })
        ));
    }

    #[test]
    fn an_empty_writable_descriptor_ends_the_readable_part_unless_only_bytes_count() {
        let chain = [
            D(0, 16, false, true),
            D(0x100, 0, true, true),
            D(0x200, 1, false, false),
        ];
        assert_eq!(
            check(&chain, 4, Layout::ReadThenWrite),
            Err(ChainError::ReadableAfterWritable)
        );
        assert_eq!(
            check(&chain, 4, Layout::ReadThenWriteBytes),
            Ok(ChainLengths {
                readable: 17,
                writable: 0
            })
        );
        let chain = [
            D(0, 16, false, true),
            D(0x100, 1, true, true),
            D(0x200, 1, false, false),
        ];
        assert_eq!(
            check(&chain, 4, Layout::ReadThenWriteBytes),
            Err(ChainError::ReadableAfterWritable)
        );
    }

    #[test]
    fn a_refused_chain_keeps_its_descriptors() {
        let c = collect([D(0, 1, false, true), D(0x10, 1, true, false)], 4);
        assert!(c.terminated);
        assert_eq!(c.descs.len(), 2);
        let cut = collect([D(0, 1, false, true)], 4);
        assert!(!cut.terminated);
    }
}
