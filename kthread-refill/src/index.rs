//! The address index: page frame number → the chunk that owns the page.
//!
//! Built on [`bounce_framework::XArray`]. Entries are inserted when the engine carves a
//! chunk and removed when it returns one, both in the background; the map path only
//! looks up (no allocation, no insertion: the seed's one allocation on the map path is
//! gone). A lookup for any address inside a buffer finds the chunk, and the buffer is
//! `(addr - first) >> shift`, so partial syncs at any address work.
//!
//! Lock order: the index lock is never held together with a pool lock.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;

use bounce_framework::xarray::{AllocKind, XArray, XaError, XA_CHUNK_SIZE};
use bounce_framework::{AllocContext, AuditError, PhysAddr, RawIrqLock};

use crate::chunk::Chunk;

/// Page frame number → chunk.
pub struct ChunkIndex<L: RawIrqLock> {
    xa: XArray<L, Arc<Chunk>>,
}

impl<L: RawIrqLock> Default for ChunkIndex<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: RawIrqLock> ChunkIndex<L> {
    /// An empty index.
    pub fn new() -> Self {
        Self { xa: XArray::new(AllocKind::Alloc) }
    }

    /// Indexes every page of `chunk`. Takes the lock once per 64 pages (one leaf node),
    /// so lookups are never held off for a whole chunk.
    ///
    /// # Errors
    /// [`XaError::NoMemory`]: nothing of the chunk stays indexed.
    pub fn insert(&self, chunk: &Arc<Chunk>) -> Result<(), XaError> {
        let pfns = chunk.pfns();
        let mut at = pfns.start;
        while at < pfns.end {
            let stop = (at - at % XA_CHUNK_SIZE + XA_CHUNK_SIZE).min(pfns.end);
            let mut g = self.xa.lock();
            for pfn in at..stop {
                if let Err(e) = g.store(pfn, Arc::clone(chunk), AllocContext::MaySleep) {
                    for undo in pfns.start..pfn {
                        g.remove(undo);
                    }
                    return Err(e.error);
                }
            }
            drop(g);
            at = stop;
        }
        Ok(())
    }

    /// Removes every page of `chunk` from the index.
    pub fn remove(&self, chunk: &Chunk) {
        let pfns = chunk.pfns();
        let mut at = pfns.start;
        while at < pfns.end {
            let stop = (at - at % XA_CHUNK_SIZE + XA_CHUNK_SIZE).min(pfns.end);
            let mut g = self.xa.lock();
            for pfn in at..stop {
                let old = g.remove(pfn);
                debug_assert!(
                    old.is_some_and(|c| core::ptr::eq(Arc::as_ptr(&c), chunk)),
                    "index entry of another chunk"
                );
            }
            drop(g);
            at = stop;
        }
    }

    /// Runs `f` on the chunk owning `addr`, under the index lock.
    ///
    /// # Context
    /// Any context; never allocates.
    #[inline]
    pub fn with<R>(&self, addr: PhysAddr, f: impl FnOnce(&Arc<Chunk>) -> R) -> Option<R> {
        let g = self.xa.lock();
        g.get(addr.pfn() as usize).map(f)
    }

    /// The chunk owning `addr` (a new reference: no allocation, one atomic increment).
    ///
    /// # Context
    /// Any context; never allocates.
    #[inline]
    pub fn get(&self, addr: PhysAddr) -> Option<Arc<Chunk>> {
        self.with(addr, Arc::clone)
    }

    /// Whether `addr` lies in an indexed chunk.
    #[inline]
    pub fn contains(&self, addr: PhysAddr) -> bool {
        self.with(addr, |_| ()).is_some()
    }

    /// Every indexed chunk once, in address order, after checking that each entry
    /// points at the chunk holding that page and that every page of every chunk is
    /// indexed. Allocates (audit only).
    ///
    /// # Errors
    /// An [`AuditError`] naming the first inconsistent entry.
    pub fn chunks(&self) -> Result<Vec<Arc<Chunk>>, AuditError> {
        // Count under the lock, allocate with no lock held, then fill under the lock:
        // nothing allocates while the (IRQ-off) index lock is held. Chunks carved in
        // between make the fill overflow; then count again.
        let entries = loop {
            let n = {
                let g = self.xa.lock();
                let (mut n, mut at) = (0usize, 0usize);
                while let Some((pfn, _)) = g.find(at) {
                    n += 1;
                    at = pfn + 1;
                }
                n
            };
            let mut v: Vec<(usize, Arc<Chunk>)> = Vec::with_capacity(n + 16);
            let g = self.xa.lock();
            let mut at = 0usize;
            let mut fits = true;
            while let Some((pfn, c)) = g.find(at) {
                if v.len() == v.capacity() {
                    fits = false;
                    break;
                }
                v.push((pfn, Arc::clone(c)));
                at = pfn + 1;
            }
            drop(g);
            if fits {
                break v;
            }
        };
        let mut seen: BTreeMap<u64, (Arc<Chunk>, usize)> = BTreeMap::new();
        for (pfn, c) in &entries {
            let addr = PhysAddr((*pfn as u64) << bounce_framework::PAGE_SHIFT);
            if !c.contains(addr) {
                return Err(AuditError(format!("index: page {addr} points at {c:?}, which does not hold it")));
            }
            let e = seen.entry(c.base().0).or_insert_with(|| (Arc::clone(c), 0));
            if !Arc::ptr_eq(&e.0, c) {
                return Err(AuditError(format!("index: two chunks at {}", c.base())));
            }
            e.1 += 1;
        }
        let mut out = Vec::with_capacity(seen.len());
        let mut prev_end = PhysAddr(0);
        for (_, (c, n)) in seen {
            if n != c.pages().get() {
                return Err(AuditError(format!("index: {c:?} has {n} of its {} pages indexed", c.pages().get())));
            }
            if c.base() < prev_end {
                return Err(AuditError(format!("index: {c:?} overlaps the chunk before it")));
            }
            prev_end = c.end();
            out.push(c);
        }
        Ok(out)
    }
}
