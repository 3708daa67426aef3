//! Regression tests for the seed's defects (SPEC §5) and the class choice around them.

mod common;

use bounce_framework::conformance::{pattern, Env};
use bounce_framework::sim::{SimDevice, SimGuest};
use bounce_framework::{Device, DmaAttrs, DmaDirection, MapError, PhysAddr, Platform, Request, Strategy};

fn env() -> Env<bounce_dynamic::Dynamic<SimGuest>> {
    Env::new(&|g: &SimGuest| common::small(g))
}

fn req(orig: PhysAddr, size: usize, min_align_mask: u64) -> Request {
    Request { min_align_mask, ..Request::new(orig, size, 0) }
}

/// Seed defect 1: a partial sync copied from the wrong source offset. Syncs at several
/// offsets inside a mapping whose data sits at an in-buffer offset (NVMe
/// `min_align_mask`) must copy exactly the original bytes at the same offset.
#[test]
fn partial_sync_copies_from_the_matching_source_offset() {
    let e = env();
    let size = 3000;
    let orig = e.buffer(size, 0x234, 1);
    let dev = e.nvme.device();
    let dma = e.bouncer.map_single(dev, orig, size, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
    let tlb = e.guest.dma_to_phys(dma);
    assert_eq!(tlb.0 & 0xfff, 0x234, "data placed at the min_align_mask offset");
    // The strategy maps every inner address to the original byte at the same offset.
    for into in [0u64, 1, 0x100, 1999, 2999] {
        let l = e.bouncer.strategy().locate(tlb + into).unwrap();
        assert_eq!(l.orig, orig + into, "offset {into}");
        assert_eq!(l.start, tlb);
        assert_eq!(l.remaining, size - into as usize);
    }
    // CPU rewrites the original; syncing 500 bytes at 1000 for the device moves exactly
    // those bytes.
    e.guest.write(orig, &pattern(2, size));
    e.bouncer.sync_single_for_device(dev, dma + 1000, 500, DmaDirection::Bidirectional).unwrap();
    let mut want = pattern(1, size);
    want[1000..1500].copy_from_slice(&pattern(2, size)[1000..1500]);
    assert_eq!(e.dev_read(&e.nvme, dma, size), want);
    // The device writes; syncing 700 bytes at 2000 for the CPU moves exactly those.
    e.nvme.write(&*e.bouncer, dma, &pattern(3, size)).unwrap();
    e.bouncer.sync_single_for_cpu(dev, dma + 2000, 700, DmaDirection::Bidirectional).unwrap();
    let mut want = pattern(2, size);
    want[2000..2700].copy_from_slice(&pattern(3, size)[2000..2700]);
    assert_eq!(e.guest.read_vec(orig, size), want);
    e.bouncer.unmap_single(dev, dma, size, DmaDirection::Bidirectional, DmaAttrs::SKIP_CPU_SYNC).unwrap();
    e.check();
}

/// Seed defect 2: the size check ignored the offset inside the buffer. With the data at
/// offset 0xe00, 512 bytes fill a 4 KiB buffer exactly; 513 must not fit there.
#[test]
fn size_check_counts_the_in_buffer_offset() {
    let e = env();
    let s = e.bouncer.strategy();
    let classes: Vec<usize> = s.pools().table().classes().iter().map(|c| c.size).collect();
    for (size, want_class) in [(512usize, 4096usize), (513, 16384), (0x1000 - 0xe00 + 0x3000, 16384)] {
        let orig = e.buffer(size, 0xe00, size as u64);
        let dma = e.bouncer.map_single(e.nvme.device(), orig, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        let tlb = e.guest.dma_to_phys(dma);
        let class = s.class_of(tlb).unwrap();
        assert_eq!(classes[class], want_class, "{size} bytes at offset 0xe00");
        // The whole mapping lies inside one buffer of that class.
        let buf_start = tlb.0 - 0xe00;
        assert_eq!(buf_start % want_class.min(64 << 10) as u64, 0);
        assert!(tlb.0 + size as u64 <= buf_start + want_class as u64);
        assert_eq!(e.dev_read(&e.nvme, dma, size), pattern(size as u64, size));
        e.check();
        e.bouncer.unmap_single(e.nvme.device(), dma, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    }
    // Directly at the strategy: a 4 KiB-class request that would overflow is never
    // served from a 4 KiB buffer.
    let r = s.reserve(&req(PhysAddr(0x10_0e00), 513, 4095)).unwrap();
    assert_eq!(classes[s.class_of(r.addr).unwrap()], 16384);
    s.release(r.addr).unwrap();
    e.check();
}

/// Seed defect 3: the largest class ignored the alignment offset when checking a
/// mapping fits. `max_mapping_size` leaves room for the worst-case offset, and a request
/// that cannot fit with its offset is refused, not handed an overflowing buffer.
#[test]
fn largest_class_counts_the_alignment_offset() {
    let e = env();
    let s = e.bouncer.strategy();
    let largest = s.pools().table().largest().size;
    let max = e.bouncer.max_mapping_size(e.nvme.device());
    assert_eq!(max, largest - 4095);
    // max bytes at the worst offset fit exactly.
    let orig = e.buffer(max, 0xfff, 9);
    let dma = e.bouncer.map_single(e.nvme.device(), orig, max, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    let tlb = e.guest.dma_to_phys(dma);
    assert_eq!(tlb.0 & 0xfff, 0xfff);
    assert_eq!(e.dev_read(&e.nvme, dma, max), pattern(9, max));
    e.check();
    e.bouncer.unmap_single(e.nvme.device(), dma, max, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    // At the strategy: largest - 0x800 bytes at offset 0xfff would overflow the buffer.
    let used = s.stats().used_bytes;
    let err = s.reserve(&req(PhysAddr(0x20_0fff), largest - 0x800, 4095)).unwrap_err();
    assert!(matches!(err, MapError::TooLarge { size, max: m } if size == largest - 0x800 && m == max), "{err}");
    assert_eq!(s.stats().used_bytes, used, "a refused request changes nothing");
    // The same size at offset 0 fits.
    let r = s.reserve(&req(PhysAddr(0x20_0000), largest - 0x800, 4095)).unwrap();
    s.release(r.addr).unwrap();
    e.check();
}

/// The bounce address keeps the device's `min_align_mask` bits in every class, and
/// alignment beyond what any class offers is a clear error.
#[test]
fn alignment_offsets_in_every_class() {
    let e = env();
    let s = e.bouncer.strategy();
    let dev2k = SimDevice::new(&e.guest, Device::new("mask2k").with_min_align_mask(0x7ff));
    for dev in [&e.nvme, &dev2k] {
        let mask = dev.device().min_align_mask;
        for size in [1usize, 100, 1000, 3000, 9000, 60000, 200_000] {
            for offset in [0usize, 0x10, 0x7ff, 0x800, 0xabc, 0xfff] {
                let orig = e.buffer(size, offset, (size + offset) as u64);
                let dma =
                    e.bouncer.map_single(dev.device(), orig, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
                assert_eq!(dma.0 & mask, orig.0 & mask, "size {size} offset {offset:#x}");
                assert_eq!(e.dev_read(dev, dma, size), pattern((size + offset) as u64, size));
                e.bouncer.unmap_single(dev.device(), dma, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
                e.guest.free_private(orig - offset as u64, size + offset);
            }
        }
    }
    let wide = Device::new("wide").with_min_align_mask((128 << 10) - 1);
    assert_eq!(e.bouncer.max_mapping_size(&wide), 0, "no class is aligned to 128 KiB");
    let err = s.reserve(&req(PhysAddr(0x1000), 100, (128 << 10) - 1)).unwrap_err();
    assert!(matches!(err, MapError::BadAlignment { .. }), "{err}");
    e.check();
}
