//! Once the magazines are warm, map, sync and unmap through the Bouncer make no call to
//! the global allocator and no conversion, every map is served by the current CPU's own
//! magazines, and the only locks taken are the current CPU's own (counted on the
//! simulated platform): no global lock on any warm map, sync or unmap.

use bounce_framework::conformance::{rounds_allocate_nothing, MapRound};
use bounce_framework::sim::{count_locks, set_current_cpu, CountingAlloc, PlatformKind, SimConfig, SimGuest};
use bounce_framework::{Bouncer, BouncerOptions, Strategy};
use bounce_magazine::{Magazine, MagazineConfig};
use bounce_pools::{PoolConfig, StepRunner};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn warm_map_sync_unmap_allocate_nothing_convert_nothing_and_stay_on_the_cpu() {
    set_current_cpu(Some(1));
    let mut cfg = SimConfig::new(PlatformKind::Tdx, 128 << 20, 2);
    cfg.track_copies = true;
    let guest = SimGuest::new(cfg);
    // The default classes under a 64 MiB cap, every class cached (by default classes
    // above 16 KiB go straight to the pools, whose map path the dynamic strategy's
    // zero-allocation test covers): every warm map below must hit this CPU's magazines.
    let mcfg = MagazineConfig {
        pools: PoolConfig { cap_bytes: Some(64 << 20), ..PoolConfig::default() },
        cache_max: Some(usize::MAX),
        ..Default::default()
    };
    let s = Magazine::new(guest.clone(), mcfg).unwrap();
    {
        let mut run = StepRunner::new(|now| s.run_background_at(now));
        run.run_until_idle(1000);
    }
    let b = Bouncer::new(guest.clone(), s, BouncerOptions::default());
    let round = MapRound::new(&guest);
    // Warm every path once (thread-locals, this CPU's magazines).
    assert_eq!(round.run(&b), 0);
    let classes = b.strategy().layer().class_count();
    let hits = |b: &Bouncer<SimGuest, Magazine<SimGuest>>| {
        (0..classes).map(|c| b.strategy().class_stats(c).alloc_hits).sum::<u64>()
    };
    let slow = |b: &Bouncer<SimGuest, Magazine<SimGuest>>| {
        (0..classes)
            .map(|c| {
                let s = b.strategy().class_stats(c);
                s.depot_allocs + s.depot_frees + s.backing_allocs + s.steals + s.flushes
            })
            .sum::<u64>()
    };
    let (hits0, slow0) = (hits(&b), slow(&b));
    rounds_allocate_nothing(&guest, &b, &round, 50);
    // Every warm map was a hit in this CPU's own magazines; nothing reached the depot,
    // the pools or another CPU.
    assert_eq!(hits(&b) - hits0, (50 * round.maps()) as u64);
    assert_eq!(slow(&b), slow0, "a warm map or unmap left the CPU's own magazines");
    // Locks: on each CPU, one acquisition per map and one per unmap (that CPU's magazine
    // lock of the class), none for syncs, and the two CPUs' sets of locks are disjoint:
    // each takes only its own.
    let mut per_cpu = Vec::new();
    for cpu in [1, 0] {
        set_current_cpu(Some(cpu));
        assert_eq!(round.run(&b), 0, "warm-up on CPU {cpu}");
        let (errors, locks) = count_locks(|| (0..20).map(|_| round.run(&b)).sum::<usize>());
        assert_eq!(errors, 0);
        assert_eq!(locks.acquisitions, (2 * 20 * round.maps()) as u64, "CPU {cpu}: {locks:?}");
        assert!(!locks.locks.is_empty() && locks.overflowed == 0);
        per_cpu.push(locks.locks);
    }
    assert!(per_cpu[0].iter().all(|l| !per_cpu[1].contains(l)), "a lock shared by the CPUs: {per_cpu:?}");
    // The counter sees every lock: reading the layer's statistics takes the CPU and
    // depot locks of a class.
    let (_, depot) = count_locks(|| b.strategy().layer().cached_count(0));
    assert!(depot.acquisitions > 0, "count_locks does not see the layer's locks");
    b.strategy().audit().unwrap();
    guest.assert_no_violations();
}
