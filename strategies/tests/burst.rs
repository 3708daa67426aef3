//! A burst of one size right after a burst of another, for every strategy built on the
//! demand pools, booted through `AnyStrategy::from_boot` with its default preset and
//! the engine idle: the shells the first burst left completely free serve the second
//! on the map path, so a map fails only when no shared memory could hold it, not while
//! another class still holds a free shell it has not yet given back (issue 16's guest
//! boots: a 256 KiB map refused with 8 MiB in flight in 16 MiB of shells), nor while
//! magazine's caches keep buffers for later.

use bounce_framework::conformance::pattern;
use bounce_framework::sim::{
    count_allocations, set_current_cpu, CountingAlloc, PlatformKind, SimConfig, SimDevice, SimGuest,
};
use bounce_framework::{
    BootConfig, Bouncer, BouncerOptions, Device, DmaAddr, DmaAttrs, DmaDirection, FailureReason, MapError, PhysAddr,
    Strategy,
};
use bounce_strategies::{AnyStrategy, StrategyKind, KNOWN_STRATEGIES};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const SMALL: usize = 4096;
const LARGE: usize = 256 << 10;

struct Burst {
    bouncer: Bouncer<SimGuest, AnyStrategy<SimGuest>>,
    dev: SimDevice,
    orig: PhysAddr,
}

impl Burst {
    fn boot(kind: StrategyKind) -> Self {
        set_current_cpu(Some(0));
        let guest = SimGuest::new(SimConfig::new(PlatformKind::Tdx, 128 << 20, 2));
        // A stopped clock: no idle time or trim and reap period passes during a test,
        // however slowly it runs, so only the map path can move buffers around.
        guest.set_clock(0);
        let line = format!("swiotlb.strategy={kind}");
        let boot = BootConfig::parse(&line, KNOWN_STRATEGIES).expect("command line parses");
        let s = AnyStrategy::from_boot(guest.clone(), &boot).unwrap_or_else(|e| panic!("{kind} boots: {e}"));
        let bouncer = Bouncer::new(guest.clone(), s, BouncerOptions::default());
        let dev = SimDevice::new(&guest, Device::new("vda"));
        let orig = guest.alloc_private(LARGE).expect("guest memory");
        guest.write(orig, &pattern(7, LARGE));
        Self { bouncer, dev, orig }
    }

    fn map(&self, size: usize) -> Result<DmaAddr, MapError> {
        self.bouncer.map_single(self.dev.device(), self.orig, size, DmaDirection::ToDevice, DmaAttrs::empty())
    }

    /// Maps `size` bytes until a map fails; the mappings and the error. Every map that
    /// succeeds, the last resorts included, allocates nothing (the failing one may: the
    /// simulated guest's log allocates).
    fn flood(&self, size: usize) -> (Vec<DmaAddr>, MapError) {
        let mut live = Vec::new();
        loop {
            match count_allocations(|| self.map(size)) {
                (Ok(d), 0) => live.push(d),
                (Ok(_), n) => panic!("map {} of {size} bytes allocated {n} times", live.len()),
                (Err(e), _) => return (live, e),
            }
        }
    }

    fn unmap_all(&self, live: Vec<DmaAddr>, size: usize) {
        for d in live {
            self.bouncer.unmap_single(self.dev.device(), d, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        }
    }
}

#[test]
fn shells_one_burst_emptied_serve_the_next_burst_of_another_size_at_once() {
    for kind in [StrategyKind::Dynamic, StrategyKind::Magazine] {
        let t = Burst::boot(kind);
        let s = t.bouncer.strategy();
        let shared = s.stats().conversions.shared_bytes as usize;
        let conversions = s.stats().conversions;
        // 4 KiB maps until nothing is left (the engine never runs), then all unmapped:
        // the shells are free again, held by the classes that served the burst.
        let (small, e) = t.flood(SMALL);
        assert_eq!(e.reason(), FailureReason::Exhausted, "{kind}: {e}");
        assert!(small.len() * SMALL >= shared / 2, "{kind}: {} small maps in {shared} bytes", small.len());
        t.unmap_all(small, SMALL);
        // 256 KiB maps: their own class holds one shell, yet they take the freed ones.
        let (large, e) = t.flood(LARGE);
        assert_eq!(e.reason(), FailureReason::Exhausted, "{kind}: {e}");
        let mapped = large.len() * LARGE;
        assert!(
            mapped >= shared * 3 / 4,
            "{kind}: 256 KiB maps failed with {mapped} bytes mapped in {shared} bytes of shared memory"
        );
        assert_eq!(s.stats().conversions, conversions, "{kind}: a map converted");
        t.unmap_all(large, LARGE);
        s.audit().unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

#[test]
fn magazine_caches_give_their_buffers_back_before_a_map_fails() {
    let t = Burst::boot(StrategyKind::Magazine);
    let AnyStrategy::Magazine(m) = t.bouncer.strategy() else { unreachable!("booted magazine") };
    let (small, _) = t.flood(SMALL);
    t.unmap_all(small, SMALL);
    // The CPU caches kept the last buffers freed, and the engine stocks the depots of
    // the cached classes from the pools: buffers kept for later, spread over shells
    // that are otherwise free.
    for _ in 0..8 {
        m.run_background();
    }
    let classes = m.pools().table().len();
    let depot_full = || (0..classes).map(|c| m.layer().class_stats(c).depot_full).sum::<usize>();
    let cached = || (0..classes).map(|c| m.layer().cached_count(c)).sum::<usize>();
    assert!(depot_full() > 0, "the engine stocked no depot");
    let cpu_cached = (0..classes)
        .flat_map(|c| (0..m.layer().cpu_count()).map(move |cpu| (c, cpu)))
        .map(|(c, cpu)| m.layer().cpu_cached(c, cpu))
        .sum::<usize>();
    assert!(cpu_cached > 0, "the CPU caches hold nothing");
    let shared = m.stats().conversions.shared_bytes as usize;
    // 256 KiB maps until one fails: before it does, the caches give their buffers
    // back and the shells they free are reshaped.
    let (large, e) = t.flood(LARGE);
    assert_eq!(e.reason(), FailureReason::Exhausted, "{e}");
    assert_eq!(cached(), 0, "a map failed while the caches held buffers");
    assert!(m.counters().flushes >= 1 && m.counters().reclaimed >= 1, "{:?}", m.counters());
    let mapped = large.len() * LARGE;
    assert!(mapped >= shared * 3 / 4, "{mapped} bytes mapped in {shared} bytes of shared memory");
    t.unmap_all(large, LARGE);
    m.audit().unwrap();
}
