//! The demand policy (the default preset), driven deterministically by the step runner on
//! a simulated TDX guest: blank shells served on the map path, failure only when no free
//! shared buffer fits, memory that follows a demand step and returns to the boot floor
//! after the idle time, no conversion churn under a steady rate.

use bounce_framework::sim::{count_allocations, CountingAlloc, PlatformKind, SimConfig, SimGuest};
use bounce_framework::PAGE_SIZE;
use bounce_pools::{FreeBuffer, Need, PoolConfig, PoolSet, StepRunner};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// The 4 KiB class of the default table.
const C4K: usize = 3;
/// The 256 KiB class.
const C256K: usize = 9;

fn guest() -> SimGuest {
    SimGuest::new(SimConfig::new(PlatformKind::Tdx, 256 << 20, 2))
}

fn set(g: &SimGuest, cap: usize, idle_ms: u64) -> PoolSet<SimGuest> {
    let cfg = PoolConfig { cap_bytes: Some(cap), idle_ms, ..PoolConfig::default() };
    let s = PoolSet::new(g.clone(), &cfg).unwrap();
    s.fill_reserves().unwrap();
    s
}

fn shared(s: &PoolSet<SimGuest>) -> usize {
    s.shared().shared_bytes()
}

#[test]
fn an_empty_class_reshapes_a_blank_shell_on_the_map_path_without_allocating_or_converting() {
    let g = guest();
    let s = set(&g, 64 << 20, 1000);
    let blanks = s.blank_shells();
    assert!(blanks > 0, "the boot floor holds blank shells");
    // Take every ready 4 KiB buffer: the class is empty now.
    let mut held: Vec<FreeBuffer> = Vec::new();
    while s.pool(C4K).ready() > 0 {
        held.push(s.pop(C4K, Need::Atomic).unwrap());
    }
    held.reserve(4096);
    let calls = s.shared().stats().calls();
    // The next pops reshape blank shells: no allocation, no conversion.
    let (got, allocs) = count_allocations(|| {
        let mut n = 0;
        for _ in 0..256 {
            if let Some(b) = s.pop(C4K, Need::Atomic) {
                held.push(b);
                n += 1;
            }
        }
        n
    });
    assert_eq!(got, 256, "every pop was served");
    assert_eq!(allocs, 0, "the map path allocated");
    assert_eq!(s.shared().stats().calls(), calls, "the map path converted");
    assert!(s.adopted_shells() >= 1);
    assert!(s.blank_shells() < blanks);
    assert!(held.iter().all(|b| s.chunk_of(b).buffer_size() == 4096
        && g.range_is(s.buffer_addr(b), 4096, bounce_framework::sim::PageState::Shared)));
    for b in held {
        s.push(b);
    }
    s.audit().unwrap();
    g.assert_no_violations();
}

#[test]
fn maps_that_may_wait_leave_the_last_blank_shells_to_atomic_maps() {
    let g = guest();
    // A cap the boot floor nearly fills: nothing grows, so the blank shells are all.
    let s = set(&g, 16 << 20, 1000);
    let blanks = s.blank_shells();
    assert!(blanks > 1);
    // Stocking a cache never reshapes a shell: the unused 4 KiB class stays empty.
    assert!(s.pop(C4K, Need::Stock).is_none());
    assert_eq!(s.blank_shells(), blanks);
    // Maps that may wait (256 KiB, no larger class in use) take blank shells until only
    // the protected ones are left, then get nothing: they wait, the engine grows.
    let mut held = Vec::new();
    while let Some(b) = s.pop(C256K, Need::Waitable).or_else(|| s.pop_larger(C256K, Need::Waitable)) {
        held.push(b);
    }
    let protected = s.blank_shells();
    assert!(protected >= 1, "a map that may wait took the last blank shell");
    assert!(s.counters(C256K).misses > 0);
    // An atomic map of another class still finds a shell and is served.
    let calls = s.shared().stats().calls();
    let b = s.pop(C4K, Need::Atomic).expect("an atomic map reshapes a protected shell");
    assert_eq!(s.blank_shells(), protected - 1);
    assert_eq!(s.shared().stats().calls(), calls, "the map path converted");
    held.push(b);
    for b in held {
        s.push(b);
    }
    s.audit().unwrap();
    g.assert_no_violations();
}

#[test]
fn a_request_fails_only_when_no_free_shared_buffer_of_a_fitting_size_is_left() {
    let g = guest();
    // A cap that the boot floor nearly fills: nothing can grow.
    let s = set(&g, 16 << 20, 1000);
    let cap_room = s.cap_bytes() - shared(&s);
    assert!(cap_room < 16 << 20);
    // The 512 KiB and 4 KiB classes in use (free buffers), as after their first maps;
    // one 4 KiB buffer stays out, so no shell of that class is completely free.
    let first = s.pop(C256K + 1, Need::Atomic).unwrap();
    s.push(first);
    let out_4k = s.pop(C4K, Need::Atomic).unwrap();
    // 256 KiB requests as the strategies make them: the class, then blank shells, then
    // the 512 KiB class, then a completely free shell of another class.
    let mut held = Vec::new();
    while let Some(b) = s.pop_fitting(C256K, Need::Atomic, true) {
        held.push(b);
    }
    assert!(
        held.iter().any(|b| s.chunk_of(b).buffer_size() == 512 << 10),
        "the larger class served once the class was dry"
    );
    assert_eq!(s.blank_shells(), 0, "every blank shell was used before failing");
    assert_eq!(s.pool(C256K + 1).ready(), 0);
    // Smaller classes still have free buffers, but none fits 256 KiB and no shell is
    // completely free: the only failure left, and it is counted as a shortfall of the
    // class (a miss).
    assert!(s.pool(C4K).ready() > 0);
    assert!((0..s.table().len()).all(|c| s.counters(c).empty_chunks == 0));
    assert!(s.counters(C256K).misses > 0);
    // A 4 KiB request is still served (from its own class).
    let small = s.pop(C4K, Need::Atomic).unwrap();
    s.push(small);
    s.push(out_4k);
    for b in held {
        s.push(b);
    }
    s.audit().unwrap();
}

#[test]
fn memory_follows_a_demand_step_and_returns_to_the_boot_floor_after_the_idle_time() {
    let g = guest();
    let s = set(&g, 128 << 20, 200);
    let mut run = StepRunner::new(|now| s.run(now));
    run.run_until_idle(100);
    let floor = shared(&s);
    // The default floor (16 MiB) plus the boot block's alignment slack.
    assert!(floor <= (16 << 20) + (64 << 10), "boot floor {floor}");
    // A demand step beyond the floor: 6000 buffers of 4 KiB (23.4 MiB) held.
    let mut held = Vec::new();
    for _ in 0..6000 {
        if let Some(b) = s.pop(C4K, Need::Atomic) {
            held.push(b);
        } else {
            // The engine catches up between bursts of maps.
            run.advance_ms(1);
            run.step();
            held.push(s.pop(C4K, Need::Atomic).expect("served after the engine ran"));
        }
    }
    run.advance_ms(5);
    run.run_until_idle(100);
    let peak = shared(&s);
    assert!(peak >= 6000 * 4096, "memory grew with demand: {floor} -> {peak}");
    // Targets fell with the demand; nothing shrinks before the idle time...
    for b in held {
        s.push(b);
    }
    run.advance_ms(50);
    run.run_until_idle(100);
    assert!(shared(&s) > floor, "nothing returned before idle_ms");
    // ... and after it, memory returns to the floor (classes back to one chunk each,
    // the blank shells to their keep): within twice the idle time of the end, the
    // demand window (two buckets of half the idle time) included.
    for _ in 0..4 {
        run.advance_ms(100);
        run.run_until_idle(100);
    }
    // The boot block's alignment slack (less than a shell) may have gone back too.
    assert!(
        shared(&s) <= floor && shared(&s) + (512 << 10) > floor,
        "back to the boot floor: {} vs {floor}",
        shared(&s)
    );
    s.audit().unwrap();
    g.assert_no_violations();
}

#[test]
fn a_steady_rate_stops_converting_after_warm_up() {
    let g = guest();
    let s = set(&g, 128 << 20, 1000);
    let mut run = StepRunner::new(|now| s.run(now));
    run.run_until_idle(100);
    // A ring of 1500 mappings of mixed sizes, 300 replaced every 5 ms, for 6 s.
    let classes = [1usize, 2, 3, 5, 7, 8];
    let mut ring: std::collections::VecDeque<FreeBuffer> = std::collections::VecDeque::new();
    let mut k = 0usize;
    let mut calls_after_1s = None;
    let mut calls_after_3s = None;
    for step in 0..1200 {
        for _ in 0..300 {
            if ring.len() >= 1500 {
                s.push(ring.pop_front().unwrap());
            }
            let c = classes[k % classes.len()];
            k += 1;
            let b = s.pop(c, Need::Atomic).or_else(|| s.pop_larger(c, Need::Atomic));
            let b = match b {
                Some(b) => b,
                // Warm-up: the ring fills faster than one engine run per step; the engine
                // catches up. After it, a miss fails the test.
                None if step < 200 => {
                    run.step();
                    s.pop(c, Need::Atomic)
                        .or_else(|| s.pop_larger(c, Need::Atomic))
                        .expect("served once the engine ran")
                }
                None => panic!("step {step}: a steady ring failed a map"),
            };
            ring.push_back(b);
        }
        run.advance_ms(5);
        run.step();
        if step == 200 {
            calls_after_1s = Some(s.shared().stats().calls());
        }
        if step == 600 {
            calls_after_3s = Some(s.shared().stats().calls());
        }
    }
    // Between 1 s and 3 s the warm-up's overshoot goes back once its peak has left the
    // window (issue 14 asks for at most 2 calls after the first second: `bounce
    // compare` reports that target; here it is printed); after that, nothing.
    let settling = calls_after_3s.unwrap() - calls_after_1s.unwrap();
    eprintln!("{settling} conversion calls between 1 s and 3 s");
    assert_eq!(s.shared().stats().calls(), calls_after_3s.unwrap(), "no conversion at all in the last 3 s");
    let st = s.shared().stats();
    assert!(
        st.pages() as usize <= 2 * st.shared_bytes_peak as usize / PAGE_SIZE,
        "pages converted {} vs peak {}",
        st.pages(),
        st.shared_bytes_peak as usize / PAGE_SIZE
    );
    for b in ring {
        s.push(b);
    }
    s.audit().unwrap();
}

#[test]
fn a_free_shell_another_class_holds_serves_a_burst_its_own_class_and_the_blanks_cannot() {
    let g = guest();
    // A cap the boot floor nearly fills: nothing grows, the engine never runs.
    let s = set(&g, 16 << 20, 1000);
    // A burst of 4 KiB maps takes every blank shell, then ends: the 4 KiB class holds
    // the shells, completely free, until the engine finds them idle.
    let mut small = Vec::new();
    while s.blank_shells() > 0 || s.pool(C4K).ready() > 0 {
        small.push(s.pop(C4K, Need::Atomic).expect("the class or a blank shell serves"));
    }
    // The 256 KiB and 512 KiB classes' own buffers, held.
    let mut big = Vec::new();
    while let Some(b) = s.pop(C256K, Need::Atomic).or_else(|| s.pop_larger(C256K, Need::Atomic)) {
        big.push(b);
    }
    for b in small {
        s.push(b);
    }
    let target = s.pool(C4K).effective_target();
    let free_4k = s.pool(C4K).ready();
    assert!(free_4k >= target + 128, "the burst left free shells in the 4 KiB class");
    assert_eq!(s.blank_shells(), 0);
    // Its own class, the blank shells and the larger classes have nothing for 256 KiB...
    assert!(s.pop(C256K, Need::Atomic).or_else(|| s.pop_larger(C256K, Need::Atomic)).is_none());
    // ... but the free shells serve it: no allocation, no conversion, and the donor
    // keeps its floor (target) whoever asks.
    let calls = s.shared().stats().calls();
    big.reserve(1024);
    let (served, allocs) = count_allocations(|| {
        let mut n = 0usize;
        for need in [Need::Waitable, Need::Atomic] {
            while let Some(b) = s.pop(C256K, need).or_else(|| s.pop_reclaimed(C256K, need)) {
                big.push(b);
                n += 1;
            }
        }
        n
    });
    assert!(served >= 2, "a reclaimed shell served ({served})");
    assert_eq!(allocs, 0, "the map path allocated");
    assert!(s.pool(C4K).ready() >= target, "a map took the donor's floor");
    assert!(s.pool(C4K).ready() < target + 128, "a shell above the floor was left behind");
    assert_eq!(s.shared().stats().calls(), calls, "the map path converted");
    assert_eq!(s.request_counters().reclaimed, served as u64 / 2, "two 256 KiB buffers per shell");
    assert!(big.iter().all(|b| g.range_is(s.buffer_addr(b), 256 << 10, bounce_framework::sim::PageState::Shared)));
    // Stocking a cache never reclaims.
    assert!(s.pop_reclaimed(C256K, Need::Stock).is_none());
    for b in big {
        s.push(b);
    }
    s.audit().unwrap();
    g.assert_no_violations();
}
