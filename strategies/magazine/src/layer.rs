//! The magazine layer: per-CPU *loaded* and *previous* magazines and a depot per size
//! class, over a [`Backing`] store of free shared buffers.
//!
//! This is Bonwick & Adams' design ("Magazines and Vmem", USENIX ATC 2001) in the shape
//! Linux's IOVA allocator uses it (`iova_rcache` in `drivers/iommu/iova.c`):
//!
//! * alloc pops from the CPU's loaded magazine; when it is empty and the previous one is
//!   not, the two swap; when both are empty, the empty loaded magazine is exchanged for
//!   a full one from the depot. Free is symmetric. The common case touches only the
//!   CPU's own cache, under its own (uncontended) lock;
//! * when the depot has no full magazine, alloc takes a batch of up to M/2 buffers from
//!   the backing free lists into the loaded magazine (no conversion; the backing store's
//!   own lock per buffer) and flags the depot for the refill engine; when a free finds
//!   both magazines full and the depot without an empty one, the previous magazine is
//!   flushed to the backing store (Bonwick's "free to the slab layer");
//! * only when the backing store is empty too does alloc look at other CPUs' caches
//!   (one lock at a time), as `alloc_iova_fast` flushes the rcaches before it fails;
//!   then the caller gets a miss and turns it into a clear error.
//!
//! Background operations, run by the refill engine (kccd), never by the map path:
//! [`MagazineLayer::fill`] loads depot magazines from the backing store when a CPU
//! found the depot empty; [`MagazineLayer::trim`] returns one full magazine per class
//! per period while the depot holds more than its bound (the IOVA rcache rule);
//! [`MagazineLayer::reap`] gives idle CPU caches and the depot's unused working set back
//! to the backing store so the refill engine can shrink it (Bonwick's reaping);
//! [`MagazineLayer::adapt`] doubles a class's magazine size when its depot lock was
//! contended (Bonwick's `try_lock` failure count).
//!
//! # Locks
//! Per class: one lock per CPU cache, one depot lock. Lock order:
//! CPU cache → depot → backing store. No path holds two CPU-cache locks at once, except
//! [`MagazineLayer::for_each_cached`] (audit), which takes them in ascending CPU order.
//!
//! # Context
//! [`MagazineLayer::alloc`] and [`MagazineLayer::free`] run on the map path: any context,
//! IRQs possibly off; they never sleep, allocate or convert. In userspace the "current
//! CPU" is a simulated id that several threads may share, so the per-CPU cache is an
//! [`IrqMutex`] rather than a bare per-CPU variable; in the kernel the same lock is taken
//! with IRQs off (so an interrupt on the same CPU cannot re-enter it), is contended only
//! by the background reaper, an audit or a CPU stealing on exhaustion, and otherwise
//! costs one uncontended atomic on a line no other CPU writes.
//!
//! The magazine arrays are allocated when the layer is built, at their largest size
//! (`2 × CPUs + depot` magazines per class); moving a magazine between a CPU and the
//! depot moves a pointer, so no path after construction allocates.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bounce_framework::{IrqMutex, IrqMutexGuard, RawIrqLock};

use crate::rounds::Rounds;

/// The store of free shared buffers behind the magazines: the dynamic strategy's size
/// classes and free lists, filled by the refill engine.
///
/// # Context
/// `take` and `give` run on the map path (IRQs possibly off): they must not sleep,
/// allocate or convert pages; they may take an IRQ-safe lock, which nests inside the
/// layer's CPU-cache and depot locks.
pub trait Backing {
    /// A free buffer: exclusive ownership of one buffer that is neither in the store's
    /// free lists nor in flight.
    type Buf;

    /// Takes one free buffer of `class`. `urgent` is true for the buffer a map is
    /// waiting for (it may use the class's emergency reserve) and false for buffers
    /// taken to stock a magazine (the reserve stays in the store, visible to every CPU).
    fn take(&self, class: usize, urgent: bool) -> Option<Self::Buf>;

    /// Returns a free buffer of `class` to the store.
    fn give(&self, class: usize, buf: Self::Buf);

    /// Free buffers of `class` in the store now (a hint; may be stale at once).
    fn free_count(&self, class: usize) -> usize;
}

/// The most rounds a magazine may be configured with.
pub const MAX_ROUNDS: usize = 4096;

/// Magazine sizes of one class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassRounds {
    /// Rounds per magazine at boot.
    pub initial: usize,
    /// The largest size contention may grow it to (the magazines' array size).
    pub max: usize,
}

/// Shape and policy of a [`MagazineLayer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerConfig {
    /// Possible CPUs.
    pub cpus: usize,
    /// Magazine sizes, one entry per size class.
    pub rounds: Vec<ClassRounds>,
    /// Magazines per class kept in the depot besides the two each CPU holds.
    pub depot_magazines: usize,
    /// Full magazines per class the depot is filled to and trimmed back towards.
    pub depot_target: usize,
    /// Depot-lock `try_lock` failures per update period that double a class's
    /// magazine size.
    pub grow_contention: u64,
}

impl LayerConfig {
    /// Checks the configuration.
    ///
    /// # Errors
    /// A sentence naming the bad value.
    pub fn validate(&self) -> Result<(), String> {
        if self.cpus == 0 {
            return Err("the magazine layer needs at least one CPU".into());
        }
        if self.rounds.is_empty() {
            return Err("the magazine layer needs at least one size class".into());
        }
        for (c, r) in self.rounds.iter().enumerate() {
            if r.initial == 0 || r.initial > r.max || r.max > MAX_ROUNDS {
                return Err(alloc::format!(
                    "class {c}: magazine rounds {} (max {}) must satisfy 1 <= rounds <= max_rounds <= {MAX_ROUNDS}",
                    r.initial,
                    r.max
                ));
            }
        }
        if self.depot_target > self.depot_magazines {
            return Err(alloc::format!(
                "the depot target of {} full magazines exceeds the {} depot magazines per class",
                self.depot_target,
                self.depot_magazines
            ));
        }
        if self.grow_contention == 0 {
            return Err("the contention threshold must be at least 1".into());
        }
        Ok(())
    }
}

/// Where [`MagazineLayer::alloc`] found a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The CPU's loaded magazine.
    Loaded,
    /// The CPU's previous magazine (after a swap).
    Previous,
    /// A full magazine exchanged with the depot.
    Depot,
    /// A batch taken from the backing free lists.
    Backing,
    /// Another CPU's cache (the store was empty).
    Stolen,
}

/// The per-CPU cache of one class: Bonwick's loaded and previous magazines.
struct CpuCache<T> {
    loaded: Rounds<T>,
    prev: Rounds<T>,
    /// A map or unmap used this cache since the last reap.
    active: bool,
    /// Allocations served by `loaded` or `prev` without leaving the CPU.
    alloc_hits: u64,
    /// Frees absorbed by `loaded` or `prev`.
    free_hits: u64,
}

/// Cache-line aligned so CPUs do not share a line (the kernel's per-CPU areas).
#[repr(align(128))]
struct CpuSlot<R: RawIrqLock, T> {
    cache: IrqMutex<R, CpuCache<T>>,
}

/// The depot of one class: full and empty magazines under one lock.
struct Depot<T> {
    full: Vec<Rounds<T>>,
    empty: Vec<Rounds<T>>,
    /// The fewest full magazines seen since the last reap: the part of the depot the
    /// working set did not need (Bonwick's `ws_min`).
    ws_min_full: usize,
    /// Full magazines handed to CPUs.
    full_out: u64,
    /// Full magazines taken from CPUs.
    full_in: u64,
    /// Magazines of this class in existence: the depot's plus two per CPU.
    total: usize,
}

/// Slow-path counters of one class (shared; never touched by a cache hit).
#[derive(Default)]
struct ClassCounters {
    backing_allocs: AtomicU64,
    steals: AtomicU64,
    misses: AtomicU64,
    flushes: AtomicU64,
    filled_magazines: AtomicU64,
    trimmed_magazines: AtomicU64,
    reaped_buffers: AtomicU64,
    grows: AtomicU64,
}

struct ClassLayer<R: RawIrqLock, T> {
    cpus: Box<[CpuSlot<R, T>]>,
    depot: IrqMutex<R, Depot<T>>,
    /// Active magazine size M.
    rounds: AtomicUsize,
    max_rounds: usize,
    /// Depot-lock `try_lock` failures, ever.
    contention: AtomicU64,
    /// `contention` at the last [`MagazineLayer::adapt`].
    contention_seen: AtomicU64,
    /// A CPU found the depot without a full magazine: the refill engine should fill.
    starved: AtomicBool,
    counters: ClassCounters,
}

/// Counters of one class, for statistics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Active magazine size.
    pub rounds: usize,
    /// Buffers in CPU magazines now.
    pub cpu_cached: usize,
    /// Full magazines in the depot now.
    pub depot_full: usize,
    /// Buffers in the depot's full magazines now.
    pub depot_cached: usize,
    /// Empty magazines in the depot now.
    pub depot_empty: usize,
    /// Allocations served by the CPU's own magazines.
    pub alloc_hits: u64,
    /// Frees absorbed by the CPU's own magazines.
    pub free_hits: u64,
    /// Full magazines the depot handed to CPUs.
    pub depot_allocs: u64,
    /// Full magazines CPUs handed to the depot.
    pub depot_frees: u64,
    /// Batches taken from the backing store by the map path.
    pub backing_allocs: u64,
    /// Buffers taken from other CPUs' caches.
    pub steals: u64,
    /// Allocations that found nothing anywhere.
    pub misses: u64,
    /// Magazines flushed to the backing store by a free with nowhere to go.
    pub flushes: u64,
    /// Depot magazines filled by the refill engine.
    pub filled_magazines: u64,
    /// Depot magazines trimmed back to the store.
    pub trimmed_magazines: u64,
    /// Buffers reaped back to the store.
    pub reaped_buffers: u64,
    /// Depot-lock `try_lock` failures.
    pub contention: u64,
    /// Times the magazine size grew.
    pub grows: u64,
}

/// What one [`MagazineLayer::reap`] returned to the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Buffers from idle CPU caches.
    pub cpu_buffers: usize,
    /// Buffers from depot magazines the working set did not use.
    pub depot_buffers: usize,
}

impl ReapReport {
    /// All buffers reaped.
    pub fn total(&self) -> usize {
        self.cpu_buffers + self.depot_buffers
    }
}

/// Per-CPU magazines and depots for every size class. See the module documentation.
pub struct MagazineLayer<R: RawIrqLock, T> {
    classes: Box<[ClassLayer<R, T>]>,
    depot_target: usize,
    grow_contention: u64,
}

impl<R: RawIrqLock, T> MagazineLayer<R, T> {
    /// Allocates every magazine: `2 × cpus + depot_magazines` per class, each with its
    /// class's largest size.
    ///
    /// # Errors
    /// The [`LayerConfig::validate`] message.
    ///
    /// # Context
    /// Allocates: init only.
    pub fn new(cfg: &LayerConfig) -> Result<Self, String> {
        cfg.validate()?;
        let classes = cfg
            .rounds
            .iter()
            .map(|r| ClassLayer {
                cpus: (0..cfg.cpus)
                    .map(|_| CpuSlot {
                        cache: IrqMutex::new(CpuCache {
                            loaded: Rounds::with_capacity(r.max),
                            prev: Rounds::with_capacity(r.max),
                            active: false,
                            alloc_hits: 0,
                            free_hits: 0,
                        }),
                    })
                    .collect(),
                depot: IrqMutex::new(Depot {
                    full: Vec::with_capacity(cfg.depot_magazines + 2 * cfg.cpus),
                    empty: {
                        let mut v = Vec::with_capacity(cfg.depot_magazines + 2 * cfg.cpus);
                        v.extend((0..cfg.depot_magazines).map(|_| Rounds::with_capacity(r.max)));
                        v
                    },
                    ws_min_full: 0,
                    full_out: 0,
                    full_in: 0,
                    total: cfg.depot_magazines + 2 * cfg.cpus,
                }),
                rounds: AtomicUsize::new(r.initial),
                max_rounds: r.max,
                contention: AtomicU64::new(0),
                contention_seen: AtomicU64::new(0),
                starved: AtomicBool::new(false),
                counters: ClassCounters::default(),
            })
            .collect();
        Ok(Self { classes, depot_target: cfg.depot_target, grow_contention: cfg.grow_contention })
    }

    /// Number of size classes.
    pub fn class_count(&self) -> usize {
        self.classes.len()
    }

    /// Number of CPUs.
    pub fn cpu_count(&self) -> usize {
        self.classes[0].cpus.len()
    }

    /// The active magazine size of `class`.
    pub fn rounds(&self, class: usize) -> usize {
        self.classes[class].rounds.load(Ordering::Relaxed)
    }

    /// Full magazines per class the depot is filled to and trimmed towards.
    pub fn depot_target(&self) -> usize {
        self.depot_target
    }

    fn cpu_slot(&self, class: usize, cpu: usize) -> &CpuSlot<R, T> {
        let cpus = &self.classes[class].cpus;
        &cpus[cpu % cpus.len()]
    }

    /// Takes the depot lock, counting a failed `try_lock` as contention.
    fn lock_depot(c: &ClassLayer<R, T>) -> IrqMutexGuard<'_, R, Depot<T>> {
        if let Some(g) = c.depot.try_lock() {
            return g;
        }
        c.contention.fetch_add(1, Ordering::Relaxed);
        c.depot.lock()
    }

    /// Takes a free buffer of `class` for `cpu`; `None` when none is left anywhere.
    ///
    /// # Context
    /// Map path: any context; never sleeps, allocates or converts.
    pub fn alloc<B: Backing<Buf = T> + ?Sized>(&self, backing: &B, cpu: usize, class: usize) -> Option<(T, Source)> {
        let c = &self.classes[class];
        let slot = self.cpu_slot(class, cpu);
        {
            let mut cc = slot.cache.lock();
            cc.active = true;
            if let Some(b) = cc.loaded.pop() {
                cc.alloc_hits += 1;
                return Some((b, Source::Loaded));
            }
            if !cc.prev.is_empty() {
                let cc = &mut *cc;
                core::mem::swap(&mut cc.loaded, &mut cc.prev);
                cc.alloc_hits += 1;
                return cc.loaded.pop().map(|b| (b, Source::Previous));
            }
            // Both empty: exchange the empty loaded magazine for a full one.
            {
                let mut d = Self::lock_depot(c);
                if let Some(full) = d.full.pop() {
                    d.ws_min_full = d.ws_min_full.min(d.full.len());
                    d.full_out += 1;
                    let empty = core::mem::replace(&mut cc.loaded, full);
                    d.empty.push(empty);
                    drop(d);
                    return cc.loaded.pop().map(|b| (b, Source::Depot));
                }
            }
            // The depot is empty too: flag it for the refill engine, and take a batch of
            // up to M/2 from the backing free lists meanwhile (the first may use the
            // class's reserve; the rest stock the magazine and leave the reserve alone).
            c.starved.store(true, Ordering::Relaxed);
            if let Some(first) = backing.take(class, true) {
                let m = c.rounds.load(Ordering::Relaxed);
                let batch = m.div_ceil(2);
                for _ in 1..batch {
                    let Some(b) = backing.take(class, false) else { break };
                    if let Err(b) = cc.loaded.push(b, m) {
                        backing.give(class, b);
                        break;
                    }
                }
                c.counters.backing_allocs.fetch_add(1, Ordering::Relaxed);
                return Some((first, Source::Backing));
            }
        }
        // Nothing on this CPU, in the depot or in the store: before failing, take one
        // buffer from another CPU's cache (one lock at a time, never nested).
        let cpus = c.cpus.len();
        let me = cpu % cpus;
        for i in 1..cpus {
            let mut oc = c.cpus[(me + i) % cpus].cache.lock();
            if let Some(b) = oc.loaded.pop().or_else(|| oc.prev.pop()) {
                c.counters.steals.fetch_add(1, Ordering::Relaxed);
                return Some((b, Source::Stolen));
            }
        }
        // Full magazines may have reached the depot while we looked elsewhere.
        {
            let mut d = Self::lock_depot(c);
            if let Some(mut full) = d.full.pop() {
                d.ws_min_full = d.ws_min_full.min(d.full.len());
                let b = full.pop();
                // Keep the rest in the depot (a magazine with one round fewer).
                if full.is_empty() {
                    d.empty.push(full);
                } else {
                    d.full.push(full);
                }
                if let Some(b) = b {
                    return Some((b, Source::Depot));
                }
            }
        }
        c.counters.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Asks the next [`MagazineLayer::fill`] of `class` to stock the depot (boot: warm
    /// the depots on the engine's first run).
    pub fn request_fill(&self, class: usize) {
        self.classes[class].starved.store(true, Ordering::Relaxed);
    }

    /// Whether `class` found its depot empty since the last [`MagazineLayer::fill`].
    pub fn is_starved(&self, class: usize) -> bool {
        self.classes[class].starved.load(Ordering::Relaxed)
    }

    /// Returns a free buffer of `class` to `cpu`'s cache.
    ///
    /// # Context
    /// Map path: any context; never sleeps, allocates or converts.
    pub fn free<B: Backing<Buf = T> + ?Sized>(&self, backing: &B, cpu: usize, class: usize, buf: T) {
        let c = &self.classes[class];
        let m = c.rounds.load(Ordering::Relaxed);
        let mut cc = self.cpu_slot(class, cpu).cache.lock();
        cc.active = true;
        let Err(buf) = cc.loaded.push(buf, m) else {
            cc.free_hits += 1;
            return;
        };
        let cc = &mut *cc;
        if !cc.prev.is_full_at(m) {
            core::mem::swap(&mut cc.loaded, &mut cc.prev);
            cc.free_hits += 1;
            Self::push_fresh(&mut cc.loaded, buf, m, backing, class);
            return;
        }
        // Both full: exchange the full loaded magazine for an empty one.
        {
            let mut d = Self::lock_depot(c);
            if let Some(empty) = d.empty.pop() {
                let full = core::mem::replace(&mut cc.loaded, empty);
                d.full.push(full);
                d.full_in += 1;
                drop(d);
                Self::push_fresh(&mut cc.loaded, buf, m, backing, class);
                return;
            }
        }
        // No empty magazine: flush the previous magazine to the store, then swap.
        while let Some(b) = cc.prev.pop() {
            backing.give(class, b);
        }
        c.counters.flushes.fetch_add(1, Ordering::Relaxed);
        core::mem::swap(&mut cc.loaded, &mut cc.prev);
        Self::push_fresh(&mut cc.loaded, buf, m, backing, class);
    }

    /// Pushes into a magazine known to have room; a magazine without room (a layer
    /// bug) hands the buffer to the store instead of losing it.
    fn push_fresh<B: Backing<Buf = T> + ?Sized>(mag: &mut Rounds<T>, buf: T, m: usize, backing: &B, class: usize) {
        if let Err(b) = mag.push(buf, m) {
            debug_assert!(false, "a magazine with room refused a buffer");
            backing.give(class, b);
        }
    }

    /// Background: loads empty depot magazines of `class` from the backing store until
    /// the depot holds [`LayerConfig::depot_target`] full ones or the store runs dry.
    /// Clears the class's starved flag when the target is reached. Returns the buffers
    /// moved.
    ///
    /// # Context
    /// The refill engine (process context); takes the depot and store locks briefly.
    pub fn fill<B: Backing<Buf = T> + ?Sized>(&self, backing: &B, class: usize) -> usize {
        let c = &self.classes[class];
        let mut moved = 0;
        loop {
            let mut mag = {
                let mut d = Self::lock_depot(c);
                if d.full.len() >= self.depot_target {
                    c.starved.store(false, Ordering::Relaxed);
                    return moved;
                }
                let Some(m) = d.empty.pop() else {
                    c.starved.store(false, Ordering::Relaxed);
                    return moved;
                };
                m
            };
            let m = c.rounds.load(Ordering::Relaxed);
            while !mag.is_full_at(m) {
                let Some(b) = backing.take(class, false) else { break };
                Self::push_fresh(&mut mag, b, m, backing, class);
            }
            let n = mag.len();
            let mut d = Self::lock_depot(c);
            if n == 0 {
                // The store is dry: leave the flag set so the engine comes back after it
                // converted more.
                d.empty.push(mag);
                return moved;
            }
            d.full.push(mag);
            moved += n;
            c.counters.filled_magazines.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Background: for every class whose depot holds more than the target of full
    /// magazines, returns one of them to the backing store (IOVA's
    /// `iova_depot_work_func`: one magazine per class per period). Returns the buffers
    /// returned.
    pub fn trim<B: Backing<Buf = T> + ?Sized>(&self, backing: &B) -> usize {
        let mut returned = 0;
        for (class, c) in self.classes.iter().enumerate() {
            let mag = {
                let mut d = Self::lock_depot(c);
                if d.full.len() <= self.depot_target {
                    continue;
                }
                let m = d.full.pop();
                d.ws_min_full = d.ws_min_full.min(d.full.len());
                m
            };
            let Some(mut mag) = mag else { continue };
            returned += Self::empty_into(&mut mag, backing, class);
            Self::lock_depot(c).empty.push(mag);
            c.counters.trimmed_magazines.fetch_add(1, Ordering::Relaxed);
        }
        returned
    }

    /// Whether [`MagazineLayer::trim`] would return something now.
    pub fn trim_pending(&self) -> bool {
        self.classes.iter().any(|c| c.depot.lock().full.len() > self.depot_target)
    }

    /// Background: gives back to the store (a) the magazines of every CPU cache that
    /// saw no alloc or free since the previous reap and (b) the depot's full magazines
    /// the working set did not touch since the previous reap (the fewest full
    /// magazines the depot held in between). Starts the next observation interval.
    pub fn reap<B: Backing<Buf = T> + ?Sized>(&self, backing: &B) -> ReapReport {
        let mut r = ReapReport::default();
        for (class, c) in self.classes.iter().enumerate() {
            for slot in &c.cpus {
                let mut cc = slot.cache.lock();
                if cc.active {
                    cc.active = false;
                    continue;
                }
                let cc = &mut *cc;
                for mag in [&mut cc.loaded, &mut cc.prev] {
                    let n = Self::empty_into(mag, backing, class);
                    r.cpu_buffers += n;
                    c.counters.reaped_buffers.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            let idle = {
                let d = Self::lock_depot(c);
                d.ws_min_full.min(d.full.len())
            };
            for _ in 0..idle {
                let Some(mut mag) = Self::lock_depot(c).full.pop() else { break };
                let n = Self::empty_into(&mut mag, backing, class);
                r.depot_buffers += n;
                c.counters.reaped_buffers.fetch_add(n as u64, Ordering::Relaxed);
                Self::lock_depot(c).empty.push(mag);
            }
            let mut d = Self::lock_depot(c);
            d.ws_min_full = d.full.len();
        }
        r
    }

    /// Whether [`MagazineLayer::reap`] has anything to look at: some CPU cache or depot
    /// magazine holds buffers.
    pub fn reap_pending(&self) -> bool {
        self.classes.iter().any(|c| {
            c.cpus.iter().any(|s| {
                let cc = s.cache.lock();
                !cc.loaded.is_empty() || !cc.prev.is_empty()
            }) || !c.depot.lock().full.is_empty()
        })
    }

    /// Background: doubles the magazine size (up to its maximum) of every class whose
    /// depot lock failed `try_lock` at least `grow_contention` times since the previous
    /// call. Returns the classes grown.
    pub fn adapt(&self) -> usize {
        let mut grown = 0;
        for c in &*self.classes {
            let now = c.contention.load(Ordering::Relaxed);
            let before = c.contention_seen.swap(now, Ordering::Relaxed);
            if now.saturating_sub(before) < self.grow_contention {
                continue;
            }
            let cur = c.rounds.load(Ordering::Relaxed);
            let next = (cur * 2).min(c.max_rounds);
            if next > cur && c.rounds.compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                c.counters.grows.fetch_add(1, Ordering::Relaxed);
                grown += 1;
            }
        }
        grown
    }

    /// Gives every cached buffer back to the store (CPU caches and depot); returns how
    /// many.
    ///
    /// # Context
    /// Any context; never allocates (emptied magazines stay where they are, the depot's
    /// go to its empty list, which has room for every magazine of the class). One lock
    /// at a time besides the store's.
    pub fn drain<B: Backing<Buf = T> + ?Sized>(&self, backing: &B) -> usize {
        let mut n = 0;
        for (class, c) in self.classes.iter().enumerate() {
            for slot in &c.cpus {
                let mut cc = slot.cache.lock();
                let cc = &mut *cc;
                for mag in [&mut cc.loaded, &mut cc.prev] {
                    n += Self::empty_into(mag, backing, class);
                }
            }
            let mut d = Self::lock_depot(c);
            while let Some(mut mag) = d.full.pop() {
                n += Self::empty_into(&mut mag, backing, class);
                d.empty.push(mag);
            }
            d.ws_min_full = 0;
        }
        n
    }

    /// Gives every buffer of `mag` to the store; returns how many.
    fn empty_into<B: Backing<Buf = T> + ?Sized>(mag: &mut Rounds<T>, backing: &B, class: usize) -> usize {
        let mut n = 0;
        while let Some(b) = mag.pop() {
            backing.give(class, b);
            n += 1;
        }
        n
    }

    /// Calls `f` on every buffer of `class` held by the layer, with every CPU cache of
    /// the class (taken in ascending CPU order) and the depot locked together, so the
    /// walk is a consistent snapshot of this class.
    ///
    /// # Context
    /// Process context (allocates); for audits.
    pub fn for_each_cached(&self, class: usize, mut f: impl FnMut(&T)) {
        let c = &self.classes[class];
        // IrqGuards releases the CPU locks last-in first-out (after the depot lock,
        // which is declared later and so dropped first): interrupts stay off until the
        // last lock is released.
        let guards = bounce_framework::IrqGuards::lock_all(c.cpus.iter().map(|s| &s.cache));
        let d = c.depot.lock();
        for g in guards.iter() {
            g.loaded.iter().chain(g.prev.iter()).for_each(&mut f);
        }
        for m in &d.full {
            m.iter().for_each(&mut f);
        }
    }

    /// Buffers of `class` in `cpu`'s loaded and previous magazines now.
    pub fn cpu_cached(&self, class: usize, cpu: usize) -> usize {
        let cc = self.cpu_slot(class, cpu).cache.lock();
        cc.loaded.len() + cc.prev.len()
    }

    /// Buffers of `class` held by the layer now (CPU caches and depot).
    pub fn cached_count(&self, class: usize) -> usize {
        let s = self.class_stats(class);
        s.cpu_cached + s.depot_cached
    }

    /// Checks the layer's own invariants for every class: every magazine is accounted
    /// for (2 per CPU plus the depot's), none holds more than its capacity, no depot
    /// "full" magazine is empty.
    ///
    /// # Errors
    /// A sentence naming the broken invariant.
    pub fn check(&self) -> Result<(), String> {
        for (class, c) in self.classes.iter().enumerate() {
            let d = c.depot.lock();
            let want = d.total;
            if d.full.len() + d.empty.len() + 2 * c.cpus.len() != want {
                return Err(alloc::format!(
                    "class {class}: {} full + {} empty depot magazines + 2 per CPU x {} != {} magazines",
                    d.full.len(),
                    d.empty.len(),
                    c.cpus.len(),
                    want
                ));
            }
            if let Some(m) = d.full.iter().find(|m| m.is_empty()) {
                return Err(alloc::format!("class {class}: an empty magazine ({m:?}) sits among the full ones"));
            }
            if let Some(m) = d.empty.iter().find(|m| !m.is_empty()) {
                return Err(alloc::format!("class {class}: a loaded magazine ({m:?}) sits among the empty ones"));
            }
            let m = c.rounds.load(Ordering::Relaxed);
            if m == 0 || m > c.max_rounds {
                return Err(alloc::format!("class {class}: magazine size {m} outside 1..={}", c.max_rounds));
            }
        }
        Ok(())
    }

    /// Counters of `class`.
    ///
    /// # Context
    /// Any context: takes each CPU-cache lock of the class and the depot lock in turn.
    pub fn class_stats(&self, class: usize) -> ClassStats {
        let c = &self.classes[class];
        let mut s = ClassStats { rounds: c.rounds.load(Ordering::Relaxed), ..ClassStats::default() };
        for slot in &c.cpus {
            let cc = slot.cache.lock();
            s.cpu_cached += cc.loaded.len() + cc.prev.len();
            s.alloc_hits += cc.alloc_hits;
            s.free_hits += cc.free_hits;
        }
        {
            let d = c.depot.lock();
            s.depot_full = d.full.len();
            s.depot_cached = d.full.iter().map(Rounds::len).sum();
            s.depot_empty = d.empty.len();
            s.depot_allocs = d.full_out;
            s.depot_frees = d.full_in;
        }
        let k = &c.counters;
        s.backing_allocs = k.backing_allocs.load(Ordering::Relaxed);
        s.steals = k.steals.load(Ordering::Relaxed);
        s.misses = k.misses.load(Ordering::Relaxed);
        s.flushes = k.flushes.load(Ordering::Relaxed);
        s.filled_magazines = k.filled_magazines.load(Ordering::Relaxed);
        s.trimmed_magazines = k.trimmed_magazines.load(Ordering::Relaxed);
        s.reaped_buffers = k.reaped_buffers.load(Ordering::Relaxed);
        s.contention = c.contention.load(Ordering::Relaxed);
        s.grows = k.grows.load(Ordering::Relaxed);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bounce_framework::{NoIrq, PhysAddr, SpinIrqLock};
    use std::sync::Mutex;
    use std::vec;

    type Layer = MagazineLayer<SpinIrqLock<NoIrq>, PhysAddr>;

    /// Free lists per class behind a mutex; buffers are tokens `class << 32 | n`.
    struct Store {
        free: Mutex<Vec<Vec<PhysAddr>>>,
    }

    impl Store {
        fn new(classes: usize, per_class: usize) -> Self {
            let free = (0..classes)
                .map(|c| (0..per_class).map(|n| PhysAddr(((c as u64) << 32) | n as u64)).collect())
                .collect();
            Self { free: Mutex::new(free) }
        }
    }

    impl Backing for Store {
        type Buf = PhysAddr;
        fn take(&self, class: usize, _urgent: bool) -> Option<PhysAddr> {
            self.free.lock().unwrap()[class].pop()
        }
        fn give(&self, class: usize, buf: PhysAddr) {
            self.free.lock().unwrap()[class].push(buf);
        }
        fn free_count(&self, class: usize) -> usize {
            self.free.lock().unwrap()[class].len()
        }
    }

    fn cfg(cpus: usize, initial: usize, max: usize, depot: usize, target: usize) -> LayerConfig {
        LayerConfig {
            cpus,
            rounds: vec![ClassRounds { initial, max }; 2],
            depot_magazines: depot,
            depot_target: target,
            grow_contention: 2,
        }
    }

    /// Every buffer is in exactly one place: the store, the layer, or `out`.
    fn conserved(layer: &Layer, store: &Store, class: usize, out: &[PhysAddr], total: usize) {
        let mut all = Vec::new();
        layer.for_each_cached(class, |b| all.push(*b));
        all.extend_from_slice(&store.free.lock().unwrap()[class]);
        all.extend_from_slice(out);
        all.sort_unstable();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n, "a buffer is in two places");
        assert_eq!(n, total, "a buffer was lost");
        layer.check().unwrap();
    }

    #[test]
    fn config_is_validated() {
        assert!(cfg(0, 1, 1, 1, 1).validate().is_err());
        assert!(cfg(1, 0, 1, 1, 1).validate().is_err());
        assert!(cfg(1, 2, 1, 1, 1).validate().is_err());
        assert!(cfg(1, 1, MAX_ROUNDS + 1, 1, 1).validate().is_err());
        assert!(cfg(1, 1, 1, 1, 2).validate().is_err());
        let mut c = cfg(1, 1, 1, 1, 1);
        c.grow_contention = 0;
        assert!(c.validate().is_err());
        assert!(Layer::new(&cfg(1, 1, 1, 1, 1)).is_ok());
    }

    #[test]
    fn alloc_walks_loaded_previous_depot_backing_then_steals_then_misses() {
        let layer = Layer::new(&cfg(2, 4, 4, 4, 2)).unwrap();
        let store = Store::new(2, 16);
        // Cold: the first alloc takes a batch of M/2 from the store.
        let (a, src) = layer.alloc(&store, 0, 0).unwrap();
        assert_eq!(src, Source::Backing);
        assert!(layer.is_starved(0));
        assert_eq!(store.free_count(0), 14);
        let (b, src) = layer.alloc(&store, 0, 0).unwrap();
        assert_eq!(src, Source::Loaded);
        // Refill the depot as the engine would: 2 full magazines of 4.
        assert_eq!(layer.fill(&store, 0), 8);
        assert!(!layer.is_starved(0));
        assert_eq!(store.free_count(0), 6);
        let (c, src) = layer.alloc(&store, 0, 0).unwrap();
        assert_eq!(src, Source::Depot);
        for x in [a, b] {
            layer.free(&store, 0, 0, x);
        }
        let s = layer.class_stats(0);
        assert_eq!((s.depot_allocs, s.backing_allocs, s.free_hits), (1, 1, 2));
        conserved(&layer, &store, 0, &[c], 16);
    }

    #[test]
    fn previous_magazine_swaps_both_ways() {
        let layer = Layer::new(&cfg(1, 2, 2, 2, 1)).unwrap();
        let store = Store::new(2, 8);
        let got: Vec<_> = (0..4).map(|_| layer.alloc(&store, 0, 0).unwrap().0).collect();
        // 4 frees with M = 2: loaded fills, swaps with the empty previous, fills again.
        for &g in &got {
            layer.free(&store, 0, 0, g);
        }
        let s = layer.class_stats(0);
        assert_eq!(s.cpu_cached, 4);
        assert_eq!(s.depot_full, 0, "nothing went to the depot yet");
        // Allocs drain loaded, swap in previous.
        let (_, s1) = layer.alloc(&store, 0, 0).unwrap();
        let (_, s2) = layer.alloc(&store, 0, 0).unwrap();
        let (_, s3) = layer.alloc(&store, 0, 0).unwrap();
        assert_eq!((s1, s2, s3), (Source::Loaded, Source::Loaded, Source::Previous));
    }

    #[test]
    fn free_exchanges_full_magazines_then_flushes() {
        // One depot magazine: the first overflow goes to the depot, the second flushes.
        let layer = Layer::new(&cfg(1, 2, 2, 1, 1)).unwrap();
        let store = Store::new(2, 16);
        let mut out: Vec<_> = (0..8).map(|_| layer.alloc(&store, 0, 0).unwrap().0).collect();
        for _ in 0..5 {
            layer.free(&store, 0, 0, out.pop().unwrap());
        }
        let s = layer.class_stats(0);
        assert_eq!((s.depot_frees, s.depot_full, s.flushes), (1, 1, 0));
        conserved(&layer, &store, 0, &out, 16);
        for _ in 0..3 {
            layer.free(&store, 0, 0, out.pop().unwrap());
        }
        let s = layer.class_stats(0);
        assert_eq!(s.flushes, 1, "no empty magazine left: the previous one is flushed to the store");
        conserved(&layer, &store, 0, &out, 16);
    }

    #[test]
    fn cross_cpu_free_lands_on_the_freeing_cpu() {
        let layer = Layer::new(&cfg(2, 4, 4, 2, 1)).unwrap();
        let store = Store::new(2, 8);
        let (a, _) = layer.alloc(&store, 0, 1).unwrap();
        let before = layer.class_stats(1).cpu_cached;
        layer.free(&store, 1, 1, a);
        // CPU 1 now serves it from its own loaded magazine without touching CPU 0.
        assert_eq!(layer.alloc(&store, 1, 1).unwrap(), (a, Source::Loaded));
        assert_eq!(layer.class_stats(1).cpu_cached, before);
        conserved(&layer, &store, 1, &[a], 8);
    }

    #[test]
    fn exhaustion_steals_then_misses() {
        let layer = Layer::new(&cfg(2, 4, 4, 2, 1)).unwrap();
        let store = Store::new(2, 3);
        // CPU 0 takes a batch of 2 and frees one back: CPU 0 caches 2, store holds 1.
        let (a, _) = layer.alloc(&store, 0, 0).unwrap();
        layer.free(&store, 0, 0, a);
        let mut out = vec![];
        out.push(layer.alloc(&store, 1, 0).unwrap());
        assert_eq!(out[0].1, Source::Backing);
        out.push(layer.alloc(&store, 1, 0).unwrap());
        assert_eq!(out[1].1, Source::Stolen);
        out.push(layer.alloc(&store, 1, 0).unwrap());
        assert_eq!(out[2].1, Source::Stolen);
        assert_eq!(layer.alloc(&store, 1, 0), None);
        let s = layer.class_stats(0);
        assert_eq!((s.steals, s.misses), (2, 1));
        let bufs: Vec<_> = out.iter().map(|x| x.0).collect();
        conserved(&layer, &store, 0, &bufs, 3);
    }

    #[test]
    fn trim_returns_one_magazine_per_period_towards_the_target() {
        let layer = Layer::new(&cfg(1, 2, 2, 6, 1)).unwrap();
        let store = Store::new(2, 32);
        let mut out: Vec<_> = (0..16).map(|_| layer.alloc(&store, 0, 0).unwrap().0).collect();
        while let Some(b) = out.pop() {
            layer.free(&store, 0, 0, b);
        }
        let full = layer.class_stats(0).depot_full;
        assert!(full > 1, "frees pushed {full} full magazines");
        assert!(layer.trim_pending());
        let mut steps = 0;
        while layer.trim_pending() {
            assert_eq!(layer.trim(&store), 2, "one magazine of two rounds per call");
            steps += 1;
        }
        assert_eq!(steps, full - 1);
        assert_eq!(layer.class_stats(0).depot_full, 1);
        assert_eq!(layer.trim(&store), 0);
        conserved(&layer, &store, 0, &[], 32);
    }

    #[test]
    fn reap_returns_idle_caches_and_unused_depot_magazines() {
        let layer = Layer::new(&cfg(2, 2, 2, 4, 2)).unwrap();
        let store = Store::new(2, 32);
        for cpu in 0..2 {
            let (b, _) = layer.alloc(&store, cpu, 0).unwrap();
            layer.free(&store, cpu, 0, b);
        }
        layer.fill(&store, 0);
        assert_eq!(layer.class_stats(0).depot_full, 2);
        // First reap opens the interval: both caches were active, the depot's working
        // set minimum starts now.
        assert_eq!(layer.reap(&store).total(), 0);
        // CPU 1 stays busy, CPU 0 idles; nobody touches the depot.
        let (b, _) = layer.alloc(&store, 1, 0).unwrap();
        layer.free(&store, 1, 0, b);
        let r = layer.reap(&store);
        assert_eq!(r.cpu_buffers, 1, "CPU 0's idle cache (1 buffer) was reaped");
        assert_eq!(r.depot_buffers, 4, "both untouched depot magazines were reaped");
        let s = layer.class_stats(0);
        assert_eq!((s.cpu_cached, s.depot_full), (1, 0), "only busy CPU 1 still caches");
        conserved(&layer, &store, 0, &[], 32);
    }

    #[test]
    fn contention_doubles_the_magazine_size_up_to_its_maximum() {
        let layer = Layer::new(&cfg(1, 2, 5, 1, 1)).unwrap();
        let store = Store::new(2, 8);
        assert_eq!(layer.adapt(), 0);
        // Hold the depot lock while the map path needs it: count contention.
        let c = &layer.classes[0];
        for _ in 0..2 {
            let g = c.depot.lock();
            assert!(c.depot.try_lock().is_none());
            drop(g);
            c.contention.fetch_add(1, Ordering::Relaxed);
        }
        assert_eq!(layer.adapt(), 1);
        assert_eq!(layer.rounds(0), 4);
        assert_eq!(layer.adapt(), 0, "no new contention");
        c.contention.fetch_add(5, Ordering::Relaxed);
        assert_eq!(layer.adapt(), 1);
        assert_eq!(layer.rounds(0), 5, "capped at max_rounds");
        c.contention.fetch_add(5, Ordering::Relaxed);
        assert_eq!(layer.adapt(), 0);
        assert_eq!(layer.class_stats(0).grows, 2);
        let _ = store;
    }

    #[test]
    fn drain_empties_everything() {
        let layer = Layer::new(&cfg(2, 4, 4, 4, 2)).unwrap();
        let store = Store::new(2, 20);
        let out: Vec<_> = (0..6).map(|i| layer.alloc(&store, i % 2, 0).unwrap().0).collect();
        layer.fill(&store, 0);
        for (i, b) in out.into_iter().enumerate() {
            layer.free(&store, i, 0, b);
        }
        layer.drain(&store);
        assert_eq!(layer.cached_count(0), 0);
        assert_eq!(store.free_count(0), 20);
        layer.check().unwrap();
    }
}
