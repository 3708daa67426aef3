//! [`PoolSet`]: the size-classed pools, their address index and the kccd engine that
//! grows and shrinks them.
//!
//! # The engine (kccd)
//! [`PoolSet::run`] is the loop body of the refill thread (the kernel's kthread, the
//! [`ThreadRunner`](crate::ThreadRunner), or a test's [`StepRunner`](crate::StepRunner),
//! all through `Strategy::run_background`):
//!
//! 1. **Shrink.** Chunks whose buffers are all free are stamped the first time a run
//!    sees them so; one that stays free for `idle_ms` is returned when its class keeps at
//!    least its high watermark of free buffers without it: detached from the pool (O(1)),
//!    removed from the index, converted back to private and freed
//!    ([`SharedMemory::free_shared`]). A failed conversion quarantines those pages.
//! 2. **Grow.** While a class has fewer free buffers than its target, the neediest class
//!    (lowest free/target) gets one batch: `chunk_pages` pages allocated and converted
//!    with **one** `set_decrypted` call ([`SharedMemory::alloc_shared`], which enforces
//!    the cap and quarantines on failure), carved into buffers and indexed outside every
//!    lock, then published under the pool lock in O(1). At most `max_batches_per_run`
//!    batches per run, so a runner can stop between runs. A class that failed is retried
//!    after `retry_ms`. When the cap blocks a class below its low watermark, an idle
//!    chunk of a class above its target is returned first to make room.
//!
//! **Demand boost** (`adaptive`, on by default). Watermark refill is probabilistic: a
//! burst faster than the engine's latency empties a class however the watermarks are
//! set. So a class whose own requests found it empty or dipped into its reserve has its
//! target and high watermark doubled at the next run (up to 8-fold), and halved again
//! after `idle_ms` without such pressure: the ready margin follows the observed burst
//! size, and the extra memory is returned once the bursts stop.
//!
//! The map path never converts, never allocates and never blocks: it pops a ready
//! buffer or fails, and wakes the engine (without blocking, once per crossing) when a
//! pop leaves a class below its low watermark.

use alloc::boxed::Box;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bounce_framework::{
    AllocContext, AuditError, BackgroundReport, BootConfig, CmdlineError, GrowError, InitError, Located, PageCount,
    PageRequest, PhysAddr, Platform, PlatformError, PoolStats, RefillStats, ReleaseError, Released, SharedMemory,
    StrategyParams, UsageCounter,
};

use crate::chunk::{Chunk, FreeBuffer};
use crate::class::{ClassSpec, ClassTable, SizeClass, SEED_CLASSES};
use crate::index::ChunkIndex;
use crate::pool::{ClassPool, PoolAudit, PoolCounters};

/// Linux's `MAX_ORDER_NR_PAGES` on x86-64 (order 10): the seed's batch.
pub const DEFAULT_BATCH_PAGES: usize = 1024;
/// The largest batch accepted (1 GiB of 4 KiB pages).
pub const MAX_BATCH_PAGES: usize = 1 << 18;
/// Default idle time before free memory above the high watermark is returned.
pub const DEFAULT_IDLE_MS: u64 = 1000;
/// Default emergency reserve, in percent of each class's target.
pub const DEFAULT_RESERVE_PERCENT: usize = 10;
/// Default pause before retrying a class whose growth failed.
pub const DEFAULT_RETRY_MS: u64 = 10;
/// Default bound on batches per engine run.
pub const DEFAULT_MAX_BATCHES_PER_RUN: usize = 8;
/// The cap's upper default: Linux's largest default swiotlb in a CoCo guest.
pub const DEFAULT_CAP_MAX: usize = 1 << 30;

/// Configuration of a [`PoolSet`]. `Default` is the documented default: the seed's
/// classes, 1024-page batches, a cap of a quarter of RAM (at most 1 GiB), 1 s idle
/// time, a 10 % reserve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// The classes, by strictly increasing size.
    pub classes: Vec<ClassSpec>,
    /// Pages per conversion batch (chunk), slack included; a class whose buffer is
    /// larger gets one buffer per chunk.
    pub batch_pages: usize,
    /// Cap on committed shared memory; `None`: `min(RAM / 4, 1 GiB)`.
    pub cap_bytes: Option<usize>,
    /// How long free memory above a class's high watermark stays before it is returned.
    pub idle_ms: u64,
    /// Emergency reserve of each class, in percent of its target (0..=50).
    pub reserve_percent: usize,
    /// Pool pages must end at or below this address (e.g. 4 GiB for 32-bit devices).
    pub limit: PhysAddr,
    /// Batches one engine run may convert.
    pub max_batches_per_run: usize,
    /// Pause before retrying a class whose growth failed.
    pub retry_ms: u64,
    /// Raise a class's watermarks (up to 8-fold) while its own requests find it empty
    /// or dip into its reserve, and lower them again after `idle_ms` without that.
    pub adaptive: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            classes: SEED_CLASSES.to_vec(),
            batch_pages: DEFAULT_BATCH_PAGES,
            cap_bytes: None,
            idle_ms: DEFAULT_IDLE_MS,
            reserve_percent: DEFAULT_RESERVE_PERCENT,
            limit: PhysAddr(u64::MAX),
            max_batches_per_run: DEFAULT_MAX_BATCHES_PER_RUN,
            retry_ms: DEFAULT_RETRY_MS,
            adaptive: true,
        }
    }
}

impl PoolConfig {
    /// The `swiotlb.<strategy>.*` parameters every strategy built on these pools takes:
    /// `classes=<size>:<target>,...`, `cap=<size>`, `batch=<pages>`, `idle_ms=<ms>`,
    /// `reserve=<percent>`, `limit=<address>`.
    pub const PARAMS: &'static [&'static str] = &["classes", "cap", "batch", "idle_ms", "reserve", "limit"];

    /// Applies `swiotlb=<slots>` (the default cap: the pool size Linux would have used)
    /// and the pool parameters among `params` ([`PoolConfig::PARAMS`]; others are left
    /// to the caller, which checks them against its own list).
    ///
    /// # Errors
    /// [`CmdlineError`] naming the offending token.
    pub fn apply_boot(&mut self, boot: &BootConfig, params: &StrategyParams<'_>) -> Result<(), CmdlineError> {
        if let Some(p) = params.get("classes") {
            self.classes = crate::class::parse_classes(&p.token, &p.value)?;
        }
        if let Some(slots) = boot.swiotlb.nslabs {
            self.cap_bytes = Some(slots * bounce_framework::IO_TLB_SIZE);
        }
        if let Some(cap) = params.size("cap", bounce_framework::PAGE_SIZE as u64, 1 << 46)? {
            self.cap_bytes = Some(cap as usize);
        }
        if let Some(b) = params.number("batch", 1, MAX_BATCH_PAGES as u64)? {
            self.batch_pages = b as usize;
        }
        if let Some(ms) = params.number("idle_ms", 0, 24 * 3600 * 1000)? {
            self.idle_ms = ms;
        }
        if let Some(r) = params.number("reserve", 0, 50)? {
            self.reserve_percent = r as usize;
        }
        if let Some(l) = params.size("limit", 1 << 20, u64::MAX)? {
            self.limit = PhysAddr(l);
        }
        Ok(())
    }
}

/// The default cap for a guest with `ram_bytes` of memory: a quarter of it, at most
/// [`DEFAULT_CAP_MAX`], in whole pages.
pub const fn default_cap(ram_bytes: usize) -> usize {
    let quarter = ram_bytes / 4;
    let cap = if quarter < DEFAULT_CAP_MAX { quarter } else { DEFAULT_CAP_MAX };
    cap & !(bounce_framework::PAGE_SIZE - 1)
}

/// Totals of a [`PoolSet::audit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAudit {
    /// Sums over all classes.
    pub totals: PoolAudit,
    /// Pages quarantined so far.
    pub quarantined_pages: u64,
}

/// Engine activity beyond [`RefillStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Engine runs.
    pub runs: u64,
    /// Batches that failed (allocation, conversion or index).
    pub grow_failures: u64,
    /// Chunks returned early to make room under the cap.
    pub cap_reclaims: u64,
}

/// The size-classed pools, their address index and the refill engine (see the module
/// documentation).
pub struct PoolSet<P: Platform> {
    platform: P,
    table: ClassTable,
    pools: Box<[ClassPool<P::Lock>]>,
    index: ChunkIndex<P::Lock>,
    shared: SharedMemory<P>,
    usage: UsageCounter,
    idle_ns: u64,
    retry_ns: u64,
    limit: PhysAddr,
    max_batches: usize,
    retry_at: Box<[AtomicU64]>,
    adaptive: bool,
    running: AtomicBool,
    grow_batches: AtomicU64,
    shrink_batches: AtomicU64,
    busy_ns: AtomicU64,
    runs: AtomicU64,
    grow_failures: AtomicU64,
    cap_reclaims: AtomicU64,
}

impl<P: Platform> PoolSet<P> {
    /// Pools for `config`, empty: call [`PoolSet::fill_reserves`] (boot) or let the
    /// engine fill them.
    ///
    /// # Errors
    /// [`InitError::Config`] for out-of-range settings.
    pub fn new(platform: P, config: &PoolConfig) -> Result<Self, InitError> {
        if !(1..=MAX_BATCH_PAGES).contains(&config.batch_pages) {
            return Err(InitError::Config(format!(
                "batch of {} pages: must be between 1 and {MAX_BATCH_PAGES}",
                config.batch_pages
            )));
        }
        if config.reserve_percent > 50 {
            return Err(InitError::Config(format!(
                "reserve of {} % of the target: must be at most 50 %",
                config.reserve_percent
            )));
        }
        if config.max_batches_per_run == 0 {
            return Err(InitError::Config("max_batches_per_run must be at least 1".into()));
        }
        let table = ClassTable::new(&config.classes, config.batch_pages, config.reserve_percent)?;
        let cap = config.cap_bytes.unwrap_or_else(|| default_cap(platform.total_ram_bytes()));
        if let Some(c) = table.classes().iter().find(|c| c.chunk_bytes() > cap) {
            return Err(InitError::Config(format!(
                "the cap of {cap} bytes cannot hold one chunk ({} bytes) of the {}-byte class",
                c.chunk_bytes(),
                c.size
            )));
        }
        let pools: Box<[ClassPool<P::Lock>]> =
            table.classes().iter().enumerate().map(|(i, c)| ClassPool::new(i, *c)).collect();
        let retry_at = table.classes().iter().map(|_| AtomicU64::new(0)).collect();
        Ok(Self {
            shared: SharedMemory::new(platform.clone(), cap),
            platform,
            table,
            pools,
            index: ChunkIndex::new(),
            usage: UsageCounter::new(),
            idle_ns: config.idle_ms.saturating_mul(1_000_000),
            retry_ns: config.retry_ms.saturating_mul(1_000_000),
            limit: config.limit,
            max_batches: config.max_batches_per_run,
            retry_at,
            adaptive: config.adaptive,
            running: AtomicBool::new(false),
            grow_batches: AtomicU64::new(0),
            shrink_batches: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            runs: AtomicU64::new(0),
            grow_failures: AtomicU64::new(0),
            cap_reclaims: AtomicU64::new(0),
        })
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The classes.
    pub fn table(&self) -> &ClassTable {
        &self.table
    }

    /// Class `i`.
    pub fn class(&self, i: usize) -> &SizeClass {
        self.table.get(i)
    }

    /// Class `i`'s pool.
    pub fn pool(&self, i: usize) -> &ClassPool<P::Lock> {
        &self.pools[i]
    }

    /// The address index.
    pub fn index(&self) -> &ChunkIndex<P::Lock> {
        &self.index
    }

    /// The shared-memory source (cap, conversion counters).
    pub fn shared(&self) -> &SharedMemory<P> {
        &self.shared
    }

    /// The cap on committed shared memory.
    pub fn cap_bytes(&self) -> usize {
        self.shared.cap_bytes()
    }

    /// The address pool pages stay below (the strategy's `addressing_limit`).
    pub fn limit(&self) -> PhysAddr {
        self.limit
    }

    // ---------------------------------------------------------------- map path

    /// Takes a ready buffer of class `class`. With `dip_reserve` false the class's
    /// emergency reserve is left alone (for requests falling back from a smaller
    /// class). Wakes the engine when the pop leaves the class below its low watermark
    /// (once per crossing).
    ///
    /// # Context
    /// Any context; never sleeps, allocates or converts.
    #[inline]
    pub fn pop(&self, class: usize, dip_reserve: bool) -> Option<FreeBuffer> {
        let p = self.pools[class].pop(dip_reserve)?;
        if p.wake {
            self.platform.wake_refill();
        }
        Some(p.buf)
    }

    /// Gives an unmapped buffer back to its pool.
    ///
    /// # Context
    /// Any context; never sleeps or allocates.
    #[inline]
    pub fn push(&self, buf: FreeBuffer) {
        self.pools[buf.class()].push(buf);
    }

    /// Maps `buf` for `alloc_size` bytes from `orig`, with the data `offset` bytes into
    /// the buffer; returns the bounce address of the data (what `reserve` returns).
    /// Counts the buffer as used.
    ///
    /// # Context
    /// Any context; lock-free, never allocates.
    ///
    /// # Panics
    /// When `offset + alloc_size` exceeds the buffer (a caller bug: class choice
    /// guarantees it fits).
    #[inline]
    pub fn commit(&self, buf: FreeBuffer, orig: PhysAddr, offset: usize, alloc_size: usize) -> PhysAddr {
        assert!(
            offset.checked_add(alloc_size).is_some_and(|e| e <= buf.size()),
            "bounce-refill: {alloc_size} bytes at offset {offset} overflow a {}-byte buffer",
            buf.size()
        );
        self.usage.add(buf.size());
        let FreeBuffer { chunk, index } = buf;
        chunk.commit(index as usize, orig, offset, alloc_size)
    }

    /// Ends the mapping that starts at `addr` and hands its buffer back to the caller
    /// (to [`PoolSet::push`] it, or keep it in a cache).
    ///
    /// # Errors
    /// [`ReleaseError`]: `Foreign` outside every chunk, `NotMapped` for a free buffer or
    /// slack, `NotStart` inside a mapping that starts elsewhere. Nothing changes.
    ///
    /// # Context
    /// Any context; never allocates.
    #[inline]
    pub fn release(&self, addr: PhysAddr) -> Result<(FreeBuffer, Released), ReleaseError> {
        let chunk = self.index.get(addr).ok_or(ReleaseError::Foreign)?;
        let (i, rel) = chunk.release(addr)?;
        let buf = FreeBuffer { chunk, index: i as u32 };
        self.usage.sub(buf.size());
        Ok((buf, rel))
    }

    /// The live mapping containing `addr`.
    ///
    /// # Context
    /// Any context; never allocates.
    #[inline]
    pub fn locate(&self, addr: PhysAddr) -> Option<Located> {
        self.index.with(addr, |c| c.locate(addr)).flatten()
    }

    /// Whether `addr` lies in a chunk of this set (mapped or not, slack included).
    #[inline]
    pub fn owns(&self, addr: PhysAddr) -> bool {
        self.index.contains(addr)
    }

    /// Bytes of buffers in flight and their high-water mark.
    pub fn usage(&self) -> &UsageCounter {
        &self.usage
    }

    // ---------------------------------------------------------------- engine

    /// Converts one batch for `class` and publishes it. Returns the buffers added.
    ///
    /// # Errors
    /// [`GrowError::Cap`] when the cap leaves no room, [`GrowError::Platform`] when the
    /// allocation, the conversion (pages quarantined) or the index insertion failed.
    ///
    /// # Context
    /// Process context; may sleep.
    pub fn grow(&self, class: usize) -> Result<usize, GrowError> {
        let c = self.table.get(class);
        let pages = PageCount(c.chunk_pages);
        let req = PageRequest { pages, context: AllocContext::MaySleep, limit: self.limit };
        let base = self.shared.alloc_shared(req).inspect_err(|_| {
            self.grow_failures.fetch_add(1, Ordering::Relaxed);
        })?;
        // Everything below runs outside the pool lock: records, free stack, index.
        let chunk = Arc::new(Chunk::carve(class, c, base));
        if self.index.insert(&chunk).is_err() {
            self.grow_failures.fetch_add(1, Ordering::Relaxed);
            drop(chunk);
            // Pages that fail to convert back are quarantined inside; report the
            // index failure either way.
            let _ = self.shared.free_shared(base, pages);
            return Err(GrowError::Platform(PlatformError::AllocFailed { pages: pages.get() }));
        }
        self.pools[class].publish(chunk);
        self.grow_batches.fetch_add(1, Ordering::Relaxed);
        Ok(c.chunk_buffers)
    }

    /// Grows `class` until it has at least `ready` free buffers (boot fill).
    ///
    /// # Errors
    /// The first [`GrowError`].
    pub fn fill(&self, class: usize, ready: usize) -> Result<(), GrowError> {
        while self.pools[class].ready() < ready {
            self.grow(class)?;
        }
        Ok(())
    }

    /// Fills every class to its emergency reserve (boot), so maps succeed before the
    /// engine first runs.
    ///
    /// # Errors
    /// The first [`GrowError`].
    pub fn fill_reserves(&self) -> Result<(), GrowError> {
        (0..self.table.len()).try_for_each(|i| self.fill(i, self.table.get(i).reserve))
    }

    /// Returns a detached chunk: out of the index, converted back, freed (or
    /// quarantined when the conversion fails).
    fn retire(&self, chunk: &Arc<Chunk>, report: &mut BackgroundReport) {
        self.index.remove(chunk);
        match self.shared.free_shared(chunk.base(), chunk.pages()) {
            Ok(()) => report.pages_shrunk += chunk.pages().get() as u64,
            Err(e) => self.platform.log(
                bounce_framework::LogLevel::Error,
                format_args!("bounce-refill: returning {} pages at {}: {e}", chunk.pages().get(), chunk.base()),
            ),
        }
        self.shrink_batches.fetch_add(1, Ordering::Relaxed);
    }

    fn wants_growth(&self, i: usize, now: u64) -> bool {
        let c = self.table.get(i);
        self.pools[i].ready() < self.pools[i].effective_target()
            && self.retry_at[i].load(Ordering::Relaxed) <= now
            && self.shared.fits_cap(c.chunk_bytes())
    }

    /// The class to grow next: the lowest free/target ratio among those that want and
    /// can grow.
    fn neediest(&self, now: u64) -> Option<usize> {
        (0..self.table.len())
            .filter(|&i| self.wants_growth(i, now))
            .min_by_key(|&i| (self.pools[i].ready() as u128 * 1_000_000) / self.pools[i].effective_target() as u128)
    }

    /// Under cap pressure: returns one completely free chunk of a class above its
    /// target so an urgent class can grow. Whether one was returned.
    fn reclaim_for(&self, urgent: usize, now: u64, report: &mut BackgroundReport) -> bool {
        for d in (0..self.table.len()).filter(|&d| d != urgent) {
            if let Some(ch) = self.pools[d].take_idle(now, 0, self.pools[d].effective_target()) {
                self.retire(&ch, report);
                self.cap_reclaims.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// One run of the engine at time `now` (nanoseconds on the platform clock, or a
    /// test's virtual clock: idle times are measured in it). See the module
    /// documentation. Concurrent calls return at once while another run is in
    /// progress.
    ///
    /// # Context
    /// Process context; may sleep (conversions).
    pub fn run(&self, now: u64) -> BackgroundReport {
        let mut report = BackgroundReport::default();
        if self.running.swap(true, Ordering::Acquire) {
            return report;
        }
        let t0 = self.platform.now_ns();
        let q0 = self.shared.stats().quarantined_pages;
        self.runs.fetch_add(1, Ordering::Relaxed);
        // Demand boosts, then shrink: idle chunks above the high watermark.
        for pool in &*self.pools {
            if self.adaptive {
                pool.adapt(now, self.idle_ns);
            }
            while let Some(ch) = pool.take_idle(now, self.idle_ns, pool.effective_high()) {
                self.retire(&ch, &mut report);
            }
        }
        // Grow.
        let mut batches = 0;
        loop {
            let Some(i) = self.neediest(now) else {
                // Blocked by the cap: make room for the most urgent class below its
                // low watermark, if another class has idle memory above its target.
                let urgent = (0..self.table.len()).find(|&i| {
                    self.pools[i].ready() < self.pools[i].wake_below()
                        && self.retry_at[i].load(Ordering::Relaxed) <= now
                        && !self.shared.fits_cap(self.table.get(i).chunk_bytes())
                });
                match urgent {
                    Some(u) if self.reclaim_for(u, now, &mut report) => continue,
                    _ => break,
                }
            };
            if batches == self.max_batches {
                report.more = true;
                break;
            }
            batches += 1;
            match self.grow(i) {
                Ok(n) => {
                    report.buffers_added += n as u64;
                    report.pages_grown += self.table.get(i).chunk_pages as u64;
                }
                // Another grower took the room first: re-evaluate.
                Err(GrowError::Cap { .. }) => {}
                Err(e) => {
                    self.retry_at[i].store(now.saturating_add(self.retry_ns).max(1), Ordering::Relaxed);
                    self.platform.log(
                        bounce_framework::LogLevel::Warn,
                        format_args!("bounce-refill: growing the {}-byte class: {e}", self.table.get(i).size),
                    );
                }
            }
        }
        report.pages_quarantined = self.shared.stats().quarantined_pages - q0;
        self.busy_ns.fetch_add(self.platform.now_ns().saturating_sub(t0), Ordering::Relaxed);
        self.running.store(false, Ordering::Release);
        report
    }

    /// Whether [`PoolSet::run`] at `now` has work: a class below its target that may
    /// grow (not waiting to retry, room under the cap), or an idle chunk to return.
    ///
    /// # Context
    /// Any context; takes each pool lock briefly, never allocates.
    pub fn pending(&self, now: u64) -> bool {
        (0..self.table.len()).any(|i| self.wants_growth(i, now))
            || self.pools.iter().any(|p| p.has_idle(now, self.idle_ns, p.effective_high()))
    }

    // ---------------------------------------------------------------- observability

    /// Engine counters in the framework's shape.
    pub fn refill_stats(&self) -> RefillStats {
        RefillStats {
            wakeups: self.pools.iter().map(|p| p.counters().wakeups).sum(),
            grow_batches: self.grow_batches.load(Ordering::Relaxed),
            shrink_batches: self.shrink_batches.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
        }
    }

    /// Engine counters beyond [`RefillStats`].
    pub fn engine_counters(&self) -> EngineCounters {
        EngineCounters {
            runs: self.runs.load(Ordering::Relaxed),
            grow_failures: self.grow_failures.load(Ordering::Relaxed),
            cap_reclaims: self.cap_reclaims.load(Ordering::Relaxed),
        }
    }

    /// Class `i`'s counters.
    pub fn counters(&self, i: usize) -> PoolCounters {
        self.pools[i].counters()
    }

    /// The pool statistics (`PoolStats`): capacity is the buffers' bytes, used the
    /// in-flight buffers' bytes.
    pub fn pool_stats(&self) -> PoolStats {
        let capacity_bytes = self.pools.iter().map(|p| p.counters().capacity * p.class.size).sum();
        PoolStats {
            capacity_bytes,
            used_bytes: self.usage.used(),
            used_hiwater_bytes: self.usage.hiwater(),
            transient_bytes: 0,
            conversions: self.shared.stats(),
            refill: self.refill_stats(),
        }
    }

    /// Walks the index, every pool, every chunk and every buffer record: each buffer is
    /// free, in flight or held out of the pool; counters, committed bytes and used
    /// bytes add up. Expects no concurrent map-path activity.
    ///
    /// # Errors
    /// An [`AuditError`] naming the first inconsistency.
    pub fn audit(&self) -> Result<SetAudit, AuditError> {
        let chunks = self.index.chunks()?;
        let mut totals = PoolAudit::default();
        for (i, pool) in self.pools.iter().enumerate() {
            let mine: Vec<Arc<Chunk>> = chunks.iter().filter(|c| c.class() == i).cloned().collect();
            totals.merge(&pool.audit(&mine)?);
        }
        if chunks.iter().any(|c| c.class() >= self.table.len()) {
            return Err(AuditError("index: a chunk of an unknown class".into()));
        }
        let committed = self.shared.shared_bytes();
        if totals.owned_bytes != committed {
            return Err(AuditError(format!(
                "chunks own {} bytes but {committed} shared bytes are committed",
                totals.owned_bytes
            )));
        }
        if totals.in_flight_bytes != self.usage.used() {
            return Err(AuditError(format!(
                "buffers in flight hold {} bytes but the used counter says {}",
                totals.in_flight_bytes,
                self.usage.used()
            )));
        }
        if committed > self.shared.cap_bytes() {
            return Err(AuditError(format!("{committed} shared bytes exceed the cap of {}", self.shared.cap_bytes())));
        }
        Ok(SetAudit { totals, quarantined_pages: self.shared.stats().quarantined_pages })
    }
}

impl<P: Platform> Drop for PoolSet<P> {
    /// Returns every chunk whose buffers are all free to private memory. Chunks with
    /// buffers in flight stay shared (a device may still use them) and are leaked.
    fn drop(&mut self) {
        let mut report = BackgroundReport::default();
        for pool in &*self.pools {
            while let Some(ch) = pool.take_idle(u64::MAX, 0, 0) {
                self.retire(&ch, &mut report);
            }
        }
    }
}
