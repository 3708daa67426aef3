//! The conformance suite (feature `conformance`): every DMA-API rule, checked on the
//! simulated guest with the device model, over any strategy.
//!
//! A strategy crate instantiates it with one line in a test module:
//!
//! ```ignore
//! bounce_framework::conformance_suite!(|guest: &SimGuest| MyStrategy::new(guest.clone(), config));
//! ```
//!
//! The factory gets a 128 MiB TDX guest with 2 CPUs (shared bit 47 set in bus
//! addresses) and must return a strategy whose pool holds between 1 MiB and 32 MiB, so
//! that exhaustion is reachable; the suite runs the strategy's background work until it
//! is idle before each case ("settle"). Every case checks the strategy's `audit()` and
//! that the device model saw no violation.

use std::sync::Arc;
use std::vec::Vec;

use proptest::prelude::*;
use proptest::strategy::Strategy as _;

use crate::addr::{DmaAddr, PhysAddr, PAGE_SIZE};
use crate::bouncer::{Bouncer, BouncerOptions, SgEntry};
use crate::dma::{Device, DmaAttrs, DmaDirection};
use crate::error::{FailureReason, LookupError, MapError};
use crate::platform::Platform;
use crate::sim::{count_allocations, PageState, PlatformKind, SimConfig, SimDevice, SimGuest};
use crate::strategy::Strategy;

/// Guest memory of the suite's guest.
pub const SUITE_MEMORY: usize = 128 << 20;

/// A deterministic byte pattern: different for every seed and offset.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One strategy on a simulated guest, with two devices.
pub struct Env<S: Strategy> {
    /// The guest.
    pub guest: SimGuest,
    /// The bouncer under test.
    pub bouncer: Arc<Bouncer<SimGuest, S>>,
    /// A plain 64-bit device.
    pub net: SimDevice,
    /// An NVMe-like device: `min_align_mask` 4095.
    pub nvme: SimDevice,
}

impl<S: Strategy> Env<S> {
    /// Builds the guest and the strategy, then settles the pools.
    pub fn new(make: &dyn Fn(&SimGuest) -> S) -> Self {
        Self::with_options(make, BouncerOptions::default())
    }

    /// As [`Env::new`] with bouncer options.
    pub fn with_options(make: &dyn Fn(&SimGuest) -> S, options: BouncerOptions) -> Self {
        let mut cfg = SimConfig::new(PlatformKind::Tdx, SUITE_MEMORY, 2);
        cfg.track_copies = true;
        let guest = SimGuest::new(cfg);
        let strategy = make(&guest);
        let bouncer = Arc::new(Bouncer::new(guest.clone(), strategy, options));
        let net = SimDevice::new(&guest, Device::new("virtio-net"));
        let nvme =
            SimDevice::new(&guest, Device::new("nvme0").with_min_align_mask(4095).with_max_segment_size(1 << 20));
        let env = Self { guest, bouncer, net, nvme };
        env.settle();
        env
    }

    /// Runs background work until the strategy says it is idle (bounded).
    pub fn settle(&self) {
        for _ in 0..10_000 {
            if !self.bouncer.background_pending() {
                return;
            }
            self.bouncer.run_background();
        }
        panic!("strategy {} still has background work after 10000 runs", self.bouncer.strategy().name());
    }

    /// A private buffer of `len` bytes at page offset `offset`, filled with
    /// `pattern(seed)`; returns the address of its first byte.
    pub fn buffer(&self, len: usize, offset: usize, seed: u64) -> PhysAddr {
        let base = self.guest.alloc_private(len + offset).expect("guest memory for test buffers");
        let a = base + offset as u64;
        self.guest.write(a, &pattern(seed, len));
        a
    }

    /// Audits the strategy and checks the device model saw nothing wrong.
    pub fn check(&self) {
        if let Err(e) = self.bouncer.strategy().audit() {
            panic!("{e}");
        }
        self.guest.assert_no_violations();
    }

    /// Reads a live mapping through the device.
    pub fn dev_read(&self, dev: &SimDevice, dma: DmaAddr, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        dev.read(&*self.bouncer, dma, &mut v).expect("device read of a live mapping");
        v
    }

    fn used(&self) -> usize {
        self.bouncer.pool_stats().used_bytes
    }
}

fn env<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) -> Env<S> {
    Env::new(make)
}

const SIZES: &[usize] = &[1, 100, 512, 1500, 2048, 2049, 4096, 5000, 16384, 65536];

/// Map copies original → bounce for every direction (CVE-2022-0854), into shared
/// memory the device can reach.
pub fn map_copies_in_every_direction<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    for (i, &size) in SIZES.iter().enumerate() {
        for dir in DmaDirection::ALL {
            let seed = (i * 3 + dir as usize) as u64;
            let orig = e.buffer(size, 0, seed);
            let dma = e.bouncer.map_single(e.net.device(), orig, size, dir, DmaAttrs::empty()).unwrap();
            assert!(e.bouncer.is_bounce_buffer(dma), "{dma} not reported as a bounce buffer");
            let phys = e.guest.dma_to_phys(dma);
            assert!(e.guest.range_is(phys, size, PageState::Shared), "bounce buffer {phys} is not shared memory");
            assert_eq!(
                e.dev_read(&e.net, dma, size),
                pattern(seed, size),
                "{size} bytes {dir}: device sees wrong data"
            );
            e.bouncer.unmap_single(e.net.device(), dma, size, dir, DmaAttrs::empty()).unwrap();
            e.check();
        }
    }
    let s = e.bouncer.stats();
    assert_eq!(s.maps, s.unmaps);
    assert_eq!(s.inflight_bytes, 0);
}

/// Unmap copies bounce → original for `FromDevice` and `Bidirectional` only.
pub fn unmap_copies_back_per_direction<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    for &size in SIZES {
        for dir in DmaDirection::ALL {
            let orig = e.buffer(size, 0, 1);
            let dma = e.bouncer.map_single(e.net.device(), orig, size, dir, DmaAttrs::empty()).unwrap();
            e.net.write(&*e.bouncer, dma, &pattern(2, size)).unwrap();
            e.bouncer.unmap_single(e.net.device(), dma, size, dir, DmaAttrs::empty()).unwrap();
            let want = if dir.from_device() { pattern(2, size) } else { pattern(1, size) };
            assert_eq!(e.guest.read_vec(orig, size), want, "{size} bytes {dir}: wrong original after unmap");
            e.check();
        }
    }
}

/// `SKIP_CPU_SYNC`: map still copies in; unmap does not copy back.
pub fn skip_cpu_sync<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    for dir in DmaDirection::ALL {
        let orig = e.buffer(3000, 0, 5);
        let dma = e.bouncer.map_single(e.net.device(), orig, 3000, dir, DmaAttrs::SKIP_CPU_SYNC).unwrap();
        assert_eq!(e.dev_read(&e.net, dma, 3000), pattern(5, 3000), "map with SKIP_CPU_SYNC must still copy in");
        e.net.write(&*e.bouncer, dma, &pattern(6, 3000)).unwrap();
        e.bouncer.unmap_single(e.net.device(), dma, 3000, dir, DmaAttrs::SKIP_CPU_SYNC).unwrap();
        assert_eq!(e.guest.read_vec(orig, 3000), pattern(5, 3000), "unmap with SKIP_CPU_SYNC copied back");
        e.check();
    }
}

/// Syncs copy per direction: for-device original → bounce for `ToDevice` and
/// `Bidirectional`; for-cpu bounce → original for `FromDevice` and `Bidirectional`.
pub fn sync_rules<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    let size = 6000;
    for dir in DmaDirection::ALL {
        let orig = e.buffer(size, 0, 10);
        let dma = e.bouncer.map_single(e.net.device(), orig, size, dir, DmaAttrs::empty()).unwrap();
        e.guest.write(orig, &pattern(11, size));
        e.bouncer.sync_single_for_device(e.net.device(), dma, size, dir).unwrap();
        let want = if dir.to_device() { pattern(11, size) } else { pattern(10, size) };
        assert_eq!(e.dev_read(&e.net, dma, size), want, "{dir}: sync_for_device");
        e.net.write(&*e.bouncer, dma, &pattern(12, size)).unwrap();
        e.bouncer.sync_single_for_cpu(e.net.device(), dma, size, dir).unwrap();
        let want = if dir.from_device() { pattern(12, size) } else { pattern(11, size) };
        assert_eq!(e.guest.read_vec(orig, size), want, "{dir}: sync_for_cpu");
        e.bouncer.unmap_single(e.net.device(), dma, size, dir, DmaAttrs::SKIP_CPU_SYNC).unwrap();
        e.check();
    }
    let s = e.bouncer.stats();
    assert_eq!((s.syncs_for_cpu, s.syncs_for_device), (3, 3));
}

/// Partial syncs at an offset inside a mapping touch exactly the bytes asked for, with
/// and without `min_align_mask` padding.
pub fn partial_sync_at_offset<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    for (dev, offset) in [(&e.net, 0usize), (&e.nvme, 0x234), (&e.nvme, 0xfff)] {
        let size = 3 * 4096 + 123;
        let orig = e.buffer(size, offset, 20);
        let dma =
            e.bouncer.map_single(dev.device(), orig, size, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
        // Device writes everything; the CPU syncs 2000 bytes at 1000.
        dev.write(&*e.bouncer, dma, &pattern(21, size)).unwrap();
        e.bouncer.sync_single_for_cpu(dev.device(), dma + 1000, 2000, DmaDirection::Bidirectional).unwrap();
        let mut want = pattern(20, size);
        want[1000..3000].copy_from_slice(&pattern(21, size)[1000..3000]);
        assert_eq!(e.guest.read_vec(orig, size), want, "partial sync_for_cpu (offset {offset:#x})");
        // The CPU changes 1000 bytes at 5000 and syncs only them for the device.
        e.guest.write(orig + 5000, &pattern(22, 1000));
        e.bouncer.sync_single_for_device(dev.device(), dma + 5000, 1000, DmaDirection::Bidirectional).unwrap();
        let seen = e.dev_read(dev, dma, size);
        let mut want_dev = pattern(21, size);
        want_dev[5000..6000].copy_from_slice(&pattern(22, 1000));
        assert_eq!(seen, want_dev, "partial sync_for_device (offset {offset:#x})");
        e.bouncer.unmap_single(dev.device(), dma, size, DmaDirection::Bidirectional, DmaAttrs::SKIP_CPU_SYNC).unwrap();
        e.check();
    }
}

/// A sync or unmap size running past the mapping is clamped and counted; memory after
/// the original buffer is never written.
pub fn overflow_is_clamped<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    let size = 5000;
    // The original buffer sits inside a larger region so we can see stray writes.
    let region = e.buffer(size + 4096, 0, 30);
    let dma = e.bouncer.map_single(e.net.device(), region, size, DmaDirection::FromDevice, DmaAttrs::empty()).unwrap();
    e.net.write(&*e.bouncer, dma, &pattern(31, size)).unwrap();
    e.bouncer.sync_single_for_cpu(e.net.device(), dma + 4000, 5000, DmaDirection::FromDevice).unwrap();
    assert_eq!(e.bouncer.stats().overflows_clamped, 1);
    let mut want = pattern(30, size + 4096);
    want[4000..5000].copy_from_slice(&pattern(31, size)[4000..5000]);
    assert_eq!(e.guest.read_vec(region, size + 4096), want, "clamped sync wrote the wrong bytes");
    e.bouncer.unmap_single(e.net.device(), dma, size + 100, DmaDirection::FromDevice, DmaAttrs::empty()).unwrap();
    assert_eq!(e.bouncer.stats().overflows_clamped, 2);
    want[..size].copy_from_slice(&pattern(31, size));
    assert_eq!(e.guest.read_vec(region, size + 4096), want, "clamped unmap wrote past the mapping");
    e.check();
}

/// The device's `min_align_mask` bits of the original address survive in the bus
/// address.
pub fn min_align_mask_preserved<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    let dev2k = SimDevice::new(&e.guest, Device::new("mask2k").with_min_align_mask(0x7ff));
    for dev in [&e.nvme, &dev2k] {
        let mask = dev.device().min_align_mask;
        for &offset in &[0usize, 0x200, 0x234, 0x7ff, 0x800, 0xfff] {
            for &size in &[512usize, 4096, 65536] {
                let orig = e.buffer(size, offset, offset as u64);
                let dma =
                    e.bouncer.map_single(dev.device(), orig, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
                assert_eq!(dma.0 & mask, orig.0 & mask, "{}: offset {offset:#x} size {size}", dev.device().name());
                assert_eq!(e.dev_read(dev, dma, size), pattern(offset as u64, size));
                e.bouncer.unmap_single(dev.device(), dma, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
            }
        }
    }
    e.check();
}

/// An explicit `alloc_align_mask` aligns the buffer.
pub fn alloc_align_mask_honoured<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    for &mask in &[0xfffu64, 0x3fff] {
        for &size in &[100usize, 4096, 20000] {
            let orig = e.buffer(size, 0, 3);
            let dma = e
                .bouncer
                .map_with_align(e.net.device(), orig, size, mask, DmaDirection::ToDevice, DmaAttrs::empty())
                .unwrap();
            assert_eq!(e.guest.dma_to_phys(dma).0 & mask, 0, "align mask {mask:#x}, size {size}");
            assert_eq!(e.dev_read(&e.net, dma, size), pattern(3, size));
            e.bouncer.unmap_single(e.net.device(), dma, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        }
    }
    e.check();
}

/// `max_mapping_size` can be mapped; one byte more is a clear error that changes
/// nothing.
pub fn max_mapping_size_is_exact<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    for dev in [&e.net, &e.nvme] {
        let max = e.bouncer.max_mapping_size(dev.device());
        assert!(max >= PAGE_SIZE, "max_mapping_size {max} is smaller than a page");
        let orig = e.buffer(max + 1, 0, 40);
        let dma = e.bouncer.map_single(dev.device(), orig, max, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        assert_eq!(e.dev_read(dev, dma, max), pattern(40, max));
        e.bouncer.unmap_single(dev.device(), dma, max, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        e.settle();
        let used = e.used();
        let before = e.bouncer.stats();
        let err =
            e.bouncer.map_single(dev.device(), orig, max + 1, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap_err();
        assert_eq!(err, MapError::TooLarge { size: max + 1, max });
        assert_eq!(e.used(), used);
        let after = e.bouncer.stats();
        assert_eq!(after.maps, before.maps);
        assert_eq!(after.failures_of(FailureReason::TooLarge), before.failures_of(FailureReason::TooLarge) + 1);
    }
    e.check();
}

/// `map_sg` is all or nothing: when an entry fails, the entries before it are unmapped
/// and the pool is as it was.
pub fn map_sg_all_or_nothing<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    let dev = e.net.device();
    let max = e.bouncer.max_mapping_size(dev);
    // A bad entry in the middle.
    let mut sg: Vec<SgEntry> = (0..6).map(|i| SgEntry::new(e.buffer(3000, 0, i), 3000)).collect();
    sg[4] = SgEntry::new(e.buffer(max + 1, 0, 99), max + 1);
    let used = e.used();
    let err = e.bouncer.map_sg(dev, &mut sg, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap_err();
    assert_eq!(err.index, 4);
    assert_eq!(e.used(), used, "map_sg left entries mapped after a failure");
    assert_eq!(e.bouncer.stats().inflight_bytes, 0);
    // A good list maps, syncs and unmaps.
    let mut sg: Vec<SgEntry> =
        (0..6).map(|i| SgEntry::new(e.buffer(3000 + i as usize, 0, i), 3000 + i as usize)).collect();
    assert_eq!(e.bouncer.map_sg(dev, &mut sg, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap(), 6);
    for (i, s) in sg.iter().enumerate() {
        assert_eq!(s.dma_length, s.length);
        assert_eq!(e.dev_read(&e.net, s.dma_address, s.length), pattern(i as u64, s.length));
        e.net.write(&*e.bouncer, s.dma_address, &pattern(50 + i as u64, s.length)).unwrap();
    }
    e.bouncer.sync_sg_for_cpu(dev, &sg, DmaDirection::Bidirectional).unwrap();
    for (i, s) in sg.iter().enumerate() {
        assert_eq!(e.guest.read_vec(s.phys, s.length), pattern(50 + i as u64, s.length));
    }
    e.bouncer.sync_sg_for_device(dev, &sg, DmaDirection::Bidirectional).unwrap();
    e.bouncer.unmap_sg(dev, &mut sg, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
    // Exhaustion part way through a long list rolls back too.
    let big = 64 * 1024;
    let orig = e.buffer(big, 0, 7);
    let mut sg: Vec<SgEntry> = (0..2048).map(|_| SgEntry::new(orig, big)).collect();
    e.settle();
    let used = e.used();
    let err = e.bouncer.map_sg(dev, &mut sg, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap_err();
    assert!(matches!(err.error.reason(), FailureReason::Exhausted | FailureReason::Cap), "{err}");
    assert_eq!(e.used(), used, "exhausted map_sg left entries mapped");
    e.check();
}

/// Maps `size` bytes of `orig` for the net device (atomic, `DMA_TO_DEVICE`) until a map
/// fails; returns the live mappings and the error, which must say the pool is exhausted
/// or capped.
fn exhaust<S: Strategy>(e: &Env<S>, orig: PhysAddr, size: usize) -> (Vec<DmaAddr>, MapError) {
    let mut live = Vec::new();
    let err = loop {
        assert!(live.len() < 4096, "no exhaustion after mapping 256 MiB: the suite expects pools under 32 MiB");
        match e.bouncer.map_single(e.net.device(), orig, size, DmaDirection::ToDevice, DmaAttrs::empty()) {
            Ok(d) => live.push(d),
            Err(err) => break err,
        }
    };
    assert!(matches!(err.reason(), FailureReason::Exhausted | FailureReason::Cap), "unexpected error {err}");
    (live, err)
}

/// Mapping until the pool is exhausted returns an error (never hangs), and unmapping
/// restores service.
pub fn exhaustion_is_an_error<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    let size = 64 * 1024;
    let orig = e.buffer(size, 0, 8);
    let used = e.used();
    let (mut live, err) = exhaust(&e, orig, size);
    assert!(!err.to_string().is_empty());
    assert!(!live.is_empty(), "the pool could not serve a single 64 KiB mapping");
    for d in live.drain(..) {
        e.bouncer.unmap_single(e.net.device(), d, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    }
    e.settle();
    assert_eq!(e.used(), used);
    let d = e
        .bouncer
        .map_single(e.net.device(), orig, size, DmaDirection::ToDevice, DmaAttrs::empty())
        .expect("service resumes");
    e.bouncer.unmap_single(e.net.device(), d, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    e.check();
}

/// `DMA_ATTR_MAY_BLOCK`: on an exhausted pool an atomic map fails at once without
/// sleeping, while a map that may block waits and is served once another thread
/// unmaps; the wait is counted.
pub fn may_block_waits_for_an_unmap<S: Strategy + 'static>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    let size = 64 * 1024;
    let orig = e.buffer(size, 0, 9);
    let (mut live, _) = exhaust(&e, orig, size);
    assert_eq!(e.guest.stats().sleeps, 0, "an atomic map slept");
    assert_eq!(e.bouncer.stats().blocked_maps, 0);
    // Another CPU unmaps half of the mappings a little later.
    let half = live.split_off(live.len() / 2);
    let (b, dev) = (Arc::clone(&e.bouncer), *e.net.device());
    let unmapper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        for d in half {
            b.unmap_single(&dev, d, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        }
    });
    let d = e
        .bouncer
        .map_single(e.net.device(), orig, size, DmaDirection::ToDevice, DmaAttrs::MAY_BLOCK)
        .expect("a map that may block is served once buffers are unmapped");
    unmapper.join().unwrap();
    let s = e.bouncer.stats();
    assert_eq!(s.blocked_maps, 1);
    assert!(s.blocked_ns > 0);
    assert!(e.guest.stats().sleeps > 0);
    live.push(d);
    for d in live {
        e.bouncer.unmap_single(e.net.device(), d, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    }
    e.check();
}

/// Unknown, double and inner-address unmaps and syncs are clear errors that change
/// nothing.
pub fn bad_unmaps_change_nothing<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    let dev = e.net.device();
    let orig = e.buffer(5000, 0, 60);
    let keep = e.bouncer.map_single(dev, orig, 5000, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
    let dma = e.bouncer.map_single(dev, orig, 5000, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
    let used = e.used();
    let stats = e.bouncer.stats();
    // Inside a mapping, not its start: refused before anything is copied back.
    e.net.write(&*e.bouncer, dma, &pattern(63, 5000)).unwrap();
    let r = e.bouncer.unmap_single(dev, dma + 16, 100, DmaDirection::Bidirectional, DmaAttrs::empty());
    assert_eq!(r, Err(LookupError::NotMappingStart { addr: dma + 16, start: dma }));
    assert_eq!(e.guest.read_vec(orig, 5000), pattern(60, 5000), "a refused unmap copied data back");
    // Foreign: a private guest page is no bounce buffer.
    let foreign = e.guest.phys_to_dma(orig);
    assert!(!e.bouncer.is_bounce_buffer(foreign));
    assert_eq!(
        e.bouncer.unmap_single(dev, foreign, 100, DmaDirection::ToDevice, DmaAttrs::empty()),
        Err(LookupError::Foreign(foreign))
    );
    assert!(e.bouncer.sync_single_for_cpu(dev, foreign, 100, DmaDirection::FromDevice).is_err());
    assert_eq!(e.used(), used);
    let after = e.bouncer.stats();
    assert_eq!((after.maps, after.unmaps, after.inflight_bytes), (stats.maps, stats.unmaps, stats.inflight_bytes));
    assert_eq!(after.failures_of(FailureReason::UnknownAddress), stats.failures_of(FailureReason::UnknownAddress) + 3);
    // Double unmap.
    e.net.write(&*e.bouncer, dma, &pattern(61, 5000)).unwrap();
    e.bouncer.unmap_single(dev, dma, 5000, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
    let used = e.used();
    let r = e.bouncer.unmap_single(dev, dma, 5000, DmaDirection::Bidirectional, DmaAttrs::empty());
    assert!(matches!(r, Err(LookupError::NotMapped(a)) if a == dma), "double unmap: {r:?}");
    assert!(e.bouncer.sync_single_for_cpu(dev, dma, 5000, DmaDirection::Bidirectional).is_err(), "sync after unmap");
    assert_eq!(e.used(), used);
    // The double unmap did not copy stale bounce data over the original.
    e.guest.write(orig, &pattern(62, 5000));
    let _ = e.bouncer.unmap_single(dev, dma, 5000, DmaDirection::Bidirectional, DmaAttrs::empty());
    assert_eq!(e.guest.read_vec(orig, 5000), pattern(62, 5000));
    // The other mapping is untouched.
    assert_eq!(e.dev_read(&e.net, keep, 5000), pattern(60, 5000));
    e.bouncer.unmap_single(dev, keep, 5000, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
    e.check();
}

/// Bad arguments are refused before anything is reserved.
pub fn bad_arguments_change_nothing<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    let dev = e.net.device();
    let orig = e.buffer(100, 0, 1);
    let used = e.used();
    assert_eq!(e.bouncer.map_single(dev, orig, 0, DmaDirection::ToDevice, DmaAttrs::empty()), Err(MapError::ZeroSize));
    assert_eq!(e.bouncer.map_single_raw(dev, orig, 100, 3, DmaAttrs::empty()), Err(MapError::DirectionNone));
    assert_eq!(e.bouncer.map_single_raw(dev, orig, 100, 9, DmaAttrs::empty()), Err(MapError::BadDirection(9)));
    let top = PhysAddr(u64::MAX - 10);
    assert_eq!(
        e.bouncer.map_single(dev, top, 100, DmaDirection::ToDevice, DmaAttrs::empty()),
        Err(MapError::BadOriginal { orig: top, size: 100 })
    );
    let dma = e.bouncer.map_single(dev, orig, 100, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    assert_eq!(
        e.bouncer.unmap_single_raw(dev, dma, 100, 3, DmaAttrs::empty()),
        Err(LookupError::Direction(MapError::DirectionNone))
    );
    e.bouncer.unmap_single_raw(dev, dma, 100, 1, DmaAttrs::empty()).unwrap();
    assert_eq!(e.used(), used);
    assert_eq!(e.bouncer.stats().failures_of(FailureReason::BadArgument), 5);
    e.check();
}

/// A device that cannot reach bounce memory gets an error, never an unreachable buffer;
/// the reservation is returned.
pub fn dma_mask_respected<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    let dev32 = SimDevice::new(&e.guest, Device::new("dev32").with_dma_bits(32));
    let orig = e.buffer(4096, 0, 70);
    let used = e.used();
    match e.bouncer.map_single(dev32.device(), orig, 4096, DmaDirection::ToDevice, DmaAttrs::empty()) {
        Ok(dma) => {
            assert!(dma.0 + 4095 <= 0xffff_ffff);
            assert_eq!(e.dev_read(&dev32, dma, 4096), pattern(70, 4096));
            e.bouncer.unmap_single(dev32.device(), dma, 4096, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        }
        Err(err) => assert!(matches!(err, MapError::Unreachable { .. }), "{err}"),
    }
    assert_eq!(e.used(), used);
    assert!(e.bouncer.dma_supported(u64::MAX));
    // What dma_supported promises must hold: a device it accepts is always served.
    if e.bouncer.dma_supported(0xffff_ffff) {
        let dma = e.bouncer.map_single(dev32.device(), orig, 4096, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        e.bouncer.unmap_single(dev32.device(), dma, 4096, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    }
    // A device that cannot address even the first page of memory is refused.
    let dev12 = Device::new("dev12").with_dma_bits(12);
    assert!(!e.bouncer.dma_supported(dev12.dma_mask));
    assert!(matches!(
        e.bouncer.map_single(&dev12, orig, 4096, DmaDirection::ToDevice, DmaAttrs::empty()),
        Err(MapError::Unreachable { .. })
    ));
    assert_eq!(e.used(), used);
    e.check();
}

/// Counters add up: maps, unmaps, bytes, in-flight, used and its high-water mark.
pub fn statistics_add_up<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    let dev = e.net.device();
    let base_used = e.used();
    let mut live = Vec::new();
    let mut bytes = 0u64;
    for (i, &size) in SIZES.iter().enumerate() {
        let orig = e.buffer(size, 0, i as u64);
        live.push((e.bouncer.map_single(dev, orig, size, DmaDirection::FromDevice, DmaAttrs::empty()).unwrap(), size));
        bytes += size as u64;
    }
    let s = e.bouncer.stats();
    assert_eq!(s.maps, SIZES.len() as u64);
    assert_eq!(s.bytes_to_bounce, bytes);
    assert_eq!(s.inflight_bytes, bytes);
    assert_eq!(s.inflight_bytes_peak, bytes);
    let p = e.bouncer.pool_stats();
    assert!(p.used_bytes >= base_used + bytes as usize, "used {} < bytes in flight {bytes}", p.used_bytes);
    assert!(p.used_hiwater_bytes >= p.used_bytes);
    assert!(p.capacity_bytes >= p.used_bytes);
    let dbg = e.bouncer.debugfs();
    assert!(dbg.io_tlb_used >= 1 && dbg.io_tlb_used <= dbg.io_tlb_nslabs);
    let peak = p.used_bytes;
    for (d, size) in live {
        e.bouncer.unmap_single(dev, d, size, DmaDirection::FromDevice, DmaAttrs::empty()).unwrap();
    }
    e.settle();
    let s = e.bouncer.stats();
    assert_eq!((s.unmaps, s.bytes_from_bounce, s.inflight_bytes), (SIZES.len() as u64, bytes, 0));
    let p = e.bouncer.pool_stats();
    assert_eq!(p.used_bytes, base_used);
    assert!(p.used_hiwater_bytes >= peak);
    e.bouncer.reset_hiwater();
    assert_eq!(e.bouncer.pool_stats().used_hiwater_bytes, base_used);
    assert_eq!(e.bouncer.stats().inflight_bytes_peak, 0);
    e.check();
}

/// Scrubbing (`swiotlb.scrub=on`) leaves nothing of a mapping's data in shared memory
/// after unmap.
pub fn scrub_clears_buffers<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let opts = BouncerOptions { scrub: true, ..BouncerOptions::default() };
    let e = Env::with_options(make, opts);
    let orig = e.buffer(3000, 0, 80);
    let dma = e.bouncer.map_single(e.net.device(), orig, 3000, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    e.bouncer.unmap_single(e.net.device(), dma, 3000, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    let mut seen = vec![0xffu8; 3000];
    e.net.host_read(dma, &mut seen).unwrap();
    assert!(seen.iter().all(|&b| b == 0), "scrubbed buffer still holds data");
    e.check();
}

/// Hostile host, no double fetch: the guest touches shared memory exactly once per
/// operation and direction — map copies `size` bytes in, unmap and sync-for-cpu copy
/// out exactly the bytes asked for, in one copy each.
pub fn copies_each_direction_once<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    assert!(e.guest.config().track_copies);
    let dev = e.net.device();
    for &size in &[64usize, 1500, 4096, 20000] {
        let orig = e.buffer(size, 0, 90);
        let s0 = e.guest.stats();
        let dma = e.bouncer.map_single(dev, orig, size, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
        let s1 = e.guest.stats();
        assert_eq!(s1.bytes_into_shared - s0.bytes_into_shared, size as u64, "map must copy in exactly once");
        assert_eq!(s1.bytes_out_of_shared, s0.bytes_out_of_shared, "map must not read shared memory");
        assert_eq!(s1.shared_copy_calls - s0.shared_copy_calls, 1);
        e.bouncer.sync_single_for_cpu(dev, dma + 10, 50, DmaDirection::Bidirectional).unwrap();
        let s2 = e.guest.stats();
        assert_eq!(s2.bytes_out_of_shared - s1.bytes_out_of_shared, 50, "sync_for_cpu reads exactly what is asked");
        assert_eq!(s2.shared_copy_calls - s1.shared_copy_calls, 1);
        e.bouncer.unmap_single(dev, dma, size, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
        let s3 = e.guest.stats();
        assert_eq!(s3.bytes_out_of_shared - s2.bytes_out_of_shared, size as u64, "unmap must copy out exactly once");
        assert_eq!(s3.bytes_into_shared, s2.bytes_into_shared, "unmap must not write shared memory (scrub off)");
        assert_eq!(s3.shared_copy_calls - s2.shared_copy_calls, 1);
    }
    e.check();
}

/// Hostile host: data the host writes into a bounce buffer after the guest copied it
/// never reaches the guest's memory, and the device never sees a previous mapping's
/// data (the CVE-2022-0854 class).
pub fn hostile_host_cannot_reach_guest_memory<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    let dev = e.net.device();
    let size = 8192;
    // A secret goes to the device and is unmapped.
    let secret = e.buffer(size, 0, 100);
    let d = e.bouncer.map_single(dev, secret, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    e.bouncer.unmap_single(dev, d, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    for round in 0..8u64 {
        // A new FromDevice mapping: the device must see the original's bytes, never the
        // secret, even where it does not write.
        let orig = e.buffer(size, 0, 200 + round);
        let dma = e.bouncer.map_single(dev, orig, size, DmaDirection::FromDevice, DmaAttrs::empty()).unwrap();
        assert_eq!(e.dev_read(&e.net, dma, size), pattern(200 + round, size), "device saw stale bounce data");
        // The device writes only the first half; unmap copies back the whole mapping.
        e.net.write(&*e.bouncer, dma, &pattern(300 + round, size / 2)).unwrap();
        e.bouncer.unmap_single(dev, dma, size, DmaDirection::FromDevice, DmaAttrs::empty()).unwrap();
        let mut want = pattern(200 + round, size);
        want[..size / 2].copy_from_slice(&pattern(300 + round, size / 2));
        assert_eq!(e.guest.read_vec(orig, size), want, "partial device write clobbered the original");
        // The host rewrites the bounce memory after the guest's copy: the guest's memory
        // must not change.
        e.net.host_write(dma, &pattern(400 + round, size)).unwrap();
        assert_eq!(e.guest.read_vec(orig, size), want, "a host write after unmap reached guest memory");
    }
    // After sync_for_cpu too.
    let orig = e.buffer(size, 0, 500);
    let dma = e.bouncer.map_single(dev, orig, size, DmaDirection::FromDevice, DmaAttrs::empty()).unwrap();
    e.net.write(&*e.bouncer, dma, &pattern(501, size)).unwrap();
    e.bouncer.sync_single_for_cpu(dev, dma, size, DmaDirection::FromDevice).unwrap();
    e.net.host_write(dma, &pattern(502, size)).unwrap();
    assert_eq!(e.guest.read_vec(orig, size), pattern(501, size), "a host write after sync reached guest memory");
    e.bouncer.unmap_single(dev, dma, size, DmaDirection::FromDevice, DmaAttrs::SKIP_CPU_SYNC).unwrap();
    assert_eq!(e.guest.read_vec(orig, size), pattern(501, size));
    e.check();
}

/// Hostile host, no double fetch, every direction: each operation touches shared memory
/// exactly as the copy rules say and no more — map copies `size` bytes in (any
/// direction), `sync_for_device` copies in only for `ToDevice`/`Bidirectional`,
/// `sync_for_cpu` and unmap copy out only for `FromDevice`/`Bidirectional`, unmap with
/// `SKIP_CPU_SYNC` copies nothing — each copy in one call. The host rewrites the bounce
/// buffer after every operation; the original only ever holds what was there when the
/// guest copied.
pub fn copy_counts_per_direction<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    assert!(e.guest.config().track_copies);
    let dev = e.net.device();
    let size = 5000;
    // (bytes into shared, bytes out of shared, copy calls) between two snapshots.
    let delta = |a: &crate::sim::SimStats, b: &crate::sim::SimStats| {
        (
            b.bytes_into_shared - a.bytes_into_shared,
            b.bytes_out_of_shared - a.bytes_out_of_shared,
            b.shared_copy_calls - a.shared_copy_calls,
        )
    };
    let n = size as u64;
    for dir in DmaDirection::ALL {
        for skip in [false, true] {
            let seed = 700 + 10 * dir as u64 + u64::from(skip);
            let orig = e.buffer(size, 0, seed);
            let s0 = e.guest.stats();
            let dma = e.bouncer.map_single(dev, orig, size, dir, DmaAttrs::empty()).unwrap();
            let s1 = e.guest.stats();
            assert_eq!(delta(&s0, &s1), (n, 0, 1), "{dir}: map copies in once, whatever the direction");
            // The CPU updates the original and hands it to the device again.
            e.guest.write(orig, &pattern(seed + 1, size));
            e.bouncer.sync_single_for_device(dev, dma, size, dir).unwrap();
            let s2 = e.guest.stats();
            let want = if dir.to_device() { (n, 0, 1) } else { (0, 0, 0) };
            assert_eq!(delta(&s1, &s2), want, "{dir}: sync_for_device");
            // The device writes; the CPU syncs; the host rewrites right after the copy.
            e.net.write(&*e.bouncer, dma, &pattern(seed + 2, size)).unwrap();
            e.bouncer.sync_single_for_cpu(dev, dma, size, dir).unwrap();
            let s3 = e.guest.stats();
            let want = if dir.from_device() { (0, n, 1) } else { (0, 0, 0) };
            assert_eq!(delta(&s2, &s3), want, "{dir}: sync_for_cpu");
            e.net.host_write(dma, &pattern(seed + 3, size)).unwrap();
            let synced = if dir.from_device() { pattern(seed + 2, size) } else { pattern(seed + 1, size) };
            assert_eq!(
                e.guest.read_vec(orig, size),
                synced,
                "{dir}: a host write after sync_for_cpu reached the guest"
            );
            // Unmap: copies out (the host's bytes: they are the device's last word) unless
            // SKIP_CPU_SYNC or the direction says no; a host write afterwards changes nothing.
            let attrs = if skip { DmaAttrs::SKIP_CPU_SYNC } else { DmaAttrs::empty() };
            e.bouncer.unmap_single(dev, dma, size, dir, attrs).unwrap();
            let s4 = e.guest.stats();
            let copies_back = dir.from_device() && !skip;
            let want = if copies_back { (0, n, 1) } else { (0, 0, 0) };
            assert_eq!(delta(&s3, &s4), want, "{dir}: unmap (skip {skip})");
            let after = if copies_back { pattern(seed + 3, size) } else { synced };
            assert_eq!(e.guest.read_vec(orig, size), after, "{dir}: unmap (skip {skip}) copied the wrong bytes");
            if e.net.host_write(dma, &pattern(seed + 4, size)).is_ok() {
                assert_eq!(e.guest.read_vec(orig, size), after, "{dir}: a host write after unmap reached the guest");
            }
            assert_eq!(delta(&s4, &e.guest.stats()), (0, 0, 0), "the host's writes are no guest copies");
            e.check();
        }
    }
}

/// CVE-2022-0854, with the reuse forced: a secret goes through a bounce buffer and is
/// unmapped (no scrub); every other buffer is then taken, so the next mapping must land
/// on the secret's buffer. Whatever its direction, the device (and the host) see the new
/// original's bytes there, never the secret.
pub fn reused_buffer_never_shows_stale_data<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    let dev = e.net.device();
    let size = 8192;
    let secret = e.buffer(size, 0, 800);
    let filler = e.buffer(size, 0, 801);
    for dir in DmaDirection::ALL {
        let secret_dma = e.bouncer.map_single(dev, secret, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        let mut live = Vec::new();
        let err = loop {
            assert!(live.len() < 8192, "no exhaustion after 64 MiB of mappings: the suite expects pools under 32 MiB");
            match e.bouncer.map_single(dev, filler, size, DmaDirection::ToDevice, DmaAttrs::empty()) {
                Ok(d) => live.push(d),
                Err(err) => break err,
            }
        };
        assert!(matches!(err.reason(), FailureReason::Exhausted | FailureReason::Cap), "{err}");
        e.bouncer.unmap_single(dev, secret_dma, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        let seed = 810 + dir as u64;
        let orig = e.buffer(size, 0, seed);
        let dma = e
            .bouncer
            .map_single(dev, orig, size, dir, DmaAttrs::empty())
            .expect("the secret's freed buffer serves the next mapping");
        let (now_at, was_at) = (e.guest.dma_to_phys(dma).0, e.guest.dma_to_phys(secret_dma).0);
        assert!(
            now_at < was_at + size as u64 && was_at < now_at + size as u64,
            "{dir}: the pool was full but the mapping at {dma} does not reuse the secret's buffer at {secret_dma}"
        );
        assert_eq!(e.dev_read(&e.net, dma, size), pattern(seed, size), "{dir}: the device saw stale bounce data");
        let mut host_view = vec![0; size];
        e.net.host_read(dma, &mut host_view).unwrap();
        assert_eq!(host_view, pattern(seed, size), "{dir}: the host saw stale bounce data");
        e.bouncer.unmap_single(dev, dma, size, dir, DmaAttrs::SKIP_CPU_SYNC).unwrap();
        for d in live {
            e.bouncer.unmap_single(dev, d, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        }
        e.check();
    }
}

/// Two threads map, check and unmap concurrently; every byte arrives intact.
pub fn concurrent_map_unmap<S: Strategy + 'static>(make: &dyn Fn(&SimGuest) -> S) {
    let e = env(make);
    let e = Arc::new(e);
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                crate::sim::set_current_cpu(Some(t as usize));
                let mut retries = 0u32;
                for i in 0..1500u64 {
                    let size = [64usize, 1500, 2048, 4096, 9000, 30000][(i % 6) as usize];
                    let seed = t * 1_000_000 + i;
                    let orig = e.buffer(size, 0, seed);
                    let dev = if i % 3 == 0 { &e.nvme } else { &e.net };
                    let dma = loop {
                        match e.bouncer.map_single(
                            dev.device(),
                            orig,
                            size,
                            DmaDirection::Bidirectional,
                            DmaAttrs::empty(),
                        ) {
                            Ok(d) => break d,
                            Err(err) if matches!(err.reason(), FailureReason::Exhausted) && retries < 100_000 => {
                                retries += 1;
                                e.bouncer.run_background();
                                std::thread::yield_now();
                            }
                            Err(err) => panic!("thread {t} op {i}: {err}"),
                        }
                    };
                    assert_eq!(e.dev_read(dev, dma, size), pattern(seed, size));
                    dev.write(&*e.bouncer, dma, &pattern(seed + 7, size)).unwrap();
                    e.bouncer
                        .unmap_single(dev.device(), dma, size, DmaDirection::Bidirectional, DmaAttrs::empty())
                        .unwrap();
                    assert_eq!(e.guest.read_vec(orig, size), pattern(seed + 7, size));
                    e.guest.free_private(orig, size);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker thread");
    }
    assert_eq!(e.bouncer.stats().inflight_bytes, 0);
    e.check();
}

/// One step of the random-sequence model test.
#[derive(Clone, Debug)]
pub enum Op {
    /// Map `size` bytes at page offset `offset` with direction index `dir` on the NVMe
    /// device when `nvme`.
    Map {
        /// Bytes.
        size: usize,
        /// Offset of the original inside its page.
        offset: usize,
        /// Direction (0..3).
        dir: u8,
        /// Use the device with `min_align_mask`.
        nvme: bool,
    },
    /// The device writes `len` bytes at `at` (fractions of the mapping) of mapping `idx`.
    DeviceWrite {
        /// Which live mapping (modulo count).
        idx: usize,
        /// Start, as a fraction in 1/256.
        at: u8,
        /// Length, as a fraction in 1/256.
        len: u8,
        /// Pattern seed.
        seed: u64,
    },
    /// The CPU writes the original.
    CpuWrite {
        /// Which live mapping.
        idx: usize,
        /// Pattern seed.
        seed: u64,
    },
    /// Sync a part for the CPU.
    SyncForCpu {
        /// Which live mapping.
        idx: usize,
        /// Start fraction.
        at: u8,
        /// Length fraction (may run past the end: clamped).
        len: u8,
    },
    /// Sync a part for the device.
    SyncForDevice {
        /// Which live mapping.
        idx: usize,
        /// Start fraction.
        at: u8,
        /// Length fraction.
        len: u8,
    },
    /// Unmap.
    Unmap {
        /// Which live mapping.
        idx: usize,
        /// With `SKIP_CPU_SYNC`.
        skip: bool,
    },
}

/// A strategy for [`Op`] sequences.
pub fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..70_000, 0usize..4096, 0u8..3, any::<bool>()).prop_map(|(size, offset, dir, nvme)| Op::Map { size, offset, dir, nvme }),
        2 => (any::<usize>(), any::<u8>(), any::<u8>(), any::<u64>()).prop_map(|(idx, at, len, seed)| Op::DeviceWrite { idx, at, len, seed }),
        1 => (any::<usize>(), any::<u64>()).prop_map(|(idx, seed)| Op::CpuWrite { idx, seed }),
        2 => (any::<usize>(), any::<u8>(), any::<u8>()).prop_map(|(idx, at, len)| Op::SyncForCpu { idx, at, len }),
        2 => (any::<usize>(), any::<u8>(), any::<u8>()).prop_map(|(idx, at, len)| Op::SyncForDevice { idx, at, len }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(idx, skip)| Op::Unmap { idx, skip }),
    ]
}

struct Live {
    dma: DmaAddr,
    orig: PhysAddr,
    size: usize,
    dir: DmaDirection,
    nvme: bool,
    /// What the original must hold.
    orig_model: Vec<u8>,
    /// What the bounce buffer must hold.
    bounce_model: Vec<u8>,
}

fn frac(v: u8, size: usize) -> usize {
    size * usize::from(v) / 256
}

/// Runs one random sequence against the model: after every step the originals and
/// the bounce buffers hold exactly what the copy rules say, and the strategy audits.
pub fn run_model<S: Strategy>(e: &Env<S>, ops: &[Op]) {
    let mut live: Vec<Live> = Vec::new();
    let mut dead: Vec<(PhysAddr, Vec<u8>)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Map { size, offset, dir, nvme } => {
                let dir = DmaDirection::from_raw(u32::from(dir)).unwrap();
                let dev = if nvme { &e.nvme } else { &e.net };
                let seed = step as u64;
                let orig = e.buffer(size, offset, seed);
                match e.bouncer.map_single(dev.device(), orig, size, dir, DmaAttrs::empty()) {
                    Ok(dma) => {
                        if nvme {
                            assert_eq!(dma.0 & 4095, orig.0 & 4095, "step {step}: min_align_mask");
                        }
                        let p = pattern(seed, size);
                        live.push(Live { dma, orig, size, dir, nvme, orig_model: p.clone(), bounce_model: p });
                    }
                    Err(err) => {
                        assert!(
                            matches!(
                                err.reason(),
                                FailureReason::Exhausted | FailureReason::Cap | FailureReason::TooLarge
                            ),
                            "step {step}: {err}"
                        );
                        e.settle();
                    }
                }
            }
            Op::DeviceWrite { idx, at, len, seed } if !live.is_empty() => {
                let n = live.len();
                let l = &mut live[idx % n];
                let at = frac(at, l.size);
                let len = frac(len, l.size).min(l.size - at).max(1).min(l.size - at);
                if len == 0 {
                    continue;
                }
                let data = pattern(seed, len);
                let dev = if l.nvme { &e.nvme } else { &e.net };
                dev.write(&*e.bouncer, l.dma + at as u64, &data).unwrap();
                l.bounce_model[at..at + len].copy_from_slice(&data);
            }
            Op::CpuWrite { idx, seed } if !live.is_empty() => {
                let n = live.len();
                let l = &mut live[idx % n];
                let data = pattern(seed, l.size);
                e.guest.write(l.orig, &data);
                l.orig_model = data;
            }
            Op::SyncForCpu { idx, at, len } if !live.is_empty() => {
                let n = live.len();
                let l = &mut live[idx % n];
                let at = frac(at, l.size);
                let len = frac(len, l.size * 2).max(1);
                let dev = if l.nvme { &e.nvme } else { &e.net };
                e.bouncer.sync_single_for_cpu(dev.device(), l.dma + at as u64, len, l.dir).unwrap();
                if l.dir.from_device() {
                    let end = (at + len).min(l.size);
                    let (b, o) = (&l.bounce_model, &mut l.orig_model);
                    o[at..end].copy_from_slice(&b[at..end]);
                }
            }
            Op::SyncForDevice { idx, at, len } if !live.is_empty() => {
                let n = live.len();
                let l = &mut live[idx % n];
                let at = frac(at, l.size);
                let len = frac(len, l.size * 2).max(1);
                let dev = if l.nvme { &e.nvme } else { &e.net };
                e.bouncer.sync_single_for_device(dev.device(), l.dma + at as u64, len, l.dir).unwrap();
                if l.dir.to_device() {
                    let end = (at + len).min(l.size);
                    let (o, b) = (&l.orig_model, &mut l.bounce_model);
                    b[at..end].copy_from_slice(&o[at..end]);
                }
            }
            Op::Unmap { idx, skip } if !live.is_empty() => {
                let n = live.len();
                let mut l = live.swap_remove(idx % n);
                let dev = if l.nvme { &e.nvme } else { &e.net };
                let attrs = if skip { DmaAttrs::SKIP_CPU_SYNC } else { DmaAttrs::empty() };
                e.bouncer.unmap_single(dev.device(), l.dma, l.size, l.dir, attrs).unwrap();
                if l.dir.from_device() && !skip {
                    l.orig_model.clone_from(&l.bounce_model);
                }
                dead.push((l.orig, l.orig_model));
            }
            _ => {}
        }
        for l in &live {
            assert_eq!(
                e.guest.read_vec(l.orig, l.size),
                l.orig_model,
                "step {step} {op:?}: original of a live mapping"
            );
            let dev = if l.nvme { &e.nvme } else { &e.net };
            assert_eq!(e.dev_read(dev, l.dma, l.size), l.bounce_model, "step {step} {op:?}: bounce buffer");
        }
        for (orig, model) in &dead {
            assert_eq!(
                &e.guest.read_vec(*orig, model.len()),
                model,
                "step {step} {op:?}: original of an unmapped buffer"
            );
        }
        e.check();
        let s = e.bouncer.stats();
        assert_eq!(s.inflight_bytes, live.iter().map(|l| l.size as u64).sum::<u64>(), "step {step}: in-flight bytes");
    }
    for l in live {
        let dev = if l.nvme { &e.nvme } else { &e.net };
        e.bouncer.unmap_single(dev.device(), l.dma, l.size, l.dir, DmaAttrs::SKIP_CPU_SYNC).unwrap();
    }
    e.check();
}

/// The property test: random operation sequences against the model.
pub fn random_sequences_match_model<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let cases = std::env::var("BOUNCE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases, ..ProptestConfig::default() });
    runner
        .run(&proptest::collection::vec(op_strategy(), 1..60), |ops| {
            let e = Env::new(make);
            run_model(&e, &ops);
            Ok(())
        })
        .unwrap();
}

/// A mixed round of warm-path work through a [`Bouncer`]: for each of nine sizes from
/// 64 bytes to 200 000, a bidirectional map (alternately for a NIC and for an NVMe
/// controller with `min_align_mask` 4095, originals at an odd offset), a partial sync
/// for the CPU, a sync for the device and an unmap.
pub struct MapRound {
    net: Device,
    nvme: Device,
    sizes: [usize; 9],
    origs: Vec<PhysAddr>,
}

impl MapRound {
    /// The devices and originals (filled with [`pattern`]) on `guest`.
    ///
    /// # Panics
    /// When the guest has no memory for the originals.
    pub fn new(guest: &SimGuest) -> Self {
        let sizes = [64usize, 512, 1500, 2048, 4000, 9000, 16384, 65536, 200_000];
        let origs = sizes
            .iter()
            .map(|&n| {
                let a = guest.alloc_private(n + PAGE_SIZE).expect("memory for the originals") + 0x123;
                guest.write(a, &pattern(n as u64, n));
                a
            })
            .collect();
        Self { net: Device::new("virtio-net"), nvme: Device::new("nvme0").with_min_align_mask(4095), sizes, origs }
    }

    /// Maps in one round.
    pub fn maps(&self) -> usize {
        self.sizes.len()
    }

    /// Runs the round; returns the maps that failed.
    ///
    /// # Panics
    /// When a sync or unmap of a mapping just made fails.
    pub fn run<S: Strategy>(&self, b: &Bouncer<SimGuest, S>) -> usize {
        let mut errors = 0;
        for (i, (&n, &o)) in self.sizes.iter().zip(&self.origs).enumerate() {
            let dev = if i % 2 == 0 { &self.net } else { &self.nvme };
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
    }
}

/// The map path's promise, checked on a warm strategy: `rounds` of `round` make no
/// call to the global allocator (counted with [`count_allocations`]; the test binary
/// must install [`CountingAlloc`](crate::sim::CountingAlloc) as its global allocator,
/// which [`zero_alloc_test!`](crate::zero_alloc_test) does), convert no page (the
/// strategy's and the simulated hardware's counters) and fail no map.
///
/// # Panics
/// When the promise does not hold, or the counter does not see an allocation.
pub fn rounds_allocate_nothing<S: Strategy>(
    guest: &SimGuest,
    b: &Bouncer<SimGuest, S>,
    round: &MapRound,
    rounds: usize,
) {
    let conv = b.pool_stats().conversions;
    let hw = guest.stats();
    let maps = b.stats().maps;
    let (errors, allocs) = count_allocations(|| (0..rounds).map(|_| round.run(b)).sum::<usize>());
    assert_eq!(errors, 0, "warm maps failed");
    assert_eq!(allocs, 0, "the map path called the global allocator {allocs} times");
    assert_eq!(b.pool_stats().conversions, conv, "the map path converted pages");
    let hw2 = guest.stats();
    assert_eq!((hw2.decrypt_calls, hw2.encrypt_calls), (hw.decrypt_calls, hw.encrypt_calls));
    assert_eq!(b.stats().maps - maps, (rounds * round.maps()) as u64);
    // The counter itself works.
    let (len, n) = count_allocations(|| std::hint::black_box(std::vec![1u8; 10]).len());
    assert_eq!(len, 10);
    assert_eq!(n, 2, "one allocation and one free: is CountingAlloc the global allocator?");
}

/// [`rounds_allocate_nothing`] for the strategy `make` builds on a 128 MiB TDX guest
/// with 2 CPUs, after its background work has settled (on the guest's clock, moved
/// 1 ms per run) and one warm-up round; then an audit.
///
/// # Panics
/// When the map path allocates, converts or fails, or the audit fails.
pub fn warm_map_path_allocates_nothing<S: Strategy>(make: &dyn Fn(&SimGuest) -> S) {
    let mut cfg = SimConfig::new(PlatformKind::Tdx, 128 << 20, 2);
    cfg.track_copies = true;
    let guest = SimGuest::new(cfg);
    let s = make(&guest);
    for ms in 1..=1000 {
        guest.set_clock(ms * 1_000_000);
        if !s.background_pending() {
            break;
        }
        s.run_background();
    }
    let b = Bouncer::new(guest.clone(), s, BouncerOptions::default());
    let round = MapRound::new(&guest);
    assert_eq!(round.run(&b), 0, "warm-up maps failed");
    rounds_allocate_nothing(&guest, &b, &round, 50);
    b.strategy().audit().unwrap();
    guest.assert_no_violations();
}

/// The map path allocates nothing, as a test binary of its own: installs
/// [`CountingAlloc`](crate::sim::CountingAlloc) as the global allocator and runs
/// [`warm_map_path_allocates_nothing`] for a strategy factory `Fn(&SimGuest) -> S`.
/// One line in a strategy's `tests/zero_alloc.rs`.
#[macro_export]
macro_rules! zero_alloc_test {
    ($make:expr) => {
        #[global_allocator]
        static GLOBAL: $crate::sim::CountingAlloc = $crate::sim::CountingAlloc;

        #[test]
        fn warm_map_sync_unmap_allocate_nothing_and_convert_nothing() {
            $crate::conformance::warm_map_path_allocates_nothing(&$make);
        }
    };
}

/// Instantiates the whole conformance suite as `#[test]` functions for a strategy
/// factory `Fn(&SimGuest) -> S`.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@tests $make;
            map_copies_in_every_direction, unmap_copies_back_per_direction, skip_cpu_sync,
            sync_rules, partial_sync_at_offset, overflow_is_clamped, min_align_mask_preserved,
            alloc_align_mask_honoured, max_mapping_size_is_exact, map_sg_all_or_nothing,
            exhaustion_is_an_error, may_block_waits_for_an_unmap, bad_unmaps_change_nothing, bad_arguments_change_nothing,
            dma_mask_respected, statistics_add_up, scrub_clears_buffers, copies_each_direction_once,
            hostile_host_cannot_reach_guest_memory, copy_counts_per_direction, reused_buffer_never_shows_stale_data,
            concurrent_map_unmap, random_sequences_match_model);
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::conformance::$name(&$make);
            }
        )*
    };
}
