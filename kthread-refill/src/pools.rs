//! [`PoolSet`]: the size-classed pools, their address index and the kccd engine that
//! grows and shrinks them.
//!
//! # Two layouts
//! - **Shells** (the `demand` preset, any configuration with a stock): every class
//!   that fits one grows and shrinks in shells of `chunk_bytes` (512 KiB). A shell
//!   whose buffers are all free goes back to a list of *blank shells* (still shared and
//!   indexed, with their records), and a class that runs empty reshapes one **on the
//!   map path** ([`PoolSet::pop`]): no allocation, no conversion. The blank shells are
//!   one reserve for every class's fluctuations; when none is left, a request that no
//!   larger class can serve either reshapes a completely free shell another class still
//!   holds ([`PoolSet::pop_reclaimed`]). Shells are built by the engine from
//!   the [`Stock`] (converted, uncarved pages), which converts blocks with one call
//!   each and returns pages only within the block they came from.
//! - **Batches** (the `seed` preset, no stock): a chunk is one conversion batch of its
//!   class, converted back when it is returned.
//!
//! # The engine (kccd)
//! [`PoolSet::run`] and its helpers live in the `engine` submodule (`pools/engine.rs`); see
//! there for growth, shrinking, blank shells and the demand window.

use alloc::boxed::Box;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use bounce_framework::IrqMutex;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use intrusive_collections::LinkedList;

use bounce_framework::{
    AllocContext, AuditError, BackgroundReport, BootConfig, CmdlineError, Detail, Found, GrowError, InitError, Located,
    MapError, PageCount, PageRequest, PerCpuUsage, PhysAddr, Platform, PlatformError, PoolStats, RefillStats,
    ReleaseError, Released, Request, SharedMemory, StrategyParams, PAGE_SIZE,
};

use crate::adapters::EmptyAdapter;
use crate::chunk::{Chunk, FreeBuffer, BLANK};
use crate::class::{ChunkShape, ClassSpec, ClassTable, SizeClass, DEFAULT_CLASSES, MAX_BUFFER_ALIGN, SEED_CLASSES};
use crate::index::ChunkIndex;
use crate::pool::{ClassPool, PoolAudit, PoolCounters};
use crate::stock::Stock;

mod engine;

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
/// Default headroom of the demand policy, in percent of a class's buffers out.
pub const DEFAULT_HEADROOM_PERCENT: usize = 0;
/// Default shell size: every class's chunk under the demand policy (its growth and
/// shrink step).
pub const DEFAULT_CHUNK_BYTES: usize = 512 << 10;
/// Default shared-memory floor of the demand policy (32 shells of 512 KiB): the room the
/// issue's memory bound leaves for a boot floor that absorbs the first burst.
pub const DEFAULT_STOCK_BYTES: usize = 16 << 20;
/// With shells, a completely free class chunk goes back to the blank shells after
/// `idle_ms / CHUNK_IDLE_DIVISOR` (20 ms by default): that costs no conversion, and it
/// lets each class's capacity follow what it holds now rather than its own peak, which
/// matters because the classes' peaks do not coincide. Measured on `mixed`
/// (`bounce compare -w mixed`, 2 threads, two runs each): a tenth of `idle_ms` peaked at
/// 36.9–37.8 MiB shared, a fiftieth at 34.2–36.3 MiB, for 22 MiB in flight.
pub const CHUNK_IDLE_DIVISOR: u64 = 50;
/// Blank shells kept under load (whatever the classes hold): the floor divided by this,
/// at least one (2 MiB of the default 16 MiB). A quarter kept 4 MiB idle and put
/// magazine over the `mixed` memory bound (39.8 MiB for 22.3 MiB in flight, limit
/// 38.3 MiB); an eighth kept every workload free of failures with storage maps that may
/// wait, a sixteenth only raised the conversion calls (29–37 against 18–22 on `mixed`).
pub const BLANK_MIN_DIVISOR: usize = 8;

/// A named set of pool defaults (`swiotlb.<strategy>.preset=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// The measured default: [`DEFAULT_CLASSES`] with their floors, demand-driven
    /// watermarks, 512 KiB shells, a 16 MiB floor of shells any class can take.
    Demand,
    /// The cc-swiotlb seed (SPEC §5): [`SEED_CLASSES`] with fixed watermarks (about
    /// 96 MiB), one conversion batch per chunk, a 10 % reserve, the demand boost.
    Seed,
}

impl Preset {
    /// Every preset, by boot name.
    pub const ALL: [(&'static str, Preset); 2] = [("demand", Preset::Demand), ("seed", Preset::Seed)];

    /// The pool configuration of this preset.
    pub fn config(self) -> PoolConfig {
        match self {
            Preset::Demand => PoolConfig::default(),
            Preset::Seed => PoolConfig::seed(),
        }
    }
}

/// Configuration of a [`PoolSet`]. `Default` is the documented default ([`Preset::Demand`]):
/// [`DEFAULT_CLASSES`] with their floors, demand-driven watermarks, 512 KiB shells,
/// a 16 MiB shared-memory floor, a cap of a quarter of RAM (at most 1 GiB), 1 s idle time, no
/// reserve. [`PoolConfig::seed`] is the seed's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// The classes, by strictly increasing size.
    pub classes: Vec<ClassSpec>,
    /// Without a stock (the seed's layout): pages per conversion batch (chunk), slack
    /// included; a class whose buffer is larger gets one buffer per chunk. With a stock
    /// the engine converts a block for every blank shell it is missing at once.
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
    /// or dip into its reserve, and lower them again after `idle_ms` without that
    /// (fixed watermarks only; the demand policy supersedes it).
    pub adaptive: bool,
    /// Demand-driven watermarks: each class keeps its floor (the configured target), or
    /// `headroom_percent` of its buffers out if more, free; the blank shells absorb
    /// the rest.
    pub demand: bool,
    /// The demand policy's proportional headroom, in percent of a class's buffers out.
    pub headroom_percent: usize,
    /// The shell size (with a stock): the chunk of every class that fits one; ignored
    /// without a stock.
    pub chunk_bytes: usize,
    /// The shared-memory floor, in bytes (at most a quarter of the cap): class chunks
    /// and blank shells together stay at least this large, so the first burst after
    /// boot or after an idle period finds shells any class can take on the map path; a
    /// quarter of it always waits in blank shells. 0: no stock and no shells, the
    /// seed's layout (a chunk is one conversion batch and is converted back when
    /// returned).
    pub stock_bytes: usize,
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
            adaptive: false,
            demand: true,
            headroom_percent: DEFAULT_HEADROOM_PERCENT,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            stock_bytes: DEFAULT_STOCK_BYTES,
        }
        .with_classes(DEFAULT_CLASSES.to_vec())
    }
}

impl PoolConfig {
    /// The `swiotlb.<strategy>.*` parameters every strategy built on these pools takes:
    /// `preset=demand|seed`, `classes=<size>:<target>,...`, `cap=<size>`,
    /// `batch=<pages>`, `idle_ms=<ms>`, `reserve=<percent>`, `limit=<address>`,
    /// `headroom=<percent>`, `chunk=<size>`, `stock=<size>`.
    pub const PARAMS: &'static [&'static str] =
        &["preset", "classes", "cap", "batch", "idle_ms", "reserve", "limit", "headroom", "chunk", "stock"];

    /// The seed's policy on a small scale, for the conformance suite and other tests
    /// on a 128 MiB guest: the class sizes 512 B, 2, 4 and 16 KiB and 512 KiB with
    /// targets of 64, 256, 256, 64 and 8 buffers (about 6.5 MiB), under a 24 MiB cap, so
    /// the pools stay between 1 and 32 MiB and exhaustion is reachable.
    pub fn small_seed() -> Self {
        Self {
            classes: alloc::vec![
                ClassSpec::new(512, 64),
                ClassSpec::new(2048, 256),
                ClassSpec::new(4096, 256),
                ClassSpec::new(16384, 64),
                ClassSpec::new(512 << 10, 8),
            ],
            cap_bytes: Some(24 << 20),
            ..Self::seed()
        }
    }

    /// The cc-swiotlb seed's policy ([`Preset::Seed`]): [`SEED_CLASSES`] with fixed
    /// watermarks, a chunk per conversion batch and no stock, a 10 % reserve, the
    /// demand boost.
    pub fn seed() -> Self {
        Self {
            classes: SEED_CLASSES.to_vec(),
            reserve_percent: DEFAULT_RESERVE_PERCENT,
            adaptive: true,
            demand: false,
            stock_bytes: 0,
            ..Self::default()
        }
    }

    fn with_classes(mut self, classes: Vec<ClassSpec>) -> Self {
        self.classes = classes;
        self
    }

    /// The chunk layout this configuration gives its classes.
    pub fn shape(&self) -> ChunkShape {
        if self.stock_bytes == 0 {
            ChunkShape::Batch { batch_pages: self.batch_pages }
        } else {
            ChunkShape::Carved { chunk_bytes: self.chunk_bytes }
        }
    }

    /// The class table of this configuration.
    ///
    /// # Errors
    /// [`InitError::Config`] for a bad class list.
    pub fn table(&self) -> Result<ClassTable, InitError> {
        ClassTable::with_shape(&self.classes, self.shape(), self.reserve_percent)
    }

    /// Applies `swiotlb=<slots>` (the default cap: the pool size Linux would have used)
    /// and the pool parameters among `params` ([`PoolConfig::PARAMS`]; others are left
    /// to the caller, which checks them against its own list).
    ///
    /// # Errors
    /// [`CmdlineError`] naming the offending token.
    pub fn apply_boot(&mut self, boot: &BootConfig, params: &StrategyParams<'_>) -> Result<(), CmdlineError> {
        if let Some(p) = params.get("preset") {
            let Some((_, preset)) = Preset::ALL.iter().find(|(n, _)| *n == p.value) else {
                return Err(CmdlineError::OutOfRange {
                    token: p.token.clone(),
                    reason: format!("unknown preset `{}` (known: demand, seed)", p.value),
                });
            };
            *self = preset.config();
        }
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
        if let Some(h) = params.number("headroom", 0, 400)? {
            self.headroom_percent = h as usize;
        }
        if let Some(c) = params.size("chunk", bounce_framework::PAGE_SIZE as u64, 64 << 20)? {
            self.chunk_bytes = c as usize;
        }
        if let Some(c) = params.size("stock", 0, 1 << 40)? {
            self.stock_bytes = (c as usize).next_multiple_of(bounce_framework::PAGE_SIZE);
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

/// The error of a size-classed pool with no free buffer of `class_size` bytes for a
/// request of `size` bytes: [`MapError::Exhausted`] with the class in its detail.
pub const fn no_buffer(size: usize, class_size: usize) -> MapError {
    MapError::Exhausted {
        size,
        detail: Detail::new("no shared buffer ready for {} bytes in the {}-byte class (reserve empty, refill pending)")
            .with("size", size)
            .with("class bytes", class_size),
    }
}

/// Map requests the pools could not serve from their own class, for every strategy
/// built on a [`PoolSet`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounters {
    /// Requests served by a larger class because their own was empty.
    pub fallbacks: u64,
    /// Requests served by a completely free shell taken from another class, when their
    /// own class, the blank shells and the larger classes had nothing
    /// ([`PoolSet::pop_reclaimed`]).
    pub reclaimed: u64,
    /// Requests refused with [`MapError::Exhausted`].
    pub no_buffer: u64,
    /// Requests refused with [`MapError::Cap`].
    pub cap_reached: u64,
}

/// How deep a pop may dig for a buffer: who asks decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Stocking a cache (a magazine): only buffers above the class's emergency reserve,
    /// no blank shell.
    Stock,
    /// A map that may wait (`DMA_ATTR_MAY_BLOCK`): above the reserve, and a blank shell
    /// only while more than the few kept for atomic maps remain.
    Waitable,
    /// A map that cannot wait: the reserve and any blank shell.
    Atomic,
}

impl Need {
    /// The need of a map request.
    pub const fn of(req: &bounce_framework::Request) -> Self {
        if req.may_block {
            Self::Waitable
        } else {
            Self::Atomic
        }
    }
}

/// Totals of a [`PoolSet::audit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAudit {
    /// Sums over all classes.
    pub totals: PoolAudit,
    /// Converted bytes held by no class: blank shells and the stock.
    pub stock_bytes: usize,
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
    /// Bytes of buffers in flight, per CPU.
    usage: PerCpuUsage,
    idle_ns: u64,
    /// How long a completely free chunk above its class's high watermark stays before
    /// it is returned: the idle time, or a fiftieth of it when chunks go back to blank
    /// (no conversion: the stock converts back only after the whole idle time).
    chunk_idle_ns: u64,
    retry_ns: u64,
    limit: PhysAddr,
    max_batches: usize,
    retry_at: Box<[AtomicU64]>,
    retry_stock: AtomicU64,
    adaptive: bool,
    demand: bool,
    headroom_pct: usize,
    stock: Stock<P::Lock>,
    /// Pages the stock keeps; 0: no stock (the seed's layout).
    stock_keep: usize,
    /// Blank shells: indexed, completely free chunks of `shell_pages` pages that belong
    /// to no class; the map path reshapes one for a class that ran empty.
    blanks: IrqMutex<P::Lock, LinkedList<EmptyAdapter>>,
    blank_count: AtomicUsize,
    /// Pages per shell (0: no shells).
    shell_pages: usize,
    /// Records per shell (buffers of the smallest class that fits one).
    shell_capacity: usize,
    /// The shared-memory floor, in shells: what the set keeps shared at least (class
    /// chunks and blank shells together), so the first burst after boot or after an idle
    /// period finds memory any class can take.
    floor_shells: usize,
    /// Blank shells kept whatever the classes hold: room for fluctuations.
    blank_min: usize,
    /// Shells reshaped by the map path.
    adopted: AtomicU64,
    /// The demand window of carved pages (all classes): `[current, previous]` bucket
    /// peaks and the current bucket's start (engine context only).
    carved_peak: [AtomicUsize; 2],
    carved_bucket: AtomicU64,
    /// Carved pages a steady load is held to need (see [`PoolSet::held_peak_after`]).
    held_peak: AtomicUsize,
    /// Serializes engine work: [`PoolSet::run`] and the boot fill ([`PoolSet::grow`]).
    running: AtomicBool,
    grow_batches: AtomicU64,
    shrink_batches: AtomicU64,
    busy_ns: AtomicU64,
    runs: AtomicU64,
    grow_failures: AtomicU64,
    cap_reclaims: AtomicU64,
    /// Maps served by a larger class ([`PoolSet::note_fallback`]).
    fallbacks: AtomicU64,
    /// Maps served by another class's free shell ([`PoolSet::pop_reclaimed`]).
    reclaimed: AtomicU64,
    /// Maps refused as exhausted ([`PoolSet::refuse`]).
    refused_exhausted: AtomicU64,
    /// Maps refused at the cap.
    refused_cap: AtomicU64,
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
        if config.demand && config.headroom_percent > 400 {
            return Err(InitError::Config(format!("headroom of {} %: must be at most 400 %", config.headroom_percent)));
        }
        let table = config.table()?;
        let cap = config.cap_bytes.unwrap_or_else(|| default_cap(platform.total_ram_bytes()));
        if let Some(c) = table.classes().iter().find(|c| c.chunk_bytes() > cap) {
            return Err(InitError::Config(format!(
                "the cap of {cap} bytes cannot hold one chunk ({} bytes) of the {}-byte class",
                c.chunk_bytes(),
                c.size
            )));
        }
        let pools: Box<[ClassPool<P::Lock>]> =
            table.classes().iter().enumerate().map(|(i, c)| ClassPool::new(i, *c, config.demand)).collect();
        // The stock never holds more than a quarter of the cap (it is room for
        // fluctuations, not a pool): a small cap gets a small stock, not an error.
        let stock_keep = if config.stock_bytes == 0 { 0 } else { (config.stock_bytes.min(cap / 4) / PAGE_SIZE).max(1) };
        // Shells: one chunk size for every class that fits one, so a free chunk can move
        // between classes (on the map path) without allocating or converting.
        let (shell_pages, shell_capacity) = if stock_keep == 0 {
            (0, 0)
        } else {
            let u = config.chunk_bytes.next_multiple_of(PAGE_SIZE);
            let smallest = table.classes().iter().map(|c| c.size).min().unwrap_or(u);
            (u / PAGE_SIZE, (u / smallest).max(1))
        };
        let retry_at = table.classes().iter().map(|_| AtomicU64::new(0)).collect();
        // Record slots: per record capacity, as many chunks of that capacity as the cap
        // holds (records are recycled by capacity, so this bounds them).
        let mut shapes: Vec<(usize, usize)> = Vec::new();
        for c in table.classes() {
            let shape = if shell_pages != 0 && c.chunk_pages == shell_pages {
                (shell_capacity, shell_pages * PAGE_SIZE)
            } else {
                (c.chunk_buffers, c.chunk_bytes())
            };
            match shapes.iter_mut().find(|s| s.0 == shape.0) {
                Some(s) => s.1 = s.1.min(shape.1),
                None => shapes.push(shape),
            }
        }
        if shell_pages != 0 && !shapes.iter().any(|s| s.0 == shell_capacity) {
            shapes.push((shell_capacity, shell_pages * PAGE_SIZE));
        }
        let record_slots: usize = shapes.iter().map(|&(_, bytes)| cap / bytes.max(1) + 1).sum();
        let cpus = platform.cpu_count();
        Ok(Self {
            shared: SharedMemory::new(platform.clone(), cap),
            platform,
            table,
            pools,
            index: ChunkIndex::new(record_slots),
            usage: PerCpuUsage::new(cpus),
            idle_ns: config.idle_ms.saturating_mul(1_000_000),
            chunk_idle_ns: if stock_keep > 0 && config.demand {
                config.idle_ms.saturating_mul(1_000_000 / CHUNK_IDLE_DIVISOR)
            } else {
                config.idle_ms.saturating_mul(1_000_000)
            },
            retry_ns: config.retry_ms.saturating_mul(1_000_000),
            limit: config.limit,
            max_batches: config.max_batches_per_run,
            retry_at,
            retry_stock: AtomicU64::new(0),
            adaptive: config.adaptive,
            demand: config.demand,
            headroom_pct: config.headroom_percent,
            stock: Stock::new(),
            stock_keep,
            blanks: IrqMutex::new(LinkedList::new(EmptyAdapter::new())),
            blank_count: AtomicUsize::new(0),
            shell_pages,
            shell_capacity,
            // At most a quarter of the cap waits in blank shells.
            floor_shells: stock_keep
                .checked_div(shell_pages)
                .map_or(0, |n| n.min(cap / 4 / (shell_pages * PAGE_SIZE).max(1))),
            blank_min: stock_keep
                .checked_div(shell_pages)
                .map_or(0, |n| (n.min(cap / 4 / (shell_pages * PAGE_SIZE).max(1)) / BLANK_MIN_DIVISOR).max(1)),
            adopted: AtomicU64::new(0),
            carved_peak: [AtomicUsize::new(0), AtomicUsize::new(0)],
            carved_bucket: AtomicU64::new(0),
            held_peak: AtomicUsize::new(0),
            running: AtomicBool::new(false),
            grow_batches: AtomicU64::new(0),
            shrink_batches: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            runs: AtomicU64::new(0),
            grow_failures: AtomicU64::new(0),
            cap_reclaims: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            refused_exhausted: AtomicU64::new(0),
            refused_cap: AtomicU64::new(0),
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

    /// The stock of converted, uncarved pages.
    pub fn stock(&self) -> &Stock<P::Lock> {
        &self.stock
    }

    /// Pages the stock keeps (0: no stock).
    pub fn stock_keep_pages(&self) -> usize {
        self.stock_keep
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

    /// Takes a ready buffer of class `class` for `need` (how deep the pop may dig, see
    /// [`Need`]). Wakes the engine when the pop leaves the class below its low
    /// watermark (once per crossing), and when a map's own class is empty.
    ///
    /// # Context
    /// Any context; never sleeps, allocates or converts.
    #[inline]
    pub fn pop(&self, class: usize, need: Need) -> Option<FreeBuffer> {
        let p = match self.pools[class].pop(need == Need::Atomic) {
            Some(p) => p,
            // The class's own request found it empty: reshape a blank shell for it, or
            // wake the engine (the request may still be served by a larger class, but
            // this class needs memory). A request that may wait leaves the last blank
            // shells to atomic ones.
            None if need != Need::Stock => {
                let spare = need == Need::Atomic || self.blank_shells() > self.blank_protected();
                if let Some(p) = spare.then(|| self.adopt(class)).flatten() {
                    p
                } else {
                    self.platform.wake_refill();
                    return None;
                }
            }
            None => return None,
        };
        if p.wake {
            self.platform.wake_refill();
        }
        Some(p.buf)
    }

    /// Blank shells only atomic maps may reshape: a quarter of the floor's minimum
    /// (at least one), so maps that can wait never take the memory that maps which
    /// cannot are left with while the engine converts more.
    fn blank_protected(&self) -> usize {
        self.blank_min.div_ceil(4)
    }

    /// The error for a request of class `class` that found no free buffer anywhere (its
    /// class, blank shells, larger classes): [`MapError::Cap`] when the cap stops the
    /// class from growing, else [`MapError::Exhausted`] (see [`no_buffer`]); counted in
    /// [`PoolSet::request_counters`]. The engine was woken by the failed pop.
    ///
    /// # Context
    /// Any context; never sleeps or allocates.
    pub fn refuse(&self, req: &Request, class: usize) -> MapError {
        let c = self.table.get(class);
        if self.shared.fits_cap(c.chunk_bytes()) {
            self.refused_exhausted.fetch_add(1, Ordering::Relaxed);
            no_buffer(req.size, c.size)
        } else {
            self.refused_cap.fetch_add(1, Ordering::Relaxed);
            MapError::Cap { size: req.size, cap_bytes: self.cap_bytes() }
        }
    }

    /// Counts a map that a larger class served because its own had nothing free.
    ///
    /// # Context
    /// Any context.
    #[inline]
    pub fn note_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// What became of the maps the pools could not serve from their own class.
    pub fn request_counters(&self) -> RequestCounters {
        RequestCounters {
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            reclaimed: self.reclaimed.load(Ordering::Relaxed),
            no_buffer: self.refused_exhausted.load(Ordering::Relaxed),
            cap_reached: self.refused_cap.load(Ordering::Relaxed),
        }
    }

    /// Whether class `i`'s chunks are shells.
    #[inline]
    fn shellable(&self, i: usize) -> bool {
        self.shell_pages != 0 && self.table.get(i).chunk_pages == self.shell_pages
    }

    /// Blank shells ready now.
    pub fn blank_shells(&self) -> usize {
        self.blank_count.load(Ordering::Relaxed)
    }

    /// Shells the map path reshaped for a class that ran empty.
    pub fn adopted_shells(&self) -> u64 {
        self.adopted.load(Ordering::Relaxed)
    }

    fn take_blank(&self) -> Option<Arc<Chunk>> {
        let mut b = self.blanks.lock();
        let shell = b.pop_back()?;
        self.blank_count.fetch_sub(1, Ordering::Relaxed);
        drop(b);
        Some(shell)
    }

    fn put_blank(&self, shell: Arc<Chunk>, since: u64) {
        shell.set_empty_since(since.max(1));
        self.blanks.lock().push_back(shell);
        self.blank_count.fetch_add(1, Ordering::Relaxed);
    }

    /// The map path's last resort before a larger class: a blank shell reshaped for
    /// `class` and published to its pool, then popped. No allocation, no conversion:
    /// the shell is already shared, indexed and has its records.
    fn adopt(&self, class: usize) -> Option<crate::pool::Popped> {
        if !self.shellable(class) {
            return None;
        }
        let shell = self.take_blank()?;
        shell.reshape(class, self.table.get(class));
        self.pools[class].publish(shell);
        self.adopted.fetch_add(1, Ordering::Relaxed);
        if self.blank_shells() < self.blank_target() / 2 + 1 {
            self.platform.wake_refill();
        }
        self.pools[class].pop(true)
    }

    /// Takes a free buffer of a class larger than `class` for a request whose own class
    /// is empty: first above each larger class's emergency reserve, smallest first,
    /// then (for [`Need::Atomic`] only) from the reserves themselves. Larger classes are
    /// aligned at least as much, so any of them holds the request. For an atomic map,
    /// `None` only when no larger class has a free buffer at all.
    ///
    /// # Context
    /// Any context; never sleeps, allocates or converts.
    pub fn pop_larger(&self, class: usize, need: Need) -> Option<FreeBuffer> {
        let larger = class + 1..self.table.len();
        let pop = |c: usize, dip: bool| {
            let p = self.pools[c].pop_for(dip, false)?;
            if p.wake {
                self.platform.wake_refill();
            }
            Some(p.buf)
        };
        larger.clone().find_map(|c| pop(c, false)).or_else(|| {
            if need == Need::Atomic {
                larger.into_iter().find_map(|c| pop(c, true))
            } else {
                None
            }
        })
    }

    /// A buffer for a map request of class `class`, wherever the pools have one that
    /// fits, in the order every strategy on these pools asks: the class itself (and a
    /// blank shell, [`PoolSet::pop`]); then, with `larger`, a larger class
    /// ([`PoolSet::pop_larger`], counted as a fallback); then a completely free shell of
    /// another class ([`PoolSet::pop_reclaimed`]). `None`: the caller refuses
    /// ([`PoolSet::refuse`]).
    ///
    /// # Context
    /// Any context; never sleeps, allocates or converts.
    pub fn pop_fitting(&self, class: usize, need: Need, larger: bool) -> Option<FreeBuffer> {
        self.pop(class, need)
            .or_else(|| {
                let b = if larger { self.pop_larger(class, need) } else { None };
                if b.is_some() {
                    self.note_fallback();
                }
                b
            })
            .or_else(|| self.pop_reclaimed(class, need))
    }

    /// The map path's last resort, for a request that its own class, the blank shells
    /// and the larger classes could not serve: a completely free shell of another
    /// class, reshaped for `class` and published to its pool, then popped. Without it
    /// the shells that other classes emptied moments ago stay theirs until the engine
    /// finds them idle (a fiftieth of `idle_ms`), and a burst of one size fails while
    /// the set holds shared memory enough for it (seen in the Linux guest: a 256 KiB map
    /// refused with 8 MiB in flight in 16 MiB of shells).
    ///
    /// A donor keeps its target (its floor of free buffers): taking a shell below it
    /// would only move the shortage to the donor and send the engine to restore the
    /// donor first. Measured where maps outrun the engine (`bounce compare --atomic
    /// -w mixed`, dynamic, 7 runs each, failed maps): median 4018 (1097–10620) when
    /// atomic maps took shells below the floor, 2109 (815–7916) with the floor kept,
    /// 2086 (175–6583) without this function. The engine is woken to restore the blank
    /// shells. Counted in [`RequestCounters::reclaimed`]. `None` for [`Need::Stock`] and
    /// for classes that are not shells (the seed's layout).
    ///
    /// # Context
    /// Any context; never sleeps, allocates or converts (the shell is already shared,
    /// indexed and has its records). One pool lock at a time.
    pub fn pop_reclaimed(&self, class: usize, need: Need) -> Option<FreeBuffer> {
        if need == Need::Stock || !self.shellable(class) {
            return None;
        }
        let shell = (0..self.table.len())
            .filter(|&c| c != class && self.shellable(c))
            .find_map(|c| self.pools[c].take_empty(self.pools[c].effective_target()))?;
        shell.blank();
        shell.reshape(class, self.table.get(class));
        self.pools[class].publish(shell);
        self.reclaimed.fetch_add(1, Ordering::Relaxed);
        self.platform.wake_refill();
        self.pools[class].pop(true).map(|p| p.buf)
    }

    /// The chunk record a buffer belongs to.
    #[inline]
    pub fn chunk_of(&self, buf: &FreeBuffer) -> &Arc<Chunk> {
        self.index.record(buf.slot)
    }

    /// A buffer's first byte.
    pub fn buffer_addr(&self, buf: &FreeBuffer) -> PhysAddr {
        self.chunk_of(buf).buffer_addr(buf.index as usize)
    }

    /// A buffer's class index.
    #[inline]
    pub fn buffer_class(&self, buf: &FreeBuffer) -> usize {
        self.chunk_of(buf).class()
    }

    /// Gives an unmapped buffer back to its pool.
    ///
    /// # Context
    /// Any context; never sleeps or allocates.
    #[inline]
    #[expect(clippy::needless_pass_by_value, reason = "the buffer's ownership ends here")]
    pub fn push(&self, buf: FreeBuffer) {
        let chunk = self.index.record(buf.slot);
        self.pools[chunk.class()].push(chunk, buf.index);
    }

    /// Maps `buf` for `alloc_size` bytes from `orig`, with the data `offset` bytes into
    /// the buffer, on `cpu`; returns the bounce address of the data (what `reserve`
    /// returns). Counts the buffer as used (on `cpu`'s counter).
    ///
    /// # Context
    /// Any context; lock-free, never allocates.
    ///
    /// # Panics
    /// When `offset + alloc_size` exceeds the buffer (a caller bug: class choice
    /// guarantees it fits).
    #[inline]
    #[expect(clippy::needless_pass_by_value, reason = "the buffer's ownership ends here")]
    pub fn commit(&self, buf: FreeBuffer, orig: PhysAddr, offset: usize, alloc_size: usize, cpu: usize) -> PhysAddr {
        let chunk = self.index.record(buf.slot);
        let size = chunk.buffer_size();
        assert!(
            offset.checked_add(alloc_size).is_some_and(|e| e <= size),
            "bounce-pools: {alloc_size} bytes at offset {offset} overflow a {size}-byte buffer"
        );
        self.usage.add(cpu, size);
        chunk.commit(buf.index as usize, orig, offset, alloc_size)
    }

    /// The live mapping containing `addr`, with a handle for
    /// [`PoolSet::release_found`]: the one lookup of an unmap or a sync.
    ///
    /// # Errors
    /// [`ReleaseError::Foreign`] outside every chunk, [`ReleaseError::NotMapped`] for a
    /// free buffer or slack.
    ///
    /// # Context
    /// Any context; lock-free (no lock, no shared write), never allocates.
    #[inline]
    pub fn find(&self, addr: PhysAddr) -> Result<Found, ReleaseError> {
        self.index.find(addr)
    }

    /// Ends the mapping [`PoolSet::find`] found (at its start) on `cpu`, with no second
    /// lookup, and hands its buffer back to the caller (to [`PoolSet::push`] it, or keep
    /// it in a cache) with what the mapping was and the buffer's class.
    ///
    /// # Errors
    /// [`ReleaseError::NotMapped`] when the mapping was released since it was found (a
    /// racing unmap of the same address won). Nothing changes.
    ///
    /// # Context
    /// Any context; lock-free, never allocates.
    #[inline]
    pub fn release_found(&self, found: &Found, cpu: usize) -> Result<(FreeBuffer, Released, usize), ReleaseError> {
        let (chunk, i, seq) = self.index.resolve(found);
        let rel = chunk.release_buffer(i, seq)?;
        self.usage.sub(cpu, chunk.buffer_size());
        Ok((FreeBuffer { slot: chunk.slot(), index: i }, rel, chunk.class()))
    }

    /// Ends the mapping that starts at `addr` ([`PoolSet::find`], then
    /// [`PoolSet::release_found`]).
    ///
    /// # Errors
    /// [`ReleaseError`]: `Foreign` outside every chunk, `NotMapped` for a free buffer or
    /// slack, `NotStart` inside a mapping that starts elsewhere. Nothing changes.
    ///
    /// # Context
    /// Any context; never allocates.
    pub fn release(&self, addr: PhysAddr, cpu: usize) -> Result<(FreeBuffer, Released, usize), ReleaseError> {
        let found = self.find(addr)?;
        if found.loc.start != addr {
            return Err(ReleaseError::NotStart { start: found.loc.start });
        }
        self.release_found(&found, cpu)
    }

    /// The live mapping containing `addr`.
    ///
    /// # Context
    /// Any context; lock-free, never allocates.
    #[inline]
    pub fn locate(&self, addr: PhysAddr) -> Option<Located> {
        self.index.locate(addr)
    }

    /// Whether `addr` lies in a chunk of this set (mapped or not, slack included).
    #[inline]
    pub fn owns(&self, addr: PhysAddr) -> bool {
        self.index.contains(addr)
    }

    /// Bytes of buffers in flight and their high-water mark.
    pub fn usage(&self) -> &PerCpuUsage {
        &self.usage
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

    /// The pool statistics (`PoolStats`): capacity is the bytes of the classes' buffers
    /// and of the blank shells, used the in-flight buffers' bytes.
    pub fn pool_stats(&self) -> PoolStats {
        // Blank shells count: the map path hands them out to any class that runs empty.
        let capacity_bytes = self.pools.iter().map(|p| p.counters().capacity * p.class.size).sum::<usize>()
            + self.blank_shells() * self.shell_pages * PAGE_SIZE;
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
        if chunks.iter().any(|c| c.class() >= self.table.len() && c.class() != BLANK) {
            return Err(AuditError("index: a chunk of an unknown class".into()));
        }
        let blanks: Vec<&Arc<Chunk>> = chunks.iter().filter(|c| c.class() == BLANK).collect();
        if let Some(b) = blanks.iter().find(|c| !c.is_shell() || c.buffers() != 0 || c.free_count() != 0) {
            return Err(AuditError(format!("index: a blank chunk with buffers or not a shell: {b:?}")));
        }
        if blanks.len() != self.blank_shells() || blanks.len() != self.blanks.lock().iter().count() {
            return Err(AuditError(format!(
                "{} blank shells are indexed but the blank list counts {}",
                blanks.len(),
                self.blank_shells()
            )));
        }
        let blank_bytes: usize = blanks.iter().map(|c| c.pages().bytes()).sum();
        let committed = self.shared.shared_bytes();
        let stock = self.stock.check().map_err(|e| AuditError(e.into()))?;
        if totals.owned_bytes + blank_bytes + stock.free_pages * PAGE_SIZE != committed {
            return Err(AuditError(format!(
                "chunks own {} bytes, blank shells {blank_bytes} and the stock {} but {committed} shared bytes are \
                 committed",
                totals.owned_bytes,
                stock.free_pages * PAGE_SIZE
            )));
        }
        if self.stock_keep > 0 && stock.live_pages * PAGE_SIZE != committed {
            return Err(AuditError(format!(
                "the stock's blocks hold {} live bytes but {committed} shared bytes are committed",
                stock.live_pages * PAGE_SIZE
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
        Ok(SetAudit {
            totals,
            stock_bytes: stock.free_pages * PAGE_SIZE + blank_bytes,
            quarantined_pages: self.shared.stats().quarantined_pages,
        })
    }
}

impl<P: Platform> Drop for PoolSet<P> {
    /// Returns every chunk whose buffers are all free to private memory. Chunks with
    /// buffers in flight stay shared (a device may still use them) and are leaked.
    fn drop(&mut self) {
        for pool in &*self.pools {
            while let Some(ch) = pool.take_idle(u64::MAX, 0, 0) {
                self.retire(&ch);
            }
        }
        while let Some(shell) = self.take_blank() {
            let (base, pages) = (shell.base(), shell.pages().get());
            self.index.remove(&shell);
            self.stock.give(base, pages, 0);
        }
        let _ = self.stock.shrink(&self.shared, 0, u64::MAX, 0);
    }
}
