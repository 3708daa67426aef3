//! One class's pool of free buffers.
//!
//! The pool keeps its chunks in two intrusive collections (linking and unlinking never
//! allocates):
//!
//! - `partial`: chunks with some buffers free and some out, in an address-ordered
//!   red-black tree. Buffers are taken from the lowest-addressed partial chunk first, so
//!   use packs into few chunks and the others can drain and be returned.
//! - `empty`: chunks whose buffers are all free, oldest-emptied first. When no partial
//!   chunk has a free buffer the most recently emptied (warmest) chunk is used; the
//!   engine returns idle chunks from the front.
//!
//! Chunks with no free buffer are in neither (the address index keeps them alive).
//!
//! Lock order: a pool lock is a leaf: nothing else is locked while it is held (the
//! address index and the pool are always locked one after the other, never nested).

use alloc::format;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use intrusive_collections::{LinkedList, RBTree};

use bounce_framework::{AuditError, IrqMutex, RawIrqLock};

use crate::adapters::{EmptyAdapter, PartialAdapter};
use crate::chunk::{Chunk, FreeBuffer};
use crate::class::SizeClass;

/// What a pool is doing: a snapshot of its counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounters {
    /// Free buffers ready to hand out.
    pub ready: usize,
    /// Buffers in all chunks.
    pub capacity: usize,
    /// Chunks owned.
    pub chunks: usize,
    /// Chunks whose buffers are all free.
    pub empty_chunks: usize,
    /// Buffers handed out.
    pub pops: u64,
    /// Buffers given back.
    pub pushes: u64,
    /// Pops that found nothing (or only the reserve, for other classes' fallbacks).
    pub misses: u64,
    /// Pops that took a buffer from the emergency reserve.
    pub reserve_dips: u64,
    /// Times a map woke the engine (once per crossing of the low watermark).
    pub wakeups: u64,
    /// Chunks added by the engine.
    pub grown_chunks: u64,
    /// Chunks returned by the engine.
    pub shrunk_chunks: u64,
}

pub(crate) struct PoolState {
    partial: RBTree<PartialAdapter>,
    empty: LinkedList<EmptyAdapter>,
    ready: usize,
    capacity: usize,
    chunks: usize,
    empty_chunks: usize,
    /// Set while the free count is at or above the wake threshold; cleared by the map
    /// that crosses below it (which wakes the engine).
    wake_armed: bool,
}

/// The result of a pop.
pub(crate) struct Popped {
    pub buf: FreeBuffer,
    /// The pop crossed the low watermark: the caller wakes the engine.
    pub wake: bool,
}

/// One class's pool (see the module documentation).
pub struct ClassPool<L: RawIrqLock> {
    pub(crate) class: SizeClass,
    index: usize,
    state: IrqMutex<L, PoolState>,
    /// Mirror of the free count for lock-free readers (engine, stats).
    ready: AtomicUsize,
    pops: AtomicU64,
    pushes: AtomicU64,
    misses: AtomicU64,
    reserve_dips: AtomicU64,
    wakeups: AtomicU64,
    grown: AtomicU64,
    shrunk: AtomicU64,
    /// Set by a pop of this class's own request that found nothing or dipped into the
    /// reserve; consumed by the engine's next run.
    pressure: AtomicBool,
    /// The engine's demand boost: the effective watermarks are the configured ones
    /// shifted left by this (see [`PoolSet`](crate::PoolSet)).
    boost: AtomicU32,
    /// When the boost last changed or pressure was last seen (engine clock).
    calm_since: AtomicU64,
    /// Demand-driven watermarks (the `demand` policy) instead of fixed ones.
    demand: bool,
    /// The demand policy's current target, high and low watermarks (free buffers).
    d_target: AtomicUsize,
    d_high: AtomicUsize,
    d_low: AtomicUsize,
}

/// The largest demand boost: watermarks grow at most 8-fold.
pub const MAX_BOOST: u32 = 3;

impl<L: RawIrqLock> ClassPool<L> {
    pub(crate) fn new(index: usize, class: SizeClass, demand: bool) -> Self {
        Self {
            class,
            index,
            state: IrqMutex::new(PoolState {
                partial: RBTree::new(PartialAdapter::new()),
                empty: LinkedList::new(EmptyAdapter::new()),
                ready: 0,
                capacity: 0,
                chunks: 0,
                empty_chunks: 0,
                wake_armed: true,
            }),
            ready: AtomicUsize::new(0),
            pops: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            reserve_dips: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            grown: AtomicU64::new(0),
            shrunk: AtomicU64::new(0),
            pressure: AtomicBool::new(false),
            boost: AtomicU32::new(0),
            calm_since: AtomicU64::new(0),
            demand,
            d_target: AtomicUsize::new(class.target),
            d_high: AtomicUsize::new(class.target),
            d_low: AtomicUsize::new((class.target / 2).max(1)),
        }
    }

    /// The demand policy: the class holds what is out plus
    /// `max(floor, out × headroom_pct / 100)` free buffers (the target), returns chunks
    /// idle for the chunk idle time while the target stays ready without them
    /// (hysteresis in time and in count: no regrow right after a shrink) and wakes the
    /// engine below max(1, target / 2). Fluctuations beyond the target are absorbed by
    /// the set's blank shells, which every class shares and the map path reshapes at
    /// once (the peak of the sum instead of the sum of the peaks).
    pub(crate) fn update_demand(&self, headroom_pct: usize) {
        let out = {
            let st = self.state.lock();
            st.capacity - st.ready
        };
        let target = self.class.target.max((out * headroom_pct).div_ceil(100));
        self.d_target.store(target, Ordering::Relaxed);
        self.d_high.store(target, Ordering::Relaxed);
        self.d_low.store((target / 2).max(1), Ordering::Relaxed);
    }

    /// Whether the pool holds a chunk (lock-free; exact when the engine is quiescent).
    pub fn has_chunks(&self) -> bool {
        self.grown.load(Ordering::Relaxed) > self.shrunk.load(Ordering::Relaxed)
    }

    /// The class.
    pub fn class(&self) -> &SizeClass {
        &self.class
    }

    /// The current demand boost (0 = the configured watermarks).
    pub fn boost(&self) -> u32 {
        self.boost.load(Ordering::Relaxed)
    }

    /// The target in effect: the demand policy's, or the configured target shifted by
    /// the boost.
    pub fn effective_target(&self) -> usize {
        if self.demand {
            return self.d_target.load(Ordering::Relaxed);
        }
        self.class.target.saturating_mul(1 << self.boost())
    }

    /// The wake threshold in effect: the demand policy's, or the class's low watermark
    /// (at least 1) shifted by the boost.
    pub fn wake_below(&self) -> usize {
        if self.demand {
            return self.d_low.load(Ordering::Relaxed);
        }
        self.class.wake_below().saturating_mul(1 << self.boost())
    }

    /// The high watermark in effect.
    pub fn effective_high(&self) -> usize {
        if self.demand {
            return self.d_high.load(Ordering::Relaxed);
        }
        self.class.high.saturating_mul(1 << self.boost())
    }

    /// Engine bookkeeping at `now`: pressure since the last run raises the boost by one
    /// (up to [`MAX_BOOST`]); `calm_ns` without pressure lowers it by one.
    pub(crate) fn adapt(&self, now: u64, calm_ns: u64) {
        if self.pressure.swap(false, Ordering::Relaxed) {
            let b = self.boost();
            if b < MAX_BOOST {
                self.boost.store(b + 1, Ordering::Relaxed);
            }
            self.calm_since.store(now, Ordering::Relaxed);
        } else if self.boost() > 0 && now.saturating_sub(self.calm_since.load(Ordering::Relaxed)) >= calm_ns {
            self.boost.store(self.boost() - 1, Ordering::Relaxed);
            self.calm_since.store(now, Ordering::Relaxed);
        }
    }

    /// Free buffers (lock-free hint; exact when the pool is quiescent).
    pub fn ready(&self) -> usize {
        self.ready.load(Ordering::Relaxed)
    }

    /// Takes a free buffer. With `dip_reserve` false the pool refuses when only the
    /// emergency reserve is left.
    ///
    /// # Context
    /// Any context; O(log chunks) under the pool lock; never allocates.
    pub(crate) fn pop(&self, dip_reserve: bool) -> Option<Popped> {
        self.pop_for(dip_reserve, dip_reserve)
    }

    /// [`ClassPool::pop`]; `own`: the request is this class's own (a miss is pressure
    /// for the seed's demand boost), not a larger-class fallback.
    pub(crate) fn pop_for(&self, dip_reserve: bool, own: bool) -> Option<Popped> {
        let mut st = self.state.lock();
        let floor = if dip_reserve { 0 } else { self.class.reserve };
        if st.ready <= floor {
            drop(st);
            self.misses.fetch_add(1, Ordering::Relaxed);
            if own {
                self.pressure.store(true, Ordering::Relaxed);
            }
            return None;
        }
        let chunk_and_index = {
            let mut cur = st.partial.front_mut();
            if let Some(chunk) = cur.get() {
                let i = chunk.pop_free().expect("a partial chunk has a free buffer");
                let slot = chunk.slot();
                if chunk.free_count() == 0 {
                    // Full now: out of the tree (the index keeps the record).
                    drop(cur.remove());
                }
                Some((slot, i))
            } else {
                None
            }
        };
        let (slot, i) = if let Some(x) = chunk_and_index {
            x
        } else {
            let chunk = st.empty.pop_back().expect("free buffers live in partial or empty chunks");
            st.empty_chunks -= 1;
            chunk.set_empty_since(0);
            let i = chunk.pop_free().expect("an empty chunk has all buffers free");
            let slot = chunk.slot();
            if chunk.free_count() > 0 {
                st.partial.insert(chunk);
            }
            (slot, i)
        };
        let dipped = st.ready <= self.class.reserve;
        st.ready -= 1;
        let wake = st.wake_armed && st.ready < self.wake_below();
        if wake {
            st.wake_armed = false;
        }
        self.ready.store(st.ready, Ordering::Relaxed);
        drop(st);
        self.pops.fetch_add(1, Ordering::Relaxed);
        if dipped {
            self.reserve_dips.fetch_add(1, Ordering::Relaxed);
            self.pressure.store(true, Ordering::Relaxed);
        }
        if wake {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
        }
        Some(Popped { buf: FreeBuffer { slot, index: i }, wake })
    }

    /// Gives buffer `index` of `chunk` back (the caller owned it).
    ///
    /// # Context
    /// Any context; O(log chunks) under the pool lock; never allocates.
    pub(crate) fn push(&self, chunk: &Arc<Chunk>, index: u32) {
        debug_assert_eq!(chunk.class(), self.index);
        let mut st = self.state.lock();
        let was = chunk.free_count();
        chunk.push_free(index);
        let n = chunk.buffers();
        if was + 1 == n {
            // Now completely free: partial → empty (or full → empty for one-buffer chunks).
            if was > 0 {
                let removed = st.partial.find_mut(&chunk.first().0).remove();
                debug_assert!(removed.is_some(), "a partial chunk is in the partial tree");
            }
            st.empty.push_back(Arc::clone(chunk));
            st.empty_chunks += 1;
        } else if was == 0 {
            // Was full: now partial.
            st.partial.insert(Arc::clone(chunk));
        }
        st.ready += 1;
        if st.ready >= self.wake_below() {
            st.wake_armed = true;
        }
        self.ready.store(st.ready, Ordering::Relaxed);
        drop(st);
        self.pushes.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a freshly carved chunk (all buffers free): O(1) under the lock.
    pub(crate) fn publish(&self, chunk: Arc<Chunk>) {
        let n = chunk.buffers();
        debug_assert_eq!(chunk.free_count(), n);
        let mut st = self.state.lock();
        st.empty.push_back(chunk);
        st.empty_chunks += 1;
        st.chunks += 1;
        st.capacity += n;
        st.ready += n;
        if st.ready >= self.wake_below() {
            st.wake_armed = true;
        }
        self.ready.store(st.ready, Ordering::Relaxed);
        drop(st);
        self.grown.fetch_add(1, Ordering::Relaxed);
    }

    /// Stamps completely free chunks with `now` when they were first seen free, and
    /// detaches the oldest one that has been free for at least `idle_ns` if the free
    /// count stays at or above `keep` without it. O(empty chunks) under the lock.
    pub(crate) fn take_idle(&self, now: u64, idle_ns: u64, keep: usize) -> Option<Arc<Chunk>> {
        let mut st = self.state.lock();
        let stamp = now.max(1);
        let mut victim = false;
        let ready = st.ready;
        {
            let mut cur = st.empty.front_mut();
            while let Some(c) = cur.get() {
                let since = c.empty_since();
                if since == 0 {
                    c.set_empty_since(stamp);
                }
                let idle = if since == 0 { idle_ns == 0 } else { now.saturating_sub(since) >= idle_ns };
                if idle && ready - c.buffers() >= keep {
                    victim = true;
                    break;
                }
                cur.move_next();
            }
            if victim {
                let chunk = cur.remove().expect("cursor points at the victim");
                return Some(self.detach_locked(&mut st, chunk));
            }
        }
        None
    }

    /// Detaches the oldest completely free chunk if the free count stays at or above
    /// `keep` without it, however briefly it has been free: for another class that ran
    /// dry on the map path ([`PoolSet::pop_reclaimed`](crate::PoolSet::pop_reclaimed)).
    ///
    /// # Context
    /// Any context; O(1) under the pool lock; never allocates.
    pub(crate) fn take_empty(&self, keep: usize) -> Option<Arc<Chunk>> {
        let mut st = self.state.lock();
        let n = st.empty.front().get()?.buffers();
        if st.ready - n < keep {
            return None;
        }
        let chunk = st.empty.pop_front()?;
        Some(self.detach_locked(&mut st, chunk))
    }

    /// Whether [`ClassPool::take_idle`] would return a chunk at `now` (stamps only count
    /// once set). O(empty chunks) under the lock.
    pub(crate) fn has_idle(&self, now: u64, idle_ns: u64, keep: usize) -> bool {
        let st = self.state.lock();
        let ready = st.ready;
        st.empty.iter().any(|c| {
            let since = c.empty_since();
            let idle = if since == 0 { idle_ns == 0 } else { now.saturating_sub(since) >= idle_ns };
            idle && ready - c.buffers() >= keep
        })
    }

    fn detach_locked(&self, st: &mut PoolState, chunk: Arc<Chunk>) -> Arc<Chunk> {
        let n = chunk.buffers();
        st.empty_chunks -= 1;
        st.chunks -= 1;
        st.capacity -= n;
        st.ready -= n;
        self.ready.store(st.ready, Ordering::Relaxed);
        self.shrunk.fetch_add(1, Ordering::Relaxed);
        chunk
    }

    /// Counters.
    pub fn counters(&self) -> PoolCounters {
        let st = self.state.lock();
        let (ready, capacity, chunks, empty_chunks) = (st.ready, st.capacity, st.chunks, st.empty_chunks);
        drop(st);
        PoolCounters {
            ready,
            capacity,
            chunks,
            empty_chunks,
            pops: self.pops.load(Ordering::Relaxed),
            pushes: self.pushes.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            reserve_dips: self.reserve_dips.load(Ordering::Relaxed),
            wakeups: self.wakeups.load(Ordering::Relaxed),
            grown_chunks: self.grown.load(Ordering::Relaxed),
            shrunk_chunks: self.shrunk.load(Ordering::Relaxed),
        }
    }

    /// Checks the pool against `chunks` (the indexed chunks of this class): list
    /// membership matches free counts, free stacks hold distinct indices of buffers not
    /// in flight, counters add up. Buffers neither free nor in flight are `held` (out of
    /// the pool, e.g. in a cache in front of it).
    pub(crate) fn audit(&self, chunks: &[Arc<Chunk>]) -> Result<PoolAudit, AuditError> {
        let name = self.class.size;
        let mut listed: Vec<(u64, bool)> = Vec::with_capacity(chunks.len());
        let mut seen = vec![false; chunks.iter().map(|c| c.buffers()).max().unwrap_or(0)];
        let mut a = PoolAudit::default();
        // Everything that needs the lock; `listed` and `seen` are sized before it so
        // nothing allocates while it is held (except error messages).
        let (ready, capacity, nchunks, empty_chunks) = {
            let st = self.state.lock();
            for (c, partial) in st.partial.iter().map(|c| (c, true)).chain(st.empty.iter().map(|c| (c, false))) {
                if listed.len() == listed.capacity() {
                    return Err(AuditError(format!("class {name}: more chunks listed than indexed")));
                }
                let (f, n) = (c.free_count(), c.buffers());
                let ok = if partial { f > 0 && f < n } else { f == n };
                if !ok {
                    return Err(AuditError(format!(
                        "class {name}: {c:?} with {f} of {n} free is in the {} list",
                        if partial { "partial" } else { "empty" }
                    )));
                }
                listed.push((c.first().0, partial));
            }
            for c in chunks {
                let n = c.buffers();
                seen[..n].fill(false);
                for i in c.free_entries() {
                    let i = i as usize;
                    if i >= n || seen[i] {
                        return Err(AuditError(format!(
                            "class {name}: {c:?} free stack holds {i} twice or out of range"
                        )));
                    }
                    seen[i] = true;
                    if c.state(i).in_flight {
                        return Err(AuditError(format!("class {name}: buffer {i} of {c:?} is free and in flight")));
                    }
                }
                for (i, free) in seen[..n].iter().enumerate() {
                    if !free {
                        let s = c.state(i);
                        if s.in_flight {
                            if s.offset + s.alloc_size > c.buffer_size() {
                                return Err(AuditError(format!(
                                    "class {name}: buffer {i} of {c:?} maps {} bytes at offset {}: overflows",
                                    s.alloc_size, s.offset
                                )));
                            }
                            a.in_flight += 1;
                            a.in_flight_bytes += c.buffer_size();
                        } else {
                            a.held += 1;
                        }
                    }
                }
                a.free += c.free_count();
                a.free_bytes += c.free_count() * c.buffer_size();
                a.capacity += n;
                a.owned_bytes += c.pages().bytes();
                a.slack_bytes += c.slack_bytes();
            }
            (st.ready, st.capacity, st.chunks, st.empty_chunks)
        };
        listed.sort_unstable();
        let mut empties = 0;
        for c in chunks {
            let (f, n) = (c.free_count(), c.buffers());
            let entry = listed.binary_search_by_key(&c.first().0, |e| e.0).ok().map(|i| listed[i].1);
            let want = if f == 0 { None } else { Some(f < n) };
            if entry != want {
                return Err(AuditError(format!(
                    "class {name}: {c:?} with {f} of {n} free: listed {entry:?}, expected {want:?}"
                )));
            }
            empties += usize::from(f == n);
        }
        if listed.len() != chunks.iter().filter(|c| c.free_count() > 0).count() {
            return Err(AuditError(format!("class {name}: a listed chunk is not in the index")));
        }
        if a.free != ready || a.capacity != capacity || chunks.len() != nchunks || empties != empty_chunks {
            return Err(AuditError(format!(
                "class {name}: counters (ready {ready}, capacity {capacity}, chunks {nchunks}, empty {empty_chunks}) \
                 != walk (free {}, capacity {}, chunks {}, empty {empties})",
                a.free,
                a.capacity,
                chunks.len()
            )));
        }
        if self.ready() != ready {
            return Err(AuditError(format!("class {name}: ready mirror {} != {ready}", self.ready())));
        }
        a.chunks = chunks.len();
        Ok(a)
    }
}

/// What a class pool's audit counted (`ClassPool::audit`, via [`PoolSet::audit`](crate::PoolSet::audit)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolAudit {
    /// Buffers in flight.
    pub in_flight: usize,
    /// Their buffer bytes.
    pub in_flight_bytes: usize,
    /// Free buffers.
    pub free: usize,
    /// Their bytes.
    pub free_bytes: usize,
    /// Buffers out of the pool and not in flight.
    pub held: usize,
    /// Buffers in all chunks.
    pub capacity: usize,
    /// Chunks.
    pub chunks: usize,
    /// Bytes of the chunks' blocks.
    pub owned_bytes: usize,
    /// Alignment slack inside them.
    pub slack_bytes: usize,
}

impl PoolAudit {
    /// Adds another class's counts.
    pub fn merge(&mut self, o: &Self) {
        self.in_flight += o.in_flight;
        self.in_flight_bytes += o.in_flight_bytes;
        self.free += o.free;
        self.free_bytes += o.free_bytes;
        self.held += o.held;
        self.capacity += o.capacity;
        self.chunks += o.chunks;
        self.owned_bytes += o.owned_bytes;
        self.slack_bytes += o.slack_bytes;
    }
}
