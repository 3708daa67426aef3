//! Several threads map and unmap the seed's size mix while the std-thread runner
//! refills; demand grows past the initial targets but stays under the cap.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bounce_dynamic::{Dynamic, DynamicConfig};
use bounce_framework::sim::{set_current_cpu, PlatformKind, SimConfig, SimGuest};
use bounce_framework::{Bouncer, BouncerOptions, Device, DmaAttrs, DmaDirection, Platform, Strategy};
use bounce_pools::{ClassSpec, PoolConfig, ThreadRunner};
use common::SeedSizes;

const THREADS: u64 = 3;
const OPS: usize = 2500;
const MAX_WINDOW: usize = 48;

#[test]
fn threads_stream_the_seed_mix_while_kccd_refills() {
    let guest = SimGuest::new(SimConfig::new(PlatformKind::Tdx, 256 << 20, 2));
    let cfg = DynamicConfig {
        pools: PoolConfig {
            // Targets well below the peak demand, so the engine must grow every busy
            // class during the run.
            // Targets cover the demand swings within the engine's latency (tens of ms in a
            // debug build on two shared cores); the window ramp takes demand past them,
            // so the engine grows the pools while the threads run.
            classes: vec![
                ClassSpec::new(512, 32),
                ClassSpec::new(2048, 64),
                ClassSpec::new(4096, 64),
                ClassSpec::new(16384, 16),
                ClassSpec::new(512 << 10, 16),
            ],
            cap_bytes: Some(96 << 20),
            idle_ms: 20,
            ..PoolConfig::seed()
        },
        ..DynamicConfig::default()
    };
    let b = Arc::new(Bouncer::new(guest.clone(), Dynamic::new(guest.clone(), cfg).unwrap(), BouncerOptions::default()));
    let work = Arc::clone(&b);
    let runner = ThreadRunner::for_sim(guest.clone(), move || work.run_background()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.strategy().background_pending() {
        assert!(Instant::now() < deadline, "the runner never filled the pools");
        std::thread::sleep(Duration::from_millis(1));
    }
    let initial = b.pool_stats();
    let failures = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let b = Arc::clone(&b);
            let guest = guest.clone();
            let failures = Arc::clone(&failures);
            std::thread::spawn(move || {
                set_current_cpu(Some(t as usize));
                let net = Device::new("virtio-net");
                let nvme = Device::new("nvme0").with_min_align_mask(4095);
                let region = guest.alloc_private(MAX_WINDOW * ((256 << 10) + 4096)).unwrap();
                let mut sizes = SeedSizes::new(t + 1);
                let mut live: VecDeque<(bounce_framework::DmaAddr, usize, bool, u64)> = VecDeque::new();
                for i in 0..OPS {
                    // The window ramps up: demand grows while the run goes on.
                    let window = 4 + i * (MAX_WINDOW - 4) / OPS;
                    while live.len() >= window {
                        let (d, n, nv, stamp) = live.pop_front().unwrap();
                        let dev = if nv { &nvme } else { &net };
                        let mut tail = [0u8; 8];
                        guest.read(guest.dma_to_phys(d) + (n as u64 - tail.len().min(n) as u64), &mut tail[..8.min(n)]);
                        assert_eq!(&tail[..8.min(n)], &stamp.to_le_bytes()[..8.min(n)], "thread {t}: bounce data");
                        b.unmap_single(dev, d, n, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
                    }
                    let n = sizes.size();
                    let nv = sizes.next_u64() % 4 == 0;
                    let slot = i % MAX_WINDOW;
                    let orig = region + (slot * ((256 << 10) + 4096)) as u64 + (sizes.next_u64() % 4096);
                    let stamp = sizes.next_u64();
                    guest.write(orig + (n as u64 - 8.min(n) as u64), &stamp.to_le_bytes()[..8.min(n)]);
                    let dev = if nv { &nvme } else { &net };
                    let d = loop {
                        match b.map_single(dev, orig, n, DmaDirection::ToDevice, DmaAttrs::empty()) {
                            Ok(d) => break d,
                            Err(e) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                eprintln!("thread {t} op {i}: {e}");
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                    };
                    live.push_back((d, n, nv, stamp));
                }
                for (d, n, nv, _) in live {
                    let dev = if nv { &nvme } else { &net };
                    b.unmap_single(dev, d, n, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let totals = runner.stop();
    let s = b.strategy();
    let end = b.pool_stats();
    let report: Vec<_> = s.class_reports().iter().map(|c| (c.class.size, c.counters)).collect();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "maps failed under the cap: {:?} {:?} {report:#?}",
        s.counters(),
        s.pools().engine_counters()
    );
    assert!(end.refill.grow_batches > initial.refill.grow_batches, "demand past the targets grew the pools");
    assert!(totals.runs > 0);
    assert!(end.conversions.shared_bytes_peak <= 96 << 20);
    assert_eq!(b.stats().maps, THREADS * OPS as u64);
    assert_eq!(b.stats().inflight_bytes, 0);
    // Every buffer is accounted for: free, none in flight, none leaked.
    let a = s.audit().unwrap();
    assert_eq!((a.live_mappings, a.used_bytes), (0, 0));
    assert_eq!(a.free_bytes, end.capacity_bytes);
    assert_eq!(a.owned_bytes as u64, end.conversions.shared_bytes);
    guest.assert_no_violations();
}
