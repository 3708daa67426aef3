//! Boot command line: `swiotlb.magazine.*` and `swiotlb=`.

use bounce_framework::sim::{PlatformKind, SimGuest};
use bounce_framework::{BootConfig, CmdlineError, InitError, PhysAddr, Strategy};
use bounce_magazine::config::{default_max_rounds, default_rounds};
use bounce_magazine::{Magazine, MagazineConfig, RoundsSetting};
use bounce_pools::{ClassSpec, DEFAULT_CLASSES, SEED_CLASSES};

const KNOWN: &[&str] = &["legacy", "dynamic", "magazine"];

fn config(cmdline: &str) -> Result<MagazineConfig, InitError> {
    Magazine::<SimGuest>::config_from_boot(&BootConfig::parse(cmdline, KNOWN).unwrap())
}

fn boot(guest: &SimGuest, cmdline: &str) -> Result<Magazine<SimGuest>, InitError> {
    Magazine::from_boot(guest.clone(), &BootConfig::parse(cmdline, KNOWN).unwrap())
}

#[test]
fn defaults_are_documented() {
    let cfg = config("console=ttyS0 swiotlb.strategy=magazine").unwrap();
    assert_eq!(cfg, MagazineConfig::default());
    assert_eq!(cfg.pools.classes, DEFAULT_CLASSES);
    assert_eq!(config("swiotlb.magazine.preset=seed").unwrap().pools.classes, SEED_CLASSES);
    assert_eq!((cfg.trim_ms, cfg.reap_ms, cfg.contention), (100, 1000, 3));
    assert_eq!((cfg.rounds.clone(), cfg.depot, cfg.depot_target), (RoundsSetting::Default, None, None));
    // Per-class magazine sizes for the seed's classes.
    let sizes: Vec<_> = SEED_CLASSES.iter().map(|c| (default_rounds(c.size), default_max_rounds(c.size))).collect();
    assert_eq!(sizes, [(32, 128), (32, 128), (16, 64), (4, 16), (1, 1)]);
    let sizes: Vec<_> = DEFAULT_CLASSES.iter().map(|c| default_rounds(c.size)).collect();
    assert_eq!(sizes, [32, 32, 32, 16, 8, 4, 2, 1, 1, 1, 1]);
    let g = SimGuest::with(PlatformKind::Tdx, 128 << 20, 2);
    let s = boot(&g, "swiotlb.strategy=magazine").unwrap();
    assert_eq!(s.name(), "magazine");
    assert_eq!(s.pools().cap_bytes(), 32 << 20);
    let l = s.layer();
    assert_eq!((l.cpu_count(), l.class_count(), l.depot_target()), (2, 11, 2));
    assert_eq!((0..11).map(|c| l.rounds(c)).collect::<Vec<_>>(), sizes);
    assert!(g.logs().iter().any(|(_, m)| m.contains("magazine strategy: 2 CPUs")), "{:?}", g.logs());
    s.audit().unwrap();
}

#[test]
fn every_parameter_is_read() {
    let cfg = config(
        "swiotlb.magazine.classes=1K:100,8K:50:10:200 swiotlb.magazine.cap=8M swiotlb.magazine.batch=256 \
         swiotlb.magazine.idle_ms=50 swiotlb.magazine.reserve=0 swiotlb.magazine.fallback=off \
         swiotlb.magazine.limit=4G swiotlb.magazine.rounds=8,2 swiotlb.magazine.max_rounds=0x40 \
         swiotlb.magazine.depot=6 swiotlb.magazine.depot_target=3 swiotlb.magazine.trim_ms=20 \
         swiotlb.magazine.reap_ms=500 swiotlb.magazine.contention=10",
    )
    .unwrap();
    assert_eq!(
        cfg.pools.classes,
        [ClassSpec::new(1024, 100), ClassSpec { size: 8192, target: 50, low: Some(10), high: Some(200) }]
    );
    assert_eq!(cfg.pools.cap_bytes, Some(8 << 20));
    assert_eq!((cfg.pools.batch_pages, cfg.pools.idle_ms, cfg.pools.reserve_percent), (256, 50, 0));
    assert!(!cfg.fallback);
    assert_eq!(cfg.pools.limit, PhysAddr(4 << 30));
    assert_eq!(cfg.rounds, RoundsSetting::PerClass(vec![8, 2]));
    assert_eq!(cfg.max_rounds, RoundsSetting::Uniform(64));
    assert_eq!((cfg.depot, cfg.depot_target), (Some(6), Some(3)));
    assert_eq!((cfg.trim_ms, cfg.reap_ms, cfg.contention), (20, 500, 10));
    let g = SimGuest::with(PlatformKind::Tdx, 64 << 20, 2);
    let s = Magazine::new(g, cfg).unwrap();
    assert_eq!(s.addressing_limit(), PhysAddr(4 << 30));
    assert_eq!((s.layer().rounds(0), s.layer().rounds(1), s.layer().depot_target()), (8, 2, 3));
}

#[test]
fn swiotlb_slots_set_the_default_cap_and_cap_overrides_it() {
    assert_eq!(config("swiotlb=16384").unwrap().pools.cap_bytes, Some(32 << 20));
    assert_eq!(config("swiotlb=16384 swiotlb.magazine.cap=4M").unwrap().pools.cap_bytes, Some(4 << 20));
}

#[test]
fn bad_parameters_name_the_token() {
    let e = config("swiotlb.magazine.size=3").unwrap_err();
    assert!(matches!(e, InitError::Cmdline(CmdlineError::UnknownParam { .. })), "{e}");
    assert!(e.to_string().contains("swiotlb.magazine.size=3") && e.to_string().contains("rounds"), "{e}");
    for bad in [
        "swiotlb.magazine.rounds=0",
        "swiotlb.magazine.rounds=5000",
        "swiotlb.magazine.rounds=4,x",
        "swiotlb.magazine.rounds=",
        "swiotlb.magazine.trim_ms=0",
        "swiotlb.magazine.contention=0",
        "swiotlb.magazine.depot=lots",
        "swiotlb.magazine.fallback=maybe",
    ] {
        let e = config(bad).unwrap_err();
        assert!(e.to_string().contains(bad.split('=').next().unwrap()), "{bad}: {e}");
    }
}

#[test]
fn inconsistent_magazine_sizes_are_refused_with_a_reason() {
    let g = SimGuest::with(PlatformKind::Tdx, 64 << 20, 2);
    let used = g.stats().allocated_pages;
    for (cmdline, says) in [
        ("swiotlb.magazine.rounds=64 swiotlb.magazine.max_rounds=32", "rounds <= max_rounds"),
        ("swiotlb.magazine.rounds=1,2,3", "lists 3 values for 11 size classes"),
        ("swiotlb.magazine.depot=1 swiotlb.magazine.depot_target=2", "exceeds the 1 depot magazines"),
    ] {
        let e = boot(&g, cmdline).err().unwrap_or_else(|| panic!("{cmdline} was accepted"));
        assert!(matches!(e, InitError::Config(_)), "{cmdline}: {e}");
        assert!(e.to_string().contains(says), "{cmdline}: {e}");
        // Nothing was allocated or converted for a refused configuration.
        assert_eq!(g.stats().allocated_pages, used, "{cmdline}");
        assert_eq!(g.stats().decrypt_calls, 0, "{cmdline}");
    }
    // An explicit boot size above the default maximum raises the maximum.
    let s = boot(&g, "swiotlb.magazine.rounds=200").unwrap();
    assert_eq!(s.layer().rounds(0), 200);
}

/// Regression (fuzz finding `fuzz/regressions/boot/dynamic-largest-class-2k`, reached
/// through `Magazine::from_boot` too): a largest class below 8 KiB is refused at boot.
#[test]
fn a_largest_class_below_8k_is_refused_at_boot() {
    let g = SimGuest::with(PlatformKind::Tdx, 64 << 20, 2);
    let tok = "swiotlb.magazine.classes=512:256,4K:64";
    match boot(&g, &format!("swiotlb.strategy=magazine {tok}")) {
        Err(InitError::Cmdline(e @ CmdlineError::OutOfRange { .. })) => {
            assert!(e.to_string().contains(tok) && e.to_string().contains("largest class"), "{e}");
        }
        Err(e) => panic!("{e}"),
        Ok(s) => panic!("booted with max_mapping_size {}", s.max_mapping_size(&bounce_framework::Device::new("d"))),
    }
    assert_eq!((g.stats().allocated_pages, g.stats().shared_pages), (0, 0));
    let s = boot(&g, "swiotlb.magazine.classes=512:256,8K:4").unwrap();
    let nvme = bounce_framework::Device::new("nvme0").with_min_align_mask(4095);
    assert!(s.max_mapping_size(&nvme) >= bounce_framework::PAGE_SIZE);
}
