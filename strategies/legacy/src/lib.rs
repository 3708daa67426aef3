//! # bounce-legacy
//!
//! The legacy strategy: a faithful port of Linux 6.12's fixed-slot swiotlb
//! (`kernel/dma/swiotlb.c`), the reference every other strategy is measured against.
//!
//! One pool of 2 KiB slots ([`IO_TLB_SIZE`]) in 128-slot segments ([`IO_TLB_SEGSIZE`]),
//! allocated and converted to shared once at init and never grown. The pool is split
//! into areas (a power of two, by default one per CPU), each with its own IRQ-safe lock,
//! `used` count and rotating search `index`; a request searches the area of its CPU
//! first (`cpu & (nareas - 1)`) and then the others in order. Each slot carries Linux's
//! metadata (`orig_addr`, `alloc_size`, `list`, `pad_slots`) plus three fields bounce
//! needs (see [`SlotView`]). The search (`swiotlb_search_pool_area`), the alignment rules
//! (`swiotlb_align_offset`, page alignment, `min_align_mask`, stride), the release with
//! free-count merging (`swiotlb_release_slots`), `swiotlb_max_mapping_size`, the debugfs
//! counters (`inc_used_and_hiwater`) and the boot-time sizing (`swiotlb=`, the x86
//! confidential-guest 6 % rule, `limit_nareas`) follow the C code line by line; comments
//! quote it.
//!
//! The pool is [`SlotPool`], generic over how it keeps track of free slots
//! ([`FreeSlots`]); the legacy strategy is [`Legacy`], the pool with Linux's per-slot
//! free counts ([`LinuxLists`], `list` above). Another bookkeeping on the same pool is
//! another strategy (`bounce-bitmap`), with the same placements.
//!
//! ## Deviations from Linux, and why
//!
//! - `release` and `locate` are not given the device, so a mapping's first data slot
//!   records where its data starts and how long it is ([`SlotView::data_offset`],
//!   [`SlotView::mapping_len`]) and each data slot its distance from there
//!   ([`SlotView::head_dist`]). With them an unmap of an address that is not a mapping's
//!   start is refused instead of freeing whatever slots the address implies.
//! - Syncs are clamped to the mapped length, not to the allocation (which an
//!   `alloc_align_mask` can round up past the caller's buffer).
//! - The `min_align_mask` bits are always preserved. Linux skips the check when
//!   `orig_addr` is 0 (`orig_addr && ...`), which `swiotlb_alloc()` uses for "no
//!   original"; every framework request has an original, and physical address 0 is a
//!   valid one.
//! - The metadata of a new mapping (`orig_addr`, `pad_slots`, bounce's fields) and the
//!   global `used` counter are written before the area lock is dropped, not after, so an
//!   [`audit`](Strategy::audit) sees a consistent pool at any time.
//! - Release's forward merge is bounded by the pool's end as well as the segment's, so
//!   pools whose size is not a multiple of 128 slots (allowed here for the
//!   CVE-2023-52790 regression; Linux only has them as transient pools, which are freed
//!   whole) never read past the last slot.
//! - Requests Linux would fail with "swiotlb buffer is full" although the pool is
//!   empty, because an `alloc_align_mask` rounds them past one segment, or because a
//!   mask is not of the form `2^n - 1`, fail with [`MapError::BadAlignment`].
//! - Boot: `swiotlb=noforce` (no swiotlb at all) is an error, since the legacy
//!   strategy is nothing but its pool; the pool falls back to memory above 4 GiB before
//!   shrinking unless [`Placement::Low`] is chosen.
//!
//! Segment boundaries (`dma_get_seg_boundary()`) are not modelled: the framework's
//! devices carry none, and with Linux's default of `ULONG_MAX`
//! `iommu_is_span_boundary()` is always false. [`pool_full`] carries Linux's
//! numbers: `size` is the padded allocation size (`ALIGN(mapping_size + offset,
//! alloc_align_mask + 1)`), as in "swiotlb buffer is full (sz: %zd bytes)".
//!
//! ## How faithfulness is checked
//!
//! - Unit tests (`src/tests.rs`) pin the addresses and free counts of scripted sequences
//!   worked out by hand from the C code, each step commented with the C lines.
//! - `tests/linux_differential.rs` replays thousands of random maps and unmaps on the
//!   port and on Linux 6.12's own `swiotlb.c`, whose allocator functions
//!   `bounce-linux-ref` (`linux-ref/`) cuts out of the Linux source and compiles at build
//!   time; every address and every slot's and area's metadata must be identical
//!   (`BOUNCE_LINUX_SRC=... cargo test -p bounce-legacy --test linux_differential --
//!   --ignored`; it needs a C compiler and the Linux source). The same C is the `linux`
//!   reference row of `bounce compare`.
//! - The framework's conformance suite, a property test auditing the metadata after
//!   every step, and concurrency tests.
//!
//! # Context
//! `reserve`, `release`, `locate`, `owns` and the statistics run on the map path: they
//! take at most one area lock (spinning, IRQs off in the kernel), never sleep, never
//! allocate and never convert pages. The search in an area checks at most the area's
//! slot count, so a full or fragmented area cannot make it spin. Construction allocates
//! and converts the pool and may sleep; [`Strategy::audit`] allocates and takes every
//! area lock.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod audit;
mod boot;
mod config;
mod free;
mod slot;
#[cfg(test)]
mod tests;

use alloc::boxed::Box;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use bounce_framework::{
    AuditError, AuditReport, BootConfig, Detail, Device, InitError, IrqMutex, Located, LogLevel, MapError, PageCount,
    PhysAddr, Platform, PoolStats, RefillStats, ReleaseError, Released, Request, Reservation, SharedMemory, SlotCount,
    Strategy, TestProfile, UsageCounter, IO_TLB_SEGSIZE, IO_TLB_SHIFT, IO_TLB_SIZE, PAGE_SIZE,
};

pub use boot::{alloc_pool, PoolMemory};
#[doc(hidden)]
pub use bounce_framework::{PoolShape as __PoolShape, TestProfile as __TestProfile};
pub use config::{
    fit_nareas, limit_nareas, Geometry, LegacyConfig, LinuxSizing, Placement, COCO_MAX_SIZE, COCO_PERCENT,
    IO_TLB_DEFAULT_SIZE, IO_TLB_MIN_SLABS, LOW_MEMORY_LIMIT, MAX_AREAS, MAX_SLOTS,
};
pub use free::{io_tlb_offset, segment_end, FreeSlots, LinuxLists};
pub use slot::{AreaView, SlotIndex, SlotView};

use slot::{AreaState, Slot, INVALID_PHYS_ADDR, NOT_DATA};

/// `nr_slots()`: slots needed for `val` bytes.
#[inline]
const fn nr_slots(val: usize) -> usize {
    val.div_ceil(IO_TLB_SIZE)
}

/// `get_max_slots()`: slots covered by a mask, plus one.
#[inline]
const fn get_max_slots(mask: u64) -> usize {
    ((mask >> IO_TLB_SHIFT) + 1) as usize
}

/// `swiotlb_align_offset()`: the minimum offset from the start of an allocation that
/// keeps the device's `min_align_mask` bits and honours `align_mask`.
///
/// ```c
/// return addr & dma_get_min_align_mask(dev) & (align_mask | (IO_TLB_SIZE - 1));
/// ```
#[inline]
const fn swiotlb_align_offset(min_align_mask: u64, align_mask: u64, addr: u64) -> usize {
    (addr & min_align_mask & (align_mask | (IO_TLB_SIZE as u64 - 1))) as usize
}

/// `swiotlb_max_mapping_size()` for a device with `min_align_mask`.
///
/// ```c
/// if (min_align_mask)
///         min_align = roundup(min_align_mask, IO_TLB_SIZE);
/// return ((size_t)IO_TLB_SIZE) * IO_TLB_SEGSIZE - min_align;
/// ```
#[inline]
pub const fn max_mapping_size_for(min_align_mask: u64) -> usize {
    let min_align = if min_align_mask == 0 {
        0
    } else {
        min_align_mask.saturating_add(IO_TLB_SIZE as u64 - 1) / IO_TLB_SIZE as u64 * IO_TLB_SIZE as u64
    };
    (IO_TLB_SIZE as u64 * IO_TLB_SEGSIZE as u64).saturating_sub(min_align) as usize
}

/// Whether `m` is `2^n - 1` (0 included) and fits the 32-bit masks Linux uses.
#[inline]
const fn is_low_mask(m: u64) -> bool {
    m <= u32::MAX as u64 && m & (m + 1) == 0
}

/// The sizes `swiotlb_tbl_map_single()` computes before its search, from [`map_size`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSize {
    /// Bytes the caller maps: the larger of the request's `size` and `alloc_size`
    /// (Linux's `mapping_size`).
    pub mapping_len: usize,
    /// `swiotlb_align_offset(dev, alloc_align_mask, orig_addr)`: padding slots and the
    /// data offset inside the first data slot.
    pub tbl_offset: usize,
    /// `ALIGN(mapping_size + offset, alloc_align_mask + 1)`: the bytes the search looks
    /// for, at most one segment ([`IO_TLB_SEGSIZE`] slots).
    pub alloc_size: usize,
}

/// Checks `req` the way every pool of Linux's layout refuses requests, and computes what
/// `swiotlb_tbl_map_single()` computes before its search:
///
/// ```c
/// offset = swiotlb_align_offset(dev, alloc_align_mask, orig_addr);
/// size = ALIGN(mapping_size + offset, alloc_align_mask + 1);
/// ```
///
/// # Errors
/// [`MapError::ZeroSize`]; [`MapError::BadAlignment`] for a mask that is not `2^n - 1`
/// of at most 32 bits, or an alignment that rounds the request past one segment (Linux
/// fails those with "swiotlb buffer is full" although the pool may be empty); and
/// [`MapError::TooLarge`] beyond [`max_mapping_size_for`].
pub fn map_size(req: &Request) -> Result<MapSize, MapError> {
    let mapping_len = req.alloc_size.max(req.size);
    if mapping_len == 0 {
        return Err(MapError::ZeroSize);
    }
    let (aam, mam) = (req.alloc_align_mask, req.min_align_mask);
    let bad = MapError::BadAlignment { size: mapping_len, align_mask: aam, min_align_mask: mam };
    if !is_low_mask(aam) || !is_low_mask(mam) {
        return Err(bad);
    }
    let max = max_mapping_size_for(mam);
    if mapping_len > max {
        return Err(MapError::TooLarge { size: mapping_len, max });
    }
    let tbl_offset = swiotlb_align_offset(mam, aam, req.orig.0);
    let alloc_size = (mapping_len + tbl_offset).next_multiple_of(aam as usize + 1);
    if alloc_size > IO_TLB_SEGSIZE * IO_TLB_SIZE {
        // Linux: swiotlb_find_slots() returns -1 ("swiotlb buffer is full").
        return Err(bad);
    }
    Ok(MapSize { mapping_len, tbl_offset, alloc_size })
}

/// What one reservation needs, computed once in `reserve` (the arguments of
/// `swiotlb_search_pool_area()` and what `swiotlb_tbl_map_single()` writes after it).
struct Want {
    /// `orig_addr`.
    orig: u64,
    /// `alloc_size`: `ALIGN(mapping_size + offset, alloc_align_mask + 1)`.
    alloc_size: usize,
    /// The caller's `alloc_align_mask`.
    alloc_align_mask: u64,
    /// `dma_get_min_align_mask(dev)`.
    min_align_mask: u64,
    /// `swiotlb_align_offset(dev, alloc_align_mask, orig_addr)`: padding slots and the
    /// data offset inside the first data slot.
    tbl_offset: usize,
    /// Bytes the caller maps (bounce's `mapping_len`).
    mapping_len: usize,
}

/// Linux's slot pool over platform `P`, with `F` keeping track of the free slots.
/// [`Legacy`] is Linux's own (`F` = [`LinuxLists`]).
///
/// Lock order: the map path holds at most one area lock at a time; [`Strategy::audit`]
/// takes all of them in ascending area order. Each area's lock protects its
/// [`AreaView`] and every store to the metadata of the slots in that area (loads on the
/// lookup path are lock-free, see [`SlotView`]).
pub struct SlotPool<P: Platform, F: FreeSlots> {
    platform: P,
    shared: SharedMemory<P>,
    /// `mem->start`.
    start: PhysAddr,
    /// `mem->end`: `start + (nslabs << IO_TLB_SHIFT)`.
    end: PhysAddr,
    /// The pages the pool occupies (`PAGE_ALIGN(nslabs << IO_TLB_SHIFT)`).
    pages: PageCount,
    /// `phys_to_dma_unencrypted(dev, pool->start) & boundary_mask` with the default
    /// boundary `ULONG_MAX`: alignment is checked on bus addresses, as in Linux.
    tbl_dma_addr: u64,
    geometry: Geometry,
    /// `mem->slots`.
    slots: Box<[Slot]>,
    /// Which slots are free (Linux: the slots' `list`).
    free: F,
    /// `mem->areas`, each behind its own lock. Not padded to cache lines: Linux's
    /// `struct io_tlb_area` is not either.
    areas: Box<[IrqMutex<P::Lock, AreaState>]>,
    /// `total_used` and `used_hiwater`, in bytes (slots × 2 KiB).
    usage: UsageCounter,
    /// `dev_WARN_ONCE(dev, alloc_align_mask > ~PAGE_MASK, ...)` has fired.
    warned_align: AtomicBool,
}

/// The legacy strategy: Linux 6.12's swiotlb, free counts and all.
pub type Legacy<P> = SlotPool<P, LinuxLists>;

impl<P: Platform, F: FreeSlots> fmt::Debug for SlotPool<P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotPool")
            .field("strategy", &F::NAME)
            .field("start", &self.start)
            .field("end", &self.end)
            .field("nslabs", &self.geometry.nslabs)
            .field("nareas", &self.geometry.nareas)
            .field("used_bytes", &self.usage.used())
            .finish_non_exhaustive()
    }
}

/// Linux's "swiotlb buffer is full (sz: %zd bytes), total %lu (slots), used %lu
/// (slots)": the error of a request of `size` bytes (with its alignment padding) that
/// no run of free slots can hold, with the pool's slot counts.
pub const fn pool_full(size: usize, total_slots: usize, used_slots: usize) -> MapError {
    MapError::Exhausted {
        size,
        detail: Detail::new("swiotlb buffer is full (sz: {} bytes), total {} (slots), used {} (slots)")
            .with("size", size)
            .with("total slots", total_slots)
            .with("used slots", used_slots),
    }
}

impl<P: Platform, F: FreeSlots> SlotPool<P, F> {
    /// The strategy's boot name (`swiotlb.strategy=legacy` for [`Legacy`]).
    pub const NAME: &'static str = F::NAME;
    /// Boot command lines with small pools (1–4 MiB) and idle and period timers of
    /// 0–1 ms, so that exhaustion, growth up to the cap and shrinking are all reachable
    /// within a few hundred operations: the fuzzer's configurations
    /// (`bounce_strategies::AnyStrategy::small_cmdlines`).
    pub const SMALL_CMDLINES: &'static [&'static str] = F::SMALL_CMDLINES;

    /// What the strategy-generic tests boot and expect: Linux's fixed pool.
    pub const TEST_PROFILE: TestProfile = F::TEST_PROFILE;

    /// The `swiotlb.<NAME>.*` parameters: none. The pool is sized by Linux's own
    /// `swiotlb=<slots>[,<areas>]`, so any `swiotlb.legacy.<param>` (or
    /// `swiotlb.<NAME>.<param>` of another bookkeeping) is an error.
    pub const PARAMS: &'static [&'static str] = &[];

    /// Builds the pool Linux 6.12 would boot with for `boot.swiotlb` on `platform`
    /// ([`LinuxSizing::replay`]: `swiotlb=<slots>,<areas>`, the confidential-guest 6 %
    /// rule, one area per CPU, power-of-two rounding), below 4 GiB when possible, shrunk
    /// by halves like Linux when the page allocator cannot provide it.
    ///
    /// # Errors
    /// [`InitError::Cmdline`] for any `swiotlb.legacy.*` parameter,
    /// [`InitError::Config`] for `swiotlb=noforce` (which turns swiotlb off), and the
    /// errors of [`Legacy::new`].
    pub fn from_boot(platform: P, boot: &BootConfig) -> Result<Self, InitError> {
        boot.params_for(Self::NAME).check_known(Self::PARAMS)?;
        let config = LegacyConfig::for_boot(&platform, boot, Self::NAME)?;
        Self::new(platform, config)
    }

    /// Builds a pool as `config` says: allocates it (below 4 GiB when possible),
    /// converts it to shared in one go through [`SharedMemory::alloc_shared`] (batched at
    /// `max_conversion_pages()`), clears it and initialises the metadata
    /// (`swiotlb_init_io_tlb_pool()`).
    ///
    /// # Errors
    /// [`InitError::Config`] for a size or area count that cannot work (zero slots, more
    /// areas than whole segments, a non-power-of-two area count, ...), and
    /// [`InitError::Grow`] when the pages cannot be allocated (after shrinking, if
    /// allowed) or converted. Nothing is left allocated on error.
    pub fn new(platform: P, config: LegacyConfig) -> Result<Self, InitError> {
        let shared = SharedMemory::new(platform.clone(), usize::MAX);
        let PoolMemory { start, geometry, pages } = alloc_pool(&shared, &config)?;
        let Geometry { nslabs, nareas, .. } = geometry;
        let slots: Box<[Slot]> = (0..nslabs).map(|_| Slot::free()).collect();
        let free = F::new(nslabs);
        let areas: Box<[IrqMutex<P::Lock, AreaState>]> =
            (0..nareas).map(|_| IrqMutex::new(AreaState::default())).collect();
        Ok(Self {
            tbl_dma_addr: platform.phys_to_dma(start).0,
            platform,
            shared,
            start,
            end: start + (nslabs << IO_TLB_SHIFT) as u64,
            pages,
            geometry,
            slots,
            free,
            areas,
            usage: UsageCounter::new(),
            warned_align: AtomicBool::new(false),
        })
    }

    /// The pool's first byte (`mem->start`).
    pub fn pool_start(&self) -> PhysAddr {
        self.start
    }

    /// The end of the pool's slots (`mem->end`, exclusive).
    pub fn pool_end(&self) -> PhysAddr {
        self.end
    }

    /// The pool's shape.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Slots in the pool (`io_tlb_nslabs`).
    pub fn nslabs(&self) -> SlotCount {
        SlotCount(self.geometry.nslabs)
    }

    /// The shared-memory source (conversion counters).
    pub fn shared_memory(&self) -> &SharedMemory<P> {
        &self.shared
    }

    /// The address of slot `index` (`slot_addr(mem->start, index)`).
    pub fn slot_addr(&self, index: SlotIndex) -> PhysAddr {
        self.start + ((index.0 as u64) << IO_TLB_SHIFT)
    }

    /// The slot holding `addr`, if it lies in the pool.
    pub fn slot_of(&self, addr: PhysAddr) -> Option<SlotIndex> {
        if addr < self.start || addr >= self.end {
            return None;
        }
        Some(SlotIndex(((addr.0 - self.start.0) >> IO_TLB_SHIFT) as usize))
    }

    /// A copy of one slot's metadata (lock-free; consistent while no map or unmap runs
    /// in the slot's area).
    pub fn slot(&self, index: SlotIndex) -> Option<SlotView> {
        self.slots.get(index.0).map(|s| s.view(self.free.list(index.0)))
    }

    /// A copy of one area's counters (takes the area's lock).
    pub fn area(&self, area: usize) -> Option<AreaView> {
        self.areas.get(area).map(|a| *a.lock())
    }

    /// `wrap_area_index()`.
    #[inline]
    fn wrap_area_index(&self, index: usize) -> usize {
        if index >= self.geometry.area_nslabs {
            0
        } else {
            index
        }
    }

    /// `swiotlb_search_pool_area()`: finds `nr_slots(w.alloc_size)` free slots in one
    /// area under its lock and marks them used; returns the first slot's index.
    ///
    /// The `found:` block also does what `swiotlb_tbl_map_single()` does after the
    /// search (`pad_slots`, `orig_addr`) and sets bounce's extra fields.
    fn search_pool_area(&self, area_index: usize, w: &Want) -> Option<usize> {
        let area_nslabs = self.geometry.area_nslabs;
        let nslots = nr_slots(w.alloc_size);
        // unsigned int offset = swiotlb_align_offset(dev, 0, orig_addr);
        let offset = swiotlb_align_offset(w.min_align_mask, 0, w.orig);
        let mut alloc_align_mask = w.alloc_align_mask;
        let mut iotlb_align_mask = w.min_align_mask;

        // if (!alloc_align_mask && !iotlb_align_mask && alloc_size >= PAGE_SIZE)
        //         alloc_align_mask = PAGE_SIZE - 1;
        if alloc_align_mask == 0 && iotlb_align_mask == 0 && w.alloc_size >= PAGE_SIZE {
            alloc_align_mask = PAGE_SIZE as u64 - 1;
        }
        // alloc_align_mask |= (IO_TLB_SIZE - 1);
        // iotlb_align_mask &= ~alloc_align_mask;
        alloc_align_mask |= IO_TLB_SIZE as u64 - 1;
        iotlb_align_mask &= !alloc_align_mask;
        // stride = get_max_slots(max(alloc_align_mask, iotlb_align_mask));
        let stride = get_max_slots(alloc_align_mask.max(iotlb_align_mask));

        let mut area = self.areas[area_index].lock();
        // if (unlikely(nslots > pool->area_nslabs - area->used)) goto not_found;
        if nslots > area_nslabs - area.used {
            return None;
        }
        let slot_base = area_index * area_nslabs;
        let mut index = area.index;
        let mut slots_checked = 0;
        while slots_checked < area_nslabs {
            let slot_index = slot_base + index;
            let tlb_addr = self.tbl_dma_addr.wrapping_add((slot_index as u64) << IO_TLB_SHIFT);
            // if ((tlb_addr & alloc_align_mask) ||
            //     (orig_addr && (tlb_addr & iotlb_align_mask) != (orig_addr & iotlb_align_mask)))
            // (bounce checks the min_align_mask bits for orig_addr 0 too; see the crate docs)
            if tlb_addr & alloc_align_mask != 0 || tlb_addr & iotlb_align_mask != w.orig & iotlb_align_mask {
                index = self.wrap_area_index(index + 1);
                slots_checked += 1;
                continue;
            }
            // iommu_is_span_boundary() is false for the default ULONG_MAX boundary.
            // if (pool->slots[slot_index].list >= nslots) goto found;
            match self.free.probe(slot_index, nslots) {
                Ok(()) => {
                    self.mark_found(&mut area, slot_index, index, nslots, offset, w);
                    return Some(slot_index);
                }
                Err(last) => {
                    // index = wrap_area_index(pool, index + stride); slots_checked += stride;
                    // repeated over the candidates the bookkeeping rules out (at most
                    // `last`; Linux's lists rule out only this one), so every
                    // bookkeeping finds the same slots.
                    let last = last - slot_base;
                    loop {
                        index = self.wrap_area_index(index + stride);
                        slots_checked += stride;
                        if index == 0 || index > last || slots_checked >= area_nslabs {
                            break;
                        }
                    }
                }
            }
        }
        None
    }

    /// The `found:` block of `swiotlb_search_pool_area()` plus the metadata writes of
    /// `swiotlb_tbl_map_single()`, under the area lock.
    fn mark_found(
        &self,
        area: &mut AreaState,
        slot_index: usize,
        index: usize,
        nslots: usize,
        offset: usize,
        w: &Want,
    ) {
        // for (i = slot_index; i < slot_index + nslots; i++) {
        //         pool->slots[i].list = 0;
        //         pool->slots[i].alloc_size = alloc_size - (offset +
        //                         ((i - slot_index) << IO_TLB_SHIFT));
        // }
        // for (i = slot_index - 1;
        //      io_tlb_offset(i) != IO_TLB_SEGSIZE - 1 && pool->slots[i].list; i--)
        //         pool->slots[i].list = ++count;
        // (the `list` writes are the bookkeeping's `take`)
        self.free.take(slot_index, nslots);
        for i in slot_index..slot_index + nslots {
            let a = w.alloc_size.wrapping_sub(offset + ((i - slot_index) << IO_TLB_SHIFT));
            self.slots[i].alloc_size.store(a as u32, Relaxed);
        }
        // swiotlb_tbl_map_single():
        //   pad_slots = offset >> IO_TLB_SHIFT;
        //   offset &= (IO_TLB_SIZE - 1);
        //   index += pad_slots;
        //   pool->slots[index].pad_slots = pad_slots;
        //   for (i = 0; i < (nr_slots(size) - pad_slots); i++)
        //           pool->slots[index + i].orig_addr = slot_addr(orig_addr, i);
        let pad_slots = w.tbl_offset >> IO_TLB_SHIFT;
        let head = slot_index + pad_slots;
        let h = &self.slots[head];
        h.pad_slots.store(pad_slots as u16, Relaxed);
        h.data_offset.store((w.tbl_offset & (IO_TLB_SIZE - 1)) as u16, Relaxed);
        h.mapping_len.store(w.mapping_len as u32, Relaxed);
        for k in 0..nslots - pad_slots {
            let s = &self.slots[head + k];
            s.orig_addr.store(w.orig.wrapping_add((k as u64) << IO_TLB_SHIFT), Relaxed);
            s.head_dist.store(k as u16, Relaxed);
        }
        // area->index = wrap_area_index(pool, index + nslots);
        // area->used += nslots;
        area.index = self.wrap_area_index(index + nslots);
        area.used += nslots;
        // inc_used_and_hiwater(dev->dma_io_tlb_mem, nslots);
        self.usage.add(nslots << IO_TLB_SHIFT);
    }

    /// `swiotlb_find_slots()` without dynamic pools: the request's CPU's area first,
    /// then the following ones, wrapping around.
    ///
    /// ```c
    /// i = start = raw_smp_processor_id() & (pool->nareas - 1);
    /// do {
    ///         index = swiotlb_search_pool_area(dev, pool, i, orig_addr,
    ///                                          alloc_size, alloc_align_mask);
    ///         if (index >= 0)
    ///                 return index;
    ///         if (++i >= pool->nareas)
    ///                 i = 0;
    /// } while (i != start);
    /// return -1;
    /// ```
    fn find_slots(&self, cpu: usize, w: &Want) -> Option<usize> {
        let nareas = self.geometry.nareas;
        let start = cpu & (nareas - 1);
        let mut i = start;
        loop {
            if let Some(index) = self.search_pool_area(i, w) {
                return Some(index);
            }
            i += 1;
            if i >= nareas {
                i = 0;
            }
            if i == start {
                return None;
            }
        }
    }

    /// `swiotlb_release_slots()` for the mapping whose first data slot is `head`,
    /// under the lock of its area. Returns the slots freed.
    fn release_slots(&self, area: &mut AreaState, head: usize) -> usize {
        let h = &self.slots[head];
        // offset = swiotlb_align_offset(dev, 0, tlb_addr);
        // index = (tlb_addr - offset - mem->start) >> IO_TLB_SHIFT;
        // index -= mem->slots[index].pad_slots;
        // nslots = nr_slots(mem->slots[index].alloc_size + offset);
        let offset = usize::from(h.data_offset.load(Relaxed));
        let index = head - usize::from(h.pad_slots.load(Relaxed));
        let nslots = nr_slots(self.slots[index].alloc_size.load(Relaxed).wrapping_add(offset as u32) as usize);

        // Step 1: return the slots to the free list, merging the slots with
        // superceeding slots (the `list` counts are the bookkeeping's `give`, which
        // also does step 2: merge the returned slots with the preceding slots)
        for s in &self.slots[index..index + nslots] {
            s.clear();
        }
        self.free.give(index, nslots);
        // area->used -= nslots;   dec_used(dev->dma_io_tlb_mem, nslots);
        area.used -= nslots;
        self.usage.sub(nslots << IO_TLB_SHIFT);
        nslots
    }

    /// Where a mapping whose first data slot is `head` starts (`tlb_addr`).
    #[inline]
    fn mapping_start(&self, head: usize) -> PhysAddr {
        self.slot_addr(SlotIndex(head)) + u64::from(self.slots[head].data_offset.load(Relaxed))
    }
}

impl<P: Platform, F: FreeSlots> Strategy for SlotPool<P, F> {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    /// `swiotlb_tbl_map_single()` up to the copy (which the bouncer does).
    fn reserve(&self, req: &Request) -> Result<Reservation, MapError> {
        let MapSize { mapping_len, tbl_offset, alloc_size: size } = map_size(req)?;
        let aam = req.alloc_align_mask;
        // dev_WARN_ONCE(dev, alloc_align_mask > ~PAGE_MASK,
        //         "Alloc alignment may prevent fulfilling requests with max mapping_size\n");
        if aam > PAGE_SIZE as u64 - 1 && !self.warned_align.swap(true, Relaxed) {
            self.platform.log(
                LogLevel::Warn,
                format_args!(
                    "software IO TLB: alloc alignment {aam:#x} may prevent fulfilling requests with max mapping_size"
                ),
            );
        }
        let want = Want {
            orig: req.orig.0,
            alloc_size: size,
            alloc_align_mask: aam,
            min_align_mask: req.min_align_mask,
            tbl_offset,
            mapping_len,
        };
        let Some(index) = self.find_slots(req.cpu, &want) else {
            return Err(pool_full(size, self.geometry.nslabs, self.usage.used() >> IO_TLB_SHIFT));
        };
        // tlb_addr = slot_addr(pool->start, index + pad_slots) + (offset & (IO_TLB_SIZE - 1));
        Ok(Reservation { addr: self.mapping_start(index + (tbl_offset >> IO_TLB_SHIFT)) })
    }

    /// `swiotlb_release_slots()`, refusing addresses that are not a live mapping's
    /// start.
    fn release(&self, addr: PhysAddr) -> Result<Released, ReleaseError> {
        let j = self.slot_of(addr).ok_or(ReleaseError::Foreign)?.0;
        let area_nslabs = self.geometry.area_nslabs;
        let mut area = self.areas[j / area_nslabs].lock();
        let dist = self.slots[j].head_dist.load(Relaxed);
        if dist == NOT_DATA {
            return Err(ReleaseError::NotMapped);
        }
        // Mappings never cross areas, so `head` is in the area locked above.
        let head = j - usize::from(dist);
        let start = self.mapping_start(head);
        let len = self.slots[head].mapping_len.load(Relaxed) as usize;
        if addr != start {
            return match addr.offset_from(start) {
                Some(off) if (off as usize) < len => Err(ReleaseError::NotStart { start }),
                _ => Err(ReleaseError::NotMapped),
            };
        }
        let orig = PhysAddr(self.slots[head].orig_addr.load(Relaxed));
        self.release_slots(&mut area, head);
        Ok(Released { orig, size: len })
    }

    /// What `swiotlb_bounce()` computes from the slot metadata, lock-free as there.
    fn locate(&self, addr: PhysAddr) -> Option<Located> {
        let j = self.slot_of(addr)?.0;
        let dist = self.slots[j].head_dist.load(Relaxed);
        if dist == NOT_DATA {
            return None;
        }
        let head = j.checked_sub(usize::from(dist))?;
        let h = &self.slots[head];
        let start = self.mapping_start(head);
        let len = h.mapping_len.load(Relaxed) as usize;
        let off = addr.offset_from(start)? as usize;
        if off >= len {
            return None;
        }
        let orig = h.orig_addr.load(Relaxed);
        if orig == INVALID_PHYS_ADDR {
            return None;
        }
        // A lookup racing with a caller's own double unmap may read a mix of two
        // mappings; never report bytes beyond the pool.
        let remaining = (len - off).min((self.end.0 - addr.0) as usize);
        Some(Located { start, orig: PhysAddr(orig.checked_add(off as u64)?), remaining })
    }

    /// `is_swiotlb_buffer()`: `paddr >= mem->start && paddr < mem->end`.
    fn owns(&self, addr: PhysAddr) -> bool {
        addr >= self.start && addr < self.end
    }

    fn max_mapping_size(&self, dev: &Device) -> usize {
        max_mapping_size_for(dev.min_align_mask)
    }

    fn addressing_limit(&self) -> PhysAddr {
        self.end
    }

    fn stats(&self) -> PoolStats {
        PoolStats {
            capacity_bytes: self.geometry.nslabs << IO_TLB_SHIFT,
            used_bytes: self.usage.used(),
            used_hiwater_bytes: self.usage.hiwater(),
            transient_bytes: 0,
            conversions: self.shared.stats(),
            refill: RefillStats::default(),
        }
    }

    fn reset_hiwater(&self) {
        self.usage.reset_hiwater();
    }

    /// Walks every slot under all area locks and checks: each mapping's slots are in
    /// use, inside one segment and one area, and carry Linux's `alloc_size` and
    /// `orig_addr` sequences; no two mappings overlap; every slot in use belongs to a
    /// mapping; every free slot's `list` is one more than its successor's in the
    /// segment (the exact free count to the segment end) and its other fields are
    /// cleared; each area's `used` is the sum of its mappings' slots and its `index`
    /// is in range; the global used counter is the sum; the pool's pages are all
    /// committed shared memory.
    fn audit(&self) -> Result<AuditReport, AuditError> {
        self.check_invariants()
    }
}

impl<P: Platform, F: FreeSlots> Drop for SlotPool<P, F> {
    /// Returns the pool as `swiotlb_exit()` does: converted back to private and freed,
    /// or quarantined if that conversion fails.
    fn drop(&mut self) {
        let _ = self.shared.free_shared(self.start, self.pages);
    }
}
