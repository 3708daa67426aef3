//! Boot command line: `swiotlb.dynamic.*` and `swiotlb=`.

use bounce_dynamic::{Dynamic, DynamicConfig};
use bounce_framework::sim::{PlatformKind, SimGuest};
use bounce_framework::{BootConfig, CmdlineError, InitError, PhysAddr, Strategy};
use bounce_pools::{ClassSpec, PoolConfig, DEFAULT_CLASSES, SEED_CLASSES};

const KNOWN: &[&str] = &["legacy", "dynamic", "magazine"];

fn config(cmdline: &str) -> Result<DynamicConfig, InitError> {
    Dynamic::<SimGuest>::config_from_boot(&BootConfig::parse(cmdline, KNOWN).unwrap())
}

#[test]
fn defaults_are_the_demand_preset_and_the_seed_is_selectable() {
    let cfg = config("console=ttyS0 swiotlb.strategy=dynamic").unwrap();
    assert_eq!(cfg, DynamicConfig::default());
    assert_eq!(cfg.pools.classes, DEFAULT_CLASSES);
    assert!(cfg.pools.demand && cfg.pools.stock_bytes > 0);
    assert_eq!(cfg.pools.cap_bytes, None);
    assert!(cfg.fallback);
    let seed = config("swiotlb.dynamic.preset=seed").unwrap();
    assert_eq!(seed.pools, PoolConfig::seed());
    assert_eq!(seed.pools.classes, SEED_CLASSES);
    assert!(!seed.pools.demand && seed.pools.stock_bytes == 0 && seed.pools.adaptive);
    // Later parameters refine a preset.
    assert_eq!(config("swiotlb.dynamic.preset=seed swiotlb.dynamic.idle_ms=7").unwrap().pools.idle_ms, 7);
    let tok = "swiotlb.dynamic.preset=fast";
    match config(tok) {
        Err(InitError::Cmdline(e)) => assert!(e.to_string().contains(tok) && e.to_string().contains("seed"), "{e}"),
        other => panic!("{other:?}"),
    }
    // On the suite's 128 MiB guest the default cap is a quarter of RAM, and the floor a
    // quarter of the cap: at boot it is all blank shells, which any class takes.
    let g = SimGuest::with(PlatformKind::Tdx, 128 << 20, 2);
    let s = Dynamic::from_boot(g.clone(), &BootConfig::parse("swiotlb.strategy=dynamic", KNOWN).unwrap()).unwrap();
    assert_eq!(s.pools().cap_bytes(), 32 << 20);
    assert_eq!(s.name(), "dynamic");
    let st = s.stats();
    assert!(st.conversions.shared_bytes > 0 && st.conversions.shared_bytes <= 16 << 20, "{st:?}");
    for (i, c) in DEFAULT_CLASSES.iter().enumerate() {
        assert_eq!(s.pools().pool(i).ready(), 0, "class {} holds nothing before its first map", c.size);
    }
    assert_eq!(s.pools().blank_shells() * (512 << 10), 8 << 20, "the floor is blank shells at boot");
    // Blank shells are capacity (any class takes them on the map path): Linux's
    // io_tlb_nslabs shows them from boot on.
    assert_eq!(st.capacity_bytes, 8 << 20);
    assert_eq!(st.debugfs().io_tlb_nslabs, (8 << 20) / 2048);
    s.audit().unwrap();
}

#[test]
fn every_parameter_is_read() {
    let cfg = config(
        "swiotlb.dynamic.classes=1K:100,8K:50:10:200 swiotlb.dynamic.cap=8M swiotlb.dynamic.batch=256 \
         swiotlb.dynamic.idle_ms=50 swiotlb.dynamic.reserve=0 swiotlb.dynamic.fallback=off swiotlb.dynamic.limit=4G \
         swiotlb.dynamic.headroom=20 swiotlb.dynamic.chunk=256K swiotlb.dynamic.stock=1M",
    )
    .unwrap();
    assert_eq!(
        cfg.pools.classes,
        [ClassSpec::new(1024, 100), ClassSpec { size: 8192, target: 50, low: Some(10), high: Some(200) }]
    );
    assert_eq!(cfg.pools.cap_bytes, Some(8 << 20));
    assert_eq!(cfg.pools.batch_pages, 256);
    assert_eq!(cfg.pools.idle_ms, 50);
    assert_eq!(cfg.pools.reserve_percent, 0);
    assert!(!cfg.fallback);
    assert_eq!(cfg.pools.limit, PhysAddr(4 << 30));
    assert_eq!((cfg.pools.headroom_percent, cfg.pools.chunk_bytes, cfg.pools.stock_bytes), (20, 256 << 10, 1 << 20));
    let g = SimGuest::with(PlatformKind::Tdx, 64 << 20, 2);
    let s = Dynamic::new(g, cfg).unwrap();
    assert_eq!(s.addressing_limit(), PhysAddr(4 << 30));
}

#[test]
fn swiotlb_slots_set_the_default_cap_and_cap_overrides_it() {
    assert_eq!(config("swiotlb=16384").unwrap().pools.cap_bytes, Some(32 << 20));
    assert_eq!(config("swiotlb=16384 swiotlb.dynamic.cap=0x800000").unwrap().pools.cap_bytes, Some(8 << 20));
}

#[test]
fn malformed_values_name_their_token() {
    for tok in [
        "swiotlb.dynamic.classes=512:abc",
        "swiotlb.dynamic.classes=500:10",
        "swiotlb.dynamic.classes=4K:10,2K:10",
        "swiotlb.dynamic.classes=512",
        "swiotlb.dynamic.cap=12Q",
        "swiotlb.dynamic.cap=100",
        "swiotlb.dynamic.batch=0",
        "swiotlb.dynamic.batch=1048576",
        "swiotlb.dynamic.idle_ms=-1",
        "swiotlb.dynamic.reserve=60",
        "swiotlb.dynamic.fallback=maybe",
        "swiotlb.dynamic.limit=1K",
        "swiotlb.dynamic.preset=",
        "swiotlb.dynamic.headroom=500",
        "swiotlb.dynamic.chunk=1K",
        "swiotlb.dynamic.stock=1Q",
    ] {
        match config(tok) {
            Err(InitError::Cmdline(e)) => assert!(e.to_string().contains(tok), "{tok}: {e}"),
            other => panic!("{tok}: {other:?}"),
        }
    }
    match config("swiotlb.dynamic.slots=3") {
        Err(InitError::Cmdline(CmdlineError::UnknownParam { param, .. })) => assert_eq!(param, "slots"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn impossible_settings_are_config_errors() {
    let g = SimGuest::with(PlatformKind::Tdx, 64 << 20, 2);
    let boot = BootConfig::parse("swiotlb.dynamic.cap=64K", KNOWN).unwrap();
    match Dynamic::from_boot(g.clone(), &boot) {
        Err(InitError::Config(m)) => assert!(m.contains("cannot hold one chunk"), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a 64 KiB cap cannot hold the seed's chunks"),
    }
    // Reserves larger than the cap (the seed's policy fills them at boot): the boot fill
    // fails with a grow error.
    let boot = BootConfig::parse(
        "swiotlb.dynamic.preset=seed swiotlb.dynamic.classes=4K:4096,8K:1 swiotlb.dynamic.reserve=50 \
         swiotlb.dynamic.cap=4M",
        KNOWN,
    )
    .unwrap();
    let r = Dynamic::from_boot(g.clone(), &boot);
    assert!(matches!(r, Err(InitError::Grow(_))), "{:?}", r.as_ref().err());
    assert_eq!(g.stats().shared_pages, 0, "a failed boot leaves nothing shared");
}

/// Regression (fuzz finding `fuzz/regressions/boot/dynamic-largest-class-2k`): a class
/// list whose largest class cannot map a page at NVMe's in-page offsets is refused at
/// boot, naming its token, and leaves nothing allocated.
#[test]
fn a_largest_class_below_8k_is_refused_at_boot() {
    let g = SimGuest::with(PlatformKind::Tdx, 64 << 20, 2);
    let tok = "swiotlb.dynamic.classes=512:256,2048:64";
    let boot = BootConfig::parse(&format!("swiotlb.strategy=dynamic {tok}"), KNOWN).unwrap();
    match Dynamic::from_boot(g.clone(), &boot) {
        Err(InitError::Cmdline(e @ CmdlineError::OutOfRange { .. })) => {
            assert!(e.to_string().contains(tok) && e.to_string().contains("largest class"), "{e}");
        }
        Err(e) => panic!("{e}"),
        Ok(s) => panic!("booted with max_mapping_size {} for NVMe", s.max_mapping_size(&nvme())),
    }
    assert_eq!((g.stats().allocated_pages, g.stats().shared_pages), (0, 0));
    let boot = BootConfig::parse("swiotlb.dynamic.classes=512:256,8K:4", KNOWN).unwrap();
    let s = Dynamic::from_boot(g.clone(), &boot).unwrap();
    assert!(s.max_mapping_size(&nvme()) >= bounce_framework::PAGE_SIZE);
}

fn nvme() -> bounce_framework::Device {
    bounce_framework::Device::new("nvme0").with_min_align_mask(4095)
}
