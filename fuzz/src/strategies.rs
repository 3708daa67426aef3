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

/// The command lines `kind` is fuzzed with: the strategy's own small configurations.
pub const fn configs(kind: StrategyKind) -> &'static [&'static str] {
    AnyStrategy::<SimGuest>::small_cmdlines(kind)
}

/// The strategy and command line an input's first two bytes select (the configuration
/// modulo the strategy's four; `ops::run_input` takes bit 2 of `config` for the alias).
pub fn select(strategy: u8, config: u8) -> (StrategyKind, &'static str) {
    let kind = StrategyKind::ALL[usize::from(strategy) % StrategyKind::ALL.len()];
    let cfgs = configs(kind);
    (kind, cfgs[usize::from(config) % cfgs.len()])
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
        for kind in StrategyKind::ALL {
            for c in configs(kind) {
                let g = crate::ops::guest(false);
                let s = boot(&g, c);
                assert_eq!(s.kind(), kind, "{c}");
            }
        }
    }
}
