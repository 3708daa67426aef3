//! Results: one [`Record`] per (strategy, workload, threads), computed from a throughput
//! phase and a timing phase, and serialised to JSON as is.

use std::collections::BTreeMap;

use bounce_framework::{BounceSnapshot, FailureReason, PoolStats};

use crate::engine::{ClockCost, LaneResult, PhaseResult, Sample, TimingSample};

/// One measured (strategy, workload, threads) combination.
///
/// Times are per map+unmap pair: `copy_ns_per_op` is the time spent copying bytes,
/// `metadata_ns_per_op` everything else the bouncer and the strategy did (allocation,
/// lookup, bookkeeping, locks), both from the timing phase and corrected for the
/// clock reads inside the timed windows ([`ClockCost`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Record {
    /// Strategy name.
    pub strategy: String,
    /// Workload name.
    pub workload: String,
    /// Worker threads.
    pub threads: usize,
    /// `plain`, `tdx` or `snp`.
    pub platform: String,
    /// The op-stream seed.
    pub seed: u64,
    /// Completed map+unmap pairs in the throughput phase.
    pub ops: u64,
    /// Map requests attempted.
    pub attempted: u64,
    /// Successful maps.
    pub maps: u64,
    /// Seconds the workers were active.
    pub seconds: f64,
    /// Successful maps per second (the median round's).
    pub maps_per_sec: f64,
    /// Rounds run (`--rounds`).
    pub rounds: usize,
    /// The lowest round's maps per second.
    pub maps_per_sec_min: f64,
    /// The highest round's maps per second.
    pub maps_per_sec_max: f64,
    /// Bytes mapped per second (original → bounce).
    pub bytes_per_sec: f64,
    /// Map+unmap latency percentiles (sampled pairs), ns.
    pub map_unmap_ns_p50: u64,
    /// 90th percentile, ns.
    pub map_unmap_ns_p90: u64,
    /// 99th percentile, ns.
    pub map_unmap_ns_p99: u64,
    /// 99.9th percentile, ns.
    pub map_unmap_ns_p999: u64,
    /// Largest sampled latency, ns.
    pub map_unmap_ns_max: u64,
    /// Pairs whose latency was sampled.
    pub latency_samples: u64,
    /// Non-copy time per map+unmap pair (timing phase, disturbed 5 ms intervals
    /// dropped), ns.
    pub metadata_ns_per_op: f64,
    /// Copy time per map+unmap pair (timing phase, disturbed intervals dropped), ns.
    pub copy_ns_per_op: f64,
    /// Non-copy time per pair, mean over the whole timing phase, ns.
    pub metadata_ns_per_op_mean: f64,
    /// Copy time per pair, mean over the whole timing phase, ns.
    pub copy_ns_per_op_mean: f64,
    /// Pairs in the timing phase.
    pub timed_ops: u64,
    /// What one clock read costs on this machine, ns.
    pub clock_ns_per_read: f64,
    /// The clock overhead taken out of each timed operation with a copy, ns.
    pub clock_overhead_ns_per_op: f64,
    /// Peak shared memory committed (converted), bytes.
    pub shared_bytes_peak: u64,
    /// Pool capacity at the end, bytes.
    pub capacity_bytes: u64,
    /// Peak bytes of live mappings.
    pub inflight_bytes_peak: u64,
    /// `shared_bytes_peak / inflight_bytes_peak`.
    pub shared_per_inflight: f64,
    /// Peak bytes reserved by live mappings (rounding included).
    pub used_bytes_hiwater: u64,
    /// Conversion calls since boot (boot pool included).
    pub conversion_calls: u64,
    /// Pages converted since boot.
    pub conversion_pages: u64,
    /// Conversion calls while the workload ran.
    pub conversion_calls_run: u64,
    /// Pages converted while the workload ran.
    pub conversion_pages_run: u64,
    /// Conversion calls after the first second of the workload (runs of at least 1.5 s;
    /// the warm-up is over then, so this is the engine's churn).
    pub conversion_calls_after_1s: Option<u64>,
    /// Failed maps in the throughput phase.
    pub failures: u64,
    /// Failures by reason (only reasons that occurred).
    pub failures_by_reason: BTreeMap<String, u64>,
    /// Storage maps (`DMA_ATTR_MAY_BLOCK`) that found no free buffer and waited for one
    /// in the throughput phase.
    pub blocked_maps: u64,
    /// Milliseconds those maps waited, all threads together.
    pub blocked_ms: f64,
    /// Device-model violations (must be 0).
    pub violations: usize,
    /// Data mismatches in `--verify` mode (must be 0).
    pub data_errors: u64,
    /// Unmaps the strategy refused (must be 0).
    pub unmap_errors: u64,
    /// Whether data was checked through the device model.
    pub verified: bool,
    /// A problem found: violation, data error, failed audit, leaked mapping.
    pub problem: Option<String>,
    /// Guest RAM, bytes.
    pub guest_memory_bytes: usize,
    /// `maps_per_sec` over legacy's.
    pub maps_per_sec_vs_legacy: Option<f64>,
    /// `metadata_ns_per_op` over legacy's.
    pub metadata_vs_legacy: Option<f64>,
    /// Latency CDF points `(ns, fraction of pairs at or below)`.
    pub latency_cdf: Vec<(u64, f64)>,
    /// Shared memory and bytes in flight over time.
    pub timeline: Vec<Sample>,
    /// Per device (throughput phase): the strategy instance it mapped through and
    /// what it did.
    pub devices: Vec<DeviceRecord>,
}

/// One device's share of a [`Record`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceRecord {
    /// `dev_name()`.
    pub device: String,
    /// The strategy that served it.
    pub strategy: String,
    /// Its instance (lane) number, 0 for the default.
    pub lane: usize,
    /// Successful maps.
    pub maps: u64,
    /// Successful maps per second.
    pub maps_per_sec: f64,
    /// Bytes copied original → bounce.
    pub bytes_to_bounce: u64,
    /// Failed maps and unmaps.
    pub failures: u64,
    /// The most bytes it had in flight at once.
    pub inflight_bytes_peak: u64,
}

/// Peak shared memory of a pool: the most it converted at once, or what the timeline
/// saw if more, or its capacity when it counts no conversions.
pub fn shared_peak(pool: &PoolStats, timeline_peak: u64) -> u64 {
    match pool.conversions.shared_bytes_peak.max(timeline_peak) {
        0 => pool.capacity_bytes as u64,
        peak => peak,
    }
}

/// Conversion calls from the first timeline sample at or after `t_ms` to the last, when
/// the run lasted at least half as long again.
fn calls_after(timeline: &[Sample], t_ms: f64) -> Option<u64> {
    let last = timeline.last()?;
    if last.t_ms < t_ms * 1.5 {
        return None;
    }
    let from = timeline.iter().find(|s| s.t_ms >= t_ms)?;
    Some(last.conversion_calls.saturating_sub(from.conversion_calls))
}

/// Identifies the run a record belongs to.
#[derive(Clone, Debug)]
pub struct RunMeta<'a> {
    /// Workload name.
    pub workload: &'a str,
    /// Threads.
    pub threads: usize,
    /// Platform name.
    pub platform: &'a str,
    /// Seed.
    pub seed: u64,
    /// Whether `--verify` was on.
    pub verified: bool,
}

fn problem_of(p: &PhaseResult) -> Option<String> {
    if p.violations > 0 {
        return Some(format!(
            "{} device-model violations, first: {}",
            p.violations,
            p.violation_examples.first().map_or("?", String::as_str)
        ));
    }
    if p.data_errors + p.unmap_errors > 0 {
        return Some(format!(
            "{} data errors, {} refused unmaps; first: {}",
            p.data_errors,
            p.unmap_errors,
            p.first_error.as_deref().unwrap_or("?")
        ));
    }
    if let Err(e) = &p.audit {
        return Some(e.clone());
    }
    (p.leaked_mappings > 0).then(|| format!("{} mappings still live after the drain", p.leaked_mappings))
}

impl Record {
    /// Builds a record from the throughput phase `a` and the timing phase `b`.
    pub fn from_phases(meta: &RunMeta<'_>, a: &PhaseResult, b: Option<&PhaseResult>, clock: ClockCost) -> Self {
        let secs = a.wall.as_secs_f64().max(1e-9);
        let q = |x: f64| if a.latency.is_empty() { 0 } else { a.latency.value_at_quantile(x) };
        let (metadata, copy, timed) = b.map_or((0.0, 0.0, 0), |b| split(b, clock));
        let (metadata_mean, copy_mean, _) = b.map_or((0.0, 0.0, 0), |b| split_mean(b, clock));
        let conv = a.pool.conversions;
        let timeline_peak = a.timeline.iter().map(|s| s.shared_bytes).max().unwrap_or(0);
        let shared_peak = shared_peak(&a.pool, timeline_peak);
        let inflight_peak = a.snapshot.inflight_bytes_peak;
        let failures_by_reason = FailureReason::ALL
            .iter()
            .filter(|r| a.snapshot.failures_of(**r) > 0)
            .map(|r| (r.name().to_string(), a.snapshot.failures_of(*r)))
            .collect();
        let mut problem = problem_of(a);
        if problem.is_none() {
            problem = b.and_then(problem_of);
        }
        Self {
            strategy: a.strategy.to_string(),
            workload: meta.workload.to_string(),
            threads: meta.threads,
            platform: meta.platform.to_string(),
            seed: meta.seed,
            ops: a.pairs,
            attempted: a.attempted,
            maps: a.maps,
            seconds: secs,
            maps_per_sec: a.maps as f64 / secs,
            rounds: 1,
            maps_per_sec_min: a.maps as f64 / secs,
            maps_per_sec_max: a.maps as f64 / secs,
            bytes_per_sec: a.snapshot.bytes_to_bounce as f64 / secs,
            map_unmap_ns_p50: q(0.5),
            map_unmap_ns_p90: q(0.9),
            map_unmap_ns_p99: q(0.99),
            map_unmap_ns_p999: q(0.999),
            map_unmap_ns_max: a.latency.max(),
            latency_samples: a.latency.len(),
            metadata_ns_per_op: metadata,
            copy_ns_per_op: copy,
            metadata_ns_per_op_mean: metadata_mean,
            copy_ns_per_op_mean: copy_mean,
            timed_ops: timed,
            clock_ns_per_read: clock.ns_per_read,
            clock_overhead_ns_per_op: clock.op_with_copy_ns,
            shared_bytes_peak: shared_peak,
            capacity_bytes: a.pool.capacity_bytes as u64,
            inflight_bytes_peak: inflight_peak,
            shared_per_inflight: if inflight_peak == 0 { 0.0 } else { shared_peak as f64 / inflight_peak as f64 },
            used_bytes_hiwater: a.pool.used_hiwater_bytes as u64,
            conversion_calls: conv.calls(),
            conversion_pages: conv.pages(),
            conversion_calls_run: conv.calls().saturating_sub(a.conv_before.calls()),
            conversion_pages_run: conv.pages().saturating_sub(a.conv_before.pages()),
            conversion_calls_after_1s: calls_after(&a.timeline, 1000.0),
            failures: a.snapshot.total_failures(),
            failures_by_reason,
            blocked_maps: a.snapshot.blocked_maps,
            blocked_ms: a.snapshot.blocked_ns as f64 / 1e6,
            violations: a.violations + b.map_or(0, |b| b.violations),
            data_errors: a.data_errors,
            unmap_errors: a.unmap_errors + b.map_or(0, |b| b.unmap_errors),
            verified: meta.verified,
            problem,
            guest_memory_bytes: a.memory,
            maps_per_sec_vs_legacy: None,
            metadata_vs_legacy: None,
            latency_cdf: cdf(&a.latency),
            timeline: a.timeline.clone(),
            devices: a
                .devices
                .iter()
                .map(|(d, strategy)| DeviceRecord {
                    device: d.name().to_string(),
                    strategy: (*strategy).to_string(),
                    lane: d.lane,
                    maps: d.stats.maps,
                    maps_per_sec: d.stats.maps as f64 / secs,
                    bytes_to_bounce: d.stats.bytes_to_bounce,
                    failures: d.stats.total_failures(),
                    inflight_bytes_peak: d.stats.inflight_bytes_peak,
                })
                .collect(),
        }
    }
}

/// What the copy/metadata split reads from a timing phase: the whole bouncer's counters
/// (from a [`PhaseResult`]) or one strategy instance's (from a [`LaneResult`]).
#[derive(Clone, Copy, Debug)]
pub struct Timed<'a> {
    /// Cumulative timing at every sample.
    pub samples: &'a [TimingSample],
    /// The counters at the end.
    pub snapshot: &'a BounceSnapshot,
    /// Copies made.
    pub copies: u64,
    /// Completed map+unmap pairs.
    pub pairs: u64,
}

impl<'a> From<&'a PhaseResult> for Timed<'a> {
    fn from(b: &'a PhaseResult) -> Self {
        Self { samples: &b.timing, snapshot: &b.snapshot, copies: b.copies, pairs: b.pairs }
    }
}

impl<'a> From<&'a LaneResult> for Timed<'a> {
    fn from(l: &'a LaneResult) -> Self {
        Self { samples: &l.timing, snapshot: &l.snapshot, copies: l.copies, pairs: l.snapshot.unmaps }
    }
}

/// Copy and metadata nanoseconds per map+unmap pair from a timing phase (or one
/// strategy instance's share of it), the clock's own overhead taken out
/// ([`ClockCost`]): `(metadata, copy, pairs)`.
///
/// The bouncer only keeps sums, and one descheduled thread inside a timed window adds
/// milliseconds to them. So the phase is cut into the sampling intervals (5 ms);
/// intervals whose time per pair is more than twice the median interval's are dropped
/// as disturbed, and the result is the sums over the rest divided by their pairs. With
/// fewer than five usable intervals it is the whole phase's mean ([`split_mean`]).
pub fn split<'a>(b: impl Into<Timed<'a>>, clock: ClockCost) -> (f64, f64, u64) {
    let b: Timed<'a> = b.into();
    let copies_per_op = if b.snapshot.timed_ops == 0 { 0.0 } else { b.copies as f64 / b.snapshot.timed_ops as f64 };
    // (pairs, metadata ns, copy ns) per interval, overhead removed.
    let mut iv: Vec<(f64, f64, f64)> = Vec::new();
    for w in b.samples.windows(2) {
        let (x, y) = (w[0], w[1]);
        let pairs = y.unmaps.saturating_sub(x.unmaps);
        if pairs < 32 {
            continue;
        }
        let ops = y.timed_ops.saturating_sub(x.timed_ops) as f64;
        let (meta_over, copy_over) = clock.overhead(ops, ops * copies_per_op);
        let op_ns = y.op_ns.saturating_sub(x.op_ns) as f64;
        let copy_ns = y.copy_ns.saturating_sub(x.copy_ns) as f64;
        iv.push((pairs as f64, (op_ns - copy_ns - meta_over).max(0.0), (copy_ns - copy_over).max(0.0)));
    }
    if iv.len() < 5 {
        return split_mean(b, clock);
    }
    let mut per_pair: Vec<f64> = iv.iter().map(|&(p, m, c)| (m + c) / p).collect();
    let limit = 2.0 * median(&mut per_pair);
    let (mut pairs, mut meta, mut copy) = (0.0, 0.0, 0.0);
    for &(p, m, c) in iv.iter().filter(|&&(p, m, c)| (m + c) / p <= limit) {
        pairs += p;
        meta += m;
        copy += c;
    }
    (meta / pairs, copy / pairs, b.pairs)
}

/// The median of `v` (the mean of the middle two for an even count), sorting it.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// The whole timing phase's (or one strategy instance's) mean copy and metadata
/// nanoseconds per pair, the clock's overhead taken out: `(metadata, copy, pairs)`.
pub fn split_mean<'a>(b: impl Into<Timed<'a>>, clock: ClockCost) -> (f64, f64, u64) {
    let b: Timed<'a> = b.into();
    let pairs = b.pairs.max(1) as f64;
    let s = b.snapshot;
    let (meta_over, copy_over) = clock.overhead(s.timed_ops as f64, b.copies as f64);
    let copy = (s.copy_ns as f64 - copy_over).max(0.0);
    let meta = (s.metadata_ns() as f64 - meta_over).max(0.0);
    (meta / pairs, copy / pairs, b.pairs)
}

/// About 60 points of the latency CDF, denser in the tail.
fn cdf(h: &hdrhistogram::Histogram<u64>) -> Vec<(u64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut pts: Vec<(u64, f64)> = Vec::new();
    let mut push = |q: f64| {
        let v = h.value_at_quantile(q);
        if pts.last().is_none_or(|&(lv, lq)| lv != v || lq < q) {
            pts.push((v, q));
        }
    };
    for i in 0..=40 {
        push(f64::from(i) / 40.0 * 0.95);
    }
    for q in [0.96, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0] {
        push(q);
    }
    pts
}

/// Combines the rounds of one (strategy, workload, threads): the round with the median
/// throughput, its metadata and copy times replaced by their medians over the rounds,
/// and the spread of throughput kept in `maps_per_sec_min` / `maps_per_sec_max`.
///
/// # Panics
/// When `rounds` is empty.
pub fn median_round(mut rounds: Vec<Record>) -> Record {
    assert!(!rounds.is_empty(), "at least one round");
    let n = rounds.len();
    let mut meta: Vec<f64> = rounds.iter().map(|r| r.metadata_ns_per_op).collect();
    let mut copy: Vec<f64> = rounds.iter().map(|r| r.copy_ns_per_op).collect();
    let min = rounds.iter().map(|r| r.maps_per_sec).fold(f64::INFINITY, f64::min);
    let max = rounds.iter().map(|r| r.maps_per_sec).fold(0.0, f64::max);
    let problems: Vec<String> = rounds.iter().filter_map(|r| r.problem.clone()).collect();
    rounds.sort_by(|a, b| a.maps_per_sec.total_cmp(&b.maps_per_sec));
    let mut r = rounds.swap_remove(n / 2);
    meta.sort_by(f64::total_cmp);
    copy.sort_by(f64::total_cmp);
    r.metadata_ns_per_op = meta[n / 2];
    r.copy_ns_per_op = copy[n / 2];
    r.rounds = n;
    r.maps_per_sec_min = min;
    r.maps_per_sec_max = max;
    if r.problem.is_none() {
        r.problem = problems.into_iter().next();
    }
    r
}

/// Fills the ratios against the baseline strategy's record of the same workload and
/// thread count.
pub fn fill_ratios(records: &mut [Record], baseline: &str) {
    let base: Vec<(String, usize, f64, f64)> = records
        .iter()
        .filter(|r| r.strategy == baseline)
        .map(|r| (r.workload.clone(), r.threads, r.maps_per_sec, r.metadata_ns_per_op))
        .collect();
    for r in records.iter_mut() {
        if let Some((_, _, mps, meta)) = base.iter().find(|b| b.0 == r.workload && b.1 == r.threads) {
            r.maps_per_sec_vs_legacy = (*mps > 0.0).then(|| r.maps_per_sec / mps);
            r.metadata_vs_legacy = (*meta > 0.0).then(|| r.metadata_ns_per_op / meta);
        }
    }
}
