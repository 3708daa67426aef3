//! Per-slot and per-area metadata (`struct io_tlb_slot`, `struct io_tlb_area`).

use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering::Relaxed};

use bounce_framework::PhysAddr;

/// `INVALID_PHYS_ADDR`: the `orig_addr` of a free or padding slot.
pub(crate) const INVALID_PHYS_ADDR: u64 = u64::MAX;

/// `head_dist` of a slot that carries no mapping data (free, or padding).
pub(crate) const NOT_DATA: u16 = u16::MAX;

/// The index of a 2 KiB slot in the pool (`slot_index` in Linux).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct SlotIndex(pub usize);

/// One slot's metadata: Linux's `struct io_tlb_slot` without `list` (the free-slot
/// bookkeeping, a [`FreeSlots`](crate::FreeSlots) of its own) plus three fields bounce
/// needs because its `release`/`locate` are not given the device.
///
/// Linux's fields:
/// - `orig_addr`: the original address of this slot's bytes, `INVALID_PHYS_ADDR` when
///   free and in padding slots;
/// - `alloc_size`: bytes of the allocation from this slot on, counted from the data
///   offset (`alloc_size - (offset + ((i - slot_index) << IO_TLB_SHIFT))`); like
///   Linux's `size_t` it wraps for the last slot when the offset pushes the data into
///   it, and the wrap cancels out where it is used. Stored in 32 bits: an allocation is
///   at most one segment (256 KiB);
/// - `pad_slots`: padding slots before the first data slot, in that first data slot.
///
/// bounce's extra fields (Linux recomputes the first two from the device's
/// `min_align_mask` on every unmap and sync, which the framework does not pass to a
/// strategy; the third is the framework's notion of the mapping's length):
/// - `head_dist`: in a data slot, its distance from the mapping's first data slot (0
///   there), [`NOT_DATA`] in free and padding slots. It finds a mapping's start from any
///   address inside it (`locate`) and lets `release` refuse addresses that are not a
///   mapping's start, where Linux would free whatever slots the address implies;
/// - `data_offset`: in the first data slot, where the data starts inside it
///   (`tlb_addr & (IO_TLB_SIZE - 1)`, which Linux recomputes as
///   `swiotlb_align_offset(dev, 0, tlb_addr)`);
/// - `mapping_len`: in the first data slot, the bytes the caller mapped (the
///   framework's `alloc_size`): syncs are clamped to it and it is what `release`
///   reports. Linux clamps to the allocation, which can be longer when an
///   `alloc_align_mask` rounded it up.
///
/// Every field is an atomic so that `locate` can read a mapping's metadata without the
/// area lock, as Linux's `swiotlb_bounce()` does; every store happens under the lock of
/// the area the slot lies in (see `Legacy`), so the atomics never race with each other
/// and `Relaxed` is enough: the caller that looks a mapping up got its address from the
/// map call through some happens-before edge of its own.
pub(crate) struct Slot {
    pub(crate) orig_addr: AtomicU64,
    pub(crate) alloc_size: AtomicU32,
    pub(crate) mapping_len: AtomicU32,
    pub(crate) pad_slots: AtomicU16,
    pub(crate) head_dist: AtomicU16,
    pub(crate) data_offset: AtomicU16,
}

impl Slot {
    /// A free slot (`swiotlb_init_io_tlb_pool()`).
    pub(crate) fn free() -> Self {
        Self {
            orig_addr: AtomicU64::new(INVALID_PHYS_ADDR),
            alloc_size: AtomicU32::new(0),
            mapping_len: AtomicU32::new(0),
            pad_slots: AtomicU16::new(0),
            head_dist: AtomicU16::new(NOT_DATA),
            data_offset: AtomicU16::new(0),
        }
    }

    /// Returns the slot to the free state's constants (the free-slot bookkeeping is
    /// the caller's).
    #[inline]
    pub(crate) fn clear(&self) {
        self.orig_addr.store(INVALID_PHYS_ADDR, Relaxed);
        self.alloc_size.store(0, Relaxed);
        self.pad_slots.store(0, Relaxed);
        self.head_dist.store(NOT_DATA, Relaxed);
        self.data_offset.store(0, Relaxed);
        self.mapping_len.store(0, Relaxed);
    }

    /// The slot's metadata, with `list` from the free-slot bookkeeping.
    pub(crate) fn view(&self, list: usize) -> SlotView {
        let orig = self.orig_addr.load(Relaxed);
        let head_dist = self.head_dist.load(Relaxed);
        SlotView {
            orig_addr: (orig != INVALID_PHYS_ADDR).then_some(PhysAddr(orig)),
            alloc_size: self.alloc_size.load(Relaxed),
            list: list as u16,
            pad_slots: self.pad_slots.load(Relaxed),
            head_dist: (head_dist != NOT_DATA).then_some(head_dist),
            data_offset: self.data_offset.load(Relaxed),
            mapping_len: self.mapping_len.load(Relaxed),
        }
    }
}

/// A copy of one slot's metadata, for tests, tools and debugging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotView {
    /// `orig_addr`; `None` for `INVALID_PHYS_ADDR` (free and padding slots).
    pub orig_addr: Option<PhysAddr>,
    /// `alloc_size` (wrapping, see the field in Linux's `struct io_tlb_slot`).
    pub alloc_size: u32,
    /// `list`: free slots from here to the next one in use or the end of the segment;
    /// 0 when in use ([`FreeSlots::list`](crate::FreeSlots::list)).
    pub list: u16,
    /// `pad_slots`: padding slots before this first data slot.
    pub pad_slots: u16,
    /// bounce: distance from the mapping's first data slot, `None` when this slot holds
    /// no mapping data.
    pub head_dist: Option<u16>,
    /// bounce: in a first data slot, where the data starts inside the slot.
    pub data_offset: u16,
    /// bounce: in a first data slot, the bytes mapped.
    pub mapping_len: u32,
}

/// `struct io_tlb_area` without its lock: the slots in use and the rotating search
/// start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AreaView {
    /// `used`: slots in use in this area, padding included.
    pub used: usize,
    /// `index`: where the next search in this area starts (area-relative).
    pub index: usize,
}

/// The lock-protected part of an area.
pub(crate) type AreaState = AreaView;
