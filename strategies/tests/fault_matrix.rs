//! The fault-injection matrix: every injected fault against every strategy it applies
//! to, booted through `AnyStrategy::from_boot` on a simulated TDX guest, with the DMA
//! API on top.
//!
//! Each strategy's `TEST_PROFILE` gives its command line and says whether it keeps a
//! fixed pool (legacy: Linux's, converted at boot) or growing pools (dynamic,
//! magazine: size classes grown by the engine up to a cap); the expectations follow
//! that, never the strategy's name, so a new strategy runs here with no line added.
//!
//! | case | fixed pool | growing pools |
//! |---|---|---|
//! | `init_conversion_failure`: a conversion fails while the boot pool is converted | yes | yes |
//! | `boot_page_allocation_failure`: the page allocator fails at boot | retries anywhere, as Linux | clear error |
//! | `refill_conversion_failure`: a conversion fails during a background refill | no refill | yes |
//! | `refill_page_allocation_failure`: the page allocator fails during a refill | no refill | yes |
//! | `shrink_conversion_failure`: conversion back to private fails while idle memory is returned | no shrink (see teardown) | yes |
//! | `teardown_conversion_failure`: conversion back to private fails when the strategy is dropped | yes (its only return path) | yes |
//! | `engine_starved`: demand while the background engine does not run | pool full, no engine | yes |
//! | `engine_delayed`: demand while the engine sits in a slow conversion | no engine | yes |
//! | `over_cap`: demand beyond the shared-memory cap | its fixed pool is its cap | yes |
//!
//! Each case checks, besides its own expectations:
//! - a request that cannot be served fails with a named [`MapError`] variant and is
//!   counted; the original buffer is untouched;
//! - quarantined pages (unknown state after a failed conversion) grow by exactly the
//!   pages of the failed call, both in the framework's count and in the simulated
//!   hardware's page states, and are never reused: every mapping made afterwards lies in
//!   shared pages, never in a quarantined one, and the strategy no longer owns them;
//! - nothing is lost: `audit()` passes, every live mapping's data and original stay
//!   intact, every mapping unmaps and copies back, and after the strategy is dropped
//!   every page it took is back with the page allocator except the quarantined ones;
//! - service resumes once the fault is cleared and the background work has run.
//!
//! The engine is driven on a virtual clock (the guest's, `SimGuest::set_clock`), so back-off and idle
//! rules are exact and nothing sleeps except where a delay is the point of the case.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bounce_dynamic::bounce_pools::{PoolConfig, PoolSet};
use bounce_framework::conformance::pattern;
use bounce_framework::sim::{set_current_cpu, PageState, PlatformKind, SimConfig, SimDevice, SimGuest, SimStats};
use bounce_framework::{
    BackgroundReport, BootConfig, Bouncer, BouncerOptions, Device, DmaAddr, DmaAttrs, DmaDirection, FailureReason,
    GrowError, InitError, MapError, PhysAddr, Platform, PlatformError, PoolShape, Strategy, PAGE_SIZE,
};
use bounce_strategies::{AnyStrategy, StrategyKind, KNOWN_STRATEGIES};

/// Bytes of every mapping: one 8 KiB buffer of the pooled strategies, two legacy slots.
const SIZE: usize = 3000;
/// The pooled strategies' one class: 8 KiB buffers (the smallest largest class allowed),
/// 8 per chunk: 16 pages plus one page of alignment slack.
const CLASS: usize = 8192;
const CHUNK_PAGES: u64 = 17;
/// Legacy pool: 512 slots of 2 KiB = 1 MiB = 256 pages.
const LEGACY_SLOTS: usize = 512;
const LEGACY_PAGES: u64 = (LEGACY_SLOTS * 2048 / PAGE_SIZE) as u64;
/// Pages per conversion call the guest allows, so the legacy pool converts in 4 calls.
const CONVERSION_BATCH: usize = 64;
/// Shared-memory cap of the pooled strategies: 8 chunks.
const CAP: usize = 8 * CHUNK_PAGES as usize * PAGE_SIZE;
/// Originals the test can map at once (allocated up front, so allocation faults hit
/// only the strategy).
const ORIGINALS: usize = 320;

/// The strategy's fault-matrix command line (its `TEST_PROFILE`).
fn cmdline(kind: StrategyKind) -> &'static str {
    AnyStrategy::<SimGuest>::test_profile(kind).fault_matrix
}

/// Whether the strategy keeps Linux's fixed pool (its `TEST_PROFILE`): the cases'
/// expectations differ for fixed and growing pools, never per strategy.
fn fixed(kind: StrategyKind) -> bool {
    AnyStrategy::<SimGuest>::test_profile(kind).pool == PoolShape::Fixed
}

/// Whether `err` is a fixed pool's refusal ("swiotlb buffer is full") of a [`SIZE`]
/// request with all [`LEGACY_SLOTS`] in use.
fn is_pool_full(err: &MapError) -> bool {
    matches!(err, MapError::Exhausted { size: SIZE, detail }
        if detail.fact("total slots") == Some(LEGACY_SLOTS) && detail.fact("used slots") == Some(LEGACY_SLOTS))
}

/// Whether `err` is a growing pool's refusal of a [`SIZE`] request: nothing ready in
/// the [`CLASS`] class.
fn is_no_buffer(err: &MapError) -> bool {
    matches!(err, MapError::Exhausted { size: SIZE, detail } if detail.fact("class bytes") == Some(CLASS))
}

/// A 128 MiB TDX guest with 2 CPUs converting at most [`CONVERSION_BATCH`] pages per call.
fn guest() -> SimGuest {
    let mut cfg = SimConfig::new(PlatformKind::Tdx, 128 << 20, 2);
    cfg.max_conversion_pages = CONVERSION_BATCH;
    SimGuest::new(cfg)
}

fn boot(guest: &SimGuest, kind: StrategyKind) -> Result<AnyStrategy<SimGuest>, InitError> {
    let cfg = BootConfig::parse(cmdline(kind), KNOWN_STRATEGIES).expect("matrix command line parses");
    let s = AnyStrategy::from_boot(guest.clone(), &cfg)?;
    assert_eq!(s.kind(), kind);
    Ok(s)
}

/// Every page of the guest in the unknown (quarantined) state.
fn unknown_pages(g: &SimGuest) -> BTreeSet<PhysAddr> {
    (0..g.config().memory_bytes / PAGE_SIZE)
        .map(|i| g.base() + (i * PAGE_SIZE) as u64)
        .filter(|&a| g.page_state(a) == Some(PageState::Unknown))
        .collect()
}

/// Whether `pages` are `n` consecutive pages (one conversion call's range).
fn one_run(pages: &BTreeSet<PhysAddr>, n: u64) -> bool {
    pages.len() as u64 == n
        && pages.first().zip(pages.last()).is_some_and(|(a, b)| b.0 - a.0 == (n - 1) * PAGE_SIZE as u64)
}

/// The virtual clock's start (the guest's clock is set to it when a rig starts).
const START_NS: u64 = 1_000_000;

/// One live mapping made by the rig.
struct Live {
    dma: DmaAddr,
    orig: PhysAddr,
    seed: u64,
}

/// A strategy booted on a guest, a device, a virtual clock for the engine, the
/// originals, and the quarantine seen so far.
struct Rig {
    kind: StrategyKind,
    guest: SimGuest,
    bouncer: Bouncer<SimGuest, AnyStrategy<SimGuest>>,
    dev: SimDevice,
    now: AtomicU64,
    next_seed: AtomicU64,
    originals: Mutex<Vec<PhysAddr>>,
    originals_base: PhysAddr,
    /// Quarantined pages the rig knows of; no mapping may touch them.
    quarantine: Mutex<BTreeSet<PhysAddr>>,
    /// Unknown pages that existed before this strategy booted (an earlier failed boot).
    unknown_before: u64,
}

impl Rig {
    fn new(kind: StrategyKind) -> Self {
        let g = guest();
        let s = boot(&g, kind).unwrap_or_else(|e| panic!("{kind} does not boot: {e}"));
        Self::on(g, s)
    }

    fn on(guest: SimGuest, strategy: AnyStrategy<SimGuest>) -> Self {
        set_current_cpu(Some(0));
        let kind = strategy.kind();
        let quarantine = unknown_pages(&guest);
        let originals_base = guest.alloc_private(ORIGINALS * PAGE_SIZE).expect("memory for the originals");
        let originals = (0..ORIGINALS).rev().map(|i| originals_base + (i * PAGE_SIZE) as u64).collect();
        let bouncer = Bouncer::new(guest.clone(), strategy, BouncerOptions::default());
        let dev = SimDevice::new(&guest, Device::new("nic"));
        guest.set_clock(START_NS);
        Self {
            kind,
            unknown_before: quarantine.len() as u64,
            guest,
            bouncer,
            dev,
            now: AtomicU64::new(START_NS),
            next_seed: AtomicU64::new(1),
            originals: Mutex::new(originals),
            originals_base,
            quarantine: Mutex::new(quarantine),
        }
    }

    fn s(&self) -> &AnyStrategy<SimGuest> {
        self.bouncer.strategy()
    }

    /// The size-class pools of a growing strategy, for the cases only growing pools
    /// run: the pool family (`bounce_pools`) is what gives them chunks, an engine
    /// to ask and a cap counter.
    #[allow(
        clippy::match_wildcard_for_single_variants,
        reason = "every strategy outside the pool family, today's and future ones"
    )]
    fn pools(&self) -> &PoolSet<SimGuest> {
        match self.s() {
            AnyStrategy::Dynamic(d) => d.pools(),
            AnyStrategy::Magazine(m) => m.pools(),
            s => panic!("{}: the growing-pool cases expect the size-class pools", s.name()),
        }
    }

    /// Pages per chunk of the growing pools' one class ([`CHUNK_PAGES`]).
    fn chunk_pages(&self) -> u64 {
        let c = *self.pools().class(0);
        assert_eq!((c.size, c.chunk_pages as u64), (CLASS, CHUNK_PAGES), "{}: class geometry", self.kind);
        c.chunk_pages as u64
    }

    /// Requests the strategy refused because of its cap (its own counter).
    fn cap_refusals(&self) -> u64 {
        self.pools().request_counters().cap_reached
    }

    /// Moves the virtual clock (the guest's, which every strategy reads) by `ms`.
    fn advance_ms(&self, ms: u64) {
        let now = self.now.fetch_add(ms * 1_000_000, Ordering::SeqCst) + ms * 1_000_000;
        self.guest.set_clock(now);
    }

    fn pending(&self) -> bool {
        self.s().background_pending()
    }

    /// Whether the pools want to grow (or shrink) now: the engine's conversion work,
    /// as opposed to the magazine's stocking, which converts nothing.
    fn wants_refill(&self) -> bool {
        self.pools().pending(self.now.load(Ordering::SeqCst))
    }

    /// Maps until the pools want to grow, letting the magazine's stocking (which moves
    /// buffers without converting) run on the way; the next [`Rig::step`] converts.
    fn demand_refill(&self, live: &mut Vec<Live>) {
        for _ in 0..64 {
            if self.wants_refill() {
                return;
            }
            live.push(self.map().expect("map before the refill"));
            if self.pending() && !self.wants_refill() {
                let rep = self.step();
                assert_eq!(rep.pages_grown, 0, "{}: stocking converted", self.kind);
            }
        }
        panic!("{}: 64 maps and the pools want no refill", self.kind);
    }

    /// One background run at the virtual time.
    fn step(&self) -> BackgroundReport {
        self.s().run_background()
    }

    /// Runs the background work until it has none at the virtual time (bounded).
    fn settle(&self) -> BackgroundReport {
        let mut all = BackgroundReport::default();
        for _ in 0..1000 {
            if !self.pending() {
                return all;
            }
            all.merge(&self.step());
        }
        panic!("{}: background work does not settle", self.kind);
    }

    /// Lets the engine's back-off after a failed batch run out.
    fn past_retry(&self) {
        self.advance_ms(PoolConfig::default().retry_ms);
    }

    /// Lets the magazine's reap and trim periods pass twice (idle caches and depot
    /// magazines go back to the pools), settling after each.
    fn age(&self) -> BackgroundReport {
        let mut all = BackgroundReport::default();
        for _ in 0..2 {
            self.advance_ms(2000);
            all.merge(&self.settle());
        }
        all
    }

    fn quarantined(&self) -> u64 {
        self.bouncer.pool_stats().conversions.quarantined_pages
    }

    /// Re-reads the quarantined pages from the hardware; returns those new since the
    /// last call. Checks the strategy owns none of them.
    fn note_quarantine(&self) -> BTreeSet<PhysAddr> {
        let now = unknown_pages(&self.guest);
        let mut q = self.quarantine.lock().unwrap();
        assert!(q.is_subset(&now), "{}: a quarantined page left the unknown state", self.kind);
        let new: BTreeSet<PhysAddr> = now.difference(&q).copied().collect();
        for &p in &now {
            assert!(!self.s().owns(p), "{}: the strategy still owns quarantined page {p}", self.kind);
        }
        *q = now;
        new
    }

    fn dev_read(&self, dma: DmaAddr) -> Vec<u8> {
        let mut v = vec![0; SIZE];
        self.dev.read(&self.bouncer, dma, &mut v).expect("device read of a live mapping");
        v
    }

    /// Maps a fresh original (`Bidirectional`): on success the bounce buffer lies in
    /// shared pages outside the quarantine and the device sees the original's bytes; on
    /// failure the original is untouched.
    fn map(&self) -> Result<Live, MapError> {
        let seed = self.next_seed.fetch_add(1, Ordering::SeqCst);
        let orig = self.originals.lock().unwrap().pop().expect("the rig has originals left");
        let data = pattern(seed, SIZE);
        self.guest.write(orig, &data);
        match self.bouncer.map_single(self.dev.device(), orig, SIZE, DmaDirection::Bidirectional, DmaAttrs::empty()) {
            Ok(dma) => {
                let phys = self.guest.dma_to_phys(dma);
                assert!(
                    self.guest.range_is(phys, SIZE, PageState::Shared),
                    "{}: mapping at {phys} is not in shared memory",
                    self.kind
                );
                let first = phys.align_down(PAGE_SIZE as u64);
                let last = (phys + (SIZE - 1) as u64).align_down(PAGE_SIZE as u64);
                let q = self.quarantine.lock().unwrap();
                assert!(
                    !q.contains(&first) && !q.contains(&last),
                    "{}: mapping at {phys} reuses a quarantined page",
                    self.kind
                );
                drop(q);
                assert_eq!(self.dev_read(dma), data, "{}: the device does not see the original", self.kind);
                Ok(Live { dma, orig, seed })
            }
            Err(e) => {
                assert_eq!(self.guest.read_vec(orig, SIZE), data, "{}: a failed map changed the original", self.kind);
                self.originals.lock().unwrap().push(orig);
                Err(e)
            }
        }
    }

    /// Maps until the strategy refuses (bounded); returns the refusal.
    fn map_until_error(&self, live: &mut Vec<Live>) -> MapError {
        for _ in 0..ORIGINALS {
            match self.map() {
                Ok(l) => live.push(l),
                Err(e) => return e,
            }
        }
        panic!("{}: {} mappings and no refusal", self.kind, live.len());
    }

    /// The device writes the mapping, unmap copies it back; the original must hold
    /// exactly the device's bytes.
    fn unmap(&self, l: &Live) {
        let &Live { dma, orig, seed } = l;
        assert_eq!(self.dev_read(dma), pattern(seed, SIZE), "{}: bounce data changed while mapped", self.kind);
        let back = pattern(seed | 1 << 40, SIZE);
        self.dev.write(&self.bouncer, dma, &back).expect("device write of a live mapping");
        self.bouncer
            .unmap_single(self.dev.device(), dma, SIZE, DmaDirection::Bidirectional, DmaAttrs::empty())
            .unwrap_or_else(|e| panic!("{}: unmap: {e}", self.kind));
        assert_eq!(self.guest.read_vec(orig, SIZE), back, "{}: unmap did not copy back", self.kind);
        self.originals.lock().unwrap().push(orig);
    }

    /// Audit, device model, and every live mapping's data and original.
    fn check(&self, live: &[Live]) {
        if let Err(e) = self.s().audit() {
            panic!("{}: {e}", self.kind);
        }
        self.guest.assert_no_violations();
        for l in live {
            assert_eq!(self.dev_read(l.dma), pattern(l.seed, SIZE), "{}: a live mapping lost its data", self.kind);
            assert_eq!(self.guest.read_vec(l.orig, SIZE), pattern(l.seed, SIZE), "{}: an original changed", self.kind);
        }
    }

    /// Unmaps everything, checks, drops the strategy and frees the originals: returns
    /// the hardware's counters afterwards and the framework's quarantine count before
    /// the drop. Every page is back except the unknown ones; none is left shared.
    fn teardown(self, live: Vec<Live>) -> (SimStats, u64) {
        self.check(&live);
        for l in live {
            self.unmap(&l);
        }
        self.check(&[]);
        assert_eq!(self.bouncer.stats().inflight_bytes, 0);
        let q = self.quarantined();
        let Self { kind, guest, bouncer, originals_base, .. } = self;
        drop(bouncer);
        guest.free_private(originals_base, ORIGINALS * PAGE_SIZE);
        let s = guest.stats();
        assert_eq!(s.shared_pages, 0, "{kind}: shared pages left after teardown");
        assert_eq!(s.allocated_pages, s.unknown_pages, "{kind}: pages neither returned nor quarantined");
        guest.assert_no_violations();
        (s, q)
    }

    /// [`Rig::teardown`] with no fault at teardown: the unknown pages are exactly those
    /// quarantined before (by this strategy or an earlier boot).
    fn finish(self, live: Vec<Live>) {
        let (kind, before) = (self.kind, self.unknown_before);
        let (s, q) = self.teardown(live);
        assert_eq!(s.unknown_pages, before + q, "{kind}: unknown pages differ from the quarantine count");
    }
}

/// A conversion fails while the boot pool is converted: a clear `InitError` naming the
/// conversion; exactly the failed call's pages are quarantined and every other page is
/// returned. The fault is one-shot: the next boot on the same guest works and never
/// hands out a quarantined page.
fn init_conversion_failure(kind: StrategyKind) {
    let g = guest();
    // Legacy converts its 256 pages in 4 calls of 64: fail the second (the first is
    // converted back and freed). The pooled strategies convert one 16-page chunk (the
    // reserve) at boot: fail it.
    let (nth, pages) = if fixed(kind) { (2, CONVERSION_BATCH as u64) } else { (1, CHUNK_PAGES) };
    g.faults().fail_nth_decrypt(nth);
    let e = boot(&g, kind).expect_err("boot with a failing conversion");
    assert!(
        matches!(&e, InitError::Grow(GrowError::Platform(PlatformError::ConversionFailed { pages: p, target: "shared", .. })) if *p as u64 == pages),
        "{kind}: {e:?}"
    );
    assert!(e.to_string().contains("quarantined"), "{kind}: the message says what happened: {e}");
    let s = g.stats();
    assert_eq!(s.unknown_pages, pages, "{kind}: exactly the failed call's pages are quarantined");
    assert!(one_run(&unknown_pages(&g), pages));
    assert_eq!(s.allocated_pages, pages, "{kind}: every other page went back to the allocator");
    assert_eq!(s.shared_pages, 0);
    g.assert_no_violations();
    let r = Rig::on(g.clone(), boot(&g, kind).expect("boot after the one-shot fault"));
    r.settle();
    let mut live = Vec::new();
    let err = r.map_until_error(&mut live);
    assert_eq!(err.reason(), FailureReason::Exhausted, "{kind}: {err}");
    assert!(!live.is_empty());
    r.finish(live);
}

/// The page allocator fails at boot. Legacy retries anywhere after its attempt below
/// 4 GiB fails (`LowThenAnywhere`) and boots its full pool; at 512 slots it is at Linux's
/// 1 MiB minimum, so Linux's halving does not apply. The pooled strategies refuse to boot
/// with a clear error and nothing allocated, and boot once the fault is gone. With no
/// memory at all, every strategy refuses cleanly.
fn boot_page_allocation_failure(kind: StrategyKind) {
    let g = guest();
    g.faults().fail_nth_alloc(1);
    if fixed(kind) {
        let s = boot(&g, kind).expect("legacy boots after its retry");
        let r = Rig::on(g.clone(), s);
        assert_eq!(r.bouncer.debugfs().io_tlb_nslabs, LEGACY_SLOTS);
        assert_eq!(r.bouncer.pool_stats().conversions.alloc_failures, 1);
        let mut live = Vec::new();
        let err = r.map_until_error(&mut live);
        assert!(
            matches!(&err, MapError::Exhausted { detail, .. } if detail.fact("total slots") == Some(LEGACY_SLOTS)),
            "{err}"
        );
        r.finish(live);
    } else {
        let e = boot(&g, kind).expect_err("boot without pages");
        assert!(matches!(&e, InitError::Grow(GrowError::Platform(PlatformError::AllocFailed { .. }))), "{kind}: {e:?}");
        let s = g.stats();
        assert_eq!((s.allocated_pages, s.shared_pages, s.unknown_pages), (0, 0, 0), "{kind}: a failed boot kept pages");
        let r = Rig::on(g.clone(), boot(&g, kind).expect("boot after the one-shot fault"));
        r.settle();
        let l = r.map().expect("service");
        r.finish(vec![l]);
    }
    let g = guest();
    g.faults().fail_all_alloc(true);
    let e = boot(&g, kind).expect_err("boot with no memory at all");
    assert!(matches!(&e, InitError::Grow(GrowError::Platform(PlatformError::AllocFailed { .. }))), "{kind}: {e:?}");
    let s = g.stats();
    assert_eq!((s.allocated_pages, s.shared_pages, s.unknown_pages), (0, 0, 0), "{kind}: a failed boot kept pages");
    g.assert_no_violations();
}

/// A conversion fails during a background refill: exactly that batch is quarantined,
/// the engine backs off, demand meanwhile gets `Exhausted` (counted), and after the
/// back-off the engine grows again and maps succeed, never on a quarantined page.
fn refill_conversion_failure(kind: StrategyKind) {
    let r = Rig::new(kind);
    r.settle();
    let chunk = r.chunk_pages();
    let mut live = Vec::new();
    r.demand_refill(&mut live);
    let (hw, q) = (r.guest.stats(), r.quarantined());
    r.guest.faults().fail_nth_decrypt(1);
    let rep = r.step();
    assert_eq!(rep.pages_quarantined, chunk, "{kind}: the engine reports the failed batch");
    assert_eq!(rep.pages_grown, 0);
    assert_eq!(r.quarantined(), q + chunk, "{kind}: quarantine grows by the failed batch");
    let hw2 = r.guest.stats();
    assert_eq!(hw2.unknown_pages, hw.unknown_pages + chunk);
    assert_eq!(hw2.allocated_pages, hw.allocated_pages + chunk, "{kind}: only the quarantined batch stays allocated");
    assert_eq!(hw2.shared_pages, hw.shared_pages);
    assert!(one_run(&r.note_quarantine(), chunk));
    // Demand while the class waits to retry.
    let err = r.map_until_error(&mut live);
    assert!(is_no_buffer(&err), "{kind}: {err}");
    assert_eq!(r.bouncer.stats().failures_of(FailureReason::Exhausted), 1);
    r.check(&live);
    // The fault was one-shot: after the back-off the engine grows and service resumes.
    r.past_retry();
    let rep = r.settle();
    assert!(rep.buffers_added > 0 && rep.pages_quarantined == 0, "{kind}: {rep:?}");
    for _ in 0..8 {
        live.push(r.map().expect("service resumes"));
    }
    assert_eq!(r.quarantined(), q + chunk);
    r.finish(live);
}

/// The page allocator fails during a refill: nothing is quarantined or leaked, the
/// failure is counted, demand gets `Exhausted`, and the engine grows after its
/// back-off.
fn refill_page_allocation_failure(kind: StrategyKind) {
    let r = Rig::new(kind);
    r.settle();
    let mut live = Vec::new();
    r.demand_refill(&mut live);
    let (hw, conv) = (r.guest.stats(), r.bouncer.pool_stats().conversions);
    r.guest.faults().fail_nth_alloc(1);
    let rep = r.step();
    assert_eq!((rep.pages_grown, rep.pages_quarantined), (0, 0), "{kind}: {rep:?}");
    let conv2 = r.bouncer.pool_stats().conversions;
    assert_eq!(conv2.alloc_failures, conv.alloc_failures + 1);
    assert_eq!(conv2.decrypt_calls, conv.decrypt_calls, "{kind}: nothing to convert without pages");
    assert_eq!(conv2.shared_bytes, conv.shared_bytes);
    let hw2 = r.guest.stats();
    assert_eq!((hw2.allocated_pages, hw2.unknown_pages), (hw.allocated_pages, hw.unknown_pages));
    let err = r.map_until_error(&mut live);
    assert!(is_no_buffer(&err), "{kind}: {err}");
    assert_eq!(r.bouncer.stats().failures_of(FailureReason::Exhausted), 1);
    r.check(&live);
    r.past_retry();
    assert!(r.settle().buffers_added > 0);
    live.push(r.map().expect("service resumes"));
    r.finish(live);
}

/// Converting idle memory back to private fails: exactly that chunk is quarantined
/// (not freed, not reused), the other idle chunks are returned and freed, and later
/// growth never brings the quarantined pages back.
fn shrink_conversion_failure(kind: StrategyKind) {
    let r = Rig::new(kind);
    r.settle();
    let chunk = r.chunk_pages();
    // Demand grows the pools to several chunks.
    let mut live = Vec::new();
    for _ in 0..24 {
        live.push(r.map().expect("map under the cap"));
        r.settle();
    }
    for l in live.drain(..) {
        r.unmap(&l);
    }
    let (hw, q) = (r.guest.stats(), r.quarantined());
    r.guest.faults().fail_nth_encrypt(1);
    let mut rep = r.settle();
    rep.merge(&r.age());
    assert!(rep.pages_shrunk > 0, "{kind}: idle chunks were returned: {rep:?}");
    assert_eq!(rep.pages_quarantined, chunk, "{kind}: {rep:?}");
    assert_eq!(r.quarantined(), q + chunk);
    let hw2 = r.guest.stats();
    assert_eq!(hw2.unknown_pages, hw.unknown_pages + chunk);
    // Pages returned are freed; the quarantined chunk is not.
    assert_eq!(hw2.allocated_pages + rep.pages_shrunk, hw.allocated_pages + rep.pages_grown, "{kind}: {rep:?}");
    assert_eq!(hw2.shared_pages + rep.pages_shrunk + chunk, hw.shared_pages + rep.pages_grown, "{kind}: {rep:?}");
    assert!(one_run(&r.note_quarantine(), chunk));
    r.check(&[]);
    // Demand again: the pools grow anew, never onto the quarantined pages.
    for _ in 0..24 {
        live.push(r.map().expect("map after the failed shrink"));
        r.settle();
    }
    r.finish(live);
}

/// Converting back to private fails when the strategy is dropped (legacy's only way of
/// returning memory, `swiotlb_exit()`): exactly the failed call's pages stay allocated
/// and quarantined; every other page is returned.
fn teardown_conversion_failure(kind: StrategyKind) {
    let r = Rig::new(kind);
    r.settle();
    let mut live = Vec::new();
    for _ in 0..20 {
        live.push(r.map().expect("map"));
        r.settle();
    }
    let keep = live.split_off(10);
    for l in live {
        r.unmap(&l);
    }
    let before = r.guest.stats().unknown_pages;
    let pages = if fixed(kind) { CONVERSION_BATCH as u64 } else { r.chunk_pages() };
    r.guest.faults().fail_nth_encrypt(1);
    let g = r.guest.clone();
    let (s, q) = r.teardown(keep);
    assert_eq!(q, 0, "{kind}: nothing was quarantined before the drop");
    assert_eq!(s.unknown_pages, before + pages, "{kind}: exactly the failed call's pages are quarantined");
    assert!(one_run(&unknown_pages(&g), pages));
}

/// Demand while the background engine does not run: maps drain what is ready and then
/// fail with a clear, counted `Exhausted` error (legacy: its pool is full); every live
/// mapping keeps its data. Once the engine runs (legacy: once a mapping is unmapped),
/// service resumes with the earlier mappings still live.
fn engine_starved(kind: StrategyKind) {
    let r = Rig::new(kind);
    r.settle();
    let wakeups = r.guest.stats().wakeups;
    let mut live = Vec::new();
    let err = r.map_until_error(&mut live);
    if fixed(kind) {
        assert!(is_pool_full(&err), "{kind}: {err}");
    } else {
        assert!(is_no_buffer(&err), "{kind}: {err}");
        assert!(r.guest.stats().wakeups > wakeups, "{kind}: the map path asked for the engine");
    }
    assert!(r.map().is_err(), "{kind}: still refused while starved");
    assert_eq!(r.bouncer.stats().failures_of(FailureReason::Exhausted), 2);
    r.check(&live);
    r.settle();
    if fixed(kind) {
        assert!(matches!(r.map(), Err(MapError::Exhausted { .. })), "legacy has no engine to refill it");
        r.unmap(&live.pop().expect("live mappings"));
    }
    live.push(r.map().expect("service resumes"));
    r.finish(live);
}

/// Demand while the engine sits in a slow conversion (50 ms per call) on another
/// thread: maps never wait for it; they drain what is ready and then fail with
/// `NoBufferReady` (one engine run grows a class to its target at most, far below the
/// cap, so the refusal is the same whichever thread is faster). The delayed batch still
/// lands, and service resumes.
fn engine_delayed(kind: StrategyKind) {
    let r = Rig::new(kind);
    r.settle();
    let mut live = Vec::new();
    r.demand_refill(&mut live);
    r.guest.faults().delay_conversions(Duration::from_millis(50));
    let err = std::thread::scope(|s| {
        let engine = s.spawn(|| r.step());
        let err = r.map_until_error(&mut live);
        let rep = engine.join().expect("engine thread");
        assert!(rep.buffers_added > 0, "{kind}: the delayed batch lands: {rep:?}");
        err
    });
    assert!(is_no_buffer(&err), "{kind}: {err}");
    assert_eq!(r.bouncer.stats().failures_of(FailureReason::Exhausted), 1);
    r.check(&live);
    r.guest.faults().clear();
    r.settle();
    live.push(r.map().expect("service resumes"));
    r.finish(live);
}

/// Demand beyond the shared-memory cap, with the engine keeping up: the pooled
/// strategies grow to exactly the cap and then refuse with `Cap` (counted by the
/// bouncer and the strategy); shared memory never exceeds the cap. Legacy's fixed pool is
/// its cap: it never grows and refuses with `Exhausted` ("swiotlb buffer is full"). Service resumes after an unmap.
fn over_cap(kind: StrategyKind) {
    let r = Rig::new(kind);
    r.settle();
    let shared0 = r.guest.stats().shared_pages;
    let mut live = Vec::new();
    let err = loop {
        assert!(live.len() < ORIGINALS, "{kind}: no refusal");
        match r.map() {
            Ok(l) => live.push(l),
            Err(e) => break e,
        }
        r.settle();
    };
    // Nothing more can be done at the cap: the engine goes idle instead of reporting
    // work forever (a refill thread would spin).
    r.settle();
    assert!(!r.pending(), "{kind}: background work pending at the cap");
    let stats = r.bouncer.stats();
    if fixed(kind) {
        assert!(
            matches!(&err, MapError::Exhausted { size: SIZE, detail } if detail.fact("total slots") == Some(LEGACY_SLOTS)),
            "{err}"
        );
        assert_eq!(stats.failures_of(FailureReason::Exhausted), 1);
        assert_eq!(r.guest.stats().shared_pages, shared0, "the legacy pool never grows");
        assert_eq!(shared0, LEGACY_PAGES);
    } else {
        assert_eq!(err, MapError::Cap { size: SIZE, cap_bytes: CAP }, "{kind}");
        assert_eq!(stats.failures_of(FailureReason::Cap), 1);
        assert_eq!(stats.failures_of(FailureReason::Exhausted), 0);
        assert_eq!(r.cap_refusals(), 1);
        let conv = r.bouncer.pool_stats().conversions;
        assert_eq!(conv.shared_bytes, CAP as u64, "{kind}: grown to exactly the cap");
        assert!(conv.shared_bytes_peak <= CAP as u64);
        assert_eq!(r.guest.stats().shared_pages * PAGE_SIZE as u64, CAP as u64, "{kind}: the hardware agrees");
    }
    r.check(&live);
    r.unmap(&live.pop().expect("live mappings"));
    r.settle();
    live.push(r.map().expect("service resumes after an unmap"));
    r.finish(live);
}

/// One `#[test]` per case, over every strategy of the registry it applies to
/// (`every`, or only the `growing` pools), judged by the strategy's `TEST_PROFILE`.
macro_rules! matrix {
    ($($case:ident: $which:ident;)*) => {
        $(
            #[test]
            fn $case() {
                for kind in StrategyKind::ALL {
                    if matrix!(@applies $which, kind) {
                        super::$case(kind);
                    }
                }
            }
        )*
    };
    (@applies every, $kind:ident) => { true };
    (@applies growing, $kind:ident) => { !super::fixed($kind) };
}

mod matrix {
    use super::StrategyKind;

    matrix! {
        init_conversion_failure: every;
        boot_page_allocation_failure: every;
        refill_conversion_failure: growing;
        refill_page_allocation_failure: growing;
        shrink_conversion_failure: growing;
        teardown_conversion_failure: every;
        engine_starved: every;
        engine_delayed: growing;
        over_cap: every;
    }
}
