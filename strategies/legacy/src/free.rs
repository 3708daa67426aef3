//! How a slot pool keeps track of its free slots.
//!
//! Everything else about the pool (areas, the search order, alignment, padding, the
//! per-slot metadata, release, the statistics) is Linux's and lives in
//! [`SlotPool`](crate::SlotPool); only the free-slot bookkeeping is a parameter.
//! [`LinuxLists`] is Linux 6.12's: a per-slot free count (`list`) rewritten on every
//! map and unmap. Another strategy can bring its own (a bitmap, say) and be compared
//! with Linux's on the same pool and the same placements.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU16, Ordering::Relaxed};

use bounce_framework::{TestProfile, IO_TLB_SEGSIZE};

/// Free-slot bookkeeping for a [`SlotPool`](crate::SlotPool), and the items that make
/// the pool a strategy of its own in the registry.
///
/// Slots are numbered from 0 to `nslabs - 1` in segments of [`IO_TLB_SEGSIZE`]; no
/// run of free slots that a map takes crosses a segment's end. Every call that changes
/// or reads the state of a slot for a map or an unmap is made under the lock of the
/// area the slot lies in (areas are whole segments), so implementations need no
/// synchronisation of their own beyond atomics that lock-free readers (the audit, the
/// views) may load.
pub trait FreeSlots: Send + Sync + Sized + 'static {
    /// The strategy's boot name (`swiotlb.strategy=<NAME>`).
    const NAME: &'static str;
    /// Boot command lines with small pools, for the fuzzer
    /// (`bounce_strategies::AnyStrategy::small_cmdlines`).
    const SMALL_CMDLINES: &'static [&'static str];
    /// What the strategy-generic tests boot and expect (`PoolShape::Fixed`).
    const TEST_PROFILE: TestProfile;

    /// `nslabs` free slots. Called once, at boot (it may allocate).
    fn new(nslabs: usize) -> Self;

    /// Linux's `list` of slot `i`: how many slots from `i` on are free, up to the
    /// next slot in use or the end of the segment; 0 when `i` is in use.
    fn list(&self, i: usize) -> usize;

    /// Whether the `n` slots from `i` are free and inside `i`'s segment.
    ///
    /// # Errors
    /// `Err(last)` when they are not, with a slot `last >= i` such that no run of `n`
    /// free slots in one segment starts anywhere in `i..=last`, so the search may step
    /// past it. `Err(i)` is always correct.
    fn probe(&self, i: usize, n: usize) -> Result<(), usize>;

    /// Marks the `n` free slots from `i` in use (they lie in one segment).
    fn take(&self, i: usize, n: usize);

    /// Marks the `n` slots in use from `i` free again (they lie in one segment).
    fn give(&self, i: usize, n: usize);
}

/// The registry items of a strategy that is a [`SlotPool`](crate::SlotPool) with
/// bookkeeping of its own, inside its `impl FreeSlots`: `NAME` (the boot name given),
/// and the pool's `SMALL_CMDLINES` and fixed-pool `TEST_PROFILE` for that name. They
/// belong to the pool, so every bookkeeping shares them.
#[macro_export]
macro_rules! slot_pool_names {
    ($name:literal) => {
        const NAME: &'static str = $name;
        const SMALL_CMDLINES: &'static [&'static str] = &[
            concat!("swiotlb=1024 swiotlb.strategy=", $name),
            concat!("swiotlb=2048,4 swiotlb.strategy=", $name),
            concat!("swiotlb=512,1 swiotlb.strategy=", $name),
            concat!("swiotlb=640,1,force swiotlb.strategy=", $name),
        ];
        const TEST_PROFILE: $crate::__TestProfile = $crate::__TestProfile {
            pool: $crate::__PoolShape::Fixed,
            fault_matrix: concat!("swiotlb=512 swiotlb.strategy=", $name),
            hostile_host: concat!("swiotlb=4096 swiotlb.strategy=", $name),
        };
    };
}

/// `io_tlb_offset()`: a slot's position inside its segment.
#[inline]
pub const fn io_tlb_offset(val: usize) -> usize {
    val & (IO_TLB_SEGSIZE - 1)
}

/// Where slot `i`'s segment ends in a pool of `nslabs` slots (exclusive).
#[inline]
pub fn segment_end(i: usize, nslabs: usize) -> usize {
    (i + 1).next_multiple_of(IO_TLB_SEGSIZE).min(nslabs)
}

/// Linux 6.12's bookkeeping: `struct io_tlb_slot`'s `list`, a per-slot count of the
/// free slots from it to the end of its free run, rewritten backwards over the run on
/// every map (`swiotlb_search_pool_area()`'s `found:` block) and unmap
/// (`swiotlb_release_slots()`'s two merge steps). The legacy strategy.
pub struct LinuxLists {
    list: Box<[AtomicU16]>,
}

impl LinuxLists {
    /// Sets slot `i`'s free count (the crate's tests corrupt it through this too).
    #[inline]
    pub(crate) fn set(&self, i: usize, v: usize) {
        // `list` never exceeds IO_TLB_SEGSIZE (128).
        self.list[i].store(v as u16, Relaxed);
    }

    /// Step 2 of both: the free slots in front of `i` in its segment count on from
    /// `count` (`for (i = index - 1; io_tlb_offset(i) != IO_TLB_SEGSIZE - 1 &&
    /// mem->slots[i].list; i--) mem->slots[i].list = ++count;`).
    fn merge_before(&self, mut i: usize, mut count: usize) {
        while io_tlb_offset(i) != 0 {
            i -= 1;
            if self.list(i) == 0 {
                break;
            }
            count += 1;
            self.set(i, count);
        }
    }
}

impl FreeSlots for LinuxLists {
    crate::slot_pool_names!("legacy");

    /// `mem->slots[i].list = min(IO_TLB_SEGSIZE - io_tlb_offset(i), mem->nslabs - i);`
    fn new(nslabs: usize) -> Self {
        Self {
            list: (0..nslabs)
                .map(|i| AtomicU16::new((IO_TLB_SEGSIZE - io_tlb_offset(i)).min(nslabs - i) as u16))
                .collect(),
        }
    }

    #[inline]
    fn list(&self, i: usize) -> usize {
        usize::from(self.list[i].load(Relaxed))
    }

    /// `if (pool->slots[slot_index].list >= nslots) goto found;`: no skipping.
    #[inline]
    fn probe(&self, i: usize, n: usize) -> Result<(), usize> {
        if self.list(i) >= n {
            Ok(())
        } else {
            Err(i)
        }
    }

    /// ```c
    /// for (i = slot_index; i < slot_index + nslots; i++)
    ///         pool->slots[i].list = 0;
    /// for (i = slot_index - 1;
    ///      io_tlb_offset(i) != IO_TLB_SEGSIZE - 1 && pool->slots[i].list; i--)
    ///         pool->slots[i].list = ++count;
    /// ```
    fn take(&self, i: usize, n: usize) {
        for j in i..i + n {
            self.set(j, 0);
        }
        self.merge_before(i, 0);
    }

    /// `swiotlb_release_slots()`: the run continues the free count of the slot after it
    /// (`if (index + nslots < ALIGN(index + 1, IO_TLB_SEGSIZE)) count =
    /// mem->slots[index + nslots].list;`, bounded by the pool's end too: see the crate
    /// docs), and the free slots in front of it count on.
    fn give(&self, i: usize, n: usize) {
        let seg_end = segment_end(i, self.list.len());
        let mut count = if i + n < seg_end { self.list(i + n) } else { 0 };
        for j in (i..i + n).rev() {
            count += 1;
            self.set(j, count);
        }
        self.merge_before(i, count);
    }
}
