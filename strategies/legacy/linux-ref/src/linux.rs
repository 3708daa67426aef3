//! [`LinuxRef`]: the C pool behind the [`Strategy`] trait.

use core::fmt;
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::time::Duration;

use bounce_framework::{
    AuditError, AuditReport, BootConfig, Device, InitError, Located, MapError, PhysAddr, Platform, PoolStats,
    ReleaseError, Released, Request, Reservation, SharedMemory, Strategy, IO_TLB_SEGSIZE, IO_TLB_SHIFT, IO_TLB_SIZE,
};
use bounce_legacy::{alloc_pool, max_mapping_size_for, AreaView, Geometry, LegacyConfig, PoolMemory};

use crate::ffi::{Pool, SlotMeta, INVALID_PHYS_ADDR};

/// The reference row's name in `bounce compare`.
pub const NAME: &str = "linux";

/// How often [`LinuxRef::audit`] takes a snapshot before it reports what it found: a
/// snapshot taken while maps and unmaps run may catch one between Linux's state and
/// the mapping records (see [`LinuxRef::audit`]).
const AUDIT_SNAPSHOTS: usize = 20;

/// What a caller of Linux's swiotlb keeps itself and bounce's `release` and `locate` are
/// not given: the device's `min_align_mask` (which `swiotlb_release_slots()` and
/// `swiotlb_bounce()` read from the device) and the mapping's length. Stored, packed in
/// one word, at the slot the mapping's data starts in, while the mapping lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    /// Where the data starts inside its slot (`tlb_addr & (IO_TLB_SIZE - 1)`).
    offset: u16,
    /// `min_align_mask` as a bit count (`2^bits - 1`, at most 32).
    mask_bits: u8,
    /// Bytes mapped.
    len: u32,
}

impl Mark {
    const LIVE: u64 = 1 << 63;

    fn pack(self) -> u64 {
        Self::LIVE | u64::from(self.offset) << 40 | u64::from(self.mask_bits) << 32 | u64::from(self.len)
    }

    fn unpack(word: u64) -> Option<Self> {
        (word & Self::LIVE != 0).then_some(Self {
            offset: (word >> 40) as u16 & (IO_TLB_SIZE as u16 - 1),
            mask_bits: (word >> 32) as u8,
            len: word as u32,
        })
    }

    fn mask(self) -> u64 {
        (1u64 << self.mask_bits) - 1
    }
}

/// Linux 6.12's swiotlb allocator, compiled from the Linux source, as a [`Strategy`]:
/// the reference row of `bounce compare` (never a boot choice).
///
/// - `reserve` is `swiotlb_tbl_map_single()` with a device carrying the request's
///   `min_align_mask` on the request's CPU, after the checks every pool of Linux's layout
///   makes ([`bounce_legacy::map_size`]); an exhausted pool is
///   [`bounce_legacy::pool_full`] with `mem_used()`.
/// - `release` is `swiotlb_release_slots()`, called only for the start of a live
///   mapping: a per-slot record (the device's `min_align_mask` and the mapping's length,
///   which a Linux caller passes back itself) says where each mapping starts, and is
///   claimed with a compare-and-swap, so a double, foreign or interior unmap is
///   refused and never reaches the C state, and of racing double unmaps one wins.
/// - `locate` reads the slot's metadata as `swiotlb_bounce()` does (`orig_addr` of the
///   slot, plus the offset past the mapping's own), with the mapping's start and length
///   from its record.
/// - `owns`, `max_mapping_size` and the statistics are `is_swiotlb_buffer()`,
///   `swiotlb_max_mapping_size()` ([`max_mapping_size_for`], the same formula; a test
///   checks it against the C) and debugfs `io_tlb_used` / `io_tlb_used_hiwater`.
///
/// The pool is legacy's for the same command line: [`LegacyConfig::for_boot`] sizes it
/// (`swiotlb=`, the confidential-guest 6 % rule, one area per possible CPU rounded up
/// to a power of two) and [`alloc_pool`] allocates, converts and clears it.
///
/// # Context
/// The map path takes at most one area spin lock (in C) and never allocates; the C
/// state is guarded as Linux guards it.
pub struct LinuxRef<P: Platform> {
    pool: Pool,
    shared: SharedMemory<P>,
    memory: PoolMemory,
    end: PhysAddr,
    /// One word per slot: the [`Mark`] of the mapping whose data starts there, or 0.
    marks: Box<[AtomicU64]>,
}

impl<P: Platform> fmt::Debug for LinuxRef<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinuxRef")
            .field("start", &self.memory.start)
            .field("end", &self.end)
            .field("geometry", &self.memory.geometry)
            .field("used_slots", &self.pool.used_slots())
            .finish_non_exhaustive()
    }
}

impl<P: Platform> LinuxRef<P> {
    /// The row's name.
    pub const NAME: &'static str = NAME;

    /// The pool legacy boots with for `boot` on `platform` ([`LegacyConfig::for_boot`]),
    /// run by Linux's code.
    ///
    /// # Errors
    /// [`InitError::Config`] when the reference was built without the Linux source (the
    /// message says why and how to get it) or for `swiotlb=noforce`, and the errors of
    /// [`LinuxRef::new`].
    pub fn from_boot(platform: P, boot: &BootConfig) -> Result<Self, InitError> {
        crate::available().map_err(InitError::Config)?;
        let config = LegacyConfig::for_boot(&platform, boot, NAME)?;
        Self::new(platform, config)
    }

    /// A pool of `config`'s shape, allocated as legacy allocates its own
    /// ([`alloc_pool`]), its metadata initialised by `swiotlb_init_io_tlb_pool()`.
    ///
    /// # Errors
    /// [`InitError::Config`] when the reference is unavailable, for a shape that cannot
    /// work or when the C metadata cannot be allocated; [`InitError::Grow`] when the
    /// pages cannot be allocated or converted. Nothing is left allocated on error.
    pub fn new(platform: P, config: LegacyConfig) -> Result<Self, InitError> {
        crate::available().map_err(InitError::Config)?;
        let shared = SharedMemory::new(platform, usize::MAX);
        let memory = alloc_pool(&shared, &config)?;
        let start = memory.start;
        let dma_offset = shared.platform().phys_to_dma(start).0.wrapping_sub(start.0);
        let pool = match Pool::new(start.0, dma_offset, &memory.geometry) {
            Ok(pool) => pool,
            Err(e) => {
                let _ = shared.free_shared(start, memory.pages);
                return Err(InitError::Config(e));
            }
        };
        let nslabs = memory.geometry.nslabs;
        Ok(Self {
            pool,
            shared,
            memory,
            end: start + (nslabs << IO_TLB_SHIFT) as u64,
            marks: (0..nslabs).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// The pool's first byte (`mem->start`).
    pub fn pool_start(&self) -> PhysAddr {
        self.memory.start
    }

    /// The end of the pool's slots (`mem->end`, exclusive).
    pub fn pool_end(&self) -> PhysAddr {
        self.end
    }

    /// The pool's shape.
    pub fn geometry(&self) -> Geometry {
        self.memory.geometry
    }

    /// Linux's metadata of slot `index` (lock-free; consistent while no map or unmap
    /// runs in its area).
    pub fn slot(&self, index: usize) -> Option<SlotMeta> {
        (index < self.memory.geometry.nslabs).then(|| self.pool.slot(index))
    }

    /// Linux's counters of area `area` (takes the area locks).
    pub fn area(&self, area: usize) -> Option<AreaView> {
        (area < self.memory.geometry.nareas).then(|| self.pool.lock_areas().area(area))
    }

    fn slot_of(&self, addr: PhysAddr) -> Option<usize> {
        let off = addr.offset_from(self.memory.start)?;
        (addr < self.end).then_some((off >> IO_TLB_SHIFT) as usize)
    }

    fn slot_addr(&self, index: usize) -> PhysAddr {
        self.memory.start + ((index as u64) << IO_TLB_SHIFT)
    }

    /// The live mapping whose data starts in slot `index`, and its start.
    fn mark(&self, index: usize) -> Option<(Mark, PhysAddr)> {
        let m = Mark::unpack(self.marks[index].load(Acquire))?;
        Some((m, self.slot_addr(index) + u64::from(m.offset)))
    }

    /// One consistent look at Linux's state and the mapping records, checked.
    fn check(&self) -> Result<AuditReport, String> {
        let Geometry { nslabs, nareas, area_nslabs } = self.memory.geometry;
        let mut slots: Vec<SlotMeta> = Vec::with_capacity(nslabs);
        let mut marks: Vec<Option<Mark>> = Vec::with_capacity(nslabs);
        let mut areas: Vec<AreaView> = Vec::with_capacity(nareas);
        let (used, hiwater) = {
            let locked = self.pool.lock_areas();
            slots.extend((0..nslabs).map(|i| self.pool.slot(i)));
            marks.extend(self.marks.iter().map(|m| Mark::unpack(m.load(Acquire))));
            areas.extend((0..nareas).map(|a| locked.area(a)));
            (self.pool.used_slots(), self.pool.hiwater_slots())
        };
        // Linux's own invariants: free counts and area counters.
        let mut in_use = vec![0usize; nareas];
        for (i, s) in slots.iter().enumerate() {
            if s.list == 0 {
                in_use[i / area_nslabs] += 1;
                continue;
            }
            let seg_end = (i / IO_TLB_SEGSIZE + 1) * IO_TLB_SEGSIZE;
            let next = slots.get(i + 1).filter(|_| i + 1 < seg_end).map_or(0, |n| n.list);
            if s.list != next + 1 || s.orig_addr != INVALID_PHYS_ADDR || s.alloc_size != 0 || s.pad_slots != 0 {
                return Err(format!("free slot {i} is inconsistent ({next} free slots follow): {s:?}"));
            }
        }
        for (a, v) in areas.iter().enumerate() {
            if v.used != in_use[a] || v.index >= area_nslabs {
                return Err(format!("area {a}: {v:?}, but {} of its slots are in use", in_use[a]));
            }
        }
        // Each record names a mapping Linux holds, and every slot in use is one's.
        let mut owner: Vec<Option<usize>> = vec![None; nslabs];
        let (mut live, mut held) = (0usize, 0usize);
        for (head, m) in marks.iter().enumerate().filter_map(|(h, m)| Some((h, (*m)?))) {
            let orig = slots[head].orig_addr;
            let pad = usize::from(slots[head].pad_slots);
            let first = head.checked_sub(pad).ok_or_else(|| format!("slot {head}: padding before the pool"))?;
            // swiotlb_release_slots(): nslots = nr_slots(mem->slots[index].alloc_size + offset);
            let bytes = slots[first].alloc_size.wrapping_add(u64::from(m.offset));
            let n = bytes.div_ceil(IO_TLB_SIZE as u64) as usize;
            let last = first + n.max(1) - 1;
            if n == 0 || n > IO_TLB_SEGSIZE || last >= nslabs || first / IO_TLB_SEGSIZE != last / IO_TLB_SEGSIZE {
                return Err(format!("mapping at slot {head}: {n} slots from slot {first} leave its segment"));
            }
            if orig == INVALID_PHYS_ADDR
                || orig & m.mask() & (IO_TLB_SIZE as u64 - 1) != u64::from(m.offset)
                || usize::from(m.offset) + m.len as usize > (last + 1 - head) << IO_TLB_SHIFT
            {
                return Err(format!("mapping at slot {head} ({m:?}) does not match Linux's slot {:?}", slots[head]));
            }
            for i in first..=last {
                if let Some(other) = owner[i].replace(head) {
                    return Err(format!("slot {i} belongs to the mappings at slots {other} and {head}"));
                }
                let want = if i < head { INVALID_PHYS_ADDR } else { orig + ((i - head) << IO_TLB_SHIFT) as u64 };
                if slots[i].list != 0 || slots[i].orig_addr != want {
                    return Err(format!("slot {i} of the mapping at slot {head}: {:?}", slots[i]));
                }
            }
            live += 1;
            held += n;
        }
        if let Some(i) = (0..nslabs).find(|&i| slots[i].list == 0 && owner[i].is_none()) {
            return Err(format!("slot {i} is in use but no live mapping holds it: {:?}", slots[i]));
        }
        if used != held || hiwater < used {
            return Err(format!("total_used {used}, used_hiwater {hiwater}, but the mappings hold {held} slots"));
        }
        let conv = self.shared.stats();
        if conv.shared_bytes != self.memory.pages.bytes() as u64 {
            return Err(format!(
                "{} shared bytes committed, the pool spans {}",
                conv.shared_bytes,
                self.memory.pages.bytes()
            ));
        }
        Ok(AuditReport {
            live_mappings: live,
            used_bytes: held << IO_TLB_SHIFT,
            free_bytes: (nslabs - held) << IO_TLB_SHIFT,
            owned_bytes: self.memory.pages.bytes(),
            quarantined_pages: conv.quarantined_pages,
        })
    }
}

impl<P: Platform> Strategy for LinuxRef<P> {
    fn name(&self) -> &'static str {
        NAME
    }

    /// `swiotlb_tbl_map_single()`.
    fn reserve(&self, req: &Request) -> Result<Reservation, MapError> {
        let tlb = self.pool.map(req)?;
        let index = ((tlb - self.memory.start.0) >> IO_TLB_SHIFT) as usize;
        let mark = Mark {
            offset: (tlb & (IO_TLB_SIZE as u64 - 1)) as u16,
            mask_bits: req.min_align_mask.count_ones() as u8,
            len: req.alloc_size.max(req.size) as u32,
        };
        self.marks[index].store(mark.pack(), Release);
        Ok(Reservation { addr: PhysAddr(tlb) })
    }

    /// `swiotlb_release_slots()` of a live mapping's start; anything else is refused
    /// before it reaches the C.
    fn release(&self, addr: PhysAddr) -> Result<Released, ReleaseError> {
        let index = self.slot_of(addr).ok_or(ReleaseError::Foreign)?;
        let word = self.marks[index].load(Acquire);
        match Mark::unpack(word) {
            Some(m) if self.slot_addr(index) + u64::from(m.offset) == addr => {
                // Claim the mapping: of racing releases (a caller's double unmap) one wins.
                if self.marks[index].compare_exchange(word, 0, AcqRel, Relaxed).is_err() {
                    return Err(ReleaseError::NotMapped);
                }
                let orig = self.pool.slot(index).orig_addr;
                // SAFETY: `addr` is where `reserve` placed a mapping made with this mask
                // (its record says so), and clearing the record made this the only
                // release of it.
                unsafe { self.pool.release(addr.0, m.mask()) };
                Ok(Released { orig: PhysAddr(orig), size: m.len as usize })
            }
            _ => match self.locate(addr) {
                Some(l) => Err(ReleaseError::NotStart { start: l.start }),
                None => Err(ReleaseError::NotMapped),
            },
        }
    }

    /// What `swiotlb_bounce()` computes from the slot's metadata, lock-free as there.
    fn locate(&self, addr: PhysAddr) -> Option<Located> {
        let index = self.slot_of(addr)?;
        // The nearest mapping start at or before the slot: mappings never leave their
        // segment, so the search stops at its first slot.
        let seg = index - index % IO_TLB_SEGSIZE;
        let (m, start) = (seg..=index).rev().find_map(|h| self.mark(h))?;
        let off = addr.offset_from(start)? as usize;
        if off >= m.len as usize {
            return None;
        }
        // orig_addr = mem->slots[index].orig_addr; tlb_offset = (tlb_addr & (IO_TLB_SIZE - 1)) -
        //         swiotlb_align_offset(dev, 0, orig_addr); orig_addr += tlb_offset;
        let orig = self.pool.slot(index).orig_addr;
        if orig == INVALID_PHYS_ADDR {
            return None;
        }
        let orig = orig.wrapping_add(addr.0 & (IO_TLB_SIZE as u64 - 1)).wrapping_sub(u64::from(m.offset));
        Some(Located { start, orig: PhysAddr(orig), remaining: m.len as usize - off })
    }

    /// `is_swiotlb_buffer()`: inside `[mem->start, mem->end)`.
    fn owns(&self, addr: PhysAddr) -> bool {
        self.slot_of(addr).is_some()
    }

    fn max_mapping_size(&self, dev: &Device) -> usize {
        max_mapping_size_for(dev.min_align_mask)
    }

    fn addressing_limit(&self) -> PhysAddr {
        self.end
    }

    /// debugfs `io_tlb_used` and `io_tlb_used_hiwater` (in bytes); no transient pools
    /// and no refill engine.
    fn stats(&self) -> PoolStats {
        PoolStats {
            capacity_bytes: self.memory.geometry.nslabs << IO_TLB_SHIFT,
            used_bytes: self.pool.used_slots() << IO_TLB_SHIFT,
            used_hiwater_bytes: self.pool.hiwater_slots() << IO_TLB_SHIFT,
            conversions: self.shared.stats(),
            ..PoolStats::default()
        }
    }

    /// debugfs: `echo 0 > io_tlb_used_hiwater`.
    fn reset_hiwater(&self) {
        self.pool.reset_hiwater();
    }

    /// Takes every area lock, copies Linux's slots and areas and the mapping records,
    /// and checks: every free slot's `list` is one more than its successor's in the
    /// segment and its other fields are cleared; each area's `used` counts its slots in
    /// use and its `index` is in range; each live mapping's slots are in use, inside
    /// one segment, and carry Linux's `orig_addr` sequence (padding slots none); no slot
    /// belongs to two mappings and none in use to no mapping; `total_used` is the sum
    /// and `used_hiwater` at least that; the pool's pages are all committed shared
    /// memory.
    ///
    /// The records live outside Linux's locks (they are written after
    /// `swiotlb_tbl_map_single()` returns and cleared before `swiotlb_release_slots()`
    /// is called), so a snapshot taken while maps and unmaps run may catch a mapping
    /// between the two: the audit then takes another snapshot, up to 20, a millisecond
    /// apart, and reports the last finding.
    fn audit(&self) -> Result<AuditReport, AuditError> {
        let mut finding = String::new();
        for attempt in 0..AUDIT_SNAPSHOTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            match self.check() {
                Ok(report) => return Ok(report),
                Err(e) => finding = e,
            }
        }
        Err(AuditError(finding))
    }
}

impl<P: Platform> Drop for LinuxRef<P> {
    /// Returns the pool as `swiotlb_exit()` does (the C metadata is freed after this).
    fn drop(&mut self) {
        let _ = self.shared.free_shared(self.memory.start, self.memory.pages);
    }
}
