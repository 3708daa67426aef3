//! A strategy per device (`swiotlb.strategy=<default>,<device>:<strategy>,...`): each
//! device's mappings land in its own strategy instance's pool, are unmapped by the
//! instance that made them, and are counted per device and per instance.

use bounce_framework::sim::{PlatformKind, SimGuest};
use bounce_framework::{
    BootConfig, Bouncer, BouncerOptions, Device, DmaAttrs, DmaDirection, FailureReason, InitError, LookupError,
    Platform, Strategy, DEVICE_SLOTS, OVERFLOW_DEVICE,
};
use bounce_strategies::{AnyStrategy, StrategyKind, KNOWN_STRATEGIES};

const CMDLINE: &str = "swiotlb=2048 swiotlb.strategy=legacy,virtio1:magazine,0000:00:05.0:dynamic,virtio2:magazine \
                       swiotlb.magazine.classes=2K:64,64K:4 swiotlb.magazine.cap=8M \
                       swiotlb.dynamic.classes=2K:64,64K:4 swiotlb.dynamic.cap=8M";

fn routed(cmdline: &str) -> Result<(SimGuest, Bouncer<SimGuest, AnyStrategy<SimGuest>>), InitError> {
    let guest = SimGuest::with(PlatformKind::Tdx, 256 << 20, 2);
    let boot = BootConfig::parse(cmdline, KNOWN_STRATEGIES).map_err(InitError::Cmdline)?;
    let b = AnyStrategy::boot_bouncer(guest.clone(), &boot, BouncerOptions::default())?;
    Ok((guest, b))
}

fn settle(b: &Bouncer<SimGuest, AnyStrategy<SimGuest>>) {
    for _ in 0..1000 {
        if !b.background_pending() {
            return;
        }
        b.run_background();
    }
}

#[test]
fn each_device_maps_through_its_own_instance() {
    let (guest, b) = routed(CMDLINE).unwrap();
    settle(&b);
    let kinds: Vec<StrategyKind> = b.lanes().iter().map(AnyStrategy::kind).collect();
    assert_eq!(kinds, [StrategyKind::Legacy, StrategyKind::Magazine, StrategyKind::Dynamic], "one instance each");
    let orig = guest.alloc_private(1 << 20).unwrap();
    guest.write(orig, &[0xa5; 4096]);
    let devices = [
        (Device::new("virtio1"), 1),
        (Device::new("virtio2"), 1),
        (Device::new("0000:00:05.0"), 2),
        (Device::new("nvme0"), 0),
    ];
    for (mut dev, lane) in devices {
        for attached in [false, true] {
            if attached {
                b.attach(&mut dev);
                assert_eq!(usize::from(dev.attachment().route.lane), lane);
            }
            let dma = b.map_single(&dev, orig, 3000, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
            let phys = guest.dma_to_phys(dma);
            for (i, s) in b.lanes().iter().enumerate() {
                assert_eq!(s.owns(phys), i == lane, "{dev:?}: mapping {phys} in instance {i}");
            }
            assert_eq!(guest.read_vec(phys, 3000), vec![0xa5; 3000], "bounced data");
            b.unmap_single(&dev, dma, 3000, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
            assert_eq!(
                b.unmap_single(&dev, dma, 3000, DmaDirection::Bidirectional, DmaAttrs::empty()),
                Err(LookupError::NotMapped(dma)),
                "double unmap refused"
            );
        }
    }
    // Two maps and two unmaps (and two failed unmaps) per device, counted where they
    // happened; each instance's figures are its devices'.
    let per_dev = b.device_stats();
    for (dev, lane) in devices {
        let d = per_dev.iter().find(|d| d.name() == dev.name()).unwrap();
        assert_eq!((d.lane, d.stats.maps, d.stats.unmaps), (lane, 2, 2), "{d:?}");
        assert_eq!(d.stats.failures_of(FailureReason::UnknownAddress), 2);
        assert_eq!(d.stats.bytes_to_bounce, 6000);
        assert_eq!(d.stats.inflight_bytes, 0);
        assert!(d.stats.inflight_bytes_peak >= 3000);
    }
    assert_eq!(b.lane_stats(1).maps, 4, "virtio1 and virtio2 share the magazine instance");
    assert_eq!((b.lane_stats(2).maps, b.lane_stats(0).maps), (2, 2));
    let total = b.stats();
    assert_eq!((total.maps, total.unmaps, total.inflight_bytes), (8, 8, 0));
    assert!(!b.is_bounce_buffer(guest.phys_to_dma(orig)));
    for s in b.lanes() {
        let a = s.audit().unwrap();
        assert_eq!(a.live_mappings, 0, "{}", s.name());
    }
}

#[test]
fn a_mapping_is_unmapped_by_the_instance_that_made_it_whoever_unmaps() {
    let (guest, b) = routed(CMDLINE).unwrap();
    settle(&b);
    let orig = guest.alloc_private(65536).unwrap();
    let (net, other) = (Device::new("virtio1"), Device::new("nvme0"));
    let dma = b.map_single(&net, orig, 2048, DmaDirection::FromDevice, DmaAttrs::empty()).unwrap();
    assert!(b.is_bounce_buffer(dma));
    assert!(b.live_range(dma).is_some());
    // Synced and unmapped through a device on another instance: still found in the
    // magazine instance that made it.
    b.sync_single_for_cpu(&other, dma, 2048, DmaDirection::FromDevice).unwrap();
    b.unmap_single(&other, dma, 2048, DmaDirection::FromDevice, DmaAttrs::empty()).unwrap();
    assert_eq!(b.lanes()[1].audit().unwrap().live_mappings, 0);
    assert_eq!(b.stats().inflight_bytes, 0);
}

#[test]
fn bad_routes_are_refused_and_the_single_name_form_is_one_instance() {
    let e = routed("swiotlb.strategy=legacy,virtio1:slab").unwrap_err();
    assert!(e.to_string().contains("unknown strategy `slab`"), "{e}");
    let e = routed("swiotlb.strategy=legacy,virtio1").unwrap_err();
    assert!(e.to_string().contains("`<device>:<strategy>`"), "{e}");
    let (_, b) = routed("swiotlb=2048 swiotlb.strategy=legacy").unwrap();
    assert_eq!(b.lanes().len(), 1);
    // A route to the default strategy is its instance.
    let (_, b) = routed("swiotlb=2048 swiotlb.strategy=legacy,virtio1:legacy").unwrap();
    assert_eq!(b.lanes().len(), 1);
    assert_eq!(b.route(&Device::new("virtio1")).lane, 0);
    // Hand-built lanes and routes are checked too.
    let guest = SimGuest::with(PlatformKind::Tdx, 64 << 20, 1);
    let boot = BootConfig::parse("swiotlb=2048", KNOWN_STRATEGIES).unwrap();
    let one = || vec![AnyStrategy::from_boot(guest.clone(), &boot).unwrap()];
    let opts = BouncerOptions::default();
    let e = Bouncer::with_lanes(guest.clone(), one(), &[("a".into(), 1)], opts).unwrap_err();
    assert!(e.to_string().contains("routed to instance 1, but there are 1"), "{e}");
    let e = Bouncer::with_lanes(guest.clone(), one(), &[("a".into(), 0), ("a".into(), 0)], opts).unwrap_err();
    assert!(e.to_string().contains("routed twice"), "{e}");
    let e = Bouncer::with_lanes(guest.clone(), Vec::<AnyStrategy<SimGuest>>::new(), &[], opts).unwrap_err();
    assert!(e.to_string().contains("0 strategy instances"), "{e}");
}

#[test]
fn devices_beyond_the_table_share_the_overflow_slot() {
    let (guest, b) = routed("swiotlb=2048").unwrap();
    let orig = guest.alloc_private(4096).unwrap();
    let n = DEVICE_SLOTS + 3;
    for i in 0..n {
        let dev = Device::new(&format!("dev{i}"));
        let dma = b.map_single(&dev, orig, 512, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        b.unmap_single(&dev, dma, 512, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    }
    let per_dev = b.device_stats();
    assert_eq!(per_dev.len(), DEVICE_SLOTS);
    let overflow = per_dev.last().unwrap();
    assert_eq!(overflow.name(), OVERFLOW_DEVICE);
    assert_eq!(overflow.stats.maps, (n - (DEVICE_SLOTS - 1)) as u64);
    assert_eq!(per_dev.iter().map(|d| d.stats.maps).sum::<u64>(), n as u64);
    assert_eq!(b.stats().maps, n as u64);
}

#[test]
fn a_failed_map_is_counted_by_device_reason_and_size() {
    let (guest, b) = routed(CMDLINE).unwrap();
    let orig = guest.alloc_private(1 << 20).unwrap();
    let dev = Device::new("virtio1");
    // Larger than the magazine instance's largest class: too large for it.
    let e = b.map_single(&dev, orig, 512 << 10, DmaDirection::ToDevice, DmaAttrs::NO_WARN).unwrap_err();
    let d = b.device_stats().into_iter().find(|d| d.name() == "virtio1").unwrap();
    assert_eq!(d.stats.failures_of(e.reason()), 1);
    let bucket = bounce_framework::fail_size_bucket(512 << 10);
    assert_eq!(d.fail_sizes[bucket], 1);
    assert_eq!(d.fail_sizes.iter().sum::<u64>(), 1);
    assert_eq!(b.stats().total_failures(), 1);
}

#[test]
fn a_handle_stands_for_the_device_with_its_route_and_name() {
    let (guest, b) = routed(CMDLINE).unwrap();
    settle(&b);
    let orig = guest.alloc_private(1 << 20).unwrap();
    for (name, lane) in [("virtio1", 1), ("0000:00:05.0", 2), ("nvme0", 0)] {
        let h = b.attach_handle(&Device::new(name));
        assert_ne!(h, 0, "{name}");
        assert_eq!(h, b.attach_handle(&Device::new(name)), "one word per device");
        let dev = b.device_from_handle(h).expect("this bouncer's handle");
        assert_eq!(dev.name(), "", "the handle carries no name");
        assert_eq!(usize::from(dev.attachment().route.lane), lane);
        let dma = b.map_single(&dev, orig, 3000, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        assert!(b.lanes()[lane].owns(guest.dma_to_phys(dma)), "{name}: its own instance");
        b.unmap_single(&dev, dma, 3000, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        // A failure's message names the device, from the table.
        let before = guest.logs().len();
        assert!(b.map_single(&dev, orig, 1 << 20, DmaDirection::ToDevice, DmaAttrs::empty()).is_err());
        let logs = guest.logs();
        assert!(logs[before..].iter().any(|(_, m)| m.starts_with(&format!("{name}: "))), "{:?}", &logs[before..]);
        let d = b.device_stats().into_iter().find(|d| d.name() == name).unwrap();
        assert_eq!((d.stats.maps, d.stats.unmaps), (1, 1), "counted on {name}");
    }
    // Words this bouncer did not hand out are refused.
    let (_g2, other) = routed(CMDLINE).unwrap();
    let foreign = other.attach_handle(&Device::new("virtio1"));
    let mine = b.attach_handle(&Device::new("virtio1"));
    for word in [0, foreign, mine ^ 1, mine ^ (1 << 8), mine | (0xff << 8), u64::MAX] {
        assert!(b.device_from_handle(word).is_none(), "{word:#x}");
    }
    // A full table: the overflow slot's devices get no word.
    let words: Vec<u64> = (0..DEVICE_SLOTS + 2).map(|i| b.attach_handle(&Device::new(&format!("extra{i}")))).collect();
    assert!(words.contains(&0));
    assert!(words.iter().take_while(|&&w| w != 0).count() < DEVICE_SLOTS);
}
