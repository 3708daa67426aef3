//! Engine, record and target tests over the bench-only fixture strategy (the real
//! strategies are exercised end to end by `tests/cli.rs`).

use std::sync::Arc;

use bounce_framework::sim::PlatformKind;
use bounce_framework::BootConfig;

use crate::compare::{CompareResults, CopyLimit};
use crate::engine::{run_phase, ClockCost, Limit, Machine, PhaseOptions, PhaseResult};
use crate::record::{fill_ratios, Record, RunMeta};
use crate::registry::fixture::Classes;
use crate::replay::{parse_trace, plan_from_trace, ReplayOptions};
use crate::report::targets;
use crate::workload::Workload;

fn machine() -> Machine {
    Machine { platform: PlatformKind::Tdx, memory: 256 << 20, boot: BootConfig::default(), lanes: None }
}

fn run(w: Workload, threads: usize, requests: u64, options: PhaseOptions) -> PhaseResult {
    let plan = Arc::new(w.plan(threads, 4096, 5, true));
    run_phase(Classes::from_boot, "fixture", &machine(), &plan, Limit::Ops(requests), options, &|| {})
        .expect("phase runs")
}

fn assert_clean(r: &PhaseResult, ops: u64) {
    assert_eq!(r.violations, 0, "{:?}", r.violation_examples);
    assert_eq!((r.data_errors, r.unmap_errors), (0, 0), "{:?}", r.first_error);
    assert_eq!(r.audit, Ok(()));
    assert_eq!(r.leaked_mappings, 0);
    assert_eq!(r.attempted, ops);
    assert_eq!(r.maps + r.snapshot.total_failures(), ops);
    assert_eq!(r.pairs, r.maps, "every successful map is unmapped");
    assert_eq!(r.snapshot.inflight_bytes, 0);
}

#[test]
fn every_workload_moves_the_right_bytes_through_the_device_model() {
    let verify = PhaseOptions { verify: true, ..PhaseOptions::default() };
    // Every workload on two threads; the cross-CPU handoff also alone (unmap on the
    // next simulated CPU) and around a ring of three.
    let cases = Workload::ALL.iter().map(|&w| (w, 2)).chain([(Workload::Net, 1), (Workload::Net, 3)]);
    for (w, threads) in cases {
        let r = run(w, threads, 400, verify);
        assert_clean(&r, 400);
        assert!(r.maps > 0, "{w}/{threads}: nothing mapped");
        assert!(r.snapshot.inflight_bytes_peak > 0);
        assert!(!r.timeline.is_empty());
    }
}

#[test]
fn verify_catches_a_strategy_that_hands_one_buffer_to_two_mappings() {
    let plan = Arc::new(Workload::Nvme.plan(1, 4096, 5, true));
    let opts = PhaseOptions { verify: true, ..PhaseOptions::default() };
    let r = run_phase(Classes::broken_from_boot, "broken", &machine(), &plan, Limit::Ops(200), opts, &|| {}).unwrap();
    assert!(r.data_errors > 0, "overlapping mappings must corrupt data: {:?}", r.first_error);
    assert!(r.first_error.is_some());
    // Without --verify the same bug stays invisible to the data check.
    let r = run_phase(
        Classes::broken_from_boot,
        "broken",
        &machine(),
        &plan,
        Limit::Ops(200),
        PhaseOptions::default(),
        &|| {},
    )
    .unwrap();
    assert_eq!(r.data_errors, 0);
}

#[test]
fn timing_phase_splits_copy_from_metadata() {
    let r = run(Workload::Nvme, 2, 400, PhaseOptions { timing: true, ..PhaseOptions::default() });
    assert_clean(&r, 400);
    assert_eq!(r.snapshot.timed_ops, r.maps + r.pairs);
    assert!(r.snapshot.copy_ns > 0 && r.snapshot.op_ns > r.snapshot.copy_ns);
    let (meta, copy, pairs) = crate::record::split_mean(&r, ClockCost::ZERO);
    assert_eq!(pairs, r.pairs);
    assert!(meta > 0.0 && copy > 0.0);
    // A larger clock cost takes more out of both, never below zero.
    let huge = ClockCost { ns_per_read: 1e9, op_with_copy_ns: 1e9, op_without_copy_ns: 1e9, copy_window_ns: 1e9 };
    let (meta2, copy2, _) = crate::record::split_mean(&r, huge);
    assert_eq!((meta2, copy2), (0.0, 0.0));
    // Cumulative samples were taken, ending at the phase's totals.
    let last = r.timing.last().expect("timing samples");
    assert_eq!((last.timed_ops, last.unmaps), (r.snapshot.timed_ops, r.pairs));
}

#[test]
fn duration_mode_stops_and_drains() {
    let plan = Arc::new(Workload::Net.plan(2, 4096, 1, true));
    let r = run_phase(
        Classes::from_boot,
        "fixture",
        &machine(),
        &plan,
        Limit::Duration(std::time::Duration::from_millis(60)),
        PhaseOptions::default(),
        &|| {},
    )
    .unwrap();
    assert!(r.maps > 0);
    assert_eq!(r.pairs, r.maps);
    assert_eq!(r.snapshot.inflight_bytes, 0);
    assert!(r.wall.as_millis() >= 50, "{:?}", r.wall);
}

#[test]
fn record_json_has_the_documented_keys() {
    let a = run(Workload::Mixed, 2, 500, PhaseOptions::default());
    let b = run(Workload::Mixed, 2, 500, PhaseOptions { timing: true, ..PhaseOptions::default() });
    let meta = RunMeta { workload: "mixed", threads: 2, platform: "tdx", seed: 5, verified: false };
    let rec = Record::from_phases(
        &meta,
        &a,
        Some(&b),
        ClockCost { ns_per_read: 20.0, op_with_copy_ns: 30.0, op_without_copy_ns: 20.0, copy_window_ns: 10.0 },
    );
    let v = serde_json::to_value(&rec).unwrap();
    for key in [
        "strategy",
        "workload",
        "threads",
        "ops",
        "maps_per_sec",
        "map_unmap_ns_p50",
        "map_unmap_ns_p99",
        "metadata_ns_per_op",
        "copy_ns_per_op",
        "shared_bytes_peak",
        "inflight_bytes_peak",
        "conversion_calls",
        "conversion_pages",
        "failures",
    ] {
        assert!(v.get(key).is_some(), "missing key {key}");
    }
    assert_eq!(v["strategy"], "fixture");
    assert_eq!(v["ops"], a.pairs);
    assert!(rec.conversion_calls >= 3, "the fixture converts three class pools at boot");
    assert_eq!(rec.conversion_calls_run, 0);
    assert!(rec.shared_bytes_peak >= rec.capacity_bytes);
    assert!(rec.map_unmap_ns_p50 > 0 && rec.map_unmap_ns_p99 >= rec.map_unmap_ns_p50);
}

#[test]
fn replay_of_a_trace_maps_every_event() {
    let text = "\
# tracer: nop
  kworker/0:1H-87 [000] ..... 1.000001: swiotlb_bounced: dev_name: nvme0 dma_mask=ffffffffffffffff dev_addr=10200 size=8192 FORCE
  ksoftirqd/1-23 [001] ..s1. 1.000002: swiotlb_bounced: dev_name: virtio-net dma_mask=ffffffffffffffff dev_addr=2040 size=1514 FORCE
dev_name: virtio-net dma_mask=ffffffffffffffff dev_addr=3000 size=60 FORCE
";
    let trace = parse_trace(text, false).unwrap();
    let o = ReplayOptions {
        threads: 2,
        inflight: 2,
        dir: bounce_framework::DmaDirection::Bidirectional,
        repeat: 50,
        min_align: vec![],
    };
    let plan = Arc::new(plan_from_trace("replay:t", &trace, &o).unwrap());
    let n = plan.total_ops() as u64;
    assert_eq!(n, 150);
    let r = run_phase(
        Classes::from_boot,
        "fixture",
        &machine(),
        &plan,
        Limit::Streams,
        PhaseOptions { verify: true, ..PhaseOptions::default() },
        &|| {},
    )
    .unwrap();
    assert_clean(&r, n);
    assert_eq!(r.maps, n);
}

fn rec(strategy: &str, workload: &str, threads: usize, mps: f64, meta: f64) -> Record {
    let a = run(Workload::Net, 1, 50, PhaseOptions::default());
    let m = RunMeta { workload, threads, platform: "tdx", seed: 1, verified: false };
    let mut r = Record::from_phases(&m, &a, None, ClockCost::ZERO);
    r.strategy = strategy.into();
    r.maps_per_sec = mps;
    r.metadata_ns_per_op = meta;
    r
}

#[test]
fn targets_report_met_missed_and_unmeasured() {
    let mut results = vec![
        rec("legacy", "net", 2, 100.0, 400.0),
        rec("dynamic", "net", 2, 96.0, 300.0),
        rec("magazine", "net", 2, 250.0, 90.0),
        rec("legacy", "mixed", 2, 100.0, 400.0),
        rec("dynamic", "mixed", 2, 80.0, 300.0),
        rec("magazine", "mixed", 2, 150.0, 150.0),
    ];
    // Limit max(1.5 x 20 MiB, 20 MiB + 16 MiB) = 36 MiB: 30 MiB is within, 40 MiB not.
    for (i, shared) in [(4, 30u64), (5, 40)] {
        let r = &mut results[i];
        r.inflight_bytes_peak = 20 << 20;
        r.shared_bytes_peak = shared << 20;
        r.failures = 0;
    }
    fill_ratios(&mut results, "legacy");
    assert_eq!(results[2].maps_per_sec_vs_legacy, Some(2.5));
    let res = CompareResults {
        results,
        copy_limit: vec![CopyLimit {
            strategy: "magazine".into(),
            size: 1500,
            map_unmap_ns: 60.0,
            memcpy_ns: 30.0,
            ratio: 2.0,
            strategy_ns: 20.0,
        }],
        sweeps: vec![],
        clock: None,
        ab: vec![],
    };
    let ts = targets(&res);
    let get =
        |needle: &str| ts.iter().find(|t| t.target.contains(needle)).unwrap_or_else(|| panic!("{needle}: {ts:?}"));
    assert_eq!(get("net: magazine metadata").met, Some(true), "90/400 = 0.225");
    assert_eq!(get("mixed: magazine metadata").met, Some(false), "150/400");
    assert_eq!(get("1500 B").met, Some(false));
    assert_eq!(get("net, 2 threads: magazine").met, Some(true));
    assert_eq!(get("net, 2 threads: dynamic").met, Some(true), "0.96 is within the noise allowance");
    assert!(get("net, 2 threads: dynamic").detail.contains("noise"));
    assert_eq!(get("mixed, 2 threads: dynamic").met, Some(false));
    assert_eq!(get("mixed: dynamic peak").met, Some(true));
    assert_eq!(get("mixed: magazine peak").met, Some(false));
    assert_eq!(get("burst: dynamic peak").met, None, "burst was not run");
    assert!(!ts.iter().any(|t| t.target.contains("burst: zero failures")), "burst was not run");
    assert_eq!(get("mixed: zero failures for dynamic").met, Some(true));
}

#[test]
fn split_drops_disturbed_intervals_so_one_preemption_does_not_count() {
    use crate::engine::TimingSample;
    let mut r = run(Workload::Net, 1, 50, PhaseOptions::default());
    let mut acc = TimingSample::default();
    r.timing = vec![acc];
    for i in 0..10 {
        acc.timed_ops += 2000;
        acc.unmaps += 1000;
        acc.copy_ns += 100_000;
        // Interval 3 had a thread descheduled for 10 ms inside a timed window.
        acc.op_ns += 300_000 + if i == 3 { 10_000_000 } else { 0 };
        r.timing.push(acc);
    }
    r.snapshot.timed_ops = acc.timed_ops;
    r.snapshot.op_ns = acc.op_ns;
    r.snapshot.copy_ns = acc.copy_ns;
    r.copies = 0;
    r.pairs = acc.unmaps;
    let (meta, copy, _) = crate::record::split(&r, ClockCost::ZERO);
    assert!((meta - 200.0).abs() < 1e-9 && (copy - 100.0).abs() < 1e-9, "{meta} {copy}");
    let (mean_meta, _, _) = crate::record::split_mean(&r, ClockCost::ZERO);
    assert!((mean_meta - 1200.0).abs() < 1e-9, "the mean carries the preemption: {mean_meta}");
    // Too few intervals: the mean.
    r.timing.truncate(3);
    assert!((crate::record::split(&r, ClockCost::ZERO).0 - 1200.0).abs() < 1e-9);
}

#[test]
fn split_keeps_ordinary_variation_additive() {
    use crate::engine::TimingSample;
    let mut r = run(Workload::Net, 1, 50, PhaseOptions::default());
    let mut acc = TimingSample::default();
    r.timing = vec![acc];
    // Intervals with more or fewer large transfers: copy time varies, nothing dropped,
    // and the result is the plain ratio of sums.
    for i in 0..8u64 {
        acc.timed_ops += 200;
        acc.unmaps += 100;
        acc.copy_ns += 100 * (1000 + 300 * (i % 3));
        acc.op_ns += 100 * (1000 + 300 * (i % 3) + 250);
        r.timing.push(acc);
    }
    r.snapshot.timed_ops = acc.timed_ops;
    r.copies = acc.timed_ops / 2;
    r.pairs = acc.unmaps;
    let clock = ClockCost { ns_per_read: 25.0, op_with_copy_ns: 40.0, op_without_copy_ns: 20.0, copy_window_ns: 15.0 };
    let (meta, copy, _) = crate::record::split(&r, clock);
    // Per pair: 2 ops, one of them copying: 40 + 20 ns of metadata and 15 ns of copy overhead.
    let copy_sum: f64 = (0..8u64).map(|i| 100.0 * (1000.0 + 300.0 * (i % 3) as f64)).sum();
    assert!((copy - (copy_sum / 800.0 - 15.0)).abs() < 1e-6, "{copy}");
    assert!((meta - (250.0 - 60.0)).abs() < 1e-6, "{meta}");
    assert_eq!(clock.overhead(10.0, 4.0), (4.0 * 40.0 + 6.0 * 20.0, 4.0 * 15.0));
}

#[test]
fn clock_cost_is_measured_on_this_machine() {
    let c = ClockCost::measure(&bounce_framework::sim::SimGuest::with(PlatformKind::Plain, 1 << 20, 1));
    for v in [c.ns_per_read, c.op_with_copy_ns, c.op_without_copy_ns, c.copy_window_ns] {
        assert!(v.is_finite() && v >= 0.0, "{c:?}");
    }
    assert!(c.ns_per_read > 0.0, "a clock read takes time: {c:?}");
}

#[test]
fn median_round_reports_the_middle_round_and_the_spread() {
    let rounds = vec![
        rec("magazine", "net", 2, 300.0, 90.0),
        rec("magazine", "net", 2, 100.0, 50.0),
        rec("magazine", "net", 2, 200.0, 70.0),
    ];
    let r = crate::record::median_round(rounds);
    assert!((r.maps_per_sec - 200.0).abs() < 1e-9);
    assert!((r.maps_per_sec_min - 100.0).abs() < 1e-9 && (r.maps_per_sec_max - 300.0).abs() < 1e-9);
    assert!((r.metadata_ns_per_op - 70.0).abs() < 1e-9);
    assert_eq!(r.rounds, 3);
    let mut bad = rec("legacy", "net", 2, 1.0, 1.0);
    bad.problem = Some("2 device-model violations".into());
    let r =
        crate::record::median_round(vec![rec("legacy", "net", 2, 5.0, 1.0), bad, rec("legacy", "net", 2, 9.0, 1.0)]);
    assert_eq!(r.problem.as_deref(), Some("2 device-model violations"), "a problem in any round is reported");
}

#[test]
fn scrub_on_the_command_line_reaches_the_bouncer() {
    use bounce_framework::{Device, DmaAttrs, DmaDirection};
    let plan = Workload::Net.plan(1, 64, 5, true);
    for scrub in [false, true] {
        let mut m = machine();
        m.boot = BootConfig::parse(if scrub { "swiotlb.scrub=on" } else { "" }, &[]).unwrap();
        let b =
            crate::engine::boot(Classes::from_boot, "fixture", &m, &plan, bounce_framework::BouncerOptions::default())
                .unwrap();
        let guest = b.platform().clone();
        let orig = guest.alloc_private(4096).unwrap();
        guest.write(orig, &[0xa5; 512]);
        let dev = Device::new("scrub");
        let dma = b.map_single(&dev, orig, 512, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        let tlb = bounce_framework::PhysAddr(dma.0);
        b.unmap_single(&dev, dma, 512, DmaDirection::ToDevice, DmaAttrs::empty()).unwrap();
        let left = guest.read_vec(tlb, 512);
        let want = if scrub { 0 } else { 0xa5 };
        assert!(left.iter().all(|&x| x == want), "scrub={scrub}: the freed bounce buffer holds {:?}", &left[..8]);
        guest.free_private(orig, 4096);
    }
}

#[test]
fn ab_split_runs_each_copy_on_its_own_instance() {
    use crate::engine::Lanes;
    let plan = Arc::new(Workload::Mixed.plan(2, 4096, 5, true).ab_split());
    let routes = plan.devices.iter().enumerate().map(|(i, d)| (d.device.name().to_string(), i % 2)).collect();
    let m = Machine { lanes: Some(Lanes { configs: vec![BootConfig::default(); 2], routes }), ..machine() };
    for timing in [false, true] {
        let opts = PhaseOptions { timing, verify: !timing, ..PhaseOptions::default() };
        let r = run_phase(Classes::from_boot, "fixture", &m, &plan, Limit::Ops(800), opts, &|| {}).unwrap();
        assert_clean(&r, 800);
        assert_eq!(r.lanes.len(), 2, "two instances");
        // Every device on the lane of its suffix; the lanes' counters add up to the whole.
        assert_eq!(r.devices.len(), plan.devices.len());
        for (d, _) in &r.devices {
            assert_eq!(d.lane, usize::from(d.name().ends_with(crate::workload::AB_SUFFIXES[1])), "{}", d.name());
            assert!(d.stats.maps > 0, "{} mapped nothing", d.name());
        }
        let (a, b) = (&r.lanes[0], &r.lanes[1]);
        assert_eq!(a.snapshot.maps + b.snapshot.maps, r.maps);
        assert_eq!(a.snapshot.unmaps + b.snapshot.unmaps, r.pairs);
        assert_eq!(a.copies + b.copies, r.copies);
        // Both copies get the same requests, so as many maps each, but for a pair the
        // op limit cut in half.
        assert!(a.snapshot.maps.abs_diff(b.snapshot.maps) <= 2 * 4, "{} vs {}", a.snapshot.maps, b.snapshot.maps);
        assert!(a.pool.capacity_bytes > 0 && b.pool.capacity_bytes > 0);
        if timing {
            for l in [a, b] {
                let last = l.timing.last().expect("per-lane timing samples");
                assert_eq!((last.timed_ops, last.unmaps), (l.snapshot.timed_ops, l.snapshot.unmaps));
                let (meta, copy, pairs) = crate::record::split(l, ClockCost::ZERO);
                assert_eq!(pairs, l.snapshot.unmaps);
                assert!(meta > 0.0 && copy > 0.0);
            }
        }
    }
}
