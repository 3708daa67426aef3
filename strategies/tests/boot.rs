//! `AnyStrategy::from_boot`: selection, the default, and parameter checking across
//! strategies.

use bounce_framework::sim::{PlatformKind, SimGuest};
use bounce_framework::{BootConfig, CmdlineError, InitError, Strategy};
use bounce_strategies::{AnyStrategy, Dynamic, Legacy, Magazine, StrategyKind, DEFAULT_STRATEGY, KNOWN_STRATEGIES};

fn guest() -> SimGuest {
    SimGuest::with(PlatformKind::Tdx, 128 << 20, 2)
}

fn boot(cmdline: &str) -> Result<AnyStrategy<SimGuest>, InitError> {
    let cfg = BootConfig::parse(cmdline, KNOWN_STRATEGIES).map_err(InitError::Cmdline)?;
    AnyStrategy::from_boot(guest(), &cfg)
}

#[test]
fn known_names_are_the_strategies_names() {
    assert_eq!(KNOWN_STRATEGIES, StrategyKind::ALL.map(StrategyKind::name));
    assert_eq!(KNOWN_STRATEGIES[0], Legacy::<SimGuest>::NAME, "the baseline comes first");
    for k in StrategyKind::ALL {
        assert_eq!(StrategyKind::from_name(k.name()), Some(k));
        assert_eq!(k.to_string(), k.name());
    }
    assert_eq!(StrategyKind::from_name("swiotlb"), None);
    assert_eq!(AnyStrategy::<SimGuest>::params(StrategyKind::Dynamic), Dynamic::<SimGuest>::PARAMS);
    assert_eq!(AnyStrategy::<SimGuest>::params(StrategyKind::Magazine), Magazine::<SimGuest>::PARAMS);
}

#[test]
fn no_strategy_named_boots_the_default() {
    assert_eq!(DEFAULT_STRATEGY, StrategyKind::Legacy);
    let s = boot("console=ttyS0 swiotlb=2048 quiet").unwrap();
    assert_eq!(s.kind(), DEFAULT_STRATEGY);
    assert_eq!(s.name(), "legacy");
    assert_eq!(format!("{s:?}"), "AnyStrategy(Legacy)");
}

#[test]
fn each_name_boots_its_variant_and_converts_back() {
    let s = boot("swiotlb=2048 swiotlb.strategy=legacy").unwrap();
    assert!(matches!(s, AnyStrategy::Legacy(_)));
    let s = boot("swiotlb.strategy=dynamic swiotlb.dynamic.classes=2K:64,64K:4 swiotlb.dynamic.cap=8M").unwrap();
    assert_eq!(s.kind(), StrategyKind::Dynamic);
    let inner: Result<Dynamic<SimGuest>, _> = s.try_into();
    assert!(inner.is_ok(), "enum_dispatch's TryInto gives the variant back");
    let s = boot("swiotlb.strategy=magazine swiotlb.magazine.classes=2K:64,64K:4 swiotlb.magazine.cap=8M").unwrap();
    assert_eq!(s.kind(), StrategyKind::Magazine);
    let back = AnyStrategy::from(match s {
        AnyStrategy::Magazine(m) => m,
        _ => unreachable!(),
    });
    assert_eq!(back.name(), "magazine");
}

#[test]
fn parameters_of_every_strategy_are_checked() {
    // A typo in a strategy that is not booted is still an error.
    let e = boot("swiotlb=2048 swiotlb.strategy=legacy swiotlb.magazine.roundz=4").unwrap_err();
    assert!(
        matches!(&e, InitError::Cmdline(CmdlineError::UnknownParam { param, strategy, .. }) if param == "roundz" && strategy == "magazine"),
        "{e:?}"
    );
    let e = boot("swiotlb.dynamic.cap=8M swiotlb.legacy.nslabs=4").unwrap_err();
    assert!(matches!(&e, InitError::Cmdline(CmdlineError::UnknownParam { param, .. }) if param == "nslabs"), "{e:?}");
}

#[test]
fn a_hand_built_config_with_an_unknown_name_is_refused() {
    let cfg = BootConfig { strategy: Some("slab".into()), ..BootConfig::default() };
    let e = AnyStrategy::from_boot(guest(), &cfg).unwrap_err();
    assert!(matches!(&e, InitError::Config(m) if m.contains("unknown strategy `slab`")), "{e:?}");
}
