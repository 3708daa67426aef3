//! # bounce-dynamic
//!
//! The dynamic strategy: the cc-swiotlb proposal (SPEC §5) done right. Buffers come in
//! size classes, are converted to shared in batches by the background refill engine
//! (kccd, [`bounce_pools`]) and handed out on the map path by popping a ready buffer;
//! idle memory goes back to private; a cap bounds the total.
//!
//! ## What changed from the seed, and why
//!
//! | seed (RFC, 2023) | here |
//! |---|---|
//! | an `xa_insert` (`GFP_NOWAIT` allocation) on every map | the address index is filled when a chunk is carved; map only flips a per-buffer record |
//! | one LIFO list per class | per-chunk free stacks, partial chunks in an address-ordered tree: use packs into few chunks, so whole chunks can drain and be returned |
//! | never shrinks; unbounded | idle chunks above the high watermark return after `idle_ms`; a hard cap (`swiotlb.dynamic.cap=`) |
//! | failure: "No memory for cc-swiotlb buffer" | an empty class reshapes a blank shell (already shared and indexed) on the map path, then a larger class serves while the engine catches up; then a counted [`MapError::Exhausted`] or [`MapError::Cap`]: never a block, a conversion or an allocation on the map path |
//! | fixed watermarks, ~96 MiB pre-filled | `preset=demand` (default): small class floors, blank shells shared by all classes, memory kept for the recent peak and returned after `idle_ms`; `preset=seed` keeps the seed's policy for A/B |
//! | partial sync copied from the wrong source offset | [`Strategy::locate`] returns `orig + (addr - start)` for any address inside a mapping |
//! | size check ignored the offset inside the buffer | the class must hold `offset + size` |
//! | largest class ignored the alignment offset | the same check for every class; `max_mapping_size` subtracts the worst-case offset |
//! | conversion failures leak silently | the framework's `SharedMemory` quarantines and counts the pages; the pool keeps working |
//!
//! ## Mappings larger than the largest class
//! Rejected with [`MapError::TooLarge`]: [`Strategy::max_mapping_size`] is the largest
//! class minus the device's worst-case `min_align_mask` offset (512 KiB − offset with
//! the default classes, twice Linux's 256 KiB). Serving larger mappings from several
//! contiguous buffers would need a contiguity search over the free lists — the legacy
//! allocator this strategy replaces — and no driver that works with Linux's swiotlb asks
//! for more than 256 KiB (`swiotlb_max_mapping_size`), so a larger class is the simpler
//! answer for whoever needs one (`swiotlb.dynamic.classes=`).
//!
//! ## Boot parameters
//! | parameter | meaning | default |
//! |---|---|---|
//! | `swiotlb.dynamic.preset=demand\|seed` | the policy: `demand` (memory follows demand, below) or the cc-swiotlb seed's fixed classes and watermarks (about 96 MiB, one conversion per chunk), for A/B | `demand` |
//! | `swiotlb.dynamic.classes=<size>:<target>[:<low>[:<high>]],...` | size classes (power-of-two sizes, K/M suffixes, the largest at least 8 KiB so a page maps at any `min_align_mask` offset); under `demand` the target is the class's floor of free buffers | `512:512,1K:256,2K:128,4K:64,8K:32,16K:16,32K:8,64K:4,128K:2,256K:1,512K:1` (`bounce_pools::DEFAULT_CLASSES`) |
//! | `swiotlb.dynamic.cap=<size>` | cap on committed shared memory | `swiotlb=<slots>` × 2 KiB when given, else min(RAM / 4, 1 GiB) |
//! | `swiotlb.dynamic.chunk=<size>` | `demand`: the shell size, every class's chunk (a free shell moves between classes on the map path) | 512 KiB |
//! | `swiotlb.dynamic.stock=<size>` | `demand`: the shared-memory floor (at most a quarter of the cap): what stays shared when idle, as blank shells any class takes on the map path; an eighth of it always waits blank (the last of those only for maps that cannot wait); 0 selects the seed's layout | 16 MiB |
//! | `swiotlb.dynamic.headroom=<percent>` | `demand`: free buffers a class keeps on top of what is out, in % of it (besides its floor) | 0 |
//! | `swiotlb.dynamic.batch=<pages>` | `seed`: pages per conversion batch (chunk) | 1024 (`MAX_ORDER_NR_PAGES`) |
//! | `swiotlb.dynamic.idle_ms=<ms>` | idle time before memory beyond what the recent peak needs is converted back (class chunks go back to the blank shells after a fiftieth of it) | 1000 |
//! | `swiotlb.dynamic.reserve=<percent>` | emergency reserve per class, % of its target (0–50) | `demand`: 0, `seed`: 10 |
//! | `swiotlb.dynamic.limit=<size>` | pool pages must lie below this address | none |
//! | `swiotlb.dynamic.fallback=on\|off` | let a request use a larger class when its own is empty (above that class's reserve first, then its reserve) | on |
//!
//! ## Context
//! `reserve` takes one pool lock (O(log chunks), no allocation); `release` and
//! `release_found` take one pool lock after a lock-free lookup; `find`, `locate` and
//! `owns` take no lock. None sleeps, allocates or converts. `run_background` and `audit` may sleep and allocate.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;

use bounce_framework::{
    AuditError, AuditReport, BackgroundReport, BootConfig, Found, InitError, MapError, PhysAddr, Platform, PoolShape,
    ReleaseError, Released, Request, Reservation, Strategy, TestProfile,
};
use bounce_pools::{Need, PoolConfig, PoolCounters, PoolSet, RequestCounters, SizeClass};

pub use bounce_pools;

/// Configuration of [`Dynamic`]. `Default` is the documented default (see the crate
/// documentation's table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamicConfig {
    /// Classes, batching, cap, idle time, reserve, address limit.
    pub pools: PoolConfig,
    /// Whether a request whose class is empty may use a larger class (above that
    /// class's reserve).
    pub fallback: bool,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        Self { pools: PoolConfig::default(), fallback: true }
    }
}

/// Map-path counters of [`Dynamic`]: the pool set's.
pub type DynamicCounters = RequestCounters;

/// One class as seen from outside: geometry and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassReport {
    /// The class.
    pub class: SizeClass,
    /// Its pool's counters.
    pub counters: PoolCounters,
}

/// The dynamic strategy (see the crate documentation).
pub struct Dynamic<P: Platform> {
    platform: P,
    pools: PoolSet<P>,
    fallback: bool,
}

impl<P: Platform> Dynamic<P> {
    /// The boot name (`swiotlb.strategy=dynamic`).
    pub const NAME: &'static str = "dynamic";
    /// Boot command lines with small pools (1–4 MiB) and idle and period timers of
    /// 0–1 ms, so that exhaustion, growth up to the cap and shrinking are all reachable
    /// within a few hundred operations: the fuzzer's configurations
    /// (`bounce_strategies::AnyStrategy::small_cmdlines`).
    pub const SMALL_CMDLINES: &'static [&'static str] = &[
        "swiotlb.strategy=dynamic swiotlb.dynamic.cap=4M swiotlb.dynamic.classes=512:64,2K:256,4K:128,16K:32,512K:2 \
         swiotlb.dynamic.idle_ms=0 swiotlb.dynamic.batch=64",
        "swiotlb=1024 swiotlb.strategy=dynamic swiotlb.dynamic.reserve=0 swiotlb.dynamic.idle_ms=0 swiotlb.dynamic.batch=32",
        "swiotlb.strategy=dynamic swiotlb.dynamic.cap=2M swiotlb.dynamic.classes=2K:64:8:128,64K:8:1:16 \
         swiotlb.dynamic.fallback=off swiotlb.dynamic.reserve=50 swiotlb.dynamic.idle_ms=0 swiotlb.dynamic.batch=1",
        "swiotlb.strategy=dynamic swiotlb.dynamic.cap=3M swiotlb.dynamic.classes=512:16,4K:64,256K:4 \
         swiotlb.dynamic.idle_ms=0 swiotlb.dynamic.batch=16",
];

    /// What the strategy-generic tests boot and expect: a growing pool. The fault
    /// matrix runs the seed's layout (a chunk per conversion, so its page arithmetic is
    /// exact); the hostile host gets small floors and no blank shells kept (a stock
    /// below one shell), so memory demand no longer needs goes back at once.
    pub const TEST_PROFILE: TestProfile = TestProfile {
        pool: PoolShape::Growing,
        fault_matrix: "swiotlb.strategy=dynamic swiotlb.dynamic.preset=seed swiotlb.dynamic.classes=8K:8 \
                       swiotlb.dynamic.cap=544K swiotlb.dynamic.idle_ms=0 swiotlb.dynamic.reserve=25",
        hostile_host: "swiotlb.strategy=dynamic swiotlb.dynamic.classes=512:64,2K:16,4K:64,16K:16 \
                       swiotlb.dynamic.cap=16M swiotlb.dynamic.stock=4K swiotlb.dynamic.idle_ms=0",
    };
    /// The `swiotlb.dynamic.*` parameters.
    pub const PARAMS: &'static [&'static str] =
        &["preset", "classes", "cap", "batch", "idle_ms", "reserve", "limit", "headroom", "chunk", "stock", "fallback"];

    /// Builds the strategy from the boot command line: `swiotlb.dynamic.*` (see the crate
    /// documentation), and `swiotlb=<slots>` as the default cap.
    ///
    /// # Errors
    /// [`InitError::Cmdline`] naming the offending token for malformed or unknown
    /// parameters; otherwise as [`Dynamic::new`].
    pub fn from_boot(platform: P, boot: &BootConfig) -> Result<Self, InitError> {
        Self::new(platform, Self::config_from_boot(boot)?)
    }

    /// Parses the boot command line into a configuration (what [`Dynamic::from_boot`]
    /// uses).
    ///
    /// # Errors
    /// [`InitError::Cmdline`] naming the offending token.
    pub fn config_from_boot(boot: &BootConfig) -> Result<DynamicConfig, InitError> {
        let params = boot.params_for(Self::NAME);
        params.check_known(Self::PARAMS)?;
        let mut cfg = DynamicConfig::default();
        cfg.pools.apply_boot(boot, &params)?;
        if let Some(f) = params.boolean("fallback")? {
            cfg.fallback = f;
        }
        Ok(cfg)
    }

    /// Builds the strategy and fills every class's emergency reserve (boot context:
    /// allocates and converts, may sleep). The rest of each target is filled by the
    /// engine (`run_background`).
    ///
    /// # Errors
    /// [`InitError::Config`] for settings out of range, [`InitError::Grow`] when the
    /// reserves cannot be converted (cap, memory or conversion failure).
    pub fn new(platform: P, config: DynamicConfig) -> Result<Self, InitError> {
        let DynamicConfig { pools: pool_config, fallback } = config;
        let pools = PoolSet::new(platform.clone(), &pool_config)?;
        pools.fill_reserves()?;
        Ok(Self { platform, pools, fallback })
    }

    /// The pools (classes, index, engine).
    pub fn pools(&self) -> &PoolSet<P> {
        &self.pools
    }

    /// One engine run at `now` on the caller's clock (deterministic tests drive this
    /// with a [`bounce_pools::StepRunner`]'s virtual clock).
    pub fn run_background_at(&self, now: u64) -> BackgroundReport {
        self.pools.run(now)
    }

    /// Whether the engine has work at `now` on the caller's clock.
    pub fn background_pending_at(&self, now: u64) -> bool {
        self.pools.pending(now)
    }

    /// Map-path counters.
    pub fn counters(&self) -> DynamicCounters {
        self.pools.request_counters()
    }

    /// Every class with its counters (allocates: diagnostics).
    pub fn class_reports(&self) -> Vec<ClassReport> {
        (0..self.pools.table().len())
            .map(|i| ClassReport { class: *self.pools.class(i), counters: self.pools.counters(i) })
            .collect()
    }

    /// The class of the buffer holding `addr` (mapped or not), if any.
    pub fn class_of(&self, addr: PhysAddr) -> Option<usize> {
        self.pools.index().chunk_at(addr).map(|c| c.class())
    }
}

impl<P: Platform> Strategy for Dynamic<P> {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn reserve(&self, req: &Request) -> Result<Reservation, MapError> {
        let choice = self.pools.table().choose(req)?;
        // Larger classes are aligned at least as much and hold the request too.
        let buf = self.pools.pop_fitting(choice.class, Need::of(req), self.fallback);
        let Some(buf) = buf else { return Err(self.pools.refuse(req, choice.class)) };
        let addr = self.pools.commit(buf, req.orig, choice.offset, req.alloc_size, req.cpu);
        Ok(Reservation { addr })
    }

    fn release(&self, addr: PhysAddr) -> Result<Released, ReleaseError> {
        let (buf, rel, _) = self.pools.release(addr, self.platform.current_cpu())?;
        self.pools.push(buf);
        Ok(rel)
    }

    #[inline]
    fn release_found(&self, found: &Found, cpu: usize) -> Result<Released, ReleaseError> {
        let (buf, rel, _) = self.pools.release_found(found, cpu)?;
        self.pools.push(buf);
        Ok(rel)
    }

    bounce_pools::pool_queries!(pools);

    fn background_pending(&self) -> bool {
        self.pools.pending(self.platform.now_ns())
    }

    fn run_background(&self) -> BackgroundReport {
        self.pools.run(self.platform.now_ns())
    }

    fn audit(&self) -> Result<AuditReport, AuditError> {
        let a = self.pools.audit()?;
        let t = a.totals;
        if t.held != 0 {
            return Err(AuditError(alloc::format!(
                "{} buffers are out of their pools but not in flight (leaked)",
                t.held
            )));
        }
        Ok(AuditReport {
            live_mappings: t.in_flight,
            used_bytes: t.in_flight_bytes,
            free_bytes: t.free_bytes,
            owned_bytes: t.owned_bytes,
            quarantined_pages: a.quarantined_pages,
        })
    }
}
