//! # bounce-fuzz
//!
//! The oracles behind the `cargo fuzz` targets of `fuzz_targets/`. Each target is a
//! thin wrapper that turns libFuzzer's bytes into an input and calls a `check`/`run`
//! function here, so the same checks replay the checked-in corpus and the minimized
//! regressions under plain `cargo test` (`tests/replay.rs`), without libFuzzer.
//!
//! - [`cmdline`]: `BootConfig::parse`, the `StrategyParams` readers and the strategies'
//!   own parameter parsers.
//! - [`boot`]: any command line through `AnyStrategy::from_boot` and a short workload.
//! - [`ops`]: random DMA-API operation sequences over a strategy on the simulator.
//! - [`trace`]: the `bounce replay` trace parser and plan builder.
//! - [`strategies`]: the strategy configurations the `ops` target picks from.
//! - [`encode`], [`seeds`]: the `ops` seeds as readable operation lists and their bytes.
#![forbid(unsafe_code)]

pub mod boot;
pub mod cmdline;
pub mod encode;
pub mod ops;
pub mod seeds;
pub mod strategies;
pub mod trace;

/// Whether the checks of open findings run (`BOUNCE_FUZZ_STRICT=1`).
///
/// Each known, reported bug that is not fixed yet gets a guard in its target that steps
/// around exactly that bug (`if crate::strict() || !<the bug's condition> { <check> }`),
/// so the smoke run keeps hunting for new ones; the minimized input is in
/// `regressions/<target>/` and `fuzz/README.md` lists it. Strict mode lifts every guard:
/// `tests/regressions.rs` replays the regressions with it. No finding is open now, so no
/// guard calls this.
pub fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("BOUNCE_FUZZ_STRICT").is_some_and(|v| v == "1"))
}

/// A deterministic byte pattern, different for every seed and offset (xorshift64,
/// eight bytes per step).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
