//! The stock: shared pages converted but not yet carved into any class's buffers.
//!
//! Conversion and carving are two different granularities. A conversion is expensive
//! (a hypercall and page acceptance per call on TDX, a PSC request on SNP, and it splits
//! the host's large pages), so the engine converts in large batches (`batch` pages, one
//! `set_decrypted` call). A class, though, should grow and shrink in small chunks
//! (64 KiB by default) so that memory follows each class's demand and is not stranded
//! in a class that no longer needs it. The stock sits between the two:
//!
//! ```text
//!   private pages ──(one conversion per batch)──► stock ──(carve, no conversion)──► class chunks
//!                 ◄──(idle for idle_ms, above the stock's keep)── stock ◄──(idle chunk)──
//! ```
//!
//! A chunk that a class no longer needs goes back to the stock without a conversion and
//! can be carved again by any class at once; only stock that stays idle beyond `keep`
//! pages for the idle time is converted back to private. This is the "split a free
//! buffer and merge it back in the background" mechanism, at chunk granularity, and the
//! hysteresis that stops grow/shrink oscillation from turning into conversion churn.
//!
//! Free stock is a sorted list of extents (coalesced with their neighbours). Pages are
//! returned to the platform only within the block they were allocated in (the platform
//! contract lets any sub-range of a block be freed on its own, nothing more).
//!
//! # Context
//! Engine context only: every mutating call may allocate (outside the lock) and, for
//! [`Stock::refill`] and [`Stock::shrink`], convert. Mutating calls must be serialized by
//! the caller (the [`PoolSet`](crate::PoolSet)'s engine flag); readers ([`Stock::pages`],
//! [`Stock::snapshot`]) may run in any context.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use bounce_framework::{
    AllocContext, GrowError, IrqMutex, PageCount, PageRequest, PhysAddr, Platform, PlatformError, RawIrqLock,
    SharedMemory, PAGE_SIZE,
};

/// A run of free shared pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    /// First page's address.
    start: u64,
    /// Pages.
    pages: usize,
    /// Engine time when the extent (or its latest part) became free.
    since: u64,
}

impl Extent {
    fn end(&self) -> u64 {
        self.start + (self.pages * PAGE_SIZE) as u64
    }
}

/// A run of shared pages (in the stock or in chunks) that lies inside one platform
/// allocation: pages are returned to the platform only within such a range (the
/// platform contract lets any sub-range of a block be freed on its own, nothing more).
/// Returning a piece splits or shortens the range, so a range never covers pages the
/// platform may hand out again in a later block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    start: u64,
    pages: usize,
}

impl Block {
    fn end(&self) -> u64 {
        self.start + (self.pages * PAGE_SIZE) as u64
    }
}

/// A page run with a start and a length.
trait Run: Copy {
    fn start(&self) -> u64;
    fn end(&self) -> u64;
}

impl Run for Extent {
    fn start(&self) -> u64 {
        self.start
    }
    fn end(&self) -> u64 {
        Extent::end(self)
    }
}

impl Run for Block {
    fn start(&self) -> u64 {
        self.start
    }
    fn end(&self) -> u64 {
        Block::end(self)
    }
}

/// Cuts `[at, at + pages)` out of the run `list[i]` (which holds it), leaving what is
/// before and after it in place (the list stays sorted); `make(start, pages)` builds a
/// leftover run.
fn cut_run<T: Run>(list: &mut Vec<T>, i: usize, at: u64, pages: usize, make: impl Fn(u64, usize) -> T) {
    let r = list.remove(i);
    let end = at + (pages * PAGE_SIZE) as u64;
    let mut j = i;
    for (s, e) in [(r.start(), at), (end, r.end())] {
        if e > s {
            list.insert(j, make(s, ((e - s) as usize) / PAGE_SIZE));
            j += 1;
        }
    }
}

#[derive(Default)]
struct StockState {
    /// Free extents by address, never adjacent (coalesced).
    free: Vec<Extent>,
    /// Blocks by address.
    blocks: Vec<Block>,
}

/// A snapshot for audits and statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StockSnapshot {
    /// Free pages in the stock.
    pub free_pages: usize,
    /// Free extents.
    pub extents: usize,
    /// Live ranges (pieces of platform blocks still shared).
    pub blocks: usize,
    /// Shared pages of those ranges (free stock and carved chunks).
    pub live_pages: usize,
}

/// The stock of converted, uncarved shared pages (see the module documentation).
pub struct Stock<L: RawIrqLock> {
    state: IrqMutex<L, StockState>,
    free_pages: AtomicUsize,
}

impl<L: RawIrqLock> Default for Stock<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: RawIrqLock> Stock<L> {
    /// An empty stock.
    pub fn new() -> Self {
        Self { state: IrqMutex::new(StockState::default()), free_pages: AtomicUsize::new(0) }
    }

    /// Free pages in the stock (any context).
    pub fn pages(&self) -> usize {
        self.free_pages.load(Ordering::Relaxed)
    }

    /// Counts, read under the lock without allocating.
    pub fn snapshot(&self) -> StockSnapshot {
        let st = self.state.lock();
        StockSnapshot {
            free_pages: st.free.iter().map(|e| e.pages).sum(),
            extents: st.free.len(),
            blocks: st.blocks.len(),
            live_pages: st.blocks.iter().map(|b| b.pages).sum(),
        }
    }

    /// Runs `f` on the state taken out of the lock, so `f` may allocate (engine context;
    /// the caller serializes mutators, so nobody else sees the empty state except a
    /// concurrent [`Stock::snapshot`], which is a hint outside quiescence anyway).
    fn with_state<R>(&self, f: impl FnOnce(&mut StockState) -> R) -> R {
        let mut taken = core::mem::take(&mut *self.state.lock());
        let r = f(&mut taken);
        let free: usize = taken.free.iter().map(|e| e.pages).sum();
        *self.state.lock() = taken;
        self.free_pages.store(free, Ordering::Relaxed);
        r
    }

    /// Takes `pages` pages aligned to `align_pages` pages (a power of two) from the
    /// lowest-addressed extent that holds them. `None` when no extent does.
    pub fn take(&self, pages: usize, align_pages: usize) -> Option<PhysAddr> {
        let align = (align_pages.max(1) * PAGE_SIZE) as u64;
        self.with_state(|st| {
            let (i, at) = st.free.iter().enumerate().find_map(|(i, e)| {
                let at = e.start.next_multiple_of(align);
                (at + (pages * PAGE_SIZE) as u64 <= e.end()).then_some((i, at))
            })?;
            let since = st.free[i].since;
            cut_run(&mut st.free, i, at, pages, |start, pages| Extent { start, pages, since });
            Some(PhysAddr(at))
        })
    }

    /// Gives `pages` pages at `addr` (taken from this stock earlier) back, free since
    /// `now`, coalescing with adjacent free extents.
    pub fn give(&self, addr: PhysAddr, pages: usize, now: u64) {
        self.with_state(|st| Self::insert_free(st, Extent { start: addr.0, pages, since: now }));
    }

    fn insert_free(st: &mut StockState, e: Extent) {
        let i = st.free.partition_point(|x| x.start < e.start);
        st.free.insert(i, e);
        // Merge with the next, then with the previous.
        if i + 1 < st.free.len() && st.free[i].end() == st.free[i + 1].start {
            let n = st.free.remove(i + 1);
            st.free[i].pages += n.pages;
            st.free[i].since = st.free[i].since.max(n.since);
        }
        if i > 0 && st.free[i - 1].end() == st.free[i].start {
            let n = st.free.remove(i);
            st.free[i - 1].pages += n.pages;
            st.free[i - 1].since = st.free[i - 1].since.max(n.since);
        }
    }

    /// Converts a new block of `pages` pages below `limit` into the stock with one
    /// conversion per platform batch ([`SharedMemory::alloc_shared`]: cap, quarantine).
    ///
    /// # Errors
    /// What [`SharedMemory::alloc_shared`] returns; the stock is unchanged.
    pub fn refill<P: Platform<Lock = L>>(
        &self,
        shared: &SharedMemory<P>,
        pages: usize,
        limit: PhysAddr,
        now: u64,
    ) -> Result<(), GrowError> {
        let req = PageRequest { pages: PageCount(pages), context: AllocContext::MaySleep, limit };
        let base = shared.alloc_shared(req)?;
        self.with_state(|st| {
            let i = st.blocks.partition_point(|b| b.start < base.0);
            st.blocks.insert(i, Block { start: base.0, pages });
            Self::insert_free(st, Extent { start: base.0, pages, since: now });
        });
        Ok(())
    }

    /// Converts back to private, highest addresses first, free stock that has been idle
    /// for `idle_ns` at `now`, as long as at least `keep` free pages stay. Each returned
    /// piece lies within one platform block (one conversion call per piece). Returns the
    /// pages returned (pages whose conversion failed are quarantined by `shared` and
    /// count as returned from the stock).
    ///
    /// # Errors
    /// The first conversion failure; the other pieces are still processed.
    pub fn shrink<P: Platform<Lock = L>>(
        &self,
        shared: &SharedMemory<P>,
        keep: usize,
        now: u64,
        idle_ns: u64,
    ) -> (usize, Result<(), PlatformError>) {
        let mut first_err = None;
        let returned = self.with_state(|st| {
            let mut total: usize = st.free.iter().map(|e| e.pages).sum();
            let mut returned = 0;
            let mut i = st.free.len();
            while i > 0 && total > keep {
                i -= 1;
                let e = st.free[i];
                if now.saturating_sub(e.since) < idle_ns {
                    continue;
                }
                // Return the top of the extent: as much as keeps `keep` pages free.
                let n = e.pages.min(total - keep);
                let cut = e.end() - (n * PAGE_SIZE) as u64;
                if n == e.pages {
                    st.free.remove(i);
                } else {
                    st.free[i].pages -= n;
                }
                // Split [cut, e.end()) at block boundaries.
                let mut at = cut;
                while at < e.end() {
                    let bi = st.blocks.partition_point(|b| b.end() <= at);
                    let b = st.blocks[bi];
                    debug_assert!(b.start <= at, "stock pages lie inside a live range");
                    let piece_end = b.end().min(e.end());
                    let piece = ((piece_end - at) as usize) / PAGE_SIZE;
                    if let Err(err) = shared.free_shared(PhysAddr(at), PageCount(piece)) {
                        first_err.get_or_insert(err);
                    }
                    cut_run(&mut st.blocks, bi, at, piece, |start, pages| Block { start, pages });
                    at = piece_end;
                }
                total -= n;
                returned += n;
            }
            returned
        });
        (returned, first_err.map_or(Ok(()), Err))
    }

    /// Whether [`Stock::shrink`] with these arguments would return anything.
    pub fn shrink_pending(&self, keep: usize, now: u64, idle_ns: u64) -> bool {
        let st = self.state.lock();
        let total: usize = st.free.iter().map(|e| e.pages).sum();
        total > keep && st.free.iter().any(|e| now.saturating_sub(e.since) >= idle_ns)
    }

    /// The largest free extent, in pages (a hint for whether a carve will fit).
    pub fn largest_extent(&self) -> usize {
        self.state.lock().free.iter().map(|e| e.pages).max().unwrap_or(0)
    }

    /// Checks the stock's own invariants: extents sorted, disjoint, not adjacent, each
    /// inside live ranges; live ranges sorted and disjoint.
    ///
    /// # Errors
    /// A static description of the first broken invariant.
    pub fn check(&self) -> Result<StockSnapshot, &'static str> {
        let st = self.state.lock();
        for w in st.free.windows(2) {
            if w[0].end() > w[1].start {
                return Err("stock: overlapping or unsorted free extents");
            }
            if w[0].end() == w[1].start {
                return Err("stock: adjacent free extents were not coalesced");
            }
        }
        for w in st.blocks.windows(2) {
            if w[0].end() > w[1].start {
                return Err("stock: overlapping or unsorted live ranges");
            }
        }
        for e in &st.free {
            if e.pages == 0 {
                return Err("stock: an empty extent");
            }
            let i = st.blocks.partition_point(|b| b.end() <= e.start);
            // An extent may span adjacent blocks: walk them.
            let mut at = e.start;
            let mut j = i;
            while at < e.end() {
                match st.blocks.get(j) {
                    Some(b) if b.start <= at => {
                        at = b.end().min(e.end());
                        j += 1;
                    }
                    _ => return Err("stock: a free extent lies outside every block"),
                }
            }
        }
        let free_pages = st.free.iter().map(|e| e.pages).sum();
        if free_pages != self.pages() {
            return Err("stock: the free-page mirror disagrees with the extents");
        }
        Ok(StockSnapshot {
            free_pages,
            extents: st.free.len(),
            blocks: st.blocks.len(),
            live_pages: st.blocks.iter().map(|b| b.pages).sum(),
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use bounce_framework::sim::{PageState, PlatformKind, SimConfig, SimGuest};

    type S = Stock<<SimGuest as Platform>::Lock>;

    #[test]
    fn take_give_coalesce_and_shrink_within_blocks() {
        let g = SimGuest::new(SimConfig::new(PlatformKind::Tdx, 64 << 20, 2));
        let shared = SharedMemory::new(g.clone(), 32 << 20);
        let s = S::new();
        s.refill(&shared, 64, PhysAddr(u64::MAX), 0).unwrap();
        s.refill(&shared, 64, PhysAddr(u64::MAX), 0).unwrap();
        assert_eq!(s.pages(), 128);
        assert_eq!(g.stats().decrypt_calls, 2, "one conversion per block");
        // Aligned takes: 16 pages aligned to 16 pages.
        let a = s.take(16, 16).unwrap();
        assert!(a.is_aligned(16 * PAGE_SIZE as u64));
        let b = s.take(1, 1).unwrap();
        assert!(g.range_is(a, 16 * PAGE_SIZE, PageState::Shared));
        assert_eq!(s.pages(), 111);
        s.check().unwrap();
        // Nothing fits 200 pages.
        assert!(s.take(200, 1).is_none());
        s.give(a, 16, 5);
        s.give(b, 1, 5);
        s.check().unwrap();
        assert_eq!(s.pages(), 128);
        // Not idle yet: nothing returns.
        assert_eq!(s.shrink(&shared, 0, 10, 100).0, 0);
        // Idle: everything above keep = 40 returns, one conversion per block piece.
        let before = g.stats().encrypt_calls;
        let (n, r) = s.shrink(&shared, 40, 200, 100);
        r.unwrap();
        assert_eq!(n, 88);
        assert_eq!(s.pages(), 40);
        assert!(g.stats().encrypt_calls - before <= 3);
        s.check().unwrap();
        let (n, r) = s.shrink(&shared, 0, 400, 100);
        r.unwrap();
        assert_eq!(n, 40);
        assert_eq!(s.snapshot(), StockSnapshot::default());
        assert_eq!(shared.shared_bytes(), 0);
        assert_eq!(g.stats().shared_pages, 0);
        g.assert_no_violations();
    }
}
