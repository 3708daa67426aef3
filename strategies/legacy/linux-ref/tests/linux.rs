//! The `linux` reference against the legacy port, through the `Bouncer` on the simulated
//! guest: the same addresses for the same sequence, data through maps, unmaps and syncs,
//! bad unmaps refused without touching Linux's state, two threads at once (real locks),
//! the pool legacy boots with for the same command line, and Linux's
//! `swiotlb_max_mapping_size()` equal to legacy's formula.
//!
//! Every test needs the reference built with the Linux source; without it each prints
//! why (`bounce_linux_ref::available()`) and passes.

use std::sync::Arc;

use bounce_framework::sim::{set_current_cpu, PlatformKind, SimDevice, SimGuest};
use bounce_framework::{
    BootConfig, Bouncer, BouncerOptions, Device, DmaAddr, DmaAttrs, DmaDirection, LookupError, PhysAddr, Platform,
    Strategy,
};
use bounce_legacy::{max_mapping_size_for, Legacy, LegacyConfig};
use bounce_linux_ref::{available, gen, linux_max_mapping_size, LinuxRef, INVALID_PHYS_ADDR};

/// Whether the reference is built; prints why not.
fn built() -> bool {
    match available() {
        Ok(()) => true,
        Err(why) => {
            println!("skipped: the linux reference is unavailable: {why}");
            false
        }
    }
}

fn guest() -> SimGuest {
    SimGuest::with(PlatformKind::Tdx, 64 << 20, 2)
}

/// A 2 MiB pool (1024 slots) in two areas.
fn config() -> LegacyConfig {
    LegacyConfig { nslabs: Some(1024), nareas: Some(2), ..LegacyConfig::default() }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 1) as u8).collect()
}

/// One side of the comparison: a guest with a bouncer over strategy `S`.
struct Side<S: Strategy> {
    guest: SimGuest,
    bouncer: Bouncer<SimGuest, S>,
}

impl<S: Strategy> Side<S> {
    fn new(make: impl FnOnce(SimGuest) -> S) -> Self {
        let guest = guest();
        let bouncer = Bouncer::new(guest.clone(), make(guest.clone()), BouncerOptions::default());
        Self { guest, bouncer }
    }
}

#[test]
fn cut_takes_whole_definitions() {
    let src = "int a(void) { return 1; }\nstruct s { int x; };\nint a(void) { if (1) { return 2; } }\n";
    assert_eq!(gen::cut(src, "int a(", 0).unwrap(), "int a(void) { return 1; }");
    assert_eq!(gen::cut(src, "struct s {", 0).unwrap(), "struct s { int x; };");
    assert_eq!(gen::cut(src, "int a(", 1).unwrap(), "int a(void) { if (1) { return 2; } }");
    assert!(gen::cut(src, "int b(", 0).unwrap_err().contains("`int b(`"));
    assert!(gen::cut("int a(void) {", "int a(", 0).unwrap_err().contains("unbalanced"));
    let nowhere = std::path::PathBuf::from("/nonexistent/linux");
    let why = gen::find_source(&[nowhere], true).unwrap_err();
    assert!(why.contains("/nonexistent/linux (from BOUNCE_LINUX_SRC)") && why.contains("apt-get install"), "{why}");
    assert!(!why.contains('\n'));
}

#[test]
fn availability_is_reported() {
    match available() {
        Ok(()) => assert!(bounce_linux_ref::source().is_some()),
        Err(why) => {
            assert!(why.contains("BOUNCE_LINUX_SRC"), "{why}");
            let boot = BootConfig::default();
            let err = LinuxRef::from_boot(guest(), &boot).unwrap_err().to_string();
            assert!(err.contains("BOUNCE_LINUX_SRC"), "{err}");
            println!("skipped: the linux reference is unavailable: {why}");
        }
    }
}

#[test]
fn linux_max_mapping_size_is_legacys_formula() {
    if !built() {
        return;
    }
    // From 2^19 - 1 on, Linux's `int` arithmetic wraps to a huge maximum where legacy's
    // saturates at 0; no request gets that far (map_size refuses it as too large).
    for bits in 0..=18 {
        let mask = (1u64 << bits) - 1;
        assert_eq!(linux_max_mapping_size(mask as u32), Some(max_mapping_size_for(mask)), "min_align_mask {mask:#x}");
    }
}

#[test]
fn boots_legacys_pool_for_the_same_command_line() {
    if !built() {
        return;
    }
    for cmdline in ["", "swiotlb=4096", "swiotlb=1024,4", "swiotlb=3000"] {
        let boot = BootConfig::parse(cmdline, &["legacy"]).unwrap();
        let l = Legacy::from_boot(guest(), &boot).unwrap();
        let r = LinuxRef::from_boot(guest(), &boot).unwrap();
        assert_eq!(
            (r.geometry(), r.pool_start(), r.pool_end()),
            (l.geometry(), l.pool_start(), l.pool_end()),
            "{cmdline:?}"
        );
        assert_eq!(r.stats().capacity_bytes, l.stats().capacity_bytes);
    }
    let boot = BootConfig::parse("swiotlb=noforce", &["legacy"]).unwrap();
    assert!(LinuxRef::from_boot(guest(), &boot).unwrap_err().to_string().contains("noforce"));
}

/// A random single-threaded sequence of maps (two devices, some with an
/// `alloc_align_mask`, on both CPUs), syncs and unmaps on legacy and on Linux's code:
/// every bus address the same, every byte right, both audits clean.
#[test]
fn same_addresses_and_data_as_legacy() {
    if !built() {
        return;
    }
    let legacy = Side::new(|g| Legacy::new(g, config()).unwrap());
    let linux = Side::new(|g| LinuxRef::new(g, config()).unwrap());
    let devices = [Device::new("virtio-net"), Device::new("nvme0").with_min_align_mask(0xfff)];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut live: Vec<(DmaAddr, PhysAddr, usize, usize, u64, usize)> = Vec::new();
    let (mut maps, mut fails) = (0, 0);
    for step in 0..3000u64 {
        let cpu = rng.below(2) as usize;
        set_current_cpu(Some(cpu));
        if !live.is_empty() && rng.below(5) < 2 {
            let (dma, orig, size, d, seed, offset) = live.swap_remove(rng.below(live.len() as u64) as usize);
            let dev = &devices[d];
            let sim = SimDevice::new(&linux.guest, *dev);
            sim.write(&linux.bouncer, dma, &pattern(seed + 1, size)).unwrap();
            if rng.below(2) == 0 {
                linux.bouncer.sync_single_for_cpu(dev, dma, size, DmaDirection::Bidirectional).unwrap();
                assert_eq!(linux.guest.read_vec(orig, size), pattern(seed + 1, size), "step {step}: sync for cpu");
            }
            linux.bouncer.unmap_single(dev, dma, size, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
            legacy.bouncer.unmap_single(dev, dma, size, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
            assert_eq!(linux.guest.read_vec(orig, size), pattern(seed + 1, size), "step {step}: data after unmap");
            for g in [&linux.guest, &legacy.guest] {
                g.free_private(PhysAddr(orig.0 - offset as u64), size + offset);
            }
            continue;
        }
        let d = rng.below(2) as usize;
        let size = [64, 1500, 2048, 4096, 9000, 65_536, 200_000][rng.below(7) as usize] - rng.below(64) as usize;
        let offset = rng.below(4096) as usize;
        let aam = [0, 0, 0, 0xfff, 0x3fff][rng.below(5) as usize];
        let seed = step * 1000;
        let mut origs = [PhysAddr(0); 2];
        for (o, g) in origs.iter_mut().zip([&linux.guest, &legacy.guest]) {
            *o = g.alloc_private(size + offset).unwrap() + offset as u64;
            g.write(*o, &pattern(seed, size));
        }
        assert_eq!(origs[0], origs[1], "both guests allocate alike");
        let dev = &devices[d];
        let a = linux.bouncer.map_with_align(dev, origs[0], size, aam, DmaDirection::Bidirectional, DmaAttrs::empty());
        let b = legacy.bouncer.map_with_align(dev, origs[1], size, aam, DmaDirection::Bidirectional, DmaAttrs::empty());
        match (a, b) {
            (Ok(x), Ok(y)) => {
                assert_eq!(x, y, "step {step}: {size} bytes at {} (aam {aam:#x}) on cpu {cpu}", origs[0]);
                let sim = SimDevice::new(&linux.guest, *dev);
                let mut got = vec![0; size];
                sim.read(&linux.bouncer, x, &mut got).unwrap();
                assert_eq!(got, pattern(seed, size), "step {step}: the device reads the original");
                live.push((x, origs[0], size, d, seed, offset));
                maps += 1;
            }
            (Err(x), Err(y)) => {
                assert_eq!(x.reason(), y.reason(), "step {step}: {x} / {y}");
                for g in [&linux.guest, &legacy.guest] {
                    g.free_private(PhysAddr(origs[0].0 - offset as u64), size + offset);
                }
                fails += 1;
            }
            (x, y) => panic!("step {step}: linux {x:?}, legacy {y:?}"),
        }
        if step % 100 == 0 {
            linux.bouncer.strategy().audit().unwrap();
        }
    }
    set_current_cpu(None);
    assert!(maps > 500 && fails > 10, "{maps} maps, {fails} failures: the sequence did not fill the pool");
    let r = linux.bouncer.strategy().audit().unwrap();
    assert_eq!(r.live_mappings, live.len());
    assert_eq!(linux.bouncer.pool_stats().used_bytes, legacy.bouncer.pool_stats().used_bytes);
    assert_eq!(linux.bouncer.pool_stats().used_hiwater_bytes, legacy.bouncer.pool_stats().used_hiwater_bytes);
    linux.guest.assert_no_violations();
}

/// Double, foreign and interior unmaps and syncs of unmapped memory are refused, and
/// Linux's slots stay as they were.
#[test]
fn bad_unmaps_are_refused_and_change_nothing() {
    if !built() {
        return;
    }
    let side = Side::new(|g| LinuxRef::new(g, config()).unwrap());
    let b = &side.bouncer;
    let dev = Device::new("nvme0").with_min_align_mask(0xfff);
    let orig = side.guest.alloc_private(3 * 4096).unwrap() + 0x234;
    let dma = b.map_single(&dev, orig, 5000, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    let keep = b.map_single(&dev, orig, 100, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    let strategy = b.strategy();
    let snapshot = |s: &LinuxRef<SimGuest>| (0..1024).map(|i| s.slot(i).unwrap()).collect::<Vec<_>>();
    let before = snapshot(strategy);
    let interior = DmaAddr(dma.0 + 2048);
    assert!(matches!(
        b.unmap_single(&dev, interior, 10, DmaDirection::ToDevice, DmaAttrs::empty()),
        Err(LookupError::NotMappingStart { start, .. }) if start == dma
    ));
    let foreign = side.guest.phys_to_dma(orig);
    assert!(b.unmap_single(&dev, foreign, 10, DmaDirection::ToDevice, DmaAttrs::empty()).is_err());
    assert_eq!(snapshot(strategy), before, "refused unmaps left Linux's slots alone");
    b.unmap_single(&dev, dma, 5000, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    let after_one = snapshot(strategy);
    assert!(matches!(
        b.unmap_single(&dev, dma, 5000, DmaDirection::ToDevice, DmaAttrs::empty()),
        Err(LookupError::NotMapped(_))
    ));
    assert!(b.sync_single_for_cpu(&dev, dma, 10, DmaDirection::ToDevice).is_err());
    assert_eq!(snapshot(strategy), after_one, "a double unmap left Linux's slots alone");
    assert_eq!(strategy.audit().unwrap().live_mappings, 1);
    b.unmap_single(&dev, keep, 100, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    let r = strategy.audit().unwrap();
    assert_eq!((r.live_mappings, r.used_bytes), (0, 0));
    assert!(snapshot(strategy).iter().all(|s| s.orig_addr == INVALID_PHYS_ADDR && s.list > 0));
    side.guest.assert_no_violations();
}

/// Two threads on two CPUs map, check and unmap at once; Linux's spin locks and atomics
/// keep the pool consistent.
#[test]
fn two_threads_at_once() {
    if !built() {
        return;
    }
    let env = Arc::new(Side::new(|g| LinuxRef::new(g, config()).unwrap()));
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let env = Arc::clone(&env);
            std::thread::spawn(move || {
                set_current_cpu(Some(t as usize));
                let dev = Device::new("net");
                let sim = SimDevice::new(&env.guest, dev);
                let mut rng = Rng(t + 11);
                let mut live = Vec::new();
                for i in 0..4000u64 {
                    if live.len() > 40 || (!live.is_empty() && rng.below(2) == 0) {
                        let (dma, orig, size, seed): (DmaAddr, PhysAddr, usize, u64) = live.swap_remove(0);
                        sim.write(&env.bouncer, dma, &pattern(seed + 1, size)).unwrap();
                        env.bouncer
                            .unmap_single(&dev, dma, size, DmaDirection::Bidirectional, DmaAttrs::empty())
                            .unwrap();
                        assert_eq!(env.guest.read_vec(orig, size), pattern(seed + 1, size));
                        env.guest.free_private(orig, size);
                        continue;
                    }
                    let size = 1 + rng.below(20_000) as usize;
                    let seed = t << 32 | i;
                    let orig = env.guest.alloc_private(size).unwrap();
                    env.guest.write(orig, &pattern(seed, size));
                    match env.bouncer.map_single(&dev, orig, size, DmaDirection::Bidirectional, DmaAttrs::empty()) {
                        Ok(dma) => {
                            let mut got = vec![0; size];
                            sim.read(&env.bouncer, dma, &mut got).unwrap();
                            assert_eq!(got, pattern(seed, size));
                            live.push((dma, orig, size, seed));
                        }
                        Err(_) => env.guest.free_private(orig, size),
                    }
                }
                for (dma, orig, size, _) in live {
                    env.bouncer.unmap_single(&dev, dma, size, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
                    env.guest.free_private(orig, size);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let r = env.bouncer.strategy().audit().unwrap();
    assert_eq!((r.live_mappings, r.used_bytes), (0, 0));
    assert!(env.bouncer.pool_stats().used_hiwater_bytes > 0);
    assert_eq!(env.bouncer.stats().inflight_bytes, 0);
    env.guest.assert_no_violations();
}
