//! Alloc + free fast-path cost of the strategies (`Strategy::reserve` + `release`, no
//! copies): 64 B, 1500 B and 4 KiB requests, one thread and two threads on different
//! (simulated) CPUs, for the magazine, dynamic and legacy strategies on a simulated TDX
//! guest with warm pools.
//!
//! `cargo bench -p bounce-magazine --bench fastpath`; add
//! `-- --warm-up-time 1 --measurement-time 2` for a quick run.
// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use bounce_dynamic::{Dynamic, DynamicConfig};
use bounce_framework::sim::{set_current_cpu, PlatformKind, SimConfig, SimGuest};
use bounce_framework::{PhysAddr, Request, Strategy};
use bounce_legacy::{Legacy, LegacyConfig};
use bounce_magazine::{Magazine, MagazineConfig};
use bounce_pools::{PoolConfig, StepRunner};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 3] = [64, 1500, 4096];

fn guest() -> SimGuest {
    SimGuest::new(SimConfig::new(PlatformKind::Tdx, 256 << 20, 2))
}

fn pools() -> PoolConfig {
    PoolConfig { cap_bytes: Some(96 << 20), ..PoolConfig::default() }
}

fn magazine() -> Magazine<SimGuest> {
    let s = Magazine::new(guest(), MagazineConfig { pools: pools(), ..MagazineConfig::default() }).unwrap();
    StepRunner::new(|now| s.run_background_at(now)).run_until_idle(10_000);
    s
}

fn dynamic() -> Dynamic<SimGuest> {
    let s = Dynamic::new(guest(), DynamicConfig { pools: pools(), ..DynamicConfig::default() }).unwrap();
    StepRunner::new(|now| s.run_background_at(now)).run_until_idle(10_000);
    s
}

fn legacy() -> Legacy<SimGuest> {
    // 64 MiB; areas default to one per CPU (two), as Linux sizes them.
    Legacy::new(guest(), LegacyConfig::with_slots(32768)).unwrap()
}

fn request(size: usize, cpu: usize) -> Request {
    Request::new(PhysAddr(0x1234_0000), size, cpu)
}

#[inline]
fn pair<S: Strategy>(s: &S, req: &Request) {
    let r = s.reserve(black_box(req)).expect("warm pool");
    black_box(s.release(r.addr).expect("fresh mapping"));
}

fn one_and_two_threads<S: Strategy>(c: &mut Criterion, name: &str, s: &S) {
    let mut g = c.benchmark_group(format!("alloc_free/{name}"));
    g.throughput(Throughput::Elements(1));
    for size in SIZES {
        g.bench_with_input(BenchmarkId::new("1thread", size), &size, |b, &size| {
            set_current_cpu(Some(0));
            let req = request(size, 0);
            b.iter(|| pair(s, &req));
        });
        // Two threads on CPUs 0 and 1, each doing `iters` pairs; the time reported is
        // the wall time per pair while both run.
        g.bench_with_input(BenchmarkId::new("2threads", size), &size, |b, &size| {
            b.iter_custom(|iters| {
                let start = Barrier::new(3);
                let elapsed = std::thread::scope(|sc| {
                    for cpu in 0..2 {
                        let start = &start;
                        sc.spawn(move || {
                            set_current_cpu(Some(cpu));
                            let req = request(size, cpu);
                            start.wait();
                            for _ in 0..iters {
                                pair(s, &req);
                            }
                        });
                    }
                    start.wait();
                    Instant::now()
                });
                elapsed.elapsed()
            });
        });
    }
    g.finish();
    s.audit().expect("audit after the benchmark");
}

fn benches(c: &mut Criterion) {
    one_and_two_threads(c, "magazine", &magazine());
    one_and_two_threads(c, "dynamic", &dynamic());
    one_and_two_threads(c, "legacy", &legacy());
}

criterion_group! {
    name = fastpath;
    // Short by default: the machine is shared; pass criterion flags for longer runs.
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(fastpath);
