//! The address index: page frame number → the chunk record that owns the page, read
//! without a lock.
//!
//! Built on the framework's [`PfnMap`] (a radix tree whose nodes are published once and
//! never freed while it lives) and a table of chunk records that are never freed either:
//! a record whose chunk is retired stays in its slot, vacant, until the next chunk of the
//! same capacity takes it (`Chunk::recycle`). So a lookup is a few dependent loads, no
//! lock, no reference count and no write to a line another CPU writes; what it reads
//! it validates with the record's generation word and the buffer's sequence word.
//!
//! Entries are set when the engine carves a chunk or builds a shell and cleared when it
//! retires one, both in the background; the map path only looks up (no allocation, no
//! insertion). A lookup for any address inside a buffer finds the chunk, and the buffer
//! is `(addr - first) >> shift`, so partial syncs at any address work.
//!
//! # Memory
//! The record table holds one pointer per slot, sized at boot from the cap: for each
//! record capacity (buffers per chunk) as many slots as chunks of that capacity fit in
//! the cap. Records are allocated on first use and recycled, so their memory follows the
//! peak number of chunks, as before, and the tree's nodes follow the address ranges the
//! chunks ever used (see [`PfnMap`]).

use alloc::boxed::Box;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;

use once_cell::race::OnceBox;

use bounce_framework::{
    AuditError, Found, Handle, IrqMutex, Located, PfnMap, PfnMapError, PhysAddr, RawIrqLock, ReleaseError,
};

use crate::chunk::Chunk;
use crate::class::SizeClass;

/// Page frame number → chunk record.
pub struct ChunkIndex<L: RawIrqLock> {
    map: PfnMap,
    /// Slot `s` holds the record that index entries `s + 1` name.
    records: Box<[OnceBox<Arc<Chunk>>]>,
    /// Vacant records (engine only; never grows past the table, so never allocates).
    vacant: IrqMutex<L, Vacant>,
}

struct Vacant {
    slots: Vec<u32>,
    /// Slots below this have a record.
    used: usize,
}

impl<L: RawIrqLock> ChunkIndex<L> {
    /// An index with room for `slots` chunk records (at least 1).
    ///
    /// # Context
    /// Allocates: construction time only.
    pub fn new(slots: usize) -> Self {
        let slots = slots.clamp(1, u32::MAX as usize - 1);
        Self {
            map: PfnMap::new(),
            records: (0..slots).map(|_| OnceBox::new()).collect(),
            vacant: IrqMutex::new(Vacant { slots: Vec::with_capacity(slots), used: 0 }),
        }
    }

    /// The record table's size.
    pub fn slots(&self) -> usize {
        self.records.len()
    }

    /// The record in `slot`.
    ///
    /// # Panics
    /// When the slot has no record (a [`crate::FreeBuffer`] of another index).
    #[inline]
    pub fn record(&self, slot: u32) -> &Arc<Chunk> {
        self.records[slot as usize].get().expect("bounce-pools: a buffer of a record this index never made")
    }

    /// A vacant record with room for exactly `capacity` buffers: a recycled one, else a
    /// new one in a slot never used.
    fn take_vacant(&self, capacity: usize) -> Result<&Arc<Chunk>, PfnMapError> {
        let mut v = self.vacant.lock();
        if let Some(pos) = v.slots.iter().position(|&s| self.record(s).capacity() == capacity) {
            let s = v.slots.swap_remove(pos);
            return Ok(self.record(s));
        }
        if v.used == self.records.len() {
            return Err(PfnMapError::NoMemory);
        }
        let slot = v.used;
        v.used += 1;
        drop(v);
        // A new record: allocated with no lock held (background context).
        let rec = Arc::new(Chunk::vacant(slot as u32, capacity));
        let rec = self.records[slot].get_or_init(|| Box::new(rec));
        Ok(rec)
    }

    fn give_vacant(&self, rec: &Chunk) {
        let mut v = self.vacant.lock();
        debug_assert!(!v.slots.contains(&rec.slot()), "record vacated twice");
        v.slots.push(rec.slot());
    }

    /// A chunk record for the shared block `[base, base + pages)`, indexed: carved into
    /// `class`'s buffers (`Some((index, class))`, `class.chunk_buffers` records) or a
    /// blank shell with records for `capacity` buffers (`None`).
    ///
    /// # Errors
    /// [`PfnMapError`] when no record or tree node could be had; nothing is indexed.
    ///
    /// # Context
    /// Background (engine) context: may allocate.
    pub fn insert(
        &self,
        base: PhysAddr,
        pages: usize,
        carve: Option<(usize, &SizeClass)>,
        capacity: usize,
    ) -> Result<Arc<Chunk>, PfnMapError> {
        let capacity = carve.map_or(capacity, |(_, c)| c.chunk_buffers);
        let rec = self.take_vacant(capacity)?;
        rec.recycle(base, pages, carve);
        if let Err(e) = self.map.set_range(rec.pfns(), rec.slot() + 1) {
            rec.vacate();
            self.give_vacant(rec);
            return Err(e);
        }
        Ok(Arc::clone(rec))
    }

    /// Takes every page of `chunk` out of the index and makes its record vacant for the
    /// next chunk of its capacity. The caller has detached it (out of every pool and
    /// list, every buffer free).
    ///
    /// # Context
    /// Background (engine) context; never allocates.
    pub fn remove(&self, chunk: &Chunk) {
        self.map.clear_range(chunk.pfns());
        chunk.vacate();
        self.give_vacant(chunk);
    }

    /// The live mapping containing `addr` and a handle to release it by (`key`: record
    /// slot, `tag`: buffer index << 32 | sequence word).
    ///
    /// # Errors
    /// [`ReleaseError::Foreign`] outside every chunk, [`ReleaseError::NotMapped`] for a
    /// free buffer or slack.
    ///
    /// # Context
    /// Any context; lock-free (no lock, no write), never allocates.
    #[inline]
    pub fn find(&self, addr: PhysAddr) -> Result<Found, ReleaseError> {
        let pfn = addr.pfn() as usize;
        loop {
            let e = self.map.get(pfn);
            if e == 0 {
                return Err(ReleaseError::Foreign);
            }
            let rec = self.record(e - 1);
            match rec.find(addr) {
                Some(Ok((loc, i, seq))) => {
                    return Ok(Found {
                        loc,
                        handle: Handle { key: u64::from(e - 1), tag: (u64::from(i) << 32) | u64::from(seq) },
                    })
                }
                // The record moved since the entry was read: look again, unless the
                // entry says the same (then the address is not in any chunk).
                Some(Err(ReleaseError::Foreign)) if self.map.get(pfn) != e => {}
                Some(Err(err)) => return Err(err),
                None => {}
            }
            core::hint::spin_loop();
        }
    }

    /// The chunk record and buffer a [`Found`] names, and its sequence word.
    #[inline]
    pub fn resolve(&self, found: &Found) -> (&Arc<Chunk>, u32, u32) {
        let Handle { key, tag } = found.handle;
        (self.record(key as u32), (tag >> 32) as u32, tag as u32)
    }

    /// The live mapping containing `addr`.
    #[inline]
    pub fn locate(&self, addr: PhysAddr) -> Option<Located> {
        self.find(addr).ok().map(|f| f.loc)
    }

    /// Whether `addr` lies in an indexed chunk (slack included): the index entry and the
    /// record's range, no buffer record read (`is_swiotlb_buffer` on every unmap).
    ///
    /// # Context
    /// Any context; lock-free (no lock, no write), never allocates.
    #[inline]
    pub fn contains(&self, addr: PhysAddr) -> bool {
        let pfn = addr.pfn() as usize;
        loop {
            let e = self.map.get(pfn);
            if e == 0 {
                return false;
            }
            let rec = self.record(e - 1);
            let g = rec.generation();
            let inside = rec.contains(addr);
            if g % 2 == 1 {
                // Being changed right now, perhaps by code this call interrupted: never
                // wait for it. Such a chunk has no buffer in flight, so no live mapping
                // depends on the answer.
                return inside;
            }
            // A record that moved away leaves a stale entry only until the engine clears
            // it: look again unless the entry is unchanged. (A retry follows the
            // writer's progress; nothing here waits for a writer to finish.)
            if rec.geometry_stable(g) && (inside || self.map.get(pfn) == e) {
                return inside;
            }
            core::hint::spin_loop();
        }
    }

    /// The chunk owning `addr`, if indexed (diagnostics: not validated against a
    /// concurrent retire).
    pub fn chunk_at(&self, addr: PhysAddr) -> Option<&Arc<Chunk>> {
        let e = self.map.get(addr.pfn() as usize);
        (e != 0).then(|| self.record(e - 1)).filter(|c| c.contains(addr))
    }

    /// Every indexed chunk once, in address order, after checking that each entry
    /// names the record holding that page, that every page of every chunk is indexed,
    /// and that no chunk overlaps another. Allocates (audit only; no map-path lock is
    /// taken).
    ///
    /// # Errors
    /// An [`AuditError`] naming the first inconsistent entry.
    pub fn chunks(&self) -> Result<Vec<Arc<Chunk>>, AuditError> {
        let mut counts: Vec<usize> = alloc::vec![0; self.records.len()];
        let mut bad = None;
        self.map.for_each(|pfn, e| {
            let addr = PhysAddr((pfn as u64) << bounce_framework::PAGE_SHIFT);
            match self.records.get(e as usize - 1).and_then(OnceBox::get) {
                Some(c) if c.contains(addr) => counts[e as usize - 1] += 1,
                Some(c) => {
                    bad.get_or_insert(format!("index: page {addr} points at {c:?}, which does not hold it"));
                }
                None => {
                    bad.get_or_insert(format!("index: page {addr} names slot {} with no record", e - 1));
                }
            }
        });
        if let Some(b) = bad {
            return Err(AuditError(b));
        }
        let vacant = self.vacant.lock().slots.clone();
        let mut out = Vec::new();
        for (slot, &n) in counts.iter().enumerate() {
            let Some(c) = self.records[slot].get() else { continue };
            if vacant.contains(&(slot as u32)) {
                if n != 0 || c.pages().get() != 0 {
                    return Err(AuditError(format!("index: vacant record {slot} still holds {c:?} ({n} pages)")));
                }
                continue;
            }
            if n != c.pages().get() {
                return Err(AuditError(format!("index: {c:?} has {n} of its {} pages indexed", c.pages().get())));
            }
            out.push(Arc::clone(c));
        }
        out.sort_unstable_by_key(|c| c.base());
        let mut prev_end = PhysAddr(0);
        for c in &out {
            if c.base() < prev_end {
                return Err(AuditError(format!("index: {c:?} overlaps the chunk before it")));
            }
            prev_end = c.end();
        }
        Ok(out)
    }
}
