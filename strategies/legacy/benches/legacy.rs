//! What the legacy allocator's metadata work costs (no copies): `reserve` + `release`
//! on an empty 64 MiB pool, and the two exhaustion paths Linux has, a full pool (cut
//! short by the `nslots > area_nslabs - used` check) and a fragmented one (every area
//! searched slot by slot before "swiotlb buffer is full").
//!
//! `cargo bench -p bounce-legacy --bench legacy`; add
//! `-- --warm-up-time 1 --measurement-time 2` for a quick run.
// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;

use bounce_framework::sim::{set_current_cpu, PlatformKind, SimGuest};
use bounce_framework::{MapError, PhysAddr, Request, Strategy};
use bounce_legacy::{Legacy, LegacyConfig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// A 64 MiB pool (Linux's default) with two areas, on a 2-CPU TDX guest.
fn legacy() -> Legacy<SimGuest> {
    let g = SimGuest::with(PlatformKind::Tdx, 96 << 20, 2);
    Legacy::new(g, LegacyConfig { nslabs: Some(32768), nareas: Some(2), ..LegacyConfig::default() }).unwrap()
}

fn request(size: usize, min_align_mask: u64) -> Request {
    Request { min_align_mask, ..Request::new(PhysAddr(0x1234_0a00), size, 0) }
}

fn pair(c: &mut Criterion) {
    set_current_cpu(Some(0));
    let l = legacy();
    let mut g = c.benchmark_group("legacy/reserve_release");
    g.throughput(Throughput::Elements(1));
    for (size, mask) in [(64usize, 0u64), (1500, 0), (4096, 0), (4096, 0xfff), (65536, 0)] {
        let req = request(size, mask);
        g.bench_with_input(BenchmarkId::new(if mask == 0 { "net" } else { "nvme" }, size), &req, |b, req| {
            b.iter(|| {
                let r = l.reserve(black_box(req)).expect("empty pool");
                black_box(l.release(r.addr).expect("fresh mapping"));
            });
        });
    }
    g.finish();
}

fn exhausted(c: &mut Criterion) {
    set_current_cpu(Some(0));
    let mut g = c.benchmark_group("legacy/exhausted");
    g.throughput(Throughput::Elements(1));

    // Full: every slot in use; each area refuses at once.
    let full = legacy();
    while full.reserve(&request(65536, 0)).is_ok() {}
    while full.reserve(&request(1, 0)).is_ok() {}
    g.bench_function("full", |b| {
        b.iter(|| assert!(matches!(full.reserve(black_box(&request(64, 0))), Err(MapError::Exhausted { .. }))));
    });

    // Fragmented: 8 KiB mappings everywhere, every other one freed. Half the pool is
    // free in runs of 4 slots; a 12 KiB request (6 slots) strides through both areas
    // (8192 candidate slots each) and fails.
    let frag = legacy();
    let mut live = Vec::new();
    while let Ok(r) = frag.reserve(&request(8192, 0)) {
        live.push(r.addr);
    }
    for a in live.iter().skip(1).step_by(2) {
        frag.release(*a).unwrap();
    }
    g.bench_function("fragmented_half_free", |b| {
        b.iter(|| assert!(matches!(frag.reserve(black_box(&request(12288, 0))), Err(MapError::Exhausted { .. }))));
    });
    g.finish();
}

criterion_group!(benches, pair, exhausted);
criterion_main!(benches);
