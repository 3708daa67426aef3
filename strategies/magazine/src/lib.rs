//! # bounce-magazine
//!
//! The magazine strategy: per-CPU caches of already-*shared* bounce buffers (SPEC §6),
//! on top of the refill engine's size-classed pools ([`bounce_pools::PoolSet`], the same
//! classes, address index, per-buffer records, batched conversion and shrinking the
//! dynamic strategy uses: one source of truth, no copy).
//!
//! ```text
//!   map (CPU n)                                   unmap (any CPU m)
//!     │ class = ClassTable::choose(req)              │ PoolSet::find (lock-free lookup), then
//!     ▼                                              │   release_found: record CAS to free
//!   CPU n cache [class]: loaded ─ prev  ◄─────────── CPU m cache [class]: loaded ─ prev
//!     │ both empty            ▲ both full               (the buffer joins the *unmapping*
//!     ▼                       │                          CPU's magazines)
//!   depot [class]: full / empty magazines (one IRQ-safe lock; trimmed, reaped)
//!     │ empty                 ▲ fill (kccd)
//!     ▼                       │
//!   PoolSet free lists [class] ◄── kccd: batched conversion, idle shrinking, cap
//! ```
//!
//! The common map pops a buffer from the current CPU's loaded magazine under that CPU's
//! own lock and writes the buffer's in-flight record (lock-free); no shared lock, no
//! conversion, no search. See [`layer`] for the magazine mechanics (Bonwick & Adams,
//! Linux's `iova_rcache`) and [`config`] for the `swiotlb.magazine.*` parameters, their
//! defaults and why.
//!
//! ## Adaptive behaviour
//! - **Magazine size grows under depot contention** (Bonwick): every depot access tries
//!   the lock first and counts failures; each reap period a class with at least
//!   `contention` failures doubles its magazine size, up to `max_rounds`. Magazines are
//!   allocated at their largest size at boot, so growing never allocates.
//! - **Depot trimming** (IOVA rcache): every `trim_ms` of the platform clock, one full
//!   magazine per class goes back to the pool while the depot holds more than
//!   `depot_target` (default: the number of CPUs).
//! - **Reaping** (Bonwick): every `reap_ms`, CPU caches that saw no map or unmap in the
//!   whole period, and depot magazines the working set did not touch, go back to the
//!   pool, where the engine converts idle chunks back to private after `idle_ms`.
//!
//! All three run in [`Strategy::run_background`] (kccd), driven by the platform clock,
//! or at a caller's time with [`Magazine::run_background_at`] (the deterministic
//! [`bounce_pools::StepRunner`]).
//!
//! ## Failure
//! A map falls from the CPU's magazines to the depot, then to a batch from the pool's
//! free lists, then to other CPUs' caches, then to a larger class (`fallback=on`), and
//! then fails with [`MapError::Exhausted`] (or [`MapError::Cap`] when the cap
//! stops growth), having woken the engine. It never blocks, allocates or converts.
//!
//! ## What the map path touches
//! Map: the CPU's own magazine (its own lock), the buffer's record (written by whoever
//! holds the buffer) and the CPU's own in-flight counter. Unmap: one lock-free lookup
//! (`PoolSet::find`: the address index's radix tree and the chunk record, read only),
//! one compare-and-swap on the buffer's record (which also refuses a double unmap), the
//! unmapping CPU's counter and its own magazine. No global lock, no shared reference
//! count; the only shared lines written are the per-CPU counters' fold (once per 64 KiB)
//! and the depot when a magazine runs full or empty.
//!
//! ## Context
//! `reserve` takes the current CPU's cache lock (and on a miss the depot lock, a pool
//! lock); `release` and `release_found` take the unmapping CPU's cache lock; `find`,
//! `locate` and `owns` take no lock. Lock order: CPU cache → depot → pool. Nothing on the map path sleeps, allocates or converts;
//! `run_background` and `audit` may sleep and allocate.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod config;
pub mod layer;
pub mod rounds;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use bounce_framework::{
    AuditError, AuditReport, BackgroundReport, BootConfig, Found, InitError, LogLevel, MapError, PhysAddr, Platform,
    PoolShape, ReleaseError, Released, Request, Reservation, Strategy, TestProfile,
};
use bounce_pools::{FreeBuffer, Need, PoolSet, RequestCounters};

pub use bounce_pools;
pub use config::{MagazineConfig, RoundsSetting};
pub use layer::{Backing, ClassRounds, ClassStats, LayerConfig, MagazineLayer, ReapReport, Source, MAX_ROUNDS};
pub use rounds::Rounds;

/// The refill engine's pools as the magazines' backing store, for atomic maps (the
/// urgent buffer may dip into reserves and reshape any blank shell) and the engine.
impl<P: Platform> Backing for PoolSet<P> {
    type Buf = FreeBuffer;

    #[inline]
    fn take(&self, class: usize, urgent: bool) -> Option<FreeBuffer> {
        self.pop(class, if urgent { Need::Atomic } else { Need::Stock })
    }

    #[inline]
    fn give(&self, _class: usize, buf: FreeBuffer) {
        self.push(buf);
    }

    fn free_count(&self, class: usize) -> usize {
        self.pool(class).ready()
    }
}

/// The pools as the backing store of a map that may wait (`DMA_ATTR_MAY_BLOCK`): its
/// own buffer is taken as [`Need::Waitable`], leaving reserves to atomic maps.
struct Waitable<'a, P: Platform>(&'a PoolSet<P>);

impl<P: Platform> Backing for Waitable<'_, P> {
    type Buf = FreeBuffer;

    #[inline]
    fn take(&self, class: usize, urgent: bool) -> Option<FreeBuffer> {
        self.0.pop(class, if urgent { Need::Waitable } else { Need::Stock })
    }

    #[inline]
    fn give(&self, class: usize, buf: FreeBuffer) {
        Backing::give(self.0, class, buf);
    }

    fn free_count(&self, class: usize) -> usize {
        Backing::free_count(self.0, class)
    }
}

/// Map-path and background counters of [`Magazine`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MagazineCounters {
    /// Requests served by a larger class because their own was exhausted everywhere.
    pub fallbacks: u64,
    /// Requests served by a completely free shell taken from another class's pool.
    pub reclaimed: u64,
    /// Requests refused with [`MapError::Exhausted`].
    pub no_buffer: u64,
    /// Requests refused with [`MapError::Cap`].
    pub cap_reached: u64,
    /// Cache flushes by requests that found nothing else (every cached buffer back to
    /// the pools, [`MagazineLayer::drain`]).
    pub flushes: u64,
    /// Trim periods run.
    pub trims: u64,
    /// Reap periods run.
    pub reaps: u64,
    /// Buffers moved from the pools into depot magazines by the engine.
    pub stocked: u64,
}

/// The magazine strategy (see the crate documentation).
pub struct Magazine<P: Platform> {
    platform: P,
    pools: PoolSet<P>,
    layer: MagazineLayer<P::Lock, FreeBuffer>,
    /// Per class: whether the magazines cache it (its size is at most `cache_max`).
    cached: Vec<bool>,
    fallback: bool,
    trim_ns: u64,
    reap_ns: u64,
    last_trim: AtomicU64,
    last_reap: AtomicU64,
    flushes: AtomicU64,
    trims: AtomicU64,
    reaps: AtomicU64,
    stocked: AtomicU64,
}

impl<P: Platform> Magazine<P> {
    /// The boot name (`swiotlb.strategy=magazine`).
    pub const NAME: &'static str = "magazine";
    /// Boot command lines with small pools (1–4 MiB) and idle and period timers of
    /// 0–1 ms, so that exhaustion, growth up to the cap and shrinking are all reachable
    /// within a few hundred operations: the fuzzer's configurations
    /// (`bounce_strategies::AnyStrategy::small_cmdlines`).
    pub const SMALL_CMDLINES: &'static [&'static str] = &[
        "swiotlb.strategy=magazine swiotlb.magazine.cap=4M swiotlb.magazine.classes=512:64,2K:256,4K:128,16K:32,512K:2 \
         swiotlb.magazine.idle_ms=0 swiotlb.magazine.batch=64 swiotlb.magazine.trim_ms=1 swiotlb.magazine.reap_ms=1",
        "swiotlb=1024 swiotlb.strategy=magazine swiotlb.magazine.reserve=0 swiotlb.magazine.idle_ms=0 swiotlb.magazine.batch=32 \
         swiotlb.magazine.rounds=2 swiotlb.magazine.depot=1 swiotlb.magazine.depot_target=0",
        "swiotlb.strategy=magazine swiotlb.magazine.cap=2M swiotlb.magazine.classes=2K:64:8:128,64K:8:1:16 \
         swiotlb.magazine.fallback=off swiotlb.magazine.reserve=50 swiotlb.magazine.rounds=1 swiotlb.magazine.max_rounds=4 \
         swiotlb.magazine.contention=1 swiotlb.magazine.batch=1 swiotlb.magazine.trim_ms=1 swiotlb.magazine.reap_ms=1 \
         swiotlb.magazine.idle_ms=0",
        "swiotlb.strategy=magazine swiotlb.magazine.cap=3M swiotlb.magazine.classes=512:16,4K:64,256K:4 \
         swiotlb.magazine.rounds=4,8,1 swiotlb.magazine.max_rounds=16,16,1 swiotlb.magazine.depot_target=4 \
         swiotlb.magazine.idle_ms=0",
];

    /// What the strategy-generic tests boot and expect: a growing pool, as dynamic's
    /// profile, with small magazines (4 rounds) in the fault matrix.
    pub const TEST_PROFILE: TestProfile = TestProfile {
        pool: PoolShape::Growing,
        fault_matrix: "swiotlb.strategy=magazine swiotlb.magazine.preset=seed swiotlb.magazine.classes=8K:8 \
                       swiotlb.magazine.cap=544K swiotlb.magazine.idle_ms=0 swiotlb.magazine.reserve=25 \
                       swiotlb.magazine.rounds=4 swiotlb.magazine.max_rounds=4",
        hostile_host: "swiotlb.strategy=magazine swiotlb.magazine.classes=512:64,2K:16,4K:64,16K:16 \
                       swiotlb.magazine.cap=16M swiotlb.magazine.stock=4K swiotlb.magazine.idle_ms=0",
    };
    /// The `swiotlb.magazine.*` parameters (see [`config`]).
    pub const PARAMS: &'static [&'static str] = &[
        "preset",
        "headroom",
        "chunk",
        "stock",
        "classes",
        "cap",
        "batch",
        "idle_ms",
        "reserve",
        "limit",
        "fallback",
        "rounds",
        "max_rounds",
        "depot",
        "depot_target",
        "trim_ms",
        "reap_ms",
        "contention",
        "cache_max",
    ];

    /// Builds the strategy from the boot command line (`swiotlb.magazine.*`, and
    /// `swiotlb=<slots>` as the default cap).
    ///
    /// # Errors
    /// [`InitError::Cmdline`] naming the offending token; otherwise as
    /// [`Magazine::new`].
    pub fn from_boot(platform: P, boot: &BootConfig) -> Result<Self, InitError> {
        Self::new(platform, Self::config_from_boot(boot)?)
    }

    /// Parses the boot command line into a configuration.
    ///
    /// # Errors
    /// [`InitError::Cmdline`] naming the offending token.
    pub fn config_from_boot(boot: &BootConfig) -> Result<MagazineConfig, InitError> {
        MagazineConfig::from_boot(Self::NAME, Self::PARAMS, boot)
    }

    /// Builds the pools, fills every class's emergency reserve and allocates every
    /// magazine (boot context: allocates and converts, may sleep). The engine's first
    /// runs fill the pools to their targets and stock the depots.
    ///
    /// # Errors
    /// [`InitError::Config`] for settings out of range, [`InitError::Grow`] when the
    /// reserves cannot be converted.
    pub fn new(platform: P, config: MagazineConfig) -> Result<Self, InitError> {
        let layer_cfg = {
            let classes = config.pools.table()?;
            config.layer_config(platform.cpu_count(), classes.classes())?
        };
        let cache_max = config.cache_max_bytes();
        let MagazineConfig { pools, fallback, trim_ms, reap_ms, .. } = config;
        let pools = PoolSet::new(platform.clone(), &pools)?;
        let layer = MagazineLayer::new(&layer_cfg).map_err(InitError::Config)?;
        pools.fill_reserves()?;
        let cached: Vec<bool> = pools.table().classes().iter().map(|c| c.size <= cache_max).collect();
        for class in (0..layer.class_count()).filter(|&c| cached[c]) {
            layer.request_fill(class);
        }
        platform.log(
            LogLevel::Info,
            format_args!(
                "bounce: magazine strategy: {}, classes above {cache_max} bytes uncached",
                config::describe(&layer_cfg)
            ),
        );
        Ok(Self {
            platform,
            pools,
            layer,
            cached,
            fallback,
            trim_ns: trim_ms.saturating_mul(1_000_000),
            reap_ns: reap_ms.saturating_mul(1_000_000),
            last_trim: AtomicU64::new(0),
            last_reap: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            trims: AtomicU64::new(0),
            reaps: AtomicU64::new(0),
            stocked: AtomicU64::new(0),
        })
    }

    /// The pools (classes, index, engine).
    pub fn pools(&self) -> &PoolSet<P> {
        &self.pools
    }

    /// The magazine layer.
    pub fn layer(&self) -> &MagazineLayer<P::Lock, FreeBuffer> {
        &self.layer
    }

    /// Counters of class `class`'s magazines.
    pub fn class_stats(&self, class: usize) -> ClassStats {
        self.layer.class_stats(class)
    }

    /// Strategy counters.
    pub fn counters(&self) -> MagazineCounters {
        let RequestCounters { fallbacks, reclaimed, no_buffer, cap_reached } = self.pools.request_counters();
        MagazineCounters {
            fallbacks,
            reclaimed,
            no_buffer,
            cap_reached,
            flushes: self.flushes.load(Ordering::Relaxed),
            trims: self.trims.load(Ordering::Relaxed),
            reaps: self.reaps.load(Ordering::Relaxed),
            stocked: self.stocked.load(Ordering::Relaxed),
        }
    }

    /// Claims the period ending at `now` on `last` (one caller wins when several
    /// runners race).
    fn due(last: &AtomicU64, now: u64, period: u64) -> bool {
        let prev = last.load(Ordering::Relaxed);
        now.saturating_sub(prev) >= period
            && last.compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    fn period_elapsed(last: &AtomicU64, now: u64, period: u64) -> bool {
        now.saturating_sub(last.load(Ordering::Relaxed)) >= period
    }

    /// Whether a depot wants stocking and its pool has buffers stocking may take: more
    /// than the class's emergency reserve, which [`MagazineLayer::fill`] leaves alone.
    /// (Counting the reserve kept a starved class pending forever once its pool held
    /// only reserve buffers, e.g. at the cap: the engine spun and never went idle.)
    fn stock_pending(&self) -> bool {
        (0..self.layer.class_count())
            .any(|c| self.layer.is_starved(c) && self.pools.free_count(c) > self.pools.class(c).reserve)
    }

    /// One background run at `now` on the caller's clock: depot trimming and reaping
    /// when their periods are due, the refill engine ([`PoolSet::run`]: shrink idle
    /// chunks, grow classes below target in batches), then stocking of starved depots
    /// from the pools.
    ///
    /// # Context
    /// Process context; may sleep (conversions).
    pub fn run_background_at(&self, now: u64) -> BackgroundReport {
        if Self::due(&self.last_trim, now, self.trim_ns) {
            self.layer.trim(&self.pools);
            self.trims.fetch_add(1, Ordering::Relaxed);
        }
        if Self::due(&self.last_reap, now, self.reap_ns) {
            self.layer.reap(&self.pools);
            self.layer.adapt();
            self.reaps.fetch_add(1, Ordering::Relaxed);
        }
        let mut report = self.pools.run(now);
        for class in 0..self.layer.class_count() {
            if self.layer.is_starved(class) {
                let n = self.layer.fill(&self.pools, class);
                self.stocked.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        // Stocking may have taken a pool below its target: the engine has work again.
        report.more |= self.pools.pending(now) || self.stock_pending();
        report
    }

    /// Whether [`Magazine::run_background_at`] has work at `now`.
    pub fn background_pending_at(&self, now: u64) -> bool {
        self.pools.pending(now)
            || self.stock_pending()
            || (Self::period_elapsed(&self.last_trim, now, self.trim_ns) && self.layer.trim_pending())
            || (Self::period_elapsed(&self.last_reap, now, self.reap_ns) && self.layer.reap_pending())
    }

    /// A free buffer of `class` for `need`: from the magazines (with where it came
    /// from) when the class is cached, else straight from its pool (source `None`).
    #[inline]
    fn alloc(&self, cpu: usize, class: usize, need: Need) -> Option<(FreeBuffer, Option<Source>)> {
        match (self.cached[class], need) {
            (true, Need::Waitable) => self.layer.alloc(&Waitable(&self.pools), cpu, class).map(|(b, s)| (b, Some(s))),
            (true, _) => self.layer.alloc(&self.pools, cpu, class).map(|(b, s)| (b, Some(s))),
            (false, _) => self.pools.pop(class, need).map(|b| (b, None)),
        }
    }
}

impl<P: Platform> Magazine<P> {
    /// An unmapped buffer of `class` into `cpu`'s magazines when the class is cached,
    /// else back to its pool.
    #[inline]
    fn cache_or_push(&self, buf: FreeBuffer, class: usize, cpu: usize) {
        if self.cached[class] {
            self.layer.free(&self.pools, cpu, class, buf);
        } else {
            self.pools.push(buf);
        }
    }

    /// A request that nothing could serve: every cached buffer, the depots' full
    /// magazines and the CPU caches, goes back to the pools
    /// ([`MagazineLayer::drain`]), then the pools are asked again
    /// ([`PoolSet::pop_fitting`]). With the defaults on 2 CPUs the caches can hold about
    /// 7 MiB (6 cached classes; two magazines per CPU and class and the depot's full
    /// ones, each at most 128 rounds and 256 KiB); in the Linux guest a burst failed
    /// maps with about that much free, most of it cached. `None` at once when nothing
    /// was cached, as under a sustained shortage (then the cost is a lock per class and
    /// CPU and one per depot).
    fn flush_and_retry(&self, class: usize, need: Need) -> Option<FreeBuffer> {
        if self.layer.drain(&self.pools) == 0 {
            return None;
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.pools.pop_fitting(class, need, self.fallback)
    }
}

impl<P: Platform> Drop for Magazine<P> {
    /// Gives every cached buffer back to the pools, so the pools' own teardown can
    /// return idle chunks to private memory.
    fn drop(&mut self) {
        self.layer.drain(&self.pools);
    }
}

impl<P: Platform> Strategy for Magazine<P> {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn reserve(&self, req: &Request) -> Result<Reservation, MapError> {
        let choice = self.pools.table().choose(req)?;
        let need = Need::of(req);
        let buf = if let Some((buf, src)) = self.alloc(req.cpu, choice.class, need) {
            if matches!(src, Some(Source::Backing | Source::Stolen)) {
                // The depot was empty: the engine stocks it (and refills the pool).
                self.platform.wake_refill();
            }
            Some(buf)
        } else {
            self.platform.wake_refill();
            // A larger class from anywhere it is cached (this CPU, the depot, the pool,
            // other CPUs): larger classes are aligned at least as much.
            let larger = if self.fallback { choice.class + 1..self.pools.table().len() } else { 0..0 };
            let buf = larger.into_iter().find_map(|c| self.alloc(req.cpu, c, need).map(|(b, _)| b));
            if buf.is_some() {
                self.pools.note_fallback();
            }
            // Last: a free shell another class's pool holds (`PoolSet::pop_reclaimed`),
            // then the same after the caches gave their buffers back.
            buf.or_else(|| self.pools.pop_reclaimed(choice.class, need))
                .or_else(|| self.flush_and_retry(choice.class, need))
        };
        let Some(buf) = buf else { return Err(self.pools.refuse(req, choice.class)) };
        Ok(Reservation { addr: self.pools.commit(buf, req.orig, choice.offset, req.alloc_size, req.cpu) })
    }

    fn release(&self, addr: PhysAddr) -> Result<Released, ReleaseError> {
        let cpu = self.platform.current_cpu();
        let (buf, rel, class) = self.pools.release(addr, cpu)?;
        self.cache_or_push(buf, class, cpu);
        Ok(rel)
    }

    #[inline]
    fn release_found(&self, found: &Found, cpu: usize) -> Result<Released, ReleaseError> {
        let (buf, rel, class) = self.pools.release_found(found, cpu)?;
        self.cache_or_push(buf, class, cpu);
        Ok(rel)
    }

    bounce_pools::pool_queries!(pools);

    fn background_pending(&self) -> bool {
        self.background_pending_at(self.platform.now_ns())
    }

    fn run_background(&self) -> BackgroundReport {
        self.run_background_at(self.platform.now_ns())
    }

    /// The pools' audit (index, free stacks, records, counters, committed bytes: every
    /// buffer free, in flight or held outside the pool), then: the held buffers are
    /// exactly the magazines' — as many, none twice, none in flight, each in a magazine
    /// of its own class — and the layer's own invariants hold. Expects no concurrent
    /// map-path activity (the conformance suite audits between operations).
    fn audit(&self) -> Result<AuditReport, AuditError> {
        let a = self.pools.audit()?;
        // The walk holds IRQ-safe locks: allocate the record array first (with room for
        // buffers cached meanwhile) and format messages only after the locks are gone.
        let total: usize = (0..self.layer.class_count()).map(|c| self.layer.cached_count(c)).sum();
        let mut cached: Vec<(PhysAddr, usize)> = Vec::with_capacity(total + 4096);
        for class in 0..self.layer.class_count() {
            let mut bad: Option<(PhysAddr, usize, &'static str)> = None;
            self.layer.for_each_cached(class, |b| {
                let chunk = self.pools.chunk_of(b);
                let addr = chunk.buffer_addr(b.index() as usize);
                if chunk.class() != class {
                    bad.get_or_insert((addr, chunk.class(), "sits in a magazine of another class"));
                }
                if b.index() as usize >= chunk.buffers() || chunk.state(b.index() as usize).in_flight {
                    bad.get_or_insert((addr, chunk.class(), "is in a magazine and in flight"));
                }
                if cached.len() < cached.capacity() {
                    cached.push((addr, chunk.buffer_size()));
                } else {
                    bad.get_or_insert((addr, chunk.class(), "was cached while the audit ran (magazines grew)"));
                }
            });
            if let Some((addr, c, what)) = bad {
                return Err(AuditError(alloc::format!("buffer {addr} of class {c} {what} (walking class {class})")));
            }
        }
        cached.sort_unstable();
        if let Some(w) = cached.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(AuditError(alloc::format!("buffer {} is in two magazines", w[0].0)));
        }
        if cached.len() != a.totals.held {
            return Err(AuditError(alloc::format!(
                "{} buffers are out of their pools and not in flight, but the magazines hold {}",
                a.totals.held,
                cached.len()
            )));
        }
        self.layer.check().map_err(AuditError)?;
        let cached_bytes: usize = cached.iter().map(|c| c.1).sum();
        let t = a.totals;
        Ok(AuditReport {
            live_mappings: t.in_flight,
            used_bytes: t.in_flight_bytes,
            free_bytes: t.free_bytes + cached_bytes,
            owned_bytes: t.owned_bytes,
            quarantined_pages: a.quarantined_pages,
        })
    }
}
