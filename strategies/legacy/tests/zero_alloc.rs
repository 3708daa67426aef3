//! The map path never calls the global allocator: once the pool exists, `map_single`,
//! the syncs and `unmap_single` through the [`Bouncer`] (and a refused map) make no heap
//! allocation at all. A counting global allocator counts the allocations of the test's
//! own thread while a flag is set.

use bounce_framework::sim::{count_allocations, set_current_cpu, CountingAlloc, PlatformKind, SimGuest};
use bounce_framework::{Bouncer, BouncerOptions, Device, DmaAttrs, DmaDirection, MapError, Platform};
use bounce_legacy::{Legacy, LegacyConfig};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn the_counter_sees_allocations() {
    let ((), n) = count_allocations(|| {
        let v: Vec<u64> = std::hint::black_box(Vec::with_capacity(16));
        drop(v);
    });
    assert_eq!(n, 2, "one allocation and one free");
}

#[test]
fn map_and_unmap_make_no_allocation() {
    set_current_cpu(Some(1));
    let g = SimGuest::with(PlatformKind::Tdx, 32 << 20, 2);
    let legacy = Legacy::new(g.clone(), LegacyConfig::with_bytes(4 << 20)).unwrap();
    let b = Bouncer::new(g.clone(), legacy, BouncerOptions::default());
    let net = Device::new("virtio-net");
    let nvme = Device::new("nvme0").with_min_align_mask(4095);
    let orig = g.alloc_private(1 << 20).unwrap();
    g.write(orig, &vec![0x5a; 1 << 20]);
    // Warm-up outside the count (first use of every code path).
    let d = b.map_single(&net, orig, 100, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    b.unmap_single(&net, d, 100, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();

    let sizes = [1usize, 100, 1500, 2048, 4096, 9000, 65536, 200_000];
    let mut ok = 0usize;
    let mut full = None;
    let ((), n) = count_allocations(|| {
        for (i, &size) in sizes.iter().enumerate() {
            for dir in DmaDirection::ALL {
                for dev in [&net, &nvme] {
                    let at = orig + (i as u64 * 0x123) % 4096;
                    let Ok(d) = b.map_single(dev, at, size, dir, DmaAttrs::empty()) else { continue };
                    let _ = b.sync_single_for_cpu(dev, d, size, dir);
                    let _ = b.sync_single_for_device(dev, d, size, dir);
                    if b.unmap_single(dev, d, size, dir, DmaAttrs::empty()).is_ok() {
                        ok += 1;
                    }
                }
            }
            let d = b.map_with_align(&net, orig, size, 0xfff, DmaDirection::Bidirectional, DmaAttrs::empty());
            if let Ok(d) = d {
                if b.unmap_single(&net, d, size, DmaDirection::Bidirectional, DmaAttrs::empty()).is_ok() {
                    ok += 1;
                }
            }
        }
        // Exhaustion (NO_WARN: no log line) is refused without allocating too.
        let mut live = [None; 32];
        for slot in &mut live {
            *slot = b.map_single(&net, orig, 200_000, DmaDirection::ToDevice, DmaAttrs::NO_WARN).ok();
        }
        full = b.map_single(&net, orig, 200_000, DmaDirection::ToDevice, DmaAttrs::NO_WARN).err();
        for d in live.iter().flatten() {
            let _ = b.unmap_single(&net, *d, 200_000, DmaDirection::ToDevice, DmaAttrs::empty());
        }
    });
    assert_eq!(n, 0, "the map path allocated {n} times");
    assert_eq!(ok, sizes.len() * 3 * 2 + sizes.len(), "every map/unmap pair in the counted region succeeded");
    assert!(matches!(full, Some(MapError::Exhausted { .. })), "{full:?}");
    assert_eq!(b.pool_stats().used_bytes, 0);
    let s = b.stats();
    assert_eq!(s.maps, s.unmaps);
    assert!(g.cpu_count() == 2);
}
