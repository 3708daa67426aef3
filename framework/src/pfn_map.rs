//! [`PfnMap`]: page frame number → a small integer, read without a lock.
//!
//! The address → buffer lookup of every unmap and sync runs here, so it takes no lock
//! and writes nothing: a lookup is four dependent loads down a radix tree of 512-way
//! nodes (as the page tables and the kernel's `xa_load` under RCU), then one load of
//! the entry. Writers (the refill engine, in process context) publish nodes once and
//! never free them while the map lives, so a reader can never follow a pointer into
//! freed memory and needs no RCU grace period: nodes are published through
//! [`once_cell::race::OnceBox`] (an acquire load of a pointer set once with a
//! compare-and-swap), and entries are plain atomics. This crate keeps no `unsafe` for it.
//!
//! # Memory
//! Nodes are created on first use and kept until the map drops: a 2 KiB leaf for each
//! 2 MiB of physical address space that ever held an entry, a 4 KiB node for each GiB
//! and one for each 512 GiB, plus the 4 KiB root. A pool that keeps its memory in a few
//! regions keeps a few leaves, whatever it grows and shrinks.
//!
//! # Entries
//! `0` means "none". A reader may see an entry that a writer is changing at that moment
//! (old or new value, never a torn one); callers validate what the value leads to (the
//! chunk records of `bounce-pools` carry their own address range and generation).

use alloc::boxed::Box;
use alloc::vec::Vec;

use once_cell::race::OnceBox;

use crate::sync::{AtomicU32, Ordering};

/// Index bits per level.
const BITS: u32 = 9;
/// Entries per node.
const FAN: usize = 1 << BITS;
const MASK: usize = FAN - 1;
/// Levels below the root: page frame numbers up to `2^(4 × 9)` (physical addresses up to
/// 256 TiB).
const LEVELS: u32 = 4;

/// The first page frame number a [`PfnMap`] cannot hold (`2^36`: 256 TiB of physical
/// address space).
pub const PFN_LIMIT: usize = 1 << (BITS * LEVELS);

type Leaf = [AtomicU32; FAN];
type Low = [OnceBox<Leaf>; FAN];
type Mid = [OnceBox<Low>; FAN];
type Root = [OnceBox<Mid>; FAN];

/// A [`PfnMap`] write that could not be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PfnMapError {
    /// The page frame number is at or above [`PFN_LIMIT`].
    #[error("page frame number {0:#x} is beyond the 256 TiB the address index covers")]
    OutOfRange(usize),
    /// A node could not be allocated; the entry was not written.
    #[error("no memory for an address index node")]
    NoMemory,
}

/// Page frame number → `u32` (0: none), lock-free for readers.
pub struct PfnMap {
    root: Box<Root>,
}

impl core::fmt::Debug for PfnMap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PfnMap").finish_non_exhaustive()
    }
}

/// A node of `FAN` entries built on the heap (never on the stack: a 4 KiB temporary is
/// a quarter of a kernel stack), or `None` when the allocation fails.
fn node<T>(mut make: impl FnMut() -> T) -> Option<Box<[T; FAN]>> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(FAN).ok()?;
    v.extend((0..FAN).map(|_| make()));
    v.into_boxed_slice().try_into().ok()
}

impl Default for PfnMap {
    fn default() -> Self {
        Self::new()
    }
}

impl PfnMap {
    /// An empty map (allocates the 4 KiB root).
    ///
    /// # Context
    /// Allocates: construction time only.
    ///
    /// # Panics
    /// When the root cannot be allocated.
    pub fn new() -> Self {
        Self { root: node(OnceBox::new).expect("bounce: no memory for the address index root") }
    }

    #[inline]
    fn parts(pfn: usize) -> [usize; 4] {
        [(pfn >> (3 * BITS)) & MASK, (pfn >> (2 * BITS)) & MASK, (pfn >> BITS) & MASK, pfn & MASK]
    }

    /// The entry of `pfn`, 0 when none (also for a page frame beyond [`PFN_LIMIT`]).
    ///
    /// # Context
    /// Any context; no lock, no write, never allocates.
    #[inline]
    pub fn get(&self, pfn: usize) -> u32 {
        if pfn >= PFN_LIMIT {
            return 0;
        }
        let [a, b, c, d] = Self::parts(pfn);
        let Some(mid) = self.root[a].get() else { return 0 };
        let Some(low) = mid[b].get() else { return 0 };
        let Some(leaf) = low[c].get() else { return 0 };
        // Pairs with the release store in `set`: a reader that sees the value sees what
        // the writer published before it (the chunk record behind it).
        leaf[d].load(Ordering::Acquire)
    }

    /// The leaf holding `pfn`, created with its parents when missing.
    fn leaf(&self, pfn: usize) -> Result<&Leaf, PfnMapError> {
        if pfn >= PFN_LIMIT {
            return Err(PfnMapError::OutOfRange(pfn));
        }
        let [a, b, c, _] = Self::parts(pfn);
        let mid = self.root[a].get_or_try_init(|| node(OnceBox::new).ok_or(PfnMapError::NoMemory))?;
        let low = mid[b].get_or_try_init(|| node(OnceBox::new).ok_or(PfnMapError::NoMemory))?;
        low[c].get_or_try_init(|| node(|| AtomicU32::new(0)).ok_or(PfnMapError::NoMemory))
    }

    /// Sets the entries of `pfns` to `value`, creating nodes as needed.
    ///
    /// # Errors
    /// [`PfnMapError`]: then no entry of the range was changed.
    ///
    /// # Context
    /// Process context: may allocate nodes.
    pub fn set_range(&self, pfns: core::ops::Range<usize>, value: u32) -> Result<(), PfnMapError> {
        // Create every node first, so a failure leaves the entries untouched.
        let mut at = pfns.start;
        while at < pfns.end {
            self.leaf(at)?;
            at = (at | MASK) + 1;
        }
        for pfn in pfns {
            let [.., d] = Self::parts(pfn);
            // Publishes what `value` stands for to readers; pairs with the acquire load
            // in `get`.
            self.leaf(pfn)?[d].store(value, Ordering::Release);
        }
        Ok(())
    }

    /// Sets the entries of `pfns` back to 0. Never allocates (a missing node already
    /// reads as 0).
    pub fn clear_range(&self, pfns: core::ops::Range<usize>) {
        for pfn in pfns {
            if pfn >= PFN_LIMIT {
                return;
            }
            let [a, b, c, d] = Self::parts(pfn);
            if let Some(leaf) = self.root[a].get().and_then(|m| m[b].get()).and_then(|l| l[c].get()) {
                leaf[d].store(0, Ordering::Release);
            }
        }
    }

    /// Every non-zero entry in page frame order (audit; walks only the nodes that
    /// exist).
    pub fn for_each(&self, mut f: impl FnMut(usize, u32)) {
        for (a, mid) in self.root.iter().enumerate() {
            let Some(mid) = mid.get() else { continue };
            for (b, low) in mid.iter().enumerate() {
                let Some(low) = low.get() else { continue };
                for (c, leaf) in low.iter().enumerate() {
                    let Some(leaf) = leaf.get() else { continue };
                    for (d, e) in leaf.iter().enumerate() {
                        let v = e.load(Ordering::Acquire);
                        if v != 0 {
                            f((((a << BITS | b) << BITS | c) << BITS) | d, v);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn set_get_clear_across_nodes() {
        let m = PfnMap::new();
        assert_eq!(m.get(5), 0);
        m.set_range(500..530, 7).unwrap();
        m.set_range((1 << 27) - 2..(1 << 27) + 2, 9).unwrap();
        assert_eq!((m.get(499), m.get(500), m.get(511), m.get(512), m.get(529), m.get(530)), (0, 7, 7, 7, 7, 0));
        assert_eq!((m.get((1 << 27) - 1), m.get(1 << 27)), (9, 9));
        let mut seen = Vec::new();
        m.for_each(|p, v| seen.push((p, v)));
        assert_eq!(seen.len(), 34);
        assert_eq!(seen[0], (500, 7));
        m.clear_range(500..530);
        assert_eq!(m.get(510), 0);
        assert_eq!(m.set_range(PFN_LIMIT..PFN_LIMIT + 1, 1), Err(PfnMapError::OutOfRange(PFN_LIMIT)));
        assert_eq!(m.get(PFN_LIMIT + 3), 0);
    }
}
