//! Replays the checked-in corpus through the same checks the fuzz targets run
//! (`tests/regressions.rs` replays the regressions), and runs a few pseudo-random inputs, under plain `cargo test` (no
//! libFuzzer, no nightly flags).

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use bounce_fuzz::cmdline;
use bounce_fuzz::ops::{self, FuzzOp, OpsInput};
use bounce_fuzz::strategies;

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let Ok(rd) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

fn run_ops_bytes(data: &[u8]) -> Option<ops::Tally> {
    let input = OpsInput::arbitrary_take_rest(Unstructured::new(data)).ok()?;
    Some(run_ops(&input))
}

fn run_ops(input: &OpsInput) -> ops::Tally {
    ops::run_input(input)
}

#[test]
fn cmdline_corpus() {
    let f = files("corpus/cmdline");
    assert!(f.len() >= 5, "the cmdline corpus is missing");
    for p in f {
        cmdline::check(cmdline::text(&std::fs::read(&p).unwrap()));
    }
}

#[test]
fn trace_corpus() {
    let f = files("corpus/trace");
    assert!(f.len() >= 5, "the trace corpus is missing");
    for p in f {
        bounce_fuzz::trace::check(cmdline::text(&std::fs::read(&p).unwrap()));
    }
}

#[test]
fn boot_corpus() {
    let f = files("corpus/boot");
    assert!(f.len() >= 5, "the boot corpus is missing");
    for p in f {
        bounce_fuzz::boot::check(cmdline::text(&std::fs::read(&p).unwrap()));
    }
}

#[test]
fn ops_corpus() {
    let f = files("corpus/ops");
    assert!(f.len() >= 5, "the ops corpus is missing");
    // `BOUNCE_FUZZ_ONLY=<name>` replays one file (e.g. under miri, where all are slow).
    let only = std::env::var("BOUNCE_FUZZ_ONLY").ok();
    for p in f.into_iter().filter(|p| only.as_deref().is_none_or(|o| p.ends_with(o))) {
        let t = run_ops_bytes(&std::fs::read(&p).unwrap());
        eprintln!("{}: {t:?}", p.display());
    }
}

/// xorshift bytes for the pseudo-random inputs.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    bounce_fuzz::pattern(seed, len)
}

#[test]
fn ops_pseudo_random() {
    let n: u64 = std::env::var("BOUNCE_FUZZ_RANDOM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    for seed in 0..n {
        let data = bytes(seed + 1, 40_000);
        let mut u = Unstructured::new(&data);
        let ops: Vec<FuzzOp> = (0..ops::MAX_OPS).map_while(|_| FuzzOp::arbitrary(&mut u).ok()).collect();
        let input = OpsInput { strategy: (seed % 3) as u8, config: (seed / 3) as u8, scrub: seed % 2 == 1, ops };
        let t = run_ops(&input);
        eprintln!("seed {seed}: {} ops {} {t:?}", input.ops.len(), strategies::select(input.strategy, input.config).1);
    }
}
