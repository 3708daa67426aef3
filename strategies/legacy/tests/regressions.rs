//! Regression tests for known Linux swiotlb failures, through the full DMA API on the
//! simulated TDX guest.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier, Mutex};

use bounce_framework::conformance::pattern;
use bounce_framework::sim::{set_current_cpu, PlatformKind, SimDevice, SimGuest};
use bounce_framework::{
    Bouncer, BouncerOptions, Device, DmaAddr, DmaAttrs, DmaDirection, MapError, PhysAddr, Platform, Strategy,
};
use bounce_legacy::{pool_full, Legacy, LegacyConfig, SlotIndex};

type B = Bouncer<SimGuest, Legacy<SimGuest>>;

fn setup(nslabs: usize, nareas: usize, cpus: usize) -> (SimGuest, Arc<B>, SimDevice) {
    let memory = (nslabs * 2048).next_multiple_of(4096) + (16 << 20);
    let g = SimGuest::with(PlatformKind::Tdx, memory, cpus);
    let cfg = LegacyConfig { nslabs: Some(nslabs), nareas: Some(nareas), ..LegacyConfig::default() };
    let l = Legacy::new(g.clone(), cfg).unwrap();
    let b = Arc::new(Bouncer::new(g.clone(), l, BouncerOptions::default()));
    let dev = SimDevice::new(&g, Device::new("virtio-blk"));
    (g, b, dev)
}

fn buffer(g: &SimGuest, len: usize, seed: u64) -> PhysAddr {
    let a = g.alloc_private(len).unwrap();
    g.write(a, &pattern(seed, len));
    a
}

fn audit(b: &B) {
    if let Err(e) = b.strategy().audit() {
        panic!("{e}");
    }
}

/// CVE-2023-52790: pools smaller than one segment (Linux's transient pools) once
/// allocated slots past their end because the free counts assumed whole segments.
/// Pools of 3 and 100 slots serve exactly what fits and never hand out a byte past
/// their end.
#[test]
fn pool_smaller_than_one_segment_cve_2023_52790() {
    for nslabs in [3usize, 100] {
        let (g, b, dev) = setup(nslabs, 1, 1);
        let l = b.strategy();
        let end = l.pool_end();
        assert_eq!(end.0 - l.pool_start().0, (nslabs * 2048) as u64);
        // The free count of slot i is min(128 - i % 128, nslabs - i).
        for i in 0..nslabs {
            assert_eq!(usize::from(l.slot(SlotIndex(i)).unwrap().list), nslabs - i);
        }
        // One slot too many fails; exactly the pool succeeds and ends at its end.
        let big = buffer(&g, (nslabs + 1) * 2048, 1);
        let err = b.map_single(dev.device(), big, (nslabs + 1) * 2048, DmaDirection::ToDevice, DmaAttrs::empty());
        assert!(
            matches!(&err, Err(MapError::Exhausted { detail, .. }) if detail.fact("total slots") == Some(nslabs)),
            "{err:?}"
        );
        // Fill the pool with single-slot mappings (2 KiB each, no page alignment), then
        // ask for one more: it must fail, not run past the end.
        let mut live = Vec::new();
        for k in 0..nslabs {
            let orig = buffer(&g, 2048, k as u64);
            let dma = b.map_single(dev.device(), orig, 2048, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
            let phys = g.dma_to_phys(dma);
            assert!(phys.0 + 2048 <= end.0, "slot {k} at {phys} runs past the pool end {end}");
            let mut seen = vec![0; 2048];
            dev.read(&*b, dma, &mut seen).unwrap();
            assert_eq!(seen, pattern(k as u64, 2048));
            live.push(dma);
        }
        let one = buffer(&g, 100, 9);
        let err = b.map_single(dev.device(), one, 100, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap_err();
        assert_eq!(err, pool_full(100, nslabs, nslabs));
        audit(&b);
        for dma in live {
            b.unmap_single(dev.device(), dma, 2048, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        }
        // The whole pool as one mapping (100 slots = 200 KiB fits one segment).
        let dma = b
            .map_single(dev.device(), big, nslabs * 2048, DmaDirection::ToDevice, DmaAttrs::empty())
            .expect("the whole small pool as one mapping");
        assert_eq!(g.dma_to_phys(dma), l.pool_start());
        b.unmap_single(dev.device(), dma, nslabs * 2048, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        audit(&b);
        g.assert_no_violations();
    }
}

/// Live mappings of all threads, by first slot: (last slot, owner thread).
type Registry = Mutex<BTreeMap<usize, (usize, usize)>>;

fn register(reg: &Registry, first: usize, last: usize, t: usize) {
    let mut r = reg.lock().unwrap();
    if let Some((&f, &(l, o))) = r.range(..=last).next_back() {
        assert!(l < first, "thread {t}: slots {first}..={last} overlap thread {o}'s live mapping {f}..={l}");
    }
    r.insert(first, (last, t));
}

/// Two mappings handed the same slots (fixed by Will Deacon in 2024): two threads map
/// and unmap concurrently on a small pool, each keeping up to 11 mappings live. Every new
/// mapping's slots must be disjoint from every live mapping of both threads, and each
/// bounce buffer must still hold its own data when it is unmapped.
fn two_threads_never_share_a_slot(cpus: [usize; 2], nareas: usize) {
    // 256 slots (512 KiB): the threads exhaust their areas and spill into each other's.
    let (g, b, dev) = setup(256, nareas, 2);
    let reg: Arc<Registry> = Arc::new(Mutex::new(BTreeMap::new()));
    let go = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2usize)
        .map(|t| {
            let (g, b, dev, reg, go) = (g.clone(), Arc::clone(&b), dev.clone(), Arc::clone(&reg), Arc::clone(&go));
            let cpu = cpus[t];
            std::thread::spawn(move || {
                set_current_cpu(Some(cpu));
                let l = b.strategy();
                let mut live: Vec<(DmaAddr, PhysAddr, usize, u64, usize)> = Vec::new();
                let mut full = 0u32;
                go.wait();
                for i in 0..800u64 {
                    let len = [100usize, 2048, 3000, 4096, 9000, 40_000, 70_000][(i % 7) as usize];
                    let seed = ((t as u64) << 32) | i;
                    let orig = buffer(&g, len, seed);
                    match b.map_single(dev.device(), orig, len, DmaDirection::Bidirectional, DmaAttrs::NO_WARN) {
                        Ok(dma) => {
                            let phys = g.dma_to_phys(dma);
                            let first = l.slot_of(phys).unwrap().0;
                            let last = l.slot_of(phys + (len - 1) as u64).unwrap().0;
                            register(&reg, first, last, t);
                            assert_eq!(g.read_vec(phys, len), pattern(seed, len), "thread {t}: copy in");
                            live.push((dma, orig, len, seed, first));
                        }
                        Err(MapError::Exhausted { .. }) => {
                            full += 1;
                            g.free_private(orig, len);
                        }
                        Err(e) => panic!("thread {t}: {e}"),
                    }
                    if live.len() > 10 || (i % 3 == 0 && !live.is_empty()) {
                        let (dma, orig, len, seed, first) = live.remove((i as usize * 7) % live.len());
                        let phys = g.dma_to_phys(dma);
                        assert_eq!(g.read_vec(phys, len), pattern(seed, len), "thread {t}: bounce buffer clobbered");
                        assert_eq!(reg.lock().unwrap().remove(&first).map(|(_, o)| o), Some(t));
                        b.unmap_single(dev.device(), dma, len, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
                        g.free_private(orig, len);
                    }
                }
                for (dma, orig, len, _, first) in live {
                    reg.lock().unwrap().remove(&first);
                    b.unmap_single(dev.device(), dma, len, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
                    g.free_private(orig, len);
                }
                full
            })
        })
        .collect();
    let full: u32 = threads.into_iter().map(|h| h.join().expect("worker")).sum();
    assert!(full > 0, "the pool never filled up: the test did not exercise cross-area spill-over");
    let st = b.pool_stats();
    assert_eq!(st.used_bytes, 0);
    assert!(st.used_hiwater_bytes >= 128 * 2048, "hiwater {} too low", st.used_hiwater_bytes);
    let r = b.strategy().audit().unwrap();
    assert_eq!(r.live_mappings, 0);
    for a in 0..nareas {
        assert_eq!(b.strategy().area(a).unwrap().used, 0);
    }
    g.assert_no_violations();
}

#[test]
fn concurrent_threads_on_different_areas_never_share_a_slot() {
    two_threads_never_share_a_slot([0, 1], 2);
}

#[test]
fn concurrent_threads_on_the_same_area_never_share_a_slot() {
    two_threads_never_share_a_slot([0, 0], 2);
    two_threads_never_share_a_slot([1, 1], 1);
}

/// A full pool and a fragmented pool return "swiotlb buffer is full" with Linux's
/// numbers at once, for every area, instead of searching forever (a loop that compared
/// the index with a wrap point once spun on a TDX NVMe guest).
#[test]
fn full_or_fragmented_pool_returns_an_error() {
    // 64 MiB, 4 areas of 8192 slots.
    let (g, b, dev) = setup(32768, 4, 4);
    let nvme = SimDevice::new(&g, Device::new("nvme0").with_min_align_mask(4095));
    let orig = buffer(&g, 65536, 3);
    let mut live = Vec::new();
    // Full: 1024 mappings of 64 KiB (32 slots each).
    for _ in 0..1024 {
        live.push(b.map_single(dev.device(), orig, 65536, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap());
    }
    for cpu in 0..4 {
        set_current_cpu(Some(cpu));
        for (d, len) in [(&dev, 1usize), (&dev, 65536), (&nvme, 4096)] {
            let e = b.map_single(d.device(), orig, len, DmaDirection::ToDevice, DmaAttrs::NO_WARN).unwrap_err();
            assert_eq!(e, pool_full(len, 32768, 32768));
        }
    }
    // Fragmented: free every other mapping; 16384 slots are free in runs of 32.
    for (i, d) in live.iter().enumerate() {
        if i % 2 == 1 {
            b.unmap_single(dev.device(), *d, 65536, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        }
    }
    for cpu in 0..4 {
        set_current_cpu(Some(cpu));
        // 33 slots (page aligned, stride 2): no run is long enough in any area.
        let e = b.map_single(dev.device(), orig, 33 * 2048, DmaDirection::ToDevice, DmaAttrs::NO_WARN).unwrap_err();
        assert_eq!(e, pool_full(33 * 2048, 32768, 16384));
        // NVMe, 63 KiB at an odd offset: 32 slots would fit a hole, but bit 11 of the
        // first slot must match the original's, so the data would need 33.
        let odd = orig + 0x800;
        let e = b.map_single(nvme.device(), odd, 63 * 1024 + 1, DmaDirection::ToDevice, DmaAttrs::NO_WARN);
        assert!(
            matches!(&e, Err(MapError::Exhausted { detail, .. }) if detail.fact("used slots") == Some(16384)),
            "{e:?}"
        );
    }
    // A 32-slot mapping still fits a hole.
    let d = b.map_single(dev.device(), orig, 65536, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    b.unmap_single(dev.device(), d, 65536, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    audit(&b);
    assert_eq!(b.debugfs().io_tlb_used, 16384);
    assert_eq!(b.debugfs().io_tlb_used_hiwater, 32768);
    assert!(b.stats().failures_of(bounce_framework::FailureReason::Exhausted) >= 12 + 8);
    g.assert_no_violations();
}

/// Exhaustion never blocks and leaves the pool as it was; the ratelimited warning
/// carries Linux's text.
#[test]
fn exhaustion_warning_has_linux_wording() {
    let (g, b, dev) = setup(128, 1, 1);
    let orig = buffer(&g, 300_000, 4);
    let keep = b.map_single(dev.device(), orig, 200_000, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    let before = b.strategy().audit().unwrap();
    let e = b.map_single(dev.device(), orig, 100_000, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap_err();
    assert_eq!(e, pool_full(100_000, 128, 98));
    assert_eq!(b.strategy().audit().unwrap(), before);
    let logs = g.logs();
    assert!(
        logs.iter()
            .any(|(_, m)| m.ends_with("swiotlb buffer is full (sz: 100000 bytes), total 128 (slots), used 98 (slots)")),
        "{logs:?}"
    );
    b.unmap_single(dev.device(), keep, 200_000, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    audit(&b);
}

/// A strategy handle is usable from any thread.
#[test]
fn strategy_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Legacy<SimGuest>>();
    let (_, b, _) = setup(256, 2, 2);
    assert_eq!(b.strategy().name(), "legacy");
    assert!(!b.strategy().background_pending());
    assert!(!b.strategy().run_background().did_work());
    let g2 = b.platform().clone();
    assert_eq!(g2.cpu_count(), 2);
}
