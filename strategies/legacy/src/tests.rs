//! Unit tests: exact addresses and free counts worked out by hand from Linux 6.12's
//! `kernel/dma/swiotlb.c`, init errors, and a property test of random map/unmap
//! sequences audited after every step.
//!
//! Every scripted test builds its pool in a fresh simulated guest whose memory starts at
//! 1 MiB, after taking one page there, so the pool starts at `0x10_1000`: slot `k` is at
//! `0x10_1000 + k * 0x800`, which is page aligned for even `k` and has bit 11 = `k & 1`.
//! The TDX shared bit (47) is set in the bus address the search checks alignment on
//! (`tbl_dma_addr`), far above every mask used.

use std::vec::Vec;

use bounce_framework::sim::{PlatformKind, SimGuest};
use bounce_framework::{InitError, MapError, PhysAddr, ReleaseError, Request, Strategy};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

use crate::{Legacy, LegacyConfig, SlotIndex, IO_TLB_SEGSIZE, IO_TLB_SHIFT};

const POOL: u64 = 0x10_1000;

fn pool(nslabs: usize, nareas: usize) -> Legacy<SimGuest> {
    let g = SimGuest::with(PlatformKind::Tdx, 16 << 20, 2);
    let first = g.alloc_private(4096).unwrap();
    assert_eq!(first, PhysAddr(0x10_0000));
    let l =
        Legacy::new(g, LegacyConfig { nslabs: Some(nslabs), nareas: Some(nareas), ..LegacyConfig::default() }).unwrap();
    assert_eq!(l.pool_start(), PhysAddr(POOL));
    l
}

fn req(orig: u64, size: usize, alloc_align_mask: u64, min_align_mask: u64, cpu: usize) -> Request {
    Request {
        orig: PhysAddr(orig),
        size,
        alloc_size: size,
        alloc_align_mask,
        min_align_mask,
        dma_mask: u64::MAX,
        cpu,
        may_block: false,
    }
}

fn map(l: &Legacy<SimGuest>, r: &Request) -> u64 {
    l.reserve(r).unwrap_or_else(|e| panic!("{r:?}: {e}")).addr.0
}

fn list(l: &Legacy<SimGuest>, i: usize) -> u16 {
    l.slot(SlotIndex(i)).unwrap().list
}

fn lists(l: &Legacy<SimGuest>, r: core::ops::Range<usize>) -> Vec<u16> {
    r.map(|i| list(l, i)).collect()
}

fn audit(l: &Legacy<SimGuest>) -> bounce_framework::AuditReport {
    l.audit().unwrap_or_else(|e| panic!("{e}"))
}

/// Alignment masks, page alignment, `min_align_mask` 4095 with odd original offsets and
/// padding slots, and the release merges, in one area of 1024 slots.
#[test]
fn alignment_and_padding_addresses_match_linux() {
    let l = pool(1024, 1);

    // 1. 100 bytes, no masks. swiotlb_tbl_map_single: offset = 0, size = ALIGN(100, 1)
    // = 100. search: 100 < PAGE_SIZE so no page alignment; alloc_align_mask = 0x7ff,
    // iotlb_align_mask = 0, stride = get_max_slots(0x7ff) = 1. index 0: 0x101000 & 0x7ff
    // = 0, list[0] = 128 >= 1 -> slot 0. area->index = 1.
    assert_eq!(map(&l, &req(0x5000_0000, 100, 0, 0, 0)), 0x10_1000);
    assert_eq!(l.area(0).unwrap().index, 1);

    // 2. 4096 bytes, no masks: "alloc_size >= PAGE_SIZE" -> alloc_align_mask = 0xfff,
    // stride = 2. index 1: 0x101800 & 0xfff != 0 -> index 2 (slots_checked 1). slot 2 at
    // 0x102000 is aligned, list 126 >= 2 -> found. Slots 2, 3 in use; the free slot in
    // front, 1, gets "list = ++count" = 1; slot 0 is in use (list 0), the loop stops.
    // area->index = 2 + 2 = 4.
    assert_eq!(map(&l, &req(0x5000_1000, 4096, 0, 0, 0)), 0x10_2000);
    assert_eq!(lists(&l, 0..5), [0, 1, 0, 0, 124]);

    // 3. 100 bytes with alloc_align_mask 0x3fff (16 KiB): size = ALIGN(100, 0x4000) =
    // 16384, nslots 8; stride = get_max_slots(0x3fff) = 8. index 4: 0x103000 & 0x3fff
    // != 0, index 5: 0x103800 no, index 6: 0x104000 aligned, list 122 >= 8 -> slot 6.
    // Slots 5 and 4 in front get 1 and 2. area->index = 6 + 8 = 14.
    assert_eq!(map(&l, &req(0x5000_2000, 100, 0x3fff, 0, 0)), 0x10_4000);
    assert_eq!(lists(&l, 3..15), [0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 114]);
    // alloc_size per slot: alloc_size - (offset + ((i - slot_index) << IO_TLB_SHIFT)).
    assert_eq!(l.slot(SlotIndex(6)).unwrap().alloc_size, 16384);
    assert_eq!(l.slot(SlotIndex(13)).unwrap().alloc_size, 16384 - 7 * 2048);

    // 4. NVMe: min_align_mask 0xfff, orig offset 0xa00 (bit 11 set), 512 bytes.
    // swiotlb_align_offset(dev, 0, orig) = 0xa00 & 0xfff & 0x7ff = 0x200, size = 0x400.
    // search: iotlb_align_mask != 0 so no page alignment; alloc_align_mask = 0x7ff,
    // iotlb_align_mask = 0xfff & ~0x7ff = 0x800, stride = get_max_slots(0x800) = 2.
    // index 14: 0x108000 & 0x800 = 0 != orig & 0x800 -> index 15 (+1). 0x108800 matches,
    // list 113 -> slot 15; slot 14 in front gets 1. tlb_addr = 0x108800 + 0x200.
    let a = map(&l, &req(0x7_0000_0a00, 512, 0, 0xfff, 0));
    assert_eq!(a, 0x10_8a00);
    assert_eq!(a & 0xfff, 0xa00);
    assert_eq!(lists(&l, 14..17), [1, 0, 112]);

    // 5. Padding: min_align_mask 0xfff and alloc_align_mask 0xfff (iommu-dma's granule),
    // orig offset 0xe00, 3000 bytes. offset = 0xe00 & 0xfff & (0xfff | 0x7ff) = 0xe00,
    // size = ALIGN(3000 + 0xe00, 0x1000) = 8192, 4 slots. search: its own offset is
    // swiotlb_align_offset(dev, 0, orig) = 0x600; alloc_align_mask 0xfff, iotlb_align_mask
    // 0xfff & ~0xfff = 0, stride 2. index 16: 0x109000 aligned, list 112 -> slot 16.
    // map_single: pad_slots = 0xe00 >> 11 = 1, offset &= 0x7ff -> 0x600, index = 17,
    // tlb_addr = 0x109800 + 0x600 = 0x109e00; orig_addr set on slots 17..19 only.
    let orig5 = 0x7_0000_1e00;
    let a5 = map(&l, &req(orig5, 3000, 0xfff, 0xfff, 0));
    assert_eq!(a5, 0x10_9e00);
    assert_eq!(a5 & 0xfff, orig5 & 0xfff);
    let s16 = l.slot(SlotIndex(16)).unwrap();
    let s17 = l.slot(SlotIndex(17)).unwrap();
    assert_eq!((s16.orig_addr, s16.alloc_size, s16.head_dist), (None, 8192 - 0x600, None));
    assert_eq!((s17.orig_addr, s17.pad_slots, s17.alloc_size), (Some(PhysAddr(orig5)), 1, 8192 - 0x600 - 2048));
    assert_eq!(l.slot(SlotIndex(19)).unwrap().orig_addr, Some(PhysAddr(orig5 + 2 * 2048)));
    assert_eq!(l.slot(SlotIndex(19)).unwrap().alloc_size, 512);
    // swiotlb_bounce() for an address 2100 bytes in (0x10a634, slot 18): tlb_offset =
    // (0x10a634 & 0x7ff) - 0x600 = 52, orig_addr[18] + 52 = orig + 2100. Linux would allow
    // alloc_size[18] - 52 = 2508 bytes (to the end of the 8 KiB allocation); bounce
    // clamps to the 3000 - 2100 = 900 bytes mapped.
    let loc = l.locate(PhysAddr(a5 + 2100)).unwrap();
    assert_eq!((loc.start.0, loc.orig.0, loc.remaining), (a5, orig5 + 2100, 900));

    // 6. min_align_mask 0xfff, orig offset 0x345 (bit 11 clear), 5000 bytes:
    // offset 0x345, size 5837, 3 slots; iotlb_align_mask 0x800, stride 2. index 20:
    // 0x10b000 has bit 11 clear like orig -> slot 20, tlb_addr 0x10b345.
    assert_eq!(map(&l, &req(0x7_0000_2345, 5000, 0, 0xfff, 0)), 0x10_b345);
    assert_eq!(l.area(0).unwrap(), crate::AreaView { used: 1 + 2 + 8 + 1 + 4 + 3, index: 23 });
    assert_eq!(audit(&l).live_mappings, 6);

    // Release of mapping 2 (slots 2, 3): index + nslots = 4 < ALIGN(3, 128) so count =
    // list[4] = 2; step 1 gives slot 3 = 3, slot 2 = 4; step 2 merges slot 1 (list 1 !=
    // 0) to 5 and stops at slot 0 (in use).
    let rel = l.release(PhysAddr(0x10_2000)).unwrap();
    assert_eq!((rel.orig.0, rel.size), (0x5000_1000, 4096));
    assert_eq!(lists(&l, 0..7), [0, 5, 4, 3, 2, 1, 0]);

    // Release of mapping 5 by its tlb_addr: offset = 0x600, index = 17 - pad_slots = 16,
    // nslots = nr_slots(alloc_size[16] + 0x600) = nr_slots(8192) = 4; slot 20 is in use so
    // count starts at 0: lists 16..19 = 4, 3, 2, 1; slot 15 in use stops step 2.
    assert_eq!(l.release(PhysAddr(0x10_aa00)), Err(ReleaseError::NotMapped), "padding of nothing");
    assert_eq!(l.release(PhysAddr(a5 + 16)), Err(ReleaseError::NotStart { start: PhysAddr(a5) }));
    assert_eq!(l.release(PhysAddr(0x10_9800)), Err(ReleaseError::NotMapped), "before the data start");
    assert_eq!(l.release(PhysAddr(0x10_9000)), Err(ReleaseError::NotMapped), "a padding slot");
    let rel = l.release(PhysAddr(a5)).unwrap();
    assert_eq!((rel.orig.0, rel.size), (orig5, 3000));
    assert_eq!(lists(&l, 15..21), [0, 4, 3, 2, 1, 0]);
    assert_eq!(l.release(PhysAddr(a5)), Err(ReleaseError::NotMapped), "double unmap");
    assert_eq!(l.release(PhysAddr(0x10_0000)), Err(ReleaseError::Foreign));
    let r = audit(&l);
    assert_eq!((r.live_mappings, r.used_bytes), (4, (1 + 8 + 1 + 3) * 2048));
    assert_eq!(l.area(0).unwrap().used, 13);
}

/// Wrap-around at the end of an area and the fall-back to the next area, with two areas
/// of 256 slots (segments 0-1 in area 0, segments 2-3 in area 1).
#[test]
fn wrap_around_at_the_end_of_an_area() {
    let l = pool(512, 2);
    let len100 = 100 * 2048;
    let len40 = 40 * 2048;
    // CPU 1 searches area 1 (1 & (2 - 1)), slot_base 256, from index 0. 100 slots >=
    // PAGE_SIZE -> page alignment, stride 2. Slot 256 (0x181000) has list 128 -> found;
    // area->index = 100.
    assert_eq!(map(&l, &req(0x4000_0000, len100, 0, 0, 1)), 0x18_1000);
    // index 100 = slot 356: list 28 < 100, stride on to index 128 = slot 384 (0x1c1000,
    // first slot of segment 3), list 128 -> found; area->index = 228.
    assert_eq!(map(&l, &req(0x4010_0000, len100, 0, 0, 1)), 0x1c_1000);
    assert_eq!(l.area(1).unwrap(), crate::AreaView { used: 200, index: 228 });
    assert_eq!(lists(&l, 482..486), [0, 0, 28, 27]);
    // 40 slots: index 228..254 (slots 484..510, lists 28..2) are too short, index 256
    // wraps to 0 (wrap_area_index), then 0..226 are in use or too short (slot 356.. has
    // 28): after 128 strides slots_checked = 256 = area_nslabs -> not found. Area 0
    // (++i >= nareas -> 0) from its index 0: slot 0 at 0x101000 -> found.
    assert_eq!(map(&l, &req(0x4020_0000, len40, 0, 0, 1)), 0x10_1000);
    assert_eq!(l.area(0).unwrap(), crate::AreaView { used: 40, index: 40 });
    assert_eq!(l.area(1).unwrap().index, 228, "a failed search leaves the index alone");
    // Release the first mapping (slots 256..355): 356 < ALIGN(257, 128) = 384 so count =
    // list[356] = 28 and slots 355..256 become 29..128; slot 256 starts a segment, so
    // step 2 does nothing (slots 254, 255 are the free tail of area 0's segment 1).
    l.release(PhysAddr(0x18_1000)).unwrap();
    assert_eq!(lists(&l, 254..258), [2, 1, 128, 127]);
    assert_eq!(list(&l, 355), 29);
    // 40 slots on CPU 1 again: index 228..254 too short, wrap to 0: slot 256 has 128.
    assert_eq!(map(&l, &req(0x4030_0000, len40, 0, 0, 1)), 0x18_1000);
    assert_eq!(l.area(1).unwrap(), crate::AreaView { used: 140, index: 40 });
    audit(&l);
}

/// Fragmentation within one segment: enough free slots, none contiguous enough, gives
/// "swiotlb buffer is full" without looping; merging two holes serves the request.
#[test]
fn fragmentation_within_a_segment() {
    let l = pool(128, 1);
    // 32 mappings of 8 KiB (4 slots, page aligned, stride 2) fill the segment: mapping k
    // at slot 4k, 0x101000 + k * 0x2000. The last sets area->index = wrap(128) = 0.
    let mut addrs = Vec::new();
    for k in 0..32u64 {
        let a = map(&l, &req(0x2000_0000 + k * 0x2000, 8192, 0, 0, 0));
        assert_eq!(a, POOL + k * 0x2000);
        addrs.push(a);
    }
    assert_eq!(l.area(0).unwrap(), crate::AreaView { used: 128, index: 0 });
    // Full: "if (unlikely(nslots > pool->area_nslabs - area->used)) goto not_found".
    assert_eq!(l.reserve(&req(0x3000_0000, 100, 0, 0, 0)), Err(crate::pool_full(100, 128, 128)));
    // Free the odd mappings: each hole of 4 gets lists 4, 3, 2, 1 (count = list of the
    // next slot, in use = 0; the slot in front is in use).
    for k in (1..32).step_by(2) {
        l.release(PhysAddr(addrs[k])).unwrap();
    }
    assert_eq!(lists(&l, 0..12), [0, 0, 0, 0, 4, 3, 2, 1, 0, 0, 0, 0]);
    assert_eq!(lists(&l, 124..128), [4, 3, 2, 1]);
    // 6 slots (12 KiB): 64 slots are free but no run is longer than 4. The search strides
    // over all 128 slots once and fails: "swiotlb buffer is full" with Linux's numbers.
    assert_eq!(l.reserve(&req(0x3000_0000, 12288, 0, 0, 0)), Err(crate::pool_full(12288, 128, 64)));
    // Free mapping 2 (slots 8..11): count = list[12] = 4, so 11..8 = 5..8; step 2 merges
    // the hole in front: slots 7..4 = 9..12, stopping at slot 3 (in use).
    l.release(PhysAddr(addrs[2])).unwrap();
    assert_eq!(lists(&l, 3..17), [0, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    // Now 6 slots fit at slot 4 (index 0, 2 in use; index 4 list 12 >= 6).
    assert_eq!(map(&l, &req(0x3000_0000, 12288, 0, 0, 0)), POOL + 4 * 2048);
    assert_eq!(lists(&l, 3..17), [0, 0, 0, 0, 0, 0, 0, 6, 5, 4, 3, 2, 1, 0]);
    assert_eq!(l.area(0).unwrap(), crate::AreaView { used: 66, index: 10 });
    audit(&l);
}

/// CVE-2023-52790: a pool smaller than one segment. The free counts stop at the pool's
/// end (`min(IO_TLB_SEGSIZE - io_tlb_offset(i), mem->nslabs - i)`), so no mapping runs
/// past it, and release does not read the slot after the last.
#[test]
fn pool_smaller_than_a_segment() {
    let l = pool(3, 1);
    assert_eq!(lists(&l, 0..3), [3, 2, 1]);
    // 4 slots never fit, even though the segment would have room.
    assert!(
        matches!(l.reserve(&req(0x1000, 8192, 0, 0, 0)), Err(MapError::Exhausted { detail, .. }) if detail.fact("total slots") == Some(3))
    );
    let a = map(&l, &req(0x1000, 3 * 2048, 0, 0, 0));
    assert_eq!(a, POOL);
    assert!(
        matches!(l.reserve(&req(0x1000, 1, 0, 0, 0)), Err(MapError::Exhausted { detail, .. }) if detail.fact("used slots") == Some(3))
    );
    l.release(PhysAddr(a)).unwrap();
    assert_eq!(lists(&l, 0..3), [3, 2, 1]);
    // 2 slots at the odd slot 1 (page-unaligned) and 1 slot before it.
    assert_eq!(map(&l, &req(0x1000, 100, 0, 0, 0)), POOL);
    assert_eq!(map(&l, &req(0x1000, 3000, 0, 0, 0)), POOL + 2048);
    l.release(PhysAddr(POOL + 2048)).unwrap();
    assert_eq!(lists(&l, 0..3), [0, 2, 1]);
    audit(&l);
}

#[test]
fn max_mapping_size_follows_min_align_mask() {
    let l = pool(1024, 2);
    let dev = |m| bounce_framework::Device::new("d").with_min_align_mask(m);
    assert_eq!(l.max_mapping_size(&dev(0)), 262_144);
    assert_eq!(l.max_mapping_size(&dev(4095)), 258_048);
    assert_eq!(l.max_mapping_size(&dev(0x7ff)), 260_096);
    assert_eq!(l.max_mapping_size(&dev(u64::MAX)), 0);
    // The largest NVMe mapping at the worst original offset still fits a segment.
    let a = map(&l, &req(0x7_0000_0fff, 258_048, 0, 0xfff, 0));
    assert_eq!(a & 0xfff, 0xfff);
    assert_eq!(l.reserve(&req(0x1000, 258_049, 0, 0xfff, 0)), Err(MapError::TooLarge { size: 258_049, max: 258_048 }));
    audit(&l);
}

#[test]
fn bad_requests_change_nothing() {
    let l = pool(1024, 2);
    map(&l, &req(0x1000, 5000, 0, 0, 0));
    let before = audit(&l);
    let bad = [
        (req(0x1000, 0, 0, 0, 0), MapError::ZeroSize),
        (req(0x1000, 100, 0x1000, 0, 0), MapError::BadAlignment { size: 100, align_mask: 0x1000, min_align_mask: 0 }),
        (req(0x1000, 100, 0, 0x10ff, 0), MapError::BadAlignment { size: 100, align_mask: 0, min_align_mask: 0x10ff }),
        (req(0x1000, 100, 1 << 40, 0, 0), MapError::BadAlignment { size: 100, align_mask: 1 << 40, min_align_mask: 0 }),
        // ALIGN(200 KiB, 512 KiB) = 512 KiB: more than one segment (Linux: "swiotlb
        // buffer is full" on an empty pool).
        (
            req(0x1000, 200 << 10, 0x7_ffff, 0, 0),
            MapError::BadAlignment { size: 200 << 10, align_mask: 0x7_ffff, min_align_mask: 0 },
        ),
        (req(0x1000, 300 << 10, 0, 0, 0), MapError::TooLarge { size: 300 << 10, max: 256 << 10 }),
    ];
    for (r, e) in bad {
        assert_eq!(l.reserve(&r), Err(e), "{r:?}");
        assert_eq!(audit(&l), before);
    }
    // 150 KiB aligned to 64 KiB: size = ALIGN(153600, 0x10000) = 196608, 96 slots, stride
    // 32. From area 0's index 3 the search steps by one to index 30 (0x110000, the first
    // 64 KiB-aligned slot), where list = 98 >= 96.
    assert_eq!(map(&l, &req(0x1000, 150 << 10, 0xffff, 0, 0)), 0x11_0000);
    audit(&l);
}

#[test]
fn init_errors_are_clear_and_allocate_nothing() {
    let g = SimGuest::with(PlatformKind::Tdx, 16 << 20, 2);
    let cfg = |n, a| LegacyConfig { nslabs: n, nareas: a, ..LegacyConfig::default() };
    let cases = [
        (cfg(Some(0), None), "at least one 2 KiB slot"),
        (cfg(Some(1024), Some(0)), "at least one area"),
        (cfg(Some(1024), Some(3)), "power of two"),
        (cfg(Some(512), Some(8)), "8 areas need at least 1024 slots"),
        (cfg(Some(100), Some(2)), "2 areas need at least 256 slots"),
        (cfg(Some(384), Some(2)), "whole 128-slot segments"),
    ];
    for (c, want) in cases {
        match Legacy::new(g.clone(), c) {
            Err(InitError::Config(msg)) => assert!(msg.contains(want), "{c:?}: {msg}"),
            other => panic!("{c:?}: expected a config error, got {other:?}"),
        }
    }
    // More than the guest has, no shrinking: the allocation error, nothing left behind.
    g.alloc_private(4096).unwrap();
    let huge = LegacyConfig { shrink_on_failure: false, ..cfg(Some(16384), None) };
    assert!(matches!(Legacy::new(g.clone(), huge), Err(InitError::Grow(_))));
    assert_eq!(g.stats().pages_decrypted, 0);
    // With shrinking (Linux): 16384 -> 8192 -> 4096 slots (8 MiB fits in 16 MiB).
    let l = Legacy::new(g.clone(), cfg(Some(16384), Some(2))).unwrap();
    assert_eq!((l.geometry().nslabs, l.geometry().nareas), (4096, 2));
    let logs = g.logs();
    assert!(logs.iter().any(|(_, m)| m.contains("adjusted 16384 -> 8192 slabs")), "{logs:?}");
    assert!(logs.iter().any(|(_, m)| m.contains("adjusted 8192 -> 4096 slabs")), "{logs:?}");
}

#[test]
fn default_areas_follow_cpus_and_segments() {
    let g = SimGuest::with(PlatformKind::Tdx, 16 << 20, 4);
    let l = Legacy::new(g.clone(), LegacyConfig::with_slots(2048)).unwrap();
    assert_eq!(l.geometry().nareas, 4);
    let l2 = Legacy::new(g.clone(), LegacyConfig::with_slots(384)).unwrap();
    assert_eq!(l2.geometry().nareas, 1, "384 slots do not split into 2 or 4 areas of whole segments");
    let l3 = Legacy::new(g.clone(), LegacyConfig::with_slots(256)).unwrap();
    assert_eq!(l3.geometry().nareas, 2);
    // Every request lands in its CPU's area first.
    for cpu in 0..4 {
        let a = map(&l, &req(0x1000, 100, 0, 0, cpu));
        let slot = l.slot_of(PhysAddr(a)).unwrap().0;
        assert_eq!(slot / 512, cpu);
    }
    audit(&l);
}

/// The audit is not vacuous: each kind of inconsistency is reported, and the pool audits
/// clean again once it is undone.
#[test]
fn audit_catches_corruption() {
    use core::sync::atomic::Ordering::Relaxed;
    let l = pool(256, 2);
    // 5000 bytes >= PAGE_SIZE: page aligned, slots 0..=2 in area 0; 100 bytes on CPU 1:
    // slot 128 in area 1.
    assert_eq!(map(&l, &req(0x9000, 5000, 0, 0, 0)), POOL);
    assert_eq!(map(&l, &req(0x9000, 100, 0, 0, 1)), POOL + 128 * 2048);
    audit(&l);
    let check = |what: &str, want: &str, corrupt: &dyn Fn(), undo: &dyn Fn()| {
        corrupt();
        let e = l.audit().expect_err(what);
        assert!(e.0.contains(want), "{what}: {e}");
        undo();
        audit(&l);
    };
    check("free count off by one", "slot 9: free count 119 but 7 free slots follow", &|| l.free.set(10, 7), &|| {
        l.free.set(10, 118);
    });
    check(
        "a mapped slot marked free",
        "slot 1 of the mapping at slot 0 has free count 5",
        &|| l.free.set(1, 5),
        &|| l.free.set(1, 0),
    );
    check("a free slot marked used by nobody", "free count 79 but 0 free slots follow", &|| l.free.set(50, 0), &|| {
        l.free.set(50, 78);
    });
    check(
        "wrong original address",
        "data slot 2 (#2) of the mapping at slot 0 is wrong",
        &|| l.slots[2].orig_addr.store(0x1234, Relaxed),
        &|| l.slots[2].orig_addr.store(0x9000 + 2 * 2048, Relaxed),
    );
    check(
        "a second head inside a mapping",
        "data slot 2 (#2) of the mapping at slot 0 is wrong",
        &|| l.slots[2].head_dist.store(0, Relaxed),
        &|| l.slots[2].head_dist.store(2, Relaxed),
    );
    check("wrong alloc_size", "slot 1: alloc_size", &|| l.slots[1].alloc_size.store(1, Relaxed), &|| {
        l.slots[1].alloc_size.store(5000 - 2048, Relaxed);
    });
    check("area used", "area 1: used 2 but its mappings hold 1 slots", &|| l.areas[1].lock().used += 1, &|| {
        l.areas[1].lock().used -= 1;
    });
    check("area index", "area 0: search index 128 outside", &|| l.areas[0].lock().index = 128, &|| {
        l.areas[0].lock().index = 3;
    });
    check("global counter", "used counter 10240 bytes but mappings hold 4 slots", &|| l.usage.add(2048), &|| {
        l.usage.sub(2048);
    });
    check(
        "a stale field in a free slot",
        "free slot 20 is not cleared",
        &|| l.slots[20].pad_slots.store(1, Relaxed),
        &|| l.slots[20].pad_slots.store(0, Relaxed),
    );
}

// ----------------------------------------------------------------------------------
// Property test: random sequences of reserve/release against the audit.

#[derive(Clone, Debug)]
enum Op {
    Map { len: usize, page_off: u64, high: u64, align: u8, min_align: u8, cpu: usize },
    Unmap(usize),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    let len = prop_oneof![1usize..=2048, 1usize..=16384, 1usize..=262_144];
    prop_oneof![
        3 => (len, 0u64..4096, 0u64..1 << 20, 0u8..4, 0u8..4, 0usize..4).prop_map(
            |(len, page_off, high, align, min_align, cpu)| Op::Map { len, page_off, high, align, min_align, cpu }
        ),
        2 => any::<usize>().prop_map(Op::Unmap),
    ]
}

struct LiveMapping {
    addr: u64,
    orig: u64,
    len: usize,
    first: usize,
    last: usize,
}

/// Whether any area holds `nslots` free contiguous slots (the search is exhaustive for
/// stride 1).
fn some_area_has_room(l: &Legacy<SimGuest>, nslots: usize) -> bool {
    (0..l.geometry().nslabs).any(|i| usize::from(list(l, i)) >= nslots)
}

fn run_ops(l: &Legacy<SimGuest>, ops: &[Op]) {
    let mut live: Vec<LiveMapping> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let before = audit(l);
        match *op {
            Op::Map { len, page_off, high, align, min_align, cpu } => {
                let aam = [0, 0, 0xfff, 0x3fff][usize::from(align)];
                let mam = [0, 0x7ff, 0xfff, 0xffff][usize::from(min_align)];
                let orig = (high << 12) | page_off;
                let r = req(orig, len, aam, mam, cpu);
                match l.reserve(&r) {
                    Ok(res) => {
                        let a = res.addr.0;
                        assert_eq!(a & mam, orig & mam, "step {step}: min_align_mask bits");
                        // The allocation starts tbl_offset bytes before the data and is
                        // aligned to alloc_align_mask | 0x7ff (page for >= 4 KiB unmasked).
                        let off = orig & mam & (aam | 0x7ff);
                        let mut align_mask = aam | 0x7ff;
                        if aam == 0 && mam == 0 && len >= 4096 {
                            align_mask = 0xfff;
                        }
                        assert_eq!((a - off) & align_mask, 0, "step {step}: allocation alignment");
                        let first = ((a - POOL) >> IO_TLB_SHIFT) as usize;
                        let last = ((a + len as u64 - 1 - POOL) >> IO_TLB_SHIFT) as usize;
                        assert_eq!(first / IO_TLB_SEGSIZE, last / IO_TLB_SEGSIZE, "step {step}: crosses a segment");
                        for m in &live {
                            assert!(last < m.first || first > m.last, "step {step}: overlaps {:#x}", m.addr);
                        }
                        let loc = l.locate(PhysAddr(a + len as u64 - 1)).unwrap();
                        assert_eq!((loc.start.0, loc.orig.0, loc.remaining), (a, orig + len as u64 - 1, 1));
                        live.push(LiveMapping { addr: a, orig, len, first, last });
                    }
                    Err(MapError::Exhausted { .. }) => {
                        assert_eq!(audit(l), before, "step {step}: a failed reserve changed the pool");
                        if aam == 0 && mam == 0 && len < 4096 {
                            // stride 1: every slot of every area was looked at.
                            assert!(!some_area_has_room(l, len.div_ceil(2048)), "step {step}: missed room");
                        }
                    }
                    Err(e @ (MapError::TooLarge { .. } | MapError::BadAlignment { .. })) => {
                        assert!(len > crate::max_mapping_size_for(mam) || aam > 0, "step {step}: {e}");
                        assert_eq!(audit(l), before);
                    }
                    Err(e) => panic!("step {step}: {e}"),
                }
            }
            Op::Unmap(i) if !live.is_empty() => {
                let m = live.swap_remove(i % live.len());
                if m.len > 1 {
                    let inner = PhysAddr(m.addr + 1);
                    assert_eq!(l.release(inner), Err(ReleaseError::NotStart { start: PhysAddr(m.addr) }));
                }
                let rel = l.release(PhysAddr(m.addr)).unwrap();
                assert_eq!((rel.orig.0, rel.size), (m.orig, m.len));
                assert!(l.locate(PhysAddr(m.addr)).is_none());
            }
            Op::Unmap(_) => {}
        }
        let r = audit(l);
        assert_eq!(r.live_mappings, live.len(), "step {step}");
        assert_eq!(r.used_bytes, l.stats().used_bytes);
    }
    for m in live {
        l.release(PhysAddr(m.addr)).unwrap();
    }
    let r = audit(l);
    assert_eq!((r.live_mappings, r.used_bytes), (0, 0));
    for a in 0..l.geometry().nareas {
        assert_eq!(l.area(a).unwrap().used, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_the_metadata_consistent(ops in proptest::collection::vec(op(), 1..80)) {
        let l = pool(512, 2);
        run_ops(&l, &ops);
    }

    #[test]
    fn random_sequences_on_a_tiny_pool(ops in proptest::collection::vec(op(), 1..40)) {
        let l = pool(100, 1);
        run_ops(&l, &ops);
    }
}
