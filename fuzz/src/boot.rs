//! The `boot` oracle: any command line through the whole boot path —
//! `BootConfig::parse` → `AnyStrategy::from_boot` on the 64 MiB simulated guest → a
//! short fixed DMA workload — so the strategies' constructors and their background
//! engines meet every parameter combination the parsers accept, not only the
//! configurations the `ops` target picks from.
//!
//! Properties checked:
//! - nothing panics; settling the background work ends (no endless conversion);
//! - a refused boot is an `InitError` whose command-line errors name a token of the
//!   input, and it leaves nothing behind: no page allocated or shared, no simulator
//!   violation;
//! - a booted strategy passes the `ops` checks over a fixed workload (every size class
//!   boundary, every device, every direction, syncs, background runs), and once dropped
//!   with nothing mapped has returned every page.

use bounce_framework::sim::{set_current_cpu, SimGuest};
use bounce_framework::{BootConfig, InitError, PoolShape};
use bounce_strategies::{AnyStrategy, KNOWN_STRATEGIES};

use crate::ops::{self, Addr, Expect, FuzzOp, OpsInput, Size};

/// The workload a booted strategy runs: short (every step audits the whole pool, which
/// for a default-sized legacy pool is 16 384 slots), but it reaches the largest mapping
/// on every device, a partial sync, an invalid call and the background work.
pub fn probe_ops() -> Vec<FuzzOp> {
    let map = |raw: u32, dev: u8, dir: u8, align: u8| FuzzOp::Map {
        size: Size { kind: 7, raw },
        offset: (raw * 0x123 % 4096) as u16,
        dir,
        dev,
        align,
        skip: false,
        cpu: dev,
    };
    vec![
        map(16, 0, 0, 0), // max_mapping_size, plain device
        map(16, 1, 1, 0), // max_mapping_size, NVMe (min_align_mask 4095)
        map(10, 2, 2, 1), // 4096 bytes, min_align_mask 2047, 4 KiB alignment
        map(5, 7, 0, 0),  // 2047 bytes, the 32-bit device
        FuzzOp::DeviceWrite { idx: 0, at: 0x1000, len: 0x8000, seed: 1 },
        FuzzOp::Sync { idx: 0, for_cpu: true, at: 0x800, len: u32::MAX, dir: None },
        FuzzOp::UnmapAt { addr: Addr::Live { idx: 1, delta: 1 }, dir: 0 },
        FuzzOp::Unmap { idx: 0, len: None, dir: None, skip: false, cpu: 1 },
        FuzzOp::Background { rounds: 2 },
        map(0, 0, 1, 0), // 1 byte after the background run
    ]
}

/// Runs every check on `text`.
///
/// # Panics
/// When a property does not hold.
pub fn check(text: &str) {
    let Ok(cfg) = BootConfig::parse(text, KNOWN_STRATEGIES) else { return };
    let tokens: Vec<&str> = text.split_ascii_whitespace().collect();
    set_current_cpu(Some(0));
    if !cfg.routes.is_empty() {
        // Per-device routes: one instance per strategy they name, all returned at drop.
        let guest = ops::guest(false);
        match AnyStrategy::boot_bouncer(guest.clone(), &cfg, bounce_framework::BouncerOptions::default()) {
            Ok(b) => assert_eq!(b.lanes().len(), cfg.lanes().0.len(), "{text:?}: one instance per strategy"),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        ops::assert_returned_everything(&guest, &format!("{text:?}: after the routed boot"));
    }
    let guest = ops::guest(false);
    match AnyStrategy::from_boot(guest.clone(), &cfg) {
        Ok(strategy) => {
            let fixed_pool = AnyStrategy::<SimGuest>::test_profile(strategy.kind()).pool == PoolShape::Fixed;
            let input = OpsInput { strategy: 0, config: 0, scrub: cfg.scrub, ops: probe_ops() };
            // `run` ends with the strategy dropped and every page checked returned.
            ops::run(strategy, guest, &input, Expect { fixed_pool, alias: false });
        }
        Err(e) => {
            if let InitError::Cmdline(ce) = &e {
                if let Some((token, _)) = crate::cmdline::error_parts(ce) {
                    assert!(tokens.contains(&token), "{text:?}: boot error {e} names no token of the input");
                }
            }
            assert!(!e.to_string().is_empty());
            ops::assert_returned_everything(&guest, &format!("{text:?}: after the refused boot `{e}`"));
        }
    }
}
