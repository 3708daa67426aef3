//! Criterion micro-benchmarks of every strategy on the simulated TDX guest (default
//! boot configuration, 2 GiB of RAM, the refill thread running):
//!
//! - `alloc_free/<strategy>/1thread/<size>`: `Strategy::reserve` + `release`.
//! - `alloc_free/<strategy>/2threads/<size>`: the same on two threads at once (two
//!   simulated CPUs); the time is wall time per iteration while each thread does one,
//!   so perfect scaling equals the one-thread time.
//! - `map_unmap/<strategy>/{1thread,2threads}/<size>`: `Bouncer::map_single` +
//!   `unmap_single`, `DMA_TO_DEVICE` (one copy of `size` bytes); on two threads each
//!   maps and unmaps its own buffers at once (wall time per iteration, as above).
//! - `scrub/<strategy>/{off,on}/<size>`: `map_single` + `unmap_single`, `DMA_TO_DEVICE`,
//!   of 512 B, 4 KiB and 64 KiB, on a bouncer without and with `swiotlb.scrub=on` (unmap
//!   clears the buffer): the cost of scrubbing is the ratio of the two.
//! - `locate/<strategy>`, `find/<strategy>`: finding a live mapping by an address
//!   inside it (`find` also returns the handle an unmap releases by: the one lookup of
//!   an unmap or a sync).
//! - `memcpy/<size>`: a bare memcpy of the same bytes, the physical limit.
//!
//! `cargo bench -p bounce-bench` runs them all in a few minutes (0.5 s warm-up, 1 s
//! measurement each).

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bounce_bench::engine::{boot, Ctor, Machine, RefillThread};
use bounce_bench::registry::{StrategyKind, StrategyVisitor};
use bounce_bench::workload::fixed_size_plan;
use bounce_framework::sim::{set_current_cpu, PlatformKind};
use bounce_framework::{BootConfig, BouncerOptions, Device, DmaAttrs, DmaDirection, PhysAddr, Request, Strategy};
use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 3] = [64, 1500, 4096];
const SCRUB_SIZES: [usize; 3] = [512, 4096, 64 << 10];

fn request(orig: PhysAddr, size: usize, cpu: usize) -> Request {
    Request::new(orig, size, cpu)
}

struct Benches<'a> {
    c: &'a mut Criterion,
}

impl StrategyVisitor<bounce_framework::sim::SimGuest> for Benches<'_> {
    type Output = ();

    fn visit<S: Strategy + 'static>(&mut self, name: &'static str, ctor: Ctor<S>) {
        let machine =
            Machine { platform: PlatformKind::Tdx, memory: 2 << 30, boot: BootConfig::default(), lanes: None };
        let plan = fixed_size_plan(4096, 2, 1, true);
        let bouncer = boot(ctor, name, &machine, &plan, BouncerOptions::default())
            .unwrap_or_else(|e| panic!("{name} does not boot: {e}"));
        let refill = RefillThread::start(bouncer.clone());
        let guest = bouncer.platform().clone();
        let orig = guest.alloc_private(1 << 20).expect("buffer");

        let mut g = self.c.benchmark_group("alloc_free");
        for size in SIZES {
            g.throughput(Throughput::Elements(1));
            g.bench_with_input(BenchmarkId::new(format!("{name}/1thread"), size), &size, |b, &size| {
                set_current_cpu(Some(0));
                let req = request(orig, size, 0);
                let s = bouncer.strategy();
                b.iter(|| {
                    let r = s.reserve(black_box(&req)).expect("reserve");
                    s.release(black_box(r.addr)).expect("release")
                });
            });
            g.bench_with_input(BenchmarkId::new(format!("{name}/2threads"), size), &size, |b, &size| {
                b.iter_custom(|iters| {
                    on_two_cpus(&bouncer, iters, move |bouncer, cpu| {
                        let req = request(orig + (cpu as u64) * 65_536, size, cpu);
                        let s = bouncer.strategy();
                        let r = s.reserve(black_box(&req)).expect("reserve");
                        s.release(black_box(r.addr)).expect("release");
                    })
                });
            });
        }
        g.finish();

        let mut g = self.c.benchmark_group("map_unmap");
        let dev = Device::new("bench");
        for size in SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::new(format!("{name}/1thread"), size), &size, |b, &size| {
                set_current_cpu(Some(0));
                b.iter(|| {
                    let dma =
                        bouncer.map_single(&dev, orig, size, DmaDirection::ToDevice, DmaAttrs::empty()).expect("map");
                    bouncer
                        .unmap_single(&dev, black_box(dma), size, DmaDirection::ToDevice, DmaAttrs::empty())
                        .expect("unmap");
                });
            });
            g.bench_with_input(BenchmarkId::new(format!("{name}/2threads"), size), &size, |b, &size| {
                b.iter_custom(|iters| {
                    let dev = Device::new("bench");
                    on_two_cpus(&bouncer, iters, move |bouncer, cpu| {
                        let orig = orig + (cpu as u64) * 65_536;
                        let dma = bouncer
                            .map_single(&dev, orig, size, DmaDirection::ToDevice, DmaAttrs::empty())
                            .expect("map");
                        bouncer
                            .unmap_single(&dev, black_box(dma), size, DmaDirection::ToDevice, DmaAttrs::empty())
                            .expect("unmap");
                    })
                });
            });
        }
        g.finish();

        // Scrub off (the bouncer above) and on (a second one booted the same way), each
        // size measured off then on back to back so drift on a busy machine hits both.
        let scrubbed = boot(ctor, name, &machine, &plan, BouncerOptions { scrub: true, ..BouncerOptions::default() })
            .unwrap_or_else(|e| panic!("{name} does not boot with scrub: {e}"));
        let scrubbed_refill = RefillThread::start(scrubbed.clone());
        let scrubbed_orig = scrubbed.platform().alloc_private(1 << 20).expect("buffer");
        let mut g = self.c.benchmark_group("scrub");
        for size in SCRUB_SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            for (label, b, orig) in [("off", &bouncer, orig), ("on", &scrubbed, scrubbed_orig)] {
                g.bench_with_input(BenchmarkId::new(format!("{name}/{label}"), size), &size, |bch, &size| {
                    set_current_cpu(Some(0));
                    bch.iter(|| {
                        let dma =
                            b.map_single(&dev, orig, size, DmaDirection::ToDevice, DmaAttrs::empty()).expect("map");
                        b.unmap_single(&dev, black_box(dma), size, DmaDirection::ToDevice, DmaAttrs::empty())
                            .expect("unmap");
                    });
                });
            }
        }
        g.finish();
        scrubbed_refill.stop();

        let mut g = self.c.benchmark_group("locate");
        set_current_cpu(Some(0));
        let live = bouncer.strategy().reserve(&request(orig, 4096, 0)).expect("reserve");
        let inside = live.addr + 100;
        g.bench_function(name, |b| b.iter(|| bouncer.strategy().locate(black_box(inside)).expect("live mapping")));
        g.finish();
        let mut g = self.c.benchmark_group("find");
        g.bench_function(name, |b| b.iter(|| bouncer.strategy().find(black_box(inside)).expect("live mapping")));
        bouncer.strategy().release(live.addr).expect("release");
        g.finish();
        set_current_cpu(None);
        refill.stop();
    }
}

/// Wall time of `iters` calls of `op(state, cpu)` on each of two threads at once
/// (simulated CPUs 0 and 1, started together by a barrier): the slower thread's time, so
/// perfect scaling equals the one-thread time.
fn on_two_cpus<T: Clone + Send + 'static>(
    state: &T,
    iters: u64,
    op: impl Fn(&T, usize) + Clone + Send + 'static,
) -> Duration {
    let start = Arc::new(Barrier::new(3));
    let handles: Vec<_> = (0..2usize)
        .map(|cpu| {
            let (state, start, op) = (state.clone(), start.clone(), op.clone());
            std::thread::spawn(move || {
                set_current_cpu(Some(cpu));
                start.wait();
                let t = Instant::now();
                for _ in 0..iters {
                    op(&state, cpu);
                }
                t.elapsed()
            })
        })
        .collect();
    start.wait();
    handles.into_iter().map(|h| h.join().expect("bench thread")).max().unwrap_or(Duration::ZERO)
}

fn memcpy(c: &mut Criterion) {
    let mut g = c.benchmark_group("memcpy");
    for size in SIZES {
        let src = vec![0x5au8; size];
        let mut dst = vec![0u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| black_box(&mut dst).copy_from_slice(black_box(&src)));
        });
    }
    g.finish();
}

fn strategies(c: &mut Criterion) {
    let mut v = Benches { c };
    for kind in StrategyKind::ALL {
        kind.visit(&mut v);
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

mod group {
    //! The benchmark group (its generated function is undocumented).
    #![allow(missing_docs, reason = "criterion_group! generates an undocumented function")]
    use super::{config, memcpy, strategies};
    use criterion::criterion_group;

    criterion_group! {
        name = benches;
        config = config();
        targets = memcpy, strategies
    }
}
criterion_main!(group::benches);
