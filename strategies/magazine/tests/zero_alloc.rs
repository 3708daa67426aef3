//! Once the magazines are warm, map, sync and unmap through the Bouncer make no call to
//! the global allocator and no conversion, and every map is served by the current CPU's
//! own magazines.

use bounce_framework::conformance::pattern;
use bounce_framework::sim::{count_allocations, set_current_cpu, CountingAlloc, PlatformKind, SimConfig, SimGuest};
use bounce_framework::{Bouncer, BouncerOptions, Device, DmaAttrs, DmaDirection, Strategy};
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
    let net = Device::new("virtio-net");
    let nvme = Device::new("nvme0").with_min_align_mask(4095);
    let sizes = [64usize, 512, 1500, 2048, 4000, 9000, 16384, 65536, 200_000];
    let origs: Vec<_> = sizes
        .iter()
        .map(|&n| {
            let a = guest.alloc_private(n + 4096).unwrap() + 0x123;
            guest.write(a, &pattern(n as u64, n));
            a
        })
        .collect();
    let round = |b: &Bouncer<SimGuest, Magazine<SimGuest>>| {
        let mut errors = 0;
        for (i, (&n, &o)) in sizes.iter().zip(&origs).enumerate() {
            let dev = if i % 2 == 0 { &net } else { &nvme };
            match b.map_single(dev, o, n, DmaDirection::Bidirectional, DmaAttrs::empty()) {
                Ok(d) => {
                    b.sync_single_for_cpu(dev, d + (n as u64 / 2), n / 2, DmaDirection::Bidirectional).unwrap();
                    b.sync_single_for_device(dev, d, n, DmaDirection::Bidirectional).unwrap();
                    b.unmap_single(dev, d, n, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
                }
                Err(_) => errors += 1,
            }
        }
        errors
    };
    // Warm every path once (thread-locals, this CPU's magazines).
    assert_eq!(round(&b), 0);
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
    let conv = b.pool_stats().conversions;
    let hw = guest.stats();
    let (errors, allocs) = count_allocations(|| (0..50).map(|_| round(&b)).sum::<u32>());
    assert_eq!(errors, 0);
    assert_eq!(allocs, 0, "the map path called the global allocator {allocs} times");
    assert_eq!(b.pool_stats().conversions, conv, "the map path converted pages");
    let hw2 = guest.stats();
    assert_eq!((hw2.decrypt_calls, hw2.encrypt_calls), (hw.decrypt_calls, hw.encrypt_calls));
    assert_eq!(b.stats().maps, 51 * sizes.len() as u64);
    // Every warm map was a hit in this CPU's own magazines; nothing reached the depot,
    // the pools or another CPU.
    assert_eq!(hits(&b) - hits0, 50 * sizes.len() as u64);
    assert_eq!(slow(&b), slow0, "a warm map or unmap left the CPU's own magazines");
    // The counter itself works.
    let (len, n) = count_allocations(|| std::hint::black_box(vec![1u8; 10]).len());
    assert_eq!(len, 10);
    assert_eq!(n, 2, "one allocation and one free");
    b.strategy().audit().unwrap();
    guest.assert_no_violations();
}
