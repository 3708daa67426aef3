//! Shared memory committed by the dynamic strategy versus legacy swiotlb for the seed's
//! mapping-size distribution (SPEC §5), on the simulated TDX guest, and conversion
//! calls per MiB converted.
//!
//! `cargo run --release -p bounce-dynamic --example footprint`
//!
//! For each number of mappings kept in flight, the workload maps that many buffers
//! (sizes drawn from the distribution: ≤512 B 3.5 %, ≤2 KiB 57.7 %, ≤4 KiB 91.3 %,
//! ≤16 KiB 96.0 % cumulative, the rest up to 256 KiB), then churns (unmaps a random live
//! mapping, maps a new one) four times that many operations, unmaps everything and
//! idles. The engine runs after every operation (a prompt kccd) on a virtual clock
//! advancing 10 µs per operation. Legacy commits its whole fixed pool at boot (64 MiB,
//! Linux's default in a confidential guest up to 1 GiB of pool); its failures show
//! whether that pool would hold the same load.

#![expect(clippy::cast_precision_loss, reason = "byte counts far below 2^52 are printed as MiB")]

#[path = "../tests/common/mod.rs"]
mod common;

use bounce_dynamic::{Dynamic, DynamicConfig};
use bounce_framework::sim::{PlatformKind, SimConfig, SimGuest};
use bounce_framework::{Bouncer, BouncerOptions, Device, DmaAddr, DmaAttrs, DmaDirection, Strategy};
use bounce_legacy::{Legacy, LegacyConfig};
use bounce_pools::{ClassSpec, PoolConfig};
use common::SeedSizes;

const MIB: f64 = (1 << 20) as f64;
const GUEST: usize = 2 << 30;

struct Row {
    inflight_peak: usize,
    committed_steady: u64,
    committed_peak: u64,
    committed_idle: u64,
    failures: u64,
    calls: u64,
    mib_converted: f64,
}

fn run<S: Strategy>(b: &Bouncer<SimGuest, S>, n: usize, step: &mut dyn FnMut(u64), committed: &dyn Fn() -> u64) -> Row {
    let guest = b.platform();
    let dev = Device::new("virtio-blk");
    let mut sizes = SeedSizes::new(n as u64);
    let orig = guest.alloc_private(256 << 10).unwrap();
    let mut live: Vec<(DmaAddr, usize)> = Vec::with_capacity(n);
    let (mut inflight, mut peak, mut failures, mut clock) = (0usize, 0usize, 0u64, 0u64);
    let mut map = |live: &mut Vec<(DmaAddr, usize)>, inflight: &mut usize, failures: &mut u64| {
        let size = sizes.size();
        match b.map_single(&dev, orig, size, DmaDirection::ToDevice, DmaAttrs::NO_WARN) {
            Ok(d) => {
                live.push((d, size));
                *inflight += size;
            }
            Err(_) => *failures += 1,
        }
    };
    let mut pick = SeedSizes::new(n as u64 ^ 0xfeed);
    for i in 0..5 * n {
        if i >= n && !live.is_empty() {
            let k = (pick.next_u64() % live.len() as u64) as usize;
            let (d, size) = live.swap_remove(k);
            b.unmap_single(&dev, d, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
            inflight -= size;
        }
        map(&mut live, &mut inflight, &mut failures);
        peak = peak.max(inflight);
        clock += 10_000;
        step(clock);
    }
    let committed_steady = committed();
    for (d, size) in live.drain(..) {
        b.unmap_single(&dev, d, size, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
    }
    // Idle: a few seconds of engine runs.
    for _ in 0..4 {
        clock += 1_000_000_000;
        step(clock);
    }
    let c = b.pool_stats().conversions;
    guest.free_private(orig, 256 << 10);
    Row {
        inflight_peak: peak,
        committed_steady,
        committed_peak: c.shared_bytes_peak,
        committed_idle: committed(),
        failures,
        calls: c.calls(),
        mib_converted: (c.pages() as f64) * 4096.0 / MIB,
    }
}

fn dynamic_row(classes: &[ClassSpec], n: usize) -> Row {
    let guest = SimGuest::new(SimConfig::new(PlatformKind::Tdx, GUEST, 2));
    let cfg = DynamicConfig {
        pools: PoolConfig { classes: classes.to_vec(), cap_bytes: Some(1 << 30), ..PoolConfig::default() },
        ..DynamicConfig::default()
    };
    let s = Dynamic::new(guest.clone(), cfg).unwrap();
    let b = Bouncer::new(guest.clone(), s, BouncerOptions::default());
    // The engine fills the targets before the load starts, as kccd does after boot.
    while b.strategy().background_pending_at(0) {
        b.strategy().run_background_at(0);
    }
    let s = b.strategy();
    run(&b, n, &mut |now| while s.run_background_at(now).more {}, &|| s.stats().conversions.shared_bytes)
}

fn legacy_row(n: usize) -> Row {
    let guest = SimGuest::new(SimConfig::new(PlatformKind::Tdx, GUEST, 2));
    let s = Legacy::new(guest.clone(), LegacyConfig::with_bytes(64 << 20)).unwrap();
    let b = Bouncer::new(guest.clone(), s, BouncerOptions::default());
    let s = b.strategy();
    run(&b, n, &mut |_| {}, &|| s.stats().conversions.shared_bytes)
}

fn print(name: &str, n: usize, r: &Row) {
    let per_mib = if r.mib_converted > 0.0 { r.calls as f64 / r.mib_converted } else { 0.0 };
    println!(
        "| {name} | {n} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} | {per_mib:.3} |",
        r.inflight_peak as f64 / MIB,
        r.committed_steady as f64 / MIB,
        r.committed_peak as f64 / MIB,
        r.committed_idle as f64 / MIB,
        r.failures,
        r.calls,
        r.mib_converted,
    );
}

fn main() {
    let seed = bounce_pools::SEED_CLASSES.to_vec();
    // The seed's sizes with targets a sixteenth of the seed's (about 6 MiB kept ready).
    let small: Vec<ClassSpec> = seed.iter().map(|c| ClassSpec::new(c.size, (c.target / 16).max(2))).collect();
    // Intermediate classes for the >16 KiB tail, which the seed serves from 512 KiB.
    let tail = vec![
        ClassSpec::new(512, 16),
        ClassSpec::new(2048, 1024),
        ClassSpec::new(4096, 512),
        ClassSpec::new(16384, 64),
        ClassSpec::new(64 << 10, 16),
        ClassSpec::new(256 << 10, 8),
    ];
    println!(
        "| strategy | mappings in flight | in-flight peak MiB | committed steady MiB | committed peak MiB | \
         committed after idle MiB | failed maps | conversion calls | MiB converted | calls per MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in [256usize, 1024, 4096] {
        print("legacy 64 MiB", n, &legacy_row(n));
        print("dynamic, seed targets", n, &dynamic_row(&seed, n));
        print("dynamic, targets / 16", n, &dynamic_row(&small, n));
        print("dynamic, + 64K/256K classes", n, &dynamic_row(&tail, n));
    }
}
