//! The conformance suite over [`AnyStrategy`], once per variant, so the boot path
//! (`BootConfig::parse` with `KNOWN_STRATEGIES`, `AnyStrategy::from_boot`) and the
//! `enum_dispatch` dispatch of every trait method are covered, not only the strategies
//! themselves.
//!
//! The command lines give pools inside the suite's 1–32 MiB window.

use bounce_framework::sim::SimGuest;
use bounce_framework::{BootConfig, Strategy};
use bounce_strategies::{AnyStrategy, StrategyKind, KNOWN_STRATEGIES};

/// Boots `cmdline` on the suite's guest and checks the variant that came up.
fn boot(guest: &SimGuest, cmdline: &str, want: StrategyKind) -> AnyStrategy<SimGuest> {
    let cfg = BootConfig::parse(cmdline, KNOWN_STRATEGIES).expect("suite command line parses");
    let s = AnyStrategy::from_boot(guest.clone(), &cfg).expect("strategy boots on the suite guest");
    assert_eq!(s.kind(), want);
    assert_eq!(s.name(), want.name(), "dispatched name() is the variant's");
    s
}

mod legacy {
    use super::*;

    // 4096 slots: an 8 MiB pool.
    bounce_framework::conformance_suite!(|g: &SimGuest| boot(
        g,
        "console=ttyS0 swiotlb=4096 swiotlb.strategy=legacy",
        StrategyKind::Legacy
    ));
}

mod dynamic {
    use super::*;

    // The default class sizes with small targets (about 6.5 MiB) and a 24 MiB cap.
    bounce_framework::conformance_suite!(|g: &SimGuest| boot(
        g,
        "swiotlb.strategy=dynamic swiotlb.dynamic.classes=512:64,2K:256,4K:256,16K:64,512K:8 swiotlb.dynamic.cap=24M",
        StrategyKind::Dynamic
    ));
}

mod magazine {
    use super::*;

    // As for dynamic, with the default magazine sizes.
    bounce_framework::conformance_suite!(|g: &SimGuest| {
        boot(
        g,
        "swiotlb.strategy=magazine swiotlb.magazine.classes=512:64,2K:256,4K:256,16K:64,512K:8 swiotlb.magazine.cap=24M",
        StrategyKind::Magazine
    )
    });
}

mod bitmap {
    use super::*;

    // 4096 slots: an 8 MiB pool, as legacy's.
    bounce_framework::conformance_suite!(|g: &SimGuest| boot(
        g,
        "swiotlb=4096 swiotlb.strategy=bitmap",
        StrategyKind::Bitmap
    ));
}
