//! Boot: `Legacy::from_boot` sizes the pool as Linux 6.12 does, places it below 4 GiB
//! when it can, converts it once in platform-sized batches, and refuses bad parameters.

use bounce_framework::sim::{PlatformKind, SimConfig, SimGuest};
use bounce_framework::{
    BootConfig, Bouncer, BouncerOptions, CmdlineError, InitError, PhysAddr, Platform, Strategy, PAGE_SIZE,
};
use bounce_legacy::{Legacy, LegacyConfig, Placement};

fn boot(g: &SimGuest, cmdline: &str) -> Result<Legacy<SimGuest>, InitError> {
    let cfg = BootConfig::parse(cmdline, &["legacy", "dynamic", "magazine"]).unwrap();
    Legacy::from_boot(g.clone(), &cfg)
}

fn logged(g: &SimGuest, text: &str) -> bool {
    g.logs().iter().any(|(_, m)| m.contains(text))
}

#[test]
fn confidential_default_is_the_clamped_six_percent() {
    // 128 MiB TDX guest: 6 % = 7.68 MiB, clamped up to 64 MiB; 2 CPUs -> 2 areas. The
    // conversion goes through SharedMemory in batches of max_conversion_pages().
    let mut cfg = SimConfig::new(PlatformKind::Tdx, 128 << 20, 2);
    cfg.max_conversion_pages = 512;
    let g = SimGuest::new(cfg);
    let l = boot(&g, "console=ttyS0 swiotlb.strategy=legacy").unwrap();
    assert_eq!((l.geometry().nslabs, l.geometry().nareas, l.geometry().area_nslabs), (32768, 2, 16384));
    assert!(logged(&g, "SWIOTLB bounce buffer size adjusted to 64MB"), "{:?}", g.logs());
    assert!(logged(&g, "(64MB), 2 areas"), "{:?}", g.logs());
    let st = l.stats();
    assert_eq!(st.capacity_bytes, 64 << 20);
    assert_eq!(st.debugfs().io_tlb_nslabs, 32768);
    assert_eq!(st.conversions.pages_decrypted, 16384);
    assert_eq!(st.conversions.decrypt_calls, 32, "16384 pages in batches of 512");
    assert_eq!(st.conversions.shared_bytes, 64 << 20);
    assert!(g.range_is(l.pool_start(), 64 << 20, bounce_framework::sim::PageState::Shared));
    assert!(l.pool_end().0 <= 1 << 32);
    l.audit().unwrap();
}

#[test]
fn plain_guest_default_is_64_mib_without_the_coco_rule() {
    let g = SimGuest::with(PlatformKind::Plain, 128 << 20, 4);
    let l = boot(&g, "").unwrap();
    assert_eq!((l.geometry().nslabs, l.geometry().nareas), (32768, 4));
    assert!(!logged(&g, "adjusted to"));
    // Below 4 GiB, so a 32-bit device reaches it (no TDX shared bit on a plain guest).
    let b = Bouncer::new(g.clone(), l, BouncerOptions::default());
    assert!(b.dma_supported(0xffff_ffff));
}

#[test]
fn swiotlb_parameter_is_replayed_like_linux() {
    let g = SimGuest::with(PlatformKind::Tdx, 128 << 20, 2);
    // swiotlb=3000,2: ALIGN(3000, 128) = 3072, swiotlb_adjust_nareas(2) rounds up to 4096.
    let l = boot(&g, "swiotlb=3000,2").unwrap();
    assert_eq!((l.geometry().nslabs, l.geometry().nareas), (4096, 2));
    assert!(logged(&g, "roundup to 8MB"), "{:?}", g.logs());
    drop(l);
    // swiotlb=1024,8: 8 areas of 128 slots, more than the guest's 2 CPUs.
    let l = boot(&g, "swiotlb=1024,8,force").unwrap();
    assert_eq!((l.geometry().nslabs, l.geometry().nareas, l.geometry().area_nslabs), (1024, 8, 128));
    drop(l);
    // swiotlb=512,8: 8 areas need 1024 slots -> the pool grows to 1024.
    let l = boot(&g, "swiotlb=512,8").unwrap();
    assert_eq!((l.geometry().nslabs, l.geometry().nareas), (1024, 8));
}

#[test]
fn bad_boot_parameters_are_errors() {
    let g = SimGuest::with(PlatformKind::Tdx, 128 << 20, 2);
    match boot(&g, "swiotlb.legacy.slots=64") {
        Err(InitError::Cmdline(CmdlineError::UnknownParam { param, .. })) => assert_eq!(param, "slots"),
        other => panic!("{other:?}"),
    }
    match boot(&g, "swiotlb=noforce") {
        Err(InitError::Config(m)) => assert!(m.contains("noforce"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(g.stats().pages_decrypted, 0, "nothing was converted");
}

#[test]
fn small_guest_shrinks_the_pool_by_halves() {
    // 48 MiB guest: 64 MiB fails, 32 MiB fits.
    let g = SimGuest::with(PlatformKind::Tdx, 48 << 20, 2);
    let l = boot(&g, "").unwrap();
    assert_eq!(l.geometry().nslabs, 16384);
    assert!(logged(&g, "adjusted 32768 -> 16384 slabs"), "{:?}", g.logs());
    assert_eq!(l.stats().conversions.alloc_failures, 2, "below 4 GiB, then anywhere, at 64 MiB");
}

#[test]
fn pool_goes_above_4_gib_only_when_it_must() {
    // A guest whose memory starts at 4 GiB: nothing is below the limit.
    let mut cfg = SimConfig::new(PlatformKind::Plain, 16 << 20, 2);
    cfg.base = PhysAddr(1 << 32);
    let g = SimGuest::new(cfg);
    let slots = |placement| LegacyConfig { nslabs: Some(1024), placement, ..LegacyConfig::default() };
    let l = Legacy::new(g.clone(), slots(Placement::LowThenAnywhere)).unwrap();
    assert_eq!(l.pool_start(), PhysAddr(1 << 32));
    let b = Bouncer::new(g.clone(), l, BouncerOptions::default());
    assert!(!b.dma_supported(0xffff_ffff), "a 32-bit device cannot reach a pool above 4 GiB");
    assert!(b.dma_supported(u64::MAX));
    // Low only: Linux's memblock_alloc_low() behaviour, shrinking down to 1 MiB, then
    // failing.
    match Legacy::new(g.clone(), slots(Placement::Low)) {
        Err(InitError::Grow(e)) => assert!(e.to_string().contains("allocation"), "{e}"),
        other => panic!("{other:?}"),
    }
    let anywhere = Legacy::new(g.clone(), slots(Placement::Anywhere)).unwrap();
    assert!(anywhere.pool_start().0 >= 1 << 32);
    assert_eq!(anywhere.pool_start().0 % PAGE_SIZE as u64, 0);
    assert_eq!(g.cpu_count(), 2);
}
