//! The engine, driven deterministically by the step runner on a simulated TDX guest.

use bounce_framework::sim::{PageState, PlatformKind, SimConfig, SimGuest};
use bounce_framework::{PhysAddr, Platform, ReleaseError, PAGE_SIZE};
use bounce_pools::{ClassSpec, FreeBuffer, Need, PoolConfig, PoolSet, StepRunner};

fn guest() -> SimGuest {
    SimGuest::new(SimConfig::new(PlatformKind::Tdx, 64 << 20, 2))
}

/// The seed layout (one conversion per chunk, no stock): one 4 KiB class with `target` buffers per chunk, no reserve, `idle_ms` idle time,
/// fixed watermarks (no demand boost), so the arithmetic below is exact.
fn one_class(target: usize, idle_ms: u64) -> PoolConfig {
    PoolConfig {
        classes: vec![ClassSpec::new(4096, target)],
        reserve_percent: 0,
        idle_ms,
        cap_bytes: Some(16 << 20),
        adaptive: false,
        ..PoolConfig::seed()
    }
}

fn pop_n(set: &PoolSet<SimGuest>, n: usize) -> Vec<FreeBuffer> {
    (0..n).map(|i| set.pop(0, Need::Atomic).unwrap_or_else(|| panic!("pop {i} found nothing"))).collect()
}

#[test]
fn watermark_crossing_wakes_the_engine_once() {
    let g = guest();
    let set = PoolSet::new(g.clone(), &one_class(16, 1000)).unwrap();
    let mut run = StepRunner::new(|now| set.run(now));
    assert!(set.pending(run.now()), "an empty pool below its target has work");
    run.run_until_idle(10);
    assert_eq!(set.pool(0).ready(), 16);
    assert!(!set.pending(run.now()));
    // low = 8: pops down to 8 free do not wake.
    let mut held = pop_n(&set, 8);
    assert_eq!(g.stats().wakeups, 0);
    // The pop that leaves 7 crosses: one wake-up.
    held.extend(pop_n(&set, 1));
    assert_eq!(g.stats().wakeups, 1);
    assert_eq!(set.refill_stats().wakeups, 1);
    // Further pops below the watermark do not wake again.
    held.extend(pop_n(&set, 5));
    assert_eq!(g.stats().wakeups, 1);
    assert!(g.wait_for_wake(std::time::Duration::ZERO), "the wake-up reached the runner's wait");
    // Giving buffers back above the watermark re-arms; crossing again wakes again.
    for b in held.drain(..) {
        set.push(b);
    }
    held.extend(pop_n(&set, 9));
    assert_eq!(g.stats().wakeups, 2);
    // The engine refills to the target (16 free) in one batch of 16.
    let r = run.run_until_idle(10);
    assert_eq!(r.buffers_added, 16);
    assert_eq!(set.pool(0).ready(), 7 + 16);
    for b in held {
        set.push(b);
    }
    set.audit().unwrap();
    g.assert_no_violations();
}

#[test]
fn a_batch_costs_exactly_one_conversion_call() {
    let g = guest();
    let cfg = PoolConfig {
        classes: vec![
            ClassSpec::new(512, 256),
            ClassSpec::new(2048, 4096),
            ClassSpec::new(16384, 300),
            ClassSpec::new(512 << 10, 8),
        ],
        reserve_percent: 0,
        cap_bytes: Some(48 << 20),
        ..PoolConfig::seed()
    };
    let set = PoolSet::new(g.clone(), &cfg).unwrap();
    for class in 0..4 {
        let c = *set.class(class);
        assert!(c.chunk_pages <= 1024, "{c:?}");
        for _ in 0..2 {
            let (hw, fw) = (g.stats(), set.shared().stats());
            assert_eq!(set.grow(class).unwrap(), c.chunk_buffers);
            let (hw2, fw2) = (g.stats(), set.shared().stats());
            assert_eq!(hw2.decrypt_calls - hw.decrypt_calls, 1, "class {}: one set_decrypted per batch", c.size);
            assert_eq!(hw2.pages_decrypted - hw.pages_decrypted, c.chunk_pages as u64);
            assert_eq!(fw2.decrypt_calls - fw.decrypt_calls, 1);
            assert_eq!(fw2.pages_decrypted - fw.pages_decrypted, c.chunk_pages as u64);
            assert_eq!(hw2.encrypt_calls, hw.encrypt_calls);
        }
        // Every buffer is aligned as the class promises, in shared memory.
        let bufs: Vec<_> = (0..c.chunk_buffers).map(|_| set.pop(class, Need::Atomic).unwrap()).collect();
        for b in &bufs {
            let addr = set.buffer_addr(b);
            assert!(addr.is_aligned(c.align as u64), "{addr} not aligned to {}", c.align);
            assert!(g.range_is(addr, set.chunk_of(b).buffer_size(), PageState::Shared));
        }
        for b in bufs {
            set.push(b);
        }
    }
    let s = set.pool_stats();
    assert_eq!(s.refill.grow_batches, 8);
    assert_eq!(s.conversions.decrypt_calls, 8);
    let a = set.audit().unwrap();
    assert_eq!(a.totals.owned_bytes as u64, g.stats().shared_pages * PAGE_SIZE as u64);
    assert!(a.totals.slack_bytes > 0, "the 16 KiB and 512 KiB classes carry alignment slack");
    g.assert_no_violations();
}

#[test]
fn shrink_returns_idle_memory_and_converts_it_back() {
    let g = guest();
    let set = PoolSet::new(g.clone(), &one_class(16, 50)).unwrap();
    let mut run = StepRunner::new(|now| set.run(now));
    run.run_until_idle(10);
    // Demand of 40 buffers: the engine keeps 16 free on top, so 4 chunks of 16 (64).
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(set.pop(0, Need::Atomic).unwrap());
        run.run_until_idle(10);
    }
    assert_eq!(set.counters(0).chunks, 4);
    let committed = set.shared().shared_bytes();
    assert_eq!(committed, 4 * 16 * PAGE_SIZE);
    for b in held {
        set.push(b);
    }
    // 64 free, high watermark 16. Not idle long enough yet: nothing returned.
    let before = g.stats();
    let r = run.step();
    assert_eq!(r.pages_shrunk, 0);
    run.advance_ms(49);
    assert_eq!(run.step().pages_shrunk, 0);
    assert!(!set.pending(run.now()));
    run.advance_ms(1);
    assert!(set.pending(run.now()));
    // Idle for 50 ms: three chunks go back (64 → 16 free), converted to private and freed.
    let r = run.run_until_idle(10);
    assert_eq!(r.pages_shrunk, 3 * 16);
    let after = g.stats();
    assert_eq!(after.encrypt_calls - before.encrypt_calls, 3);
    assert_eq!(after.pages_encrypted - before.pages_encrypted, 3 * 16);
    assert_eq!(before.shared_pages - after.shared_pages, 3 * 16);
    assert_eq!(before.allocated_pages - after.allocated_pages, 3 * 16, "returned pages are freed");
    assert_eq!(set.shared().shared_bytes(), 16 * PAGE_SIZE);
    assert_eq!(set.pool(0).ready(), 16);
    assert_eq!(set.refill_stats().shrink_batches, 3);
    // At the high watermark nothing more goes, however long it idles.
    run.advance_ms(10_000);
    assert_eq!(run.step().pages_shrunk, 0);
    set.audit().unwrap();
    g.assert_no_violations();
}

#[test]
fn conversion_failure_during_refill_quarantines_exactly_that_batch() {
    let g = guest();
    let set = PoolSet::new(g.clone(), &one_class(32, 1000)).unwrap();
    let mut run = StepRunner::new(|now| set.run(now));
    g.faults().fail_nth_decrypt(1);
    let r = run.step();
    assert_eq!(r.pages_quarantined, 32);
    assert_eq!(r.buffers_added, 0);
    assert_eq!(set.shared().stats().quarantined_pages, 32);
    assert_eq!(g.stats().unknown_pages, 32, "exactly the failed batch is in an unknown state");
    assert_eq!(set.shared().shared_bytes(), 0);
    assert!(set.pop(0, Need::Atomic).is_none());
    // Retried after the back-off, and the pool works.
    assert!(!set.pending(run.now()), "waits before retrying");
    run.advance_ms(10);
    let r = run.run_until_idle(10);
    assert_eq!(r.buffers_added, 32);
    let b = set.pop(0, Need::Atomic).unwrap();
    assert!(g.range_is(set.buffer_addr(&b), 4096, PageState::Shared));
    set.push(b);
    let a = set.audit().unwrap();
    assert_eq!(a.quarantined_pages, 32);
    assert_eq!(g.stats().unknown_pages, 32);
    g.assert_no_violations();
}

#[test]
fn conversion_failure_during_shrink_quarantines_exactly_that_chunk() {
    let g = guest();
    let set = PoolSet::new(g.clone(), &one_class(16, 0)).unwrap();
    let mut run = StepRunner::new(|now| set.run(now));
    run.run_until_idle(10);
    let held = pop_n(&set, 16);
    run.run_until_idle(10);
    assert_eq!(set.counters(0).chunks, 2);
    for b in held {
        set.push(b);
    }
    g.faults().fail_nth_encrypt(1);
    let before = g.stats();
    let r = run.run_until_idle(10);
    assert_eq!(r.pages_quarantined, 16);
    assert_eq!(r.pages_shrunk, 0);
    let after = g.stats();
    assert_eq!(after.unknown_pages, 16);
    assert_eq!(after.allocated_pages, before.allocated_pages, "quarantined pages are never freed");
    assert_eq!(set.shared().stats().quarantined_pages, 16);
    assert_eq!(set.counters(0).chunks, 1);
    // The remaining chunk serves; the quarantined one is not in the index any more.
    let b = set.pop(0, Need::Atomic).unwrap();
    set.push(b);
    let a = set.audit().unwrap();
    assert_eq!(a.totals.chunks, 1);
    assert_eq!(a.quarantined_pages, 16);
    g.assert_no_violations();
}

#[test]
fn cap_bounds_growth_and_idle_memory_makes_room() {
    let g = guest();
    // Class 0: one chunk of 32 × 2 KiB; class 1: chunks of 16 × 4 KiB, target 64 (four
    // chunks). Both are 16 pages; the cap holds six chunks.
    let cfg = PoolConfig {
        classes: vec![ClassSpec::new(2048, 32), ClassSpec::new(4096, 64)],
        batch_pages: 16,
        reserve_percent: 0,
        cap_bytes: Some(6 * 16 * PAGE_SIZE),
        ..PoolConfig::seed()
    };
    let set = PoolSet::new(g.clone(), &cfg).unwrap();
    let mut run = StepRunner::new(|now| set.run(now));
    run.run_until_idle(100);
    assert_eq!((set.pool(0).ready(), set.pool(1).ready()), (32, 64));
    assert_eq!(set.shared().shared_bytes(), 5 * 16 * PAGE_SIZE);
    // Demand on class 1 grows it to the cap; more demand cannot grow anything.
    let held1 = pop_n_class(&set, 1, 32);
    run.run_until_idle(100);
    assert_eq!(set.shared().shared_bytes(), set.cap_bytes());
    assert_eq!(set.pool(1).ready(), 48, "one more chunk fitted under the cap");
    assert!(!set.pending(run.now()), "growth blocked by the cap is not pending work");
    assert!(set.shared().stats().decrypt_calls == 6, "no conversion was attempted beyond the cap");
    // Class 1's demand ends: 80 free, above its target, but not idle for long.
    for b in held1 {
        set.push(b);
    }
    // Class 0 is drained below its low watermark: the engine returns one idle class-1
    // chunk early (class 1 stays at its target) and grows class 0 in its place.
    let held0 = pop_n_class(&set, 0, 32);
    assert_eq!(g.stats().wakeups, 1, "class 1 never fell below its low watermark");
    run.run_until_idle(100);
    assert_eq!(set.engine_counters().cap_reclaims, 1);
    assert_eq!((set.pool(0).ready(), set.pool(1).ready()), (32, 64));
    assert_eq!(set.shared().shared_bytes(), set.cap_bytes());
    for b in held0 {
        set.push(b);
    }
    set.audit().unwrap();
    g.assert_no_violations();
}

fn pop_n_class(set: &PoolSet<SimGuest>, class: usize, n: usize) -> Vec<FreeBuffer> {
    (0..n).map(|_| set.pop(class, Need::Atomic).unwrap()).collect()
}

#[test]
fn pressure_boosts_the_watermarks_and_calm_lowers_them() {
    let g = guest();
    let cfg = PoolConfig { adaptive: true, reserve_percent: 25, ..one_class(16, 100) };
    let set = PoolSet::new(g.clone(), &cfg).unwrap();
    let mut run = StepRunner::new(|now| set.run(now));
    run.run_until_idle(10);
    assert_eq!((set.pool(0).ready(), set.pool(0).boost()), (16, 0));
    // A burst down to the reserve (4): the pops that dip into it are pressure.
    let held = pop_n(&set, 14);
    assert_eq!(set.counters(0).reserve_dips, 2);
    let r = run.run_until_idle(10);
    assert_eq!(set.pool(0).boost(), 1);
    assert_eq!(set.pool(0).effective_target(), 32);
    assert_eq!(r.buffers_added, 32, "refilled to the doubled target");
    assert_eq!(set.pool(0).ready(), 2 + 32);
    // An empty pool: a miss is pressure too.
    let more = pop_n(&set, 34);
    assert!(set.pop(0, Need::Atomic).is_none());
    run.run_until_idle(10);
    assert_eq!(set.pool(0).boost(), 2);
    assert_eq!(set.pool(0).ready(), 64);
    for b in held.into_iter().chain(more) {
        set.push(b);
    }
    // Calm for idle_ms: the boost steps down, and idle memory above the (lowered) high
    // watermark is returned.
    run.advance_ms(100);
    run.run_until_idle(10);
    assert_eq!(set.pool(0).boost(), 1);
    run.advance_ms(100);
    run.run_until_idle(10);
    assert_eq!(set.pool(0).boost(), 0);
    run.advance_ms(100);
    run.run_until_idle(10);
    assert_eq!(set.pool(0).ready(), 16, "back to the configured target");
    set.audit().unwrap();
}

#[test]
fn commit_release_and_locate_anywhere_inside() {
    let g = guest();
    let set = PoolSet::new(g.clone(), &one_class(8, 1000)).unwrap();
    set.fill(0, 8).unwrap();
    let b = set.pop(0, Need::Atomic).unwrap();
    let buf = set.buffer_addr(&b);
    let tlb = set.commit(b, PhysAddr(0x12_3234), 0x234, 1000, 0);
    assert_eq!(tlb, buf + 0x234);
    assert_eq!(set.usage().used(), 4096);
    // Partial syncs at any address inside the mapping find it, with the right original.
    for into in [0u64, 1, 500, 999] {
        let l = set.locate(tlb + into).unwrap();
        assert_eq!((l.start, l.orig, l.remaining), (tlb, PhysAddr(0x12_3234 + into), 1000 - into as usize));
    }
    // Padding before the data and bytes after it are not in the mapping.
    assert!(set.locate(buf).is_none());
    assert!(set.locate(tlb + 1000).is_none());
    assert!(set.owns(buf) && set.owns(tlb + 1000));
    assert!(!set.owns(PhysAddr(0x10)));
    assert_eq!(set.release(tlb + 4, 0).unwrap_err(), ReleaseError::NotStart { start: tlb });
    assert_eq!(set.release(buf, 0).unwrap_err(), ReleaseError::NotMapped);
    assert_eq!(set.release(PhysAddr(0x10), 0).unwrap_err(), ReleaseError::Foreign);
    // A handle found before the release is stale after it.
    let found = set.find(tlb).unwrap();
    let (freed, rel, class) = set.release(tlb, 1).unwrap();
    assert_eq!((rel.orig, rel.size, class), (PhysAddr(0x12_3234), 1000, 0));
    assert_eq!(set.release(tlb, 0).unwrap_err(), ReleaseError::NotMapped, "double release");
    assert_eq!(set.release_found(&found, 0).unwrap_err(), ReleaseError::NotMapped, "stale handle");
    assert!(set.locate(tlb).is_none());
    assert_eq!(set.usage().used(), 0);
    set.push(freed);
    set.audit().unwrap();
}

#[test]
fn audit_reports_held_buffers_and_catches_counter_drift() {
    let g = guest();
    let set = PoolSet::new(g.clone(), &one_class(8, 1000)).unwrap();
    set.fill(0, 8).unwrap();
    let b = set.pop(0, Need::Atomic).unwrap();
    let a = set.audit().unwrap();
    assert_eq!((a.totals.held, a.totals.free, a.totals.in_flight), (1, 7, 0));
    set.push(b);
    assert_eq!(set.audit().unwrap().totals.held, 0);
}

#[cfg(feature = "sim")]
#[test]
fn thread_runner_refills_after_a_wake_and_stops() {
    use bounce_pools::ThreadRunner;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let g = guest();
    let set = Arc::new(PoolSet::new(g.clone(), &one_class(16, 1000)).unwrap());
    let s2 = Arc::clone(&set);
    let p = g.clone();
    let runner = ThreadRunner::for_sim(g.clone(), move || s2.run(p.now_ns())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while set.pool(0).ready() < 16 {
        assert!(Instant::now() < deadline, "runner never filled the pool");
        std::thread::sleep(Duration::from_millis(1));
    }
    let held = pop_n(&set, 12);
    while set.pool(0).ready() < 16 {
        assert!(Instant::now() < deadline, "runner never refilled after the wake-up");
        std::thread::sleep(Duration::from_millis(1));
    }
    let totals = runner.stop();
    assert!(totals.wakes >= 1);
    assert!(totals.report.buffers_added >= 32);
    for b in held {
        set.push(b);
    }
    set.audit().unwrap();
}
