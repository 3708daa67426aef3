//! The device model catches strategies that break the CVM rules.

mod common;

use bounce_framework::conformance::{pattern, Env};
use bounce_framework::sim::{DeviceError, SimGuest};
use bounce_framework::{DmaAttrs, DmaDirection, Platform};
use common::FirstFit;

#[test]
fn device_model_catches_a_strategy_that_hands_out_private_memory() {
    let e = Env::new(&|g: &SimGuest| FirstFit::broken_private(g, 1 << 20));
    let orig = e.buffer(4096, 0, 1);
    let dma = e.bouncer.map_single(e.net.device(), orig, 4096, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    let mut buf = vec![0; 4096];
    let err = e.net.read(&*e.bouncer, dma, &mut buf).unwrap_err();
    assert!(matches!(err, DeviceError::NotShared { .. }), "{err}");
    assert_eq!(e.guest.violation_count(), 1);
    assert!(e.guest.violations()[0].what.contains("not shared"));
}

#[test]
fn device_model_refuses_unmapped_and_out_of_mask_accesses() {
    let e = Env::new(&|g: &SimGuest| FirstFit::new(g, 1 << 20));
    let orig = e.buffer(3000, 0, 2);
    let dma = e.bouncer.map_single(e.net.device(), orig, 3000, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
    let mut buf = vec![0; 100];
    // Past the end of the mapping.
    assert!(matches!(e.net.read(&*e.bouncer, dma + 2950, &mut buf), Err(DeviceError::NotMapped { .. })));
    // The original, private buffer.
    let priv_dma = e.guest.phys_to_dma(orig);
    assert!(matches!(e.net.write(&*e.bouncer, priv_dma, &buf), Err(DeviceError::NotShared { .. })));
    e.bouncer.unmap_single(e.net.device(), dma, 3000, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
    // After unmap: the memory is still shared, but no longer a live mapping.
    assert!(matches!(e.net.read(&*e.bouncer, dma, &mut buf), Err(DeviceError::NotMapped { .. })));
    // A hostile host may still read it: document what it sees (the last data, unscrubbed).
    let mut seen = vec![0; 3000];
    e.net.host_read(dma, &mut seen).unwrap();
    assert_eq!(seen, pattern(2, 3000), "without scrub, shared memory keeps the last mapping's data");
    assert_eq!(e.guest.violation_count(), 3);
}

#[test]
fn conversions_destroy_contents_and_cost_virtual_time() {
    use bounce_framework::sim::{PageState, PlatformKind, SimConfig};
    use bounce_framework::{PageCount, PageRequest, SharedMemory};
    let mut cfg = SimConfig::new(PlatformKind::Tdx, 16 << 20, 2);
    cfg.max_conversion_pages = 16;
    let g = SimGuest::new(cfg);
    let shared = SharedMemory::new(g.clone(), 1 << 20);
    let a = g.alloc_private(4096).unwrap();
    g.write(a, &[7; 4096]);
    g.set_decrypted(a, PageCount(1)).unwrap();
    assert_eq!(g.page_state(a), Some(PageState::Shared));
    assert_ne!(g.read_vec(a, 4096), vec![7; 4096]);
    g.set_encrypted(a, PageCount(1)).unwrap();
    g.free_private(a, 4096);
    // 40 pages in batches of 16: 3 calls; TDX costs 20us/call + 1us/page.
    let before = g.stats();
    let p = shared.alloc_shared(PageRequest::sleeping(PageCount(40))).unwrap();
    let st = shared.stats();
    assert_eq!((st.decrypt_calls, st.pages_decrypted), (3, 40));
    assert_eq!(g.stats().virtual_ns - before.virtual_ns, 3 * 20_000 + 40 * 1_000);
    // Over the 1 MiB cap: refused without allocating.
    let allocated = g.stats().allocated_pages;
    assert!(shared.alloc_shared(PageRequest::sleeping(PageCount(256))).is_err());
    assert_eq!(g.stats().allocated_pages, allocated);
    // A failed conversion in the middle quarantines that batch only and undoes the rest.
    shared.free_shared(p, PageCount(40)).unwrap();
    g.faults().fail_nth_decrypt(2);
    assert!(shared.alloc_shared(PageRequest::sleeping(PageCount(40))).is_err());
    let st = shared.stats();
    assert_eq!(st.quarantined_pages, 16);
    assert_eq!(st.shared_bytes, 0);
    assert_eq!(g.stats().unknown_pages, 16);
    assert_eq!(g.stats().shared_pages, 0);
    assert_eq!(g.stats().allocated_pages, allocated - 40 + 16);
    g.assert_no_violations();
}

/// With a shared-alias bit in bus addresses (`CostModel::shared_bit`), a bounce buffer's
/// bus address carries the bit; the same page's private alias (the bit clear) is not a
/// bounce buffer: unmapping or syncing it is refused as foreign and leaves the mapping
/// live. (Found by the `ops` fuzzer: `fuzz/regressions/ops/unmap-succeeded-without-a-mapping`.)
#[test]
fn the_private_alias_of_a_bounce_buffer_is_foreign() {
    use bounce_framework::sim::{PlatformKind, SimConfig};
    use bounce_framework::{Bouncer, BouncerOptions, Device, DmaAddr, LookupError};
    let mut cfg = SimConfig::new(PlatformKind::Tdx, 64 << 20, 2);
    cfg.model.shared_bit = Some(47);
    let guest = SimGuest::new(cfg);
    let b = Bouncer::new(guest.clone(), FirstFit::new(&guest, 1 << 20), BouncerOptions::default());
    let dev = Device::new("net");
    let orig = guest.alloc_private(8192).unwrap();
    let dma = b.map_single(&dev, orig, 4096, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
    assert_ne!(dma.0 & (1 << 47), 0, "bounce buffers carry the shared bit");
    let private = DmaAddr(dma.0 & !(1 << 47));
    assert!(b.is_bounce_buffer(dma) && !b.is_bounce_buffer(private));
    assert!(b.live_range(private).is_none());
    assert_eq!(
        b.unmap_single(&dev, private, 4096, DmaDirection::Bidirectional, DmaAttrs::empty()),
        Err(LookupError::Foreign(private))
    );
    assert_eq!(b.sync_single_for_cpu(&dev, private, 16, DmaDirection::FromDevice), Err(LookupError::Foreign(private)));
    assert_eq!(b.stats().maps - b.stats().unmaps, 1, "the mapping is still live");
    b.unmap_single(&dev, dma, 4096, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
}
