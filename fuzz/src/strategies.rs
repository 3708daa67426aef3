//! The strategy configurations the `ops` target runs: small pools (1–4 MiB) so
//! exhaustion, growth up to the cap and shrinking are all reachable within a few hundred
//! operations. Each is a boot command line, so the boot path
//! (`BootConfig::parse` → `AnyStrategy::from_boot`) is what builds the strategy.
//!
//! Idle and period timers are 0 or 1 ms: the engine's shrink, trim and reap paths run
//! between the fuzzer's steps instead of after a second of wall time.

use bounce_framework::sim::SimGuest;
use bounce_framework::BootConfig;
use bounce_strategies::{AnyStrategy, StrategyKind, KNOWN_STRATEGIES};

/// Command lines per strategy, in [`StrategyKind::ALL`] order.
pub const CONFIGS: [&[&str]; 3] = [
    &[
        "swiotlb=1024 swiotlb.strategy=legacy",
        "swiotlb=2048,4 swiotlb.strategy=legacy",
        "swiotlb=512,1 swiotlb.strategy=legacy",
        "swiotlb=640,1,force swiotlb.strategy=legacy",
    ],
    &[
        "swiotlb.strategy=dynamic swiotlb.dynamic.cap=4M swiotlb.dynamic.classes=512:64,2K:256,4K:128,16K:32,512K:2 \
         swiotlb.dynamic.idle_ms=0 swiotlb.dynamic.batch=64",
        "swiotlb=1024 swiotlb.strategy=dynamic swiotlb.dynamic.reserve=0 swiotlb.dynamic.idle_ms=0 swiotlb.dynamic.batch=32",
        "swiotlb.strategy=dynamic swiotlb.dynamic.cap=2M swiotlb.dynamic.classes=2K:64:8:128,64K:8:1:16 \
         swiotlb.dynamic.fallback=off swiotlb.dynamic.reserve=50 swiotlb.dynamic.idle_ms=0 swiotlb.dynamic.batch=1",
        "swiotlb.strategy=dynamic swiotlb.dynamic.cap=3M swiotlb.dynamic.classes=512:16,4K:64,256K:4 \
         swiotlb.dynamic.idle_ms=0 swiotlb.dynamic.batch=16",
    ],
    &[
        "swiotlb.strategy=magazine swiotlb.magazine.cap=4M swiotlb.magazine.classes=512:64,2K:256,4K:128,16K:32,512K:2 \
         swiotlb.magazine.idle_ms=0 swiotlb.magazine.batch=64 swiotlb.magazine.trim_ms=1 swiotlb.magazine.reap_ms=1",
        "swiotlb=1024 swiotlb.strategy=magazine swiotlb.magazine.reserve=0 swiotlb.magazine.idle_ms=0 swiotlb.magazine.batch=32 \
         swiotlb.magazine.rounds=2 swiotlb.magazine.depot=1 swiotlb.magazine.depot_target=0",
        "swiotlb.strategy=magazine swiotlb.magazine.cap=2M swiotlb.magazine.classes=2K:64:8:128,64K:8:1:16 \
         swiotlb.magazine.fallback=off swiotlb.magazine.reserve=50 swiotlb.magazine.rounds=1 swiotlb.magazine.max_rounds=4 \
         swiotlb.magazine.contention=1 swiotlb.magazine.batch=1 swiotlb.magazine.trim_ms=1 swiotlb.magazine.reap_ms=1 \
         swiotlb.magazine.idle_ms=0",
        "swiotlb.strategy=magazine swiotlb.magazine.cap=3M swiotlb.magazine.classes=512:16,4K:64,256K:4 \
         swiotlb.magazine.rounds=4,8,1 swiotlb.magazine.max_rounds=16,16,1 swiotlb.magazine.depot_target=4 \
         swiotlb.magazine.idle_ms=0",
    ],
];

/// The strategy and command line an input's first two bytes select (the configuration
/// modulo the strategy's four; `ops::run_input` takes bit 2 of `config` for the alias).
pub fn select(strategy: u8, config: u8) -> (StrategyKind, &'static str) {
    let i = usize::from(strategy) % StrategyKind::ALL.len();
    let cfgs = CONFIGS[i];
    (StrategyKind::ALL[i], cfgs[usize::from(config) % cfgs.len()])
}

/// Boots `cmdline` on `guest` through the boot path.
///
/// # Panics
/// When the command line does not parse or the strategy cannot be built: these are
/// fixed, valid configurations, so either is a bug.
pub fn boot(guest: &SimGuest, cmdline: &str) -> AnyStrategy<SimGuest> {
    let cfg = BootConfig::parse(cmdline, KNOWN_STRATEGIES).unwrap_or_else(|e| panic!("{cmdline}: {e}"));
    AnyStrategy::from_boot(guest.clone(), &cfg).unwrap_or_else(|e| panic!("booting `{cmdline}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configuration_boots_and_names_its_strategy() {
        for (i, cfgs) in CONFIGS.iter().enumerate() {
            for c in *cfgs {
                let g = crate::ops::guest(false);
                let s = boot(&g, c);
                assert_eq!(s.kind(), StrategyKind::ALL[i], "{c}");
            }
        }
    }
}
