//! The strategy with its engine driven by the deterministic step runner: watermarks,
//! batching, shrinking, failures, reserve and fallback, through the Bouncer.

mod common;

use bounce_dynamic::{Dynamic, DynamicConfig};
use bounce_framework::conformance::pattern;
use bounce_framework::sim::{PageState, PlatformKind, SimConfig, SimDevice, SimGuest};
use bounce_framework::{
    Bouncer, BouncerOptions, Device, DmaAddr, DmaAttrs, DmaDirection, FailureReason, MapError, PhysAddr, Platform,
    Strategy, PAGE_SIZE,
};
use bounce_pools::{no_buffer, ClassSpec, PoolConfig, StepRunner};

struct T {
    guest: SimGuest,
    b: Bouncer<SimGuest, Dynamic<SimGuest>>,
    dev: SimDevice,
    orig: PhysAddr,
}

/// A 64 MiB TDX guest; classes 2 KiB × `t2k` and 16 KiB × `t16k` with no reserve unless
/// given.
fn setup(t2k: usize, t16k: usize, reserve: usize, idle_ms: u64) -> T {
    let guest = SimGuest::new(SimConfig::new(PlatformKind::Tdx, 64 << 20, 2));
    let cfg = DynamicConfig {
        pools: PoolConfig {
            classes: vec![ClassSpec::new(2048, t2k), ClassSpec::new(16384, t16k)],
            reserve_percent: reserve,
            idle_ms,
            cap_bytes: Some(16 << 20),
            ..PoolConfig::seed()
        },
        ..DynamicConfig::default()
    };
    let s = Dynamic::new(guest.clone(), cfg).unwrap();
    let b = Bouncer::new(guest.clone(), s, BouncerOptions::default());
    let dev = SimDevice::new(&guest, Device::new("virtio-net"));
    let orig = guest.alloc_private(64 << 10).unwrap();
    guest.write(orig, &pattern(1, 64 << 10));
    T { guest, b, dev, orig }
}

impl T {
    fn map(&self, size: usize) -> Result<DmaAddr, MapError> {
        self.b.map_single(self.dev.device(), self.orig, size, DmaDirection::ToDevice, DmaAttrs::empty())
    }
    fn unmap(&self, dma: DmaAddr, size: usize) {
        self.b.unmap_single(self.dev.device(), dma, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    }
    fn s(&self) -> &Dynamic<SimGuest> {
        self.b.strategy()
    }
    fn check(&self) {
        self.s().audit().unwrap();
        self.guest.assert_no_violations();
    }
}

#[test]
fn maps_wake_the_engine_once_per_crossing_and_never_convert() {
    let t = setup(64, 4, 0, 1000);
    let mut run = StepRunner::new(|now| t.s().run_background_at(now));
    run.run_until_idle(10);
    assert_eq!(t.s().pools().pool(0).ready(), 64);
    let conv = t.s().stats().conversions;
    let mut live = Vec::new();
    // 32 maps leave 32 free (= low): no wake. The 33rd crosses: exactly one wake-up.
    for _ in 0..32 {
        live.push(t.map(1500).unwrap());
    }
    assert_eq!(t.guest.stats().wakeups, 0);
    live.push(t.map(1500).unwrap());
    assert_eq!(t.guest.stats().wakeups, 1);
    for _ in 0..20 {
        live.push(t.map(1500).unwrap());
    }
    assert_eq!(t.guest.stats().wakeups, 1, "one wake-up per crossing, not per map");
    assert_eq!(t.s().stats().refill.wakeups, 1);
    assert_eq!(t.s().stats().conversions, conv, "maps never convert");
    // The engine refills the class back to its target with one batch.
    let r = run.run_until_idle(10);
    assert_eq!(r.buffers_added, 64);
    assert_eq!(t.s().stats().conversions.decrypt_calls, conv.decrypt_calls + 1);
    for d in live {
        t.unmap(d, 1500);
    }
    t.check();
}

#[test]
fn no_buffer_ready_is_a_counted_error_and_service_resumes() {
    let t = setup(16, 4, 0, 1000);
    let mut run = StepRunner::new(|now| t.s().run_background_at(now));
    run.run_until_idle(10);
    let conv = t.guest.stats().decrypt_calls;
    let mut live = Vec::new();
    // 16 × 2 KiB, then fallback to 16 KiB (4, no reserve), then nothing.
    let err = loop {
        match t.map(2000) {
            Ok(d) => live.push(d),
            Err(e) => break e,
        }
    };
    assert_eq!(live.len(), 16 + 4);
    assert_eq!(err, no_buffer(2000, 2048));
    assert_eq!(t.s().counters().fallbacks, 4);
    assert_eq!(t.s().counters().no_buffer, 1);
    assert_eq!(t.b.stats().failures_of(FailureReason::Exhausted), 1);
    assert_eq!(t.guest.stats().decrypt_calls, conv, "no conversion on the map path");
    // The engine catches up; maps work again.
    run.run_until_idle(10);
    let d = t.map(2000).unwrap();
    assert_eq!(t.dev_read(d, 2000), pattern(1, 64 << 10)[..2000]);
    t.unmap(d, 2000);
    for d in live {
        t.unmap(d, 2000);
    }
    t.check();
}

impl T {
    fn dev_read(&self, dma: DmaAddr, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.dev.read(&self.b, dma, &mut v).unwrap();
        v
    }
}

#[test]
fn fallback_takes_larger_classes_above_their_reserve_first_then_the_reserve() {
    // 16 KiB class: target 10, reserve 50 % = 5. 2 KiB class: target 8, reserve 4.
    let t = setup(8, 10, 50, 1000);
    let s = t.s();
    // Boot filled the reserves only.
    assert_eq!(s.pools().pool(0).ready(), 8, "one chunk of the 2 KiB class (its target)");
    let mut run = StepRunner::new(|now| s.run_background_at(now));
    run.run_until_idle(10);
    assert_eq!(s.pools().pool(1).ready(), 10);
    let mut live = Vec::new();
    for _ in 0..8 {
        live.push(t.map(1000).unwrap());
    }
    // The 2 KiB class is empty: fallbacks take 16 KiB buffers above that class's
    // reserve first (5) ...
    for _ in 0..5 {
        live.push(t.map(1000).unwrap());
    }
    assert_eq!(s.counters().fallbacks, 5);
    assert_eq!(s.pools().counters(1).reserve_dips, 0);
    // ... then its reserve too: no map fails while a free shared buffer can serve it.
    for _ in 0..5 {
        live.push(t.map(1000).unwrap());
    }
    assert_eq!(s.counters().fallbacks, 10);
    assert_eq!(s.pools().pool(1).ready(), 0);
    // Only now, with no free buffer of a fitting class left, a map fails: counted.
    assert!(matches!(t.map(1000), Err(MapError::Exhausted { .. })));
    assert!(
        matches!(t.map(10_000), Err(MapError::Exhausted { detail, .. }) if detail.fact("class bytes") == Some(16384))
    );
    assert_eq!(s.counters().no_buffer, 2);
    for d in live {
        t.unmap(d, 1000);
    }
    t.check();
}

#[test]
fn idle_memory_is_returned_after_idle_ms_and_converted_back() {
    let t = setup(64, 4, 0, 100);
    let s = t.s();
    let mut run = StepRunner::new(|now| s.run_background_at(now));
    run.run_until_idle(10);
    // A burst of 200 mappings: the engine keeps 64 free on top.
    let mut live = Vec::new();
    for _ in 0..200 {
        live.push(t.map(2048).unwrap());
        run.run_until_idle(10);
    }
    let peak = s.stats().conversions.shared_bytes;
    assert!(peak >= (200 + 64) * 2048, "{peak}");
    for d in live {
        t.unmap(d, 2048);
    }
    let before = t.guest.stats();
    run.step();
    run.advance_ms(99);
    assert_eq!(run.step().pages_shrunk, 0, "not idle long enough");
    run.advance_ms(1);
    let r = run.run_until_idle(10);
    assert!(r.pages_shrunk > 0);
    let after = t.guest.stats();
    assert_eq!(after.pages_encrypted - before.pages_encrypted, r.pages_shrunk);
    assert_eq!(before.shared_pages - after.shared_pages, r.pages_shrunk);
    // Back to the target (64 free) within one chunk: 64 buffers of 2 KiB.
    let free = s.pools().pool(0).ready();
    assert!((64..64 + 64).contains(&free), "{free}");
    let owned: usize = (0..2).map(|i| s.pools().counters(i).chunks * s.pools().class(i).chunk_bytes()).sum();
    assert_eq!(s.stats().conversions.shared_bytes as usize, owned);
    assert_eq!(s.pools().class(0).chunk_bytes(), 32 * PAGE_SIZE);
    t.check();
}

#[test]
fn conversion_failures_quarantine_exactly_those_pages_and_maps_go_on() {
    let t = setup(64, 4, 0, 0);
    let s = t.s();
    let mut run = StepRunner::new(|now| s.run_background_at(now));
    // Refill: the first batch (the 2 KiB class, 32 pages) fails to convert.
    t.guest.faults().fail_nth_decrypt(1);
    let r = run.step();
    assert_eq!(r.pages_quarantined, 32);
    assert_eq!(t.guest.stats().unknown_pages, 32);
    run.advance_ms(10);
    run.run_until_idle(10);
    let mut live = Vec::new();
    for _ in 0..100 {
        live.push(t.map(2048).unwrap());
        run.run_until_idle(10);
    }
    for d in live.drain(..) {
        t.unmap(d, 2048);
    }
    // Shrink: the first chunk returned fails to convert back (idle_ms = 0).
    t.guest.faults().fail_nth_encrypt(1);
    let r = run.run_until_idle(10);
    assert_eq!(r.pages_quarantined, 32);
    assert_eq!(t.guest.stats().unknown_pages, 64);
    assert_eq!(s.stats().conversions.quarantined_pages, 64);
    // Quarantined pages are not ours any more and never come back: every new mapping
    // lands on a shared page.
    for _ in 0..100 {
        let d = t.map(2048).unwrap();
        let p = t.guest.dma_to_phys(d);
        assert_eq!(t.guest.page_state(p), Some(PageState::Shared));
        live.push(d);
        run.run_until_idle(10);
    }
    for d in live {
        t.unmap(d, 2048);
    }
    let a = s.audit().unwrap();
    assert_eq!(a.quarantined_pages, 64);
    t.guest.assert_no_violations();
}

#[test]
fn cap_is_a_hard_bound_and_reported() {
    let guest = SimGuest::new(SimConfig::new(PlatformKind::Tdx, 64 << 20, 2));
    let cfg = DynamicConfig {
        pools: PoolConfig {
            classes: vec![ClassSpec::new(4096, 256)],
            reserve_percent: 0,
            batch_pages: 64,
            cap_bytes: Some(1 << 20),
            ..PoolConfig::seed()
        },
        fallback: true,
    };
    let s = Dynamic::new(guest.clone(), cfg).unwrap();
    let mut run = StepRunner::new(|now| s.run_background_at(now));
    run.run_until_idle(100);
    assert_eq!(s.stats().conversions.shared_bytes, 1 << 20);
    let r = bounce_framework::Request {
        orig: PhysAddr(0x10_0000),
        size: 4096,
        alloc_size: 4096,
        alloc_align_mask: 0,
        min_align_mask: 0,
        dma_mask: u64::MAX,
        cpu: 0,
        may_block: false,
    };
    let mut live = Vec::new();
    let err = loop {
        match s.reserve(&r) {
            Ok(x) => live.push(x.addr),
            Err(e) => break e,
        }
        run.run_until_idle(100);
    };
    assert_eq!(live.len(), 256);
    assert_eq!(err, MapError::Cap { size: 4096, cap_bytes: 1 << 20 });
    assert_eq!(s.counters().cap_reached, 1);
    assert!(s.stats().conversions.shared_bytes_peak <= 1 << 20);
    for a in live {
        s.release(a).unwrap();
    }
    s.audit().unwrap();
}
