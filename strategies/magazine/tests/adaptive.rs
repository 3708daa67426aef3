//! The magazine strategy through the Bouncer with its background work driven by the
//! deterministic step runner (virtual clock): cross-CPU unmaps, the fall-back chain on
//! exhaustion, depot trimming, reaping and shrinking, magazine growth under contention.
//!
//! Run with `--nocapture` to see the measured numbers.

mod common;

use std::sync::mpsc;
use std::sync::Arc;

use bounce_framework::conformance::pattern;
use bounce_framework::sim::{set_current_cpu, PlatformKind, SimConfig, SimDevice, SimGuest};
use bounce_framework::{
    Bouncer, BouncerOptions, Device, DmaAddr, DmaAttrs, DmaDirection, MapError, PhysAddr, Platform, Strategy,
};
use bounce_magazine::{ClassStats, Magazine, MagazineConfig, RoundsSetting};
use bounce_pools::{no_buffer, ClassSpec, PoolConfig, StepRunner};
use common::contended::{self, ContendedGuest};

/// One 2 KiB class in 16 KiB chunks (8 buffers, one conversion each), no reserve.
fn cfg(target: usize, cap_pages: usize, rounds: usize, max_rounds: usize) -> MagazineConfig {
    MagazineConfig {
        pools: PoolConfig {
            classes: vec![ClassSpec::new(2048, target)],
            batch_pages: 4,
            cap_bytes: Some(cap_pages * 4096),
            reserve_percent: 0,
            idle_ms: 50,
            ..PoolConfig::seed()
        },
        rounds: RoundsSetting::Uniform(rounds),
        max_rounds: RoundsSetting::Uniform(max_rounds),
        depot: Some(16),
        depot_target: Some(2),
        trim_ms: 100,
        reap_ms: 10_000,
        contention: 3,
        fallback: true,
        cache_max: None,
    }
}

struct T<P: Platform> {
    guest: SimGuest,
    b: Bouncer<P, Magazine<P>>,
    dev: Device,
    orig: PhysAddr,
}

fn guest() -> SimGuest {
    SimGuest::new(SimConfig::new(PlatformKind::Tdx, 64 << 20, 2))
}

fn setup_on<P: Platform>(platform: P, guest: SimGuest, cfg: MagazineConfig) -> T<P> {
    let s = Magazine::new(platform.clone(), cfg).unwrap();
    let b = Bouncer::new(platform, s, BouncerOptions::default());
    let orig = guest.alloc_private(64 << 10).unwrap();
    guest.write(orig, &pattern(1, 64 << 10));
    T { guest, b, dev: Device::new("virtio-net"), orig }
}

fn setup(cfg: MagazineConfig) -> T<SimGuest> {
    let g = guest();
    setup_on(g.clone(), g, cfg)
}

impl<P: Platform> T<P> {
    fn s(&self) -> &Magazine<P> {
        self.b.strategy()
    }
    fn st(&self) -> ClassStats {
        self.s().class_stats(0)
    }
    fn map_on(&self, cpu: usize, size: usize) -> Result<DmaAddr, MapError> {
        set_current_cpu(Some(cpu));
        self.b.map_single(&self.dev, self.orig, size, DmaDirection::ToDevice, DmaAttrs::empty())
    }
    fn unmap_on(&self, cpu: usize, dma: DmaAddr, size: usize) {
        set_current_cpu(Some(cpu));
        self.b.unmap_single(&self.dev, dma, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    }
    fn check(&self) {
        self.s().audit().unwrap();
        self.guest.assert_no_violations();
    }
    fn shared(&self) -> u64 {
        self.b.pool_stats().conversions.shared_bytes
    }
}

fn runner<P: Platform>(t: &T<P>) -> StepRunner<impl FnMut(u64) -> bounce_framework::BackgroundReport + '_> {
    StepRunner::new(move |now| t.s().run_background_at(now))
}

#[test]
fn unmap_on_another_cpu_feeds_the_unmapping_cpu() {
    let t = setup(cfg(64, 256, 4, 4));
    runner(&t).run_until_idle(100);
    let d = t.map_on(0, 1500).unwrap();
    let (c0, c1) = (t.s().layer().cpu_cached(0, 0), t.s().layer().cpu_cached(0, 1));
    t.unmap_on(1, d, 1500);
    assert_eq!(t.s().layer().cpu_cached(0, 0), c0, "CPU 0's magazines were touched by CPU 1's unmap");
    assert_eq!(t.s().layer().cpu_cached(0, 1), c1 + 1, "the buffer joins the unmapping CPU's magazine");
    // CPU 1 gets the same (cache-warm) buffer back from its loaded magazine.
    let hits = t.st().alloc_hits;
    assert_eq!(t.map_on(1, 1000).unwrap(), d);
    assert_eq!(t.st().alloc_hits, hits + 1);
    t.unmap_on(0, d, 1000);
    t.check();
}

/// Producer on CPU 0, consumer on CPU 1 (a NIC's RX refill and completion): full
/// magazines flow from CPU 1 to the depot and back to CPU 0; data is intact throughout.
#[test]
fn cross_cpu_producer_consumer_through_the_depot() {
    let g = guest();
    let t = Arc::new(setup_on(g.clone(), g.clone(), cfg(64, 512, 8, 8)));
    runner(&t).run_until_idle(100);
    let dev = SimDevice::new(&g, Device::new("virtio-net"));
    let n = 3000u64;
    let (tx, rx) = mpsc::sync_channel::<(DmaAddr, PhysAddr, u64)>(16);
    let producer = {
        let (t, g, dev) = (Arc::clone(&t), g.clone(), dev.clone());
        std::thread::spawn(move || {
            set_current_cpu(Some(0));
            for i in 0..n {
                let size = 200 + (i as usize * 37) % 1800;
                let orig = g.alloc_private(size).unwrap();
                g.write(orig, &pattern(i, size));
                let dma = loop {
                    if let Ok(d) =
                        t.b.map_single(dev.device(), orig, size, DmaDirection::Bidirectional, DmaAttrs::empty())
                    {
                        break d;
                    }
                    // The consumer is behind: let the engine catch up.
                    t.b.run_background();
                    std::thread::yield_now();
                };
                tx.send((dma, orig, i)).unwrap();
            }
        })
    };
    set_current_cpu(Some(1));
    for _ in 0..n {
        let (dma, orig, i) = rx.recv().unwrap();
        let size = 200 + (i as usize * 37) % 1800;
        let mut seen = vec![0; size];
        dev.read(&t.b, dma, &mut seen).unwrap();
        assert_eq!(seen, pattern(i, size), "device sees wrong data for mapping {i}");
        dev.write(&t.b, dma, &pattern(i + 1, size)).unwrap();
        t.b.unmap_single(dev.device(), dma, size, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
        assert_eq!(g.read_vec(orig, size), pattern(i + 1, size));
        g.free_private(orig, size);
    }
    producer.join().unwrap();
    let s = t.st();
    println!(
        "producer/consumer, {n} maps on CPU 0 and unmaps on CPU 1, M = 8: {} depot allocs, {} depot frees, \
         {} backing batches, {} flushes, {} alloc hits, {} free hits",
        s.depot_allocs, s.depot_frees, s.backing_allocs, s.flushes, s.alloc_hits, s.free_hits
    );
    assert!(s.depot_frees >= n / 8 / 2, "CPU 1's full magazines did not reach the depot: {s:?}");
    assert!(s.depot_allocs >= n / 8 / 2, "CPU 0 did not take full magazines from the depot: {s:?}");
    assert_eq!(t.b.stats().inflight_bytes, 0);
    t.check();
}

#[test]
fn exhaustion_falls_back_to_depot_pool_other_cpus_then_a_clear_error() {
    // 32 buffers under the cap (4 chunks of 8); target 24; M = 4; depot stocked with 2.
    let t = setup(cfg(24, 16, 4, 4));
    let mut run = runner(&t);
    run.run_until_idle(100);
    assert_eq!((t.st().depot_full, t.st().depot_cached), (2, 8));
    assert_eq!(t.s().pools().pool(0).ready(), 24);
    // CPU 1 keeps 4 buffers in its magazines.
    let a = t.map_on(1, 1500).unwrap();
    let b = t.map_on(1, 1500).unwrap();
    t.unmap_on(1, a, 1500);
    t.unmap_on(1, b, 1500);
    assert_eq!(t.s().layer().cpu_cached(0, 1), 4);
    // CPU 0 drains everything, step by step.
    let base = t.st();
    let wakes = t.guest.stats().wakeups;
    let mut live = Vec::new();
    let mut sources = Vec::new();
    let err = loop {
        let before = t.st();
        match t.map_on(0, 1500) {
            Ok(d) => {
                live.push(d);
                let after = t.st();
                sources.push(if after.depot_allocs > before.depot_allocs {
                    'D'
                } else if after.backing_allocs > before.backing_allocs {
                    'B'
                } else if after.steals > before.steals {
                    'S'
                } else {
                    assert!(after.alloc_hits > before.alloc_hits);
                    'L'
                });
            }
            Err(e) => break e,
        }
        assert!(live.len() <= 32, "more buffers than exist");
    };
    let seq: String = sources.iter().collect();
    println!("exhaustion on CPU 0 (D depot, L own magazine, B pool batch, S stolen): {seq} then `{err}`");
    // The depot's last magazine, its rounds, then pool batches of M/2 = 2, then CPU 1's 4.
    assert_eq!(seq, format!("DLLL{}SSSS", "BL".repeat(12)));
    assert_eq!(err, MapError::Cap { size: 1500, cap_bytes: 16 * 4096 });
    assert_eq!(err.to_string(), "shared memory cap of 65536 bytes reached; 1500 bytes cannot be mapped");
    let s = t.st();
    assert_eq!(s.depot_allocs - base.depot_allocs, 1);
    assert_eq!(s.backing_allocs - base.backing_allocs, 12);
    assert_eq!((s.steals - base.steals, s.misses - base.misses), (4, 1));
    assert!(t.guest.stats().wakeups > wakes, "the engine was not woken");
    // The error changed nothing.
    assert_eq!(t.b.pool_stats().used_bytes, 32 * 2048);
    t.check();
    // Unmapping restores service.
    for d in live.drain(..) {
        t.unmap_on(0, d, 1500);
    }
    let d = t.map_on(0, 1500).unwrap();
    t.unmap_on(0, d, 1500);
    t.check();
}

#[test]
fn exhausted_below_the_cap_is_no_buffer_ready_until_the_engine_runs() {
    let t = setup(cfg(8, 256, 4, 4));
    let mut run = runner(&t);
    run.run_until_idle(100);
    let mut live = Vec::new();
    let err = loop {
        match t.map_on(0, 2048) {
            Ok(d) => live.push(d),
            Err(e) => break e,
        }
        assert!(live.len() < 1000);
    };
    assert_eq!(err, no_buffer(2048, 2048));
    assert!(err.to_string().contains("refill pending"), "{err}");
    assert!(t.s().background_pending_at(run.now()));
    run.run_until_idle(100);
    live.push(t.map_on(0, 2048).expect("the engine refilled the class"));
    for d in live {
        t.unmap_on(1, d, 2048);
    }
    t.check();
}

#[test]
fn trimming_returns_the_depot_to_its_bound_one_magazine_per_period() {
    let t = setup(cfg(64, 256, 4, 4));
    let mut run = runner(&t);
    run.run_until_idle(100);
    // 48 maps on CPU 0, their unmaps on CPU 1: CPU 1's full magazines pile up in the
    // depot.
    let live: Vec<_> = (0..48).map(|_| t.map_on(0, 1500).unwrap()).collect();
    for d in live {
        t.unmap_on(1, d, 1500);
    }
    let full0 = t.st().depot_full;
    assert!(full0 > 2 + 4, "the depot holds {full0} full magazines");
    // No period elapsed: nothing trimmed.
    run.step();
    assert_eq!(t.st().depot_full, full0);
    let mut trace = vec![full0];
    for _ in 0..full0 + 3 {
        run.advance_ms(100);
        run.step();
        trace.push(t.st().depot_full);
    }
    println!("depot full magazines every 100 ms trim period: {trace:?}");
    let want: Vec<usize> = (0..trace.len()).map(|i| full0.saturating_sub(i).max(2)).collect();
    assert_eq!(trace, want, "one magazine per period down to the target of 2");
    assert_eq!(t.st().trimmed_magazines, (full0 - 2) as u64);
    assert!(!t.s().layer().trim_pending());
    t.check();
}

#[test]
fn idle_caches_are_reaped_and_the_engine_shrinks_them() {
    let mut c = cfg(16, 512, 32, 32);
    c.depot = Some(4);
    c.reap_ms = 200;
    let t = setup(c);
    let mut run = runner(&t);
    run.run_until_idle(100);
    // A burst of 160 mappings on CPU 0 (the engine keeps up), then all unmapped there.
    let mut live = Vec::new();
    while live.len() < 160 {
        match t.map_on(0, 2048) {
            Ok(d) => live.push(d),
            Err(_) => {
                run.run_until_idle(100);
            }
        }
    }
    for d in live {
        t.unmap_on(0, d, 2048);
    }
    let s0 = t.shared();
    let cached0 = t.s().layer().cached_count(0);
    // Memory above the high watermark that is completely free goes back after idle_ms,
    // but chunks holding cached buffers cannot.
    run.advance_ms(60);
    run.run_until_idle(100);
    run.advance_ms(60);
    run.run_until_idle(100);
    let s1 = t.shared();
    let cached1 = t.s().layer().cached_count(0);
    assert!(cached1 > 0);
    // Two reap periods: the first closes CPU 0's busy interval, the second reaps its
    // idle cache and the depot magazines nobody used.
    let mut reaped = 0;
    for _ in 0..2 {
        run.advance_ms(200);
        run.step();
        reaped = t.st().reaped_buffers;
    }
    assert_eq!(t.s().layer().cached_count(0), 0, "idle magazines were not reaped");
    run.advance_ms(60);
    run.run_until_idle(100);
    run.advance_ms(60);
    run.run_until_idle(100);
    let s2 = t.shared();
    println!(
        "reaping: shared {} KiB after the burst ({cached0} buffers cached), {} KiB after idle shrink with \
         {cached1} cached, {} KiB after reaping {reaped} buffers and shrinking",
        s0 >> 10,
        s1 >> 10,
        s2 >> 10
    );
    assert!(s2 < s1, "reaping let the engine shrink nothing ({s1} -> {s2})");
    assert!(s2 <= (16 * 2048 + 3 * 16384) as u64, "more than the target plus a chunk or so is left: {s2}");
    assert_eq!(t.b.pool_stats().used_bytes, 0);
    t.check();
}

/// Ping-pong of `n` maps on CPU 0 whose unmaps run on CPU 1, in batches of 32; returns
/// the depot exchanges it caused.
fn ping_pong<P: Platform>(t: &T<P>, n: usize) -> u64 {
    let before = t.st();
    let mut done = 0;
    while done < n {
        let live: Vec<_> = (0..32).map(|_| t.map_on(0, 1500).unwrap()).collect();
        for d in live {
            t.unmap_on(1, d, 1500);
        }
        done += 32;
    }
    let after = t.st();
    (after.depot_allocs - before.depot_allocs) + (after.depot_frees - before.depot_frees)
}

#[test]
fn depot_contention_doubles_the_magazine_size() {
    let g = guest();
    let mut c = cfg(256, 1024, 2, 16);
    c.reap_ms = 100;
    c.depot = Some(64);
    let t = setup_on(ContendedGuest(g.clone()), g, c);
    let mut run = StepRunner::new(|now| t.s().run_background_at(now));
    run.run_until_idle(100);
    let ex_small = ping_pong(&t, 1024);
    // No contention: a reap period leaves the size alone.
    run.advance_ms(100);
    run.step();
    assert_eq!(t.st().rounds, 2);
    let mut sizes = vec![2];
    for _ in 0..4 {
        contended::contend(3);
        ping_pong(&t, 64);
        assert_eq!(contended::pending(), 0, "the map path did not meet the injected contention");
        run.advance_ms(100);
        run.step();
        sizes.push(t.st().rounds);
    }
    assert_eq!(sizes, [2, 4, 8, 16, 16], "doubling per contended period, capped at max_rounds");
    assert_eq!(t.st().grows, 3);
    assert!(t.st().contention >= 12);
    let ex_large = ping_pong(&t, 1024);
    println!(
        "contention growth: magazine size {sizes:?}; depot exchanges per 1024 cross-CPU map/unmap pairs: \
         {ex_small} at M = 2, {ex_large} at M = 16"
    );
    assert!(ex_large * 4 <= ex_small, "larger magazines did not cut depot traffic: {ex_small} -> {ex_large}");
    t.check();
}
