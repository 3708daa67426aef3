//! What a hostile host sees of bounce memory, for every strategy booted through
//! `AnyStrategy::from_boot`: documenting tests of the threat `swiotlb.scrub=on` answers
//! and of when memory leaves the host's reach. The rules themselves (copy once per
//! operation, no stale data for the device, host writes after a copy never reach the
//! guest) are conformance cases and run for every strategy with the suite.
//!
//! - The host can read a `ToDevice` buffer at any time while it is mapped: bouncing
//!   exposes exactly the bytes handed to the device, and each `sync_for_device` update.
//! - After unmap, with scrub off, shared memory keeps the last mapping's bytes (both
//!   directions) until the buffer is reused or returned to private memory; the host can
//!   read them. With `swiotlb.scrub=on` the buffer reads as zeros.
//! - Memory the strategy converts back to private (shrinking, teardown) is out of the
//!   host's reach.

use bounce_framework::conformance::pattern;
use bounce_framework::sim::{set_current_cpu, DeviceError, PlatformKind, SimConfig, SimDevice, SimGuest};
use bounce_framework::{
    BootConfig, Bouncer, BouncerOptions, Device, DmaAddr, DmaAttrs, DmaDirection, Platform, PoolShape, Strategy,
};
use bounce_strategies::{AnyStrategy, StrategyKind, KNOWN_STRATEGIES};

/// The strategy's hostile-host command line (its `TEST_PROFILE`).
fn cmdline(kind: StrategyKind) -> &'static str {
    AnyStrategy::<SimGuest>::test_profile(kind).hostile_host
}

struct Host {
    kind: StrategyKind,
    guest: SimGuest,
    bouncer: Bouncer<SimGuest, AnyStrategy<SimGuest>>,
    dev: SimDevice,
    now: u64,
}

impl Host {
    /// Boots `kind` with `extra` appended to its command line; `swiotlb.scrub=` there
    /// sets the bouncer's scrub option, as the kernel binding does.
    fn boot(kind: StrategyKind, extra: &str) -> Self {
        set_current_cpu(Some(0));
        let mut cfg = SimConfig::new(PlatformKind::Tdx, 128 << 20, 2);
        cfg.track_copies = true;
        let guest = SimGuest::new(cfg);
        let line = format!("{} {extra}", cmdline(kind));
        let boot = BootConfig::parse(&line, KNOWN_STRATEGIES).expect("command line parses");
        let s = AnyStrategy::from_boot(guest.clone(), &boot).unwrap_or_else(|e| panic!("{kind} boots: {e}"));
        let options = BouncerOptions { scrub: boot.scrub, ..BouncerOptions::default() };
        let bouncer = Bouncer::new(guest.clone(), s, options);
        let dev = SimDevice::new(&guest, Device::new("nic"));
        let mut h = Self { kind, guest, bouncer, dev, now: 0 };
        h.settle();
        h
    }

    /// Runs the background work at a virtual time 2 s after the last, until it has none
    /// left (magazine: trimming and reaping are due every time).
    fn settle(&mut self) {
        self.now += 2_000_000_000;
        self.guest.set_clock(self.now);
        let s = self.bouncer.strategy();
        for _ in 0..1000 {
            if !s.background_pending() {
                return;
            }
            s.run_background();
        }
        panic!("{}: background work does not settle", self.kind);
    }

    fn host_read(&self, dma: DmaAddr, len: usize) -> Result<Vec<u8>, DeviceError> {
        let mut v = vec![0; len];
        self.dev.host_read(dma, &mut v).map(|()| v)
    }

    fn buffer(&self, len: usize, seed: u64) -> bounce_framework::PhysAddr {
        let a = self.guest.alloc_private(len).expect("guest memory");
        self.guest.write(a, &pattern(seed, len));
        a
    }
}

/// Scrub off: the host reads a `ToDevice` buffer while mapped (and every update synced
/// for the device), and after unmap it still reads the last bytes of both directions.
/// Scrub on: the same while mapped; zeros after unmap. Scrubbing writes shared memory
/// only (no guest copy) and never touches the originals.
#[test]
fn what_the_host_reads_after_unmap_scrub_off_and_on() {
    let size = 3000;
    for kind in StrategyKind::ALL {
        for scrub in [false, true] {
            let h = Host::boot(kind, if scrub { "swiotlb.scrub=on" } else { "swiotlb.scrub=off" });
            assert_eq!(h.bouncer.options().scrub, scrub);
            let dev = h.dev.device();
            let ctx = format!("{kind}, scrub {scrub}");
            // What the host reads in a freed buffer: zeros when scrubbed, else `last`.
            let residue = |dma: DmaAddr, last: Vec<u8>| {
                let seen = h.host_read(dma, size).expect("the freed buffer is still shared memory");
                let want = if scrub { vec![0; size] } else { last };
                assert_eq!(seen, want, "{ctx}: what the host reads after unmap");
            };
            // ToDevice: the host sees the data as soon as it is mapped, and each update.
            let secret = h.buffer(size, 1);
            let dma = h.bouncer.map_single(dev, secret, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
            assert_eq!(h.host_read(dma, size).unwrap(), pattern(1, size), "{ctx}: host read while mapped");
            h.guest.write(secret, &pattern(2, size));
            h.bouncer.sync_single_for_device(dev, dma, size, DmaDirection::ToDevice).unwrap();
            assert_eq!(h.host_read(dma, size).unwrap(), pattern(2, size), "{ctx}: host read after a sync");
            let copies = h.guest.stats();
            h.bouncer.unmap_single(dev, dma, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
            let after = h.guest.stats();
            assert_eq!(
                (after.bytes_into_shared, after.bytes_out_of_shared),
                (copies.bytes_into_shared, copies.bytes_out_of_shared),
                "{ctx}: a ToDevice unmap makes no guest copy (scrubbing is a fill, not a copy)"
            );
            residue(dma, pattern(2, size));
            assert_eq!(h.guest.read_vec(secret, size), pattern(2, size), "{ctx}: the original changed");
            // FromDevice: the device's bytes reach the original, and stay in shared
            // memory unless scrubbed.
            let inbox = h.buffer(size, 3);
            let dma = h.bouncer.map_single(dev, inbox, size, DmaDirection::FromDevice, DmaAttrs::empty()).unwrap();
            h.dev.write(&h.bouncer, dma, &pattern(4, size)).unwrap();
            h.bouncer.unmap_single(dev, dma, size, DmaDirection::FromDevice, DmaAttrs::empty()).unwrap();
            assert_eq!(h.guest.read_vec(inbox, size), pattern(4, size), "{ctx}: unmap copied back");
            residue(dma, pattern(4, size));
            assert_eq!(h.guest.read_vec(inbox, size), pattern(4, size), "{ctx}: scrubbing touched the original");
            h.bouncer.strategy().audit().unwrap_or_else(|e| panic!("{ctx}: {e}"));
            h.guest.assert_no_violations();
        }
    }
}

/// Memory leaves the host's reach exactly when the strategy converts it back: a bounce
/// address the host can still read is one the strategy still owns (shared). Strategies with
/// growing pools return idle memory (here at once, `idle_ms=0`), so some earlier bounce
/// addresses become unreadable; a fixed pool stays shared until it is dropped. After
/// the drop, none is readable.
#[test]
fn host_loses_access_when_memory_returns_to_private() {
    let size = 2000;
    for kind in StrategyKind::ALL {
        let mut h = Host::boot(kind, "");
        let dev = *h.dev.device();
        let orig = h.buffer(size, 9);
        // Demand grows the pools well past their targets, then goes away.
        let mut live = Vec::new();
        for _ in 0..600 {
            live.push(h.bouncer.map_single(&dev, orig, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap());
            if live.len() % 64 == 0 {
                h.settle();
            }
        }
        for &d in &live {
            h.bouncer.unmap_single(&dev, d, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        }
        for _ in 0..3 {
            h.settle();
        }
        let mut gone = 0;
        for &d in &live {
            let owned = h.bouncer.strategy().owns(h.guest.dma_to_phys(d));
            match h.host_read(d, size) {
                Ok(_) => assert!(owned, "{kind}: the host reads {d}, which the strategy gave up"),
                Err(e) => {
                    assert!(matches!(e, DeviceError::NotShared { .. }), "{kind}: {e}");
                    assert!(!owned, "{kind}: {d} is owned but not shared");
                    gone += 1;
                }
            }
        }
        if AnyStrategy::<SimGuest>::test_profile(kind).pool == PoolShape::Fixed {
            assert_eq!(gone, 0, "{kind}: a fixed pool never returns memory while it runs");
        } else {
            let st = h.bouncer.strategy().stats();
            assert!(gone > 0, "{kind}: no idle memory was returned to private: {st:?}");
        }
        h.guest.assert_no_violations();
        let Host { guest, bouncer, dev: sim_dev, .. } = h;
        drop(bouncer);
        for &d in &live {
            let mut v = vec![0; size];
            assert!(
                matches!(sim_dev.host_read(d, &mut v), Err(DeviceError::NotShared { .. })),
                "{kind}: {d} still readable after the strategy was dropped"
            );
        }
        assert_eq!(guest.stats().shared_pages, 0);
        guest.assert_no_violations();
    }
}
