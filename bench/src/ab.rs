//! `bounce compare --ab A,B`: two strategy instances side by side in one simulated
//! guest, on the same workload at the same time.
//!
//! The workload's plan is split by [`Plan::ab_split`]: every device becomes two identical
//! copies, `<device>.a` routed to an instance of A (lane 0) and `<device>.b` routed to an
//! instance of B (lane 1), each copy issued the same requests, half of its original's,
//! so the guest carries a normal run's load. Two instances are booted even when A and B
//! name the same strategy, both behind [`AnyStrategy`] (both pay the same dispatch).
//!
//! Both sides run on the same threads at the same time, so whatever disturbs the machine
//! disturbs both: each round's B/A ratio is the figure, not each side's absolute value.
//! A round is a throughput phase and a timing phase (the copy/metadata split, with the
//! same clock correction as the records, per instance). The table reports each side's
//! median, the median of the per-round ratios and their spread (lowest..highest).
//! An A/A run (`--ab magazine,magazine`) measures what the split and the noise alone
//! give: its ratios should read 1.00 within their spread.

use std::fmt::Write as _;
use std::sync::Arc;

use bounce_framework::sim::{PlatformKind, SimGuest};
use bounce_framework::BootConfig;
use bounce_strategies::AnyStrategy;

use crate::compare::{workload_plan, CompareConfig, CompareResults, Progress};
use crate::engine::{run_phase, ClockCost, Lanes, Machine, PhaseOptions, PhaseResult, RunError};
use crate::record::{median, median_round, shared_peak, split, Record, RunMeta};
use crate::registry::{StrategyKind, ROUTED};
use crate::report::{bytes, rate};
use crate::workload::{Plan, AB_SUFFIXES};

/// The row name of an A/B run's whole-guest [`Record`].
pub const AB_ROW: &str = "ab";

/// Default `--rounds` of an A/B run.
pub const AB_ROUNDS: usize = 5;

/// One side (strategy instance) of one round.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AbSide {
    /// The strategy.
    pub strategy: String,
    /// Its lane: 0 for A, 1 for B.
    pub lane: usize,
    /// Successful maps of its devices (throughput phase).
    pub maps: u64,
    /// Those per second of the phase's active time.
    pub maps_per_sec: f64,
    /// Non-copy time per map+unmap pair of its devices (timing phase), ns.
    pub metadata_ns_per_op: f64,
    /// Copy time per map+unmap pair of its devices (timing phase), ns.
    pub copy_ns_per_op: f64,
    /// Failed maps and unmaps of its devices.
    pub failures: u64,
    /// Peak bytes in flight of its devices (the sum of each device's peak).
    pub inflight_bytes_peak: u64,
    /// Peak shared memory of its instance's pool, bytes.
    pub shared_bytes_peak: u64,
}

impl AbSide {
    /// Lane `lane`'s figures from a throughput phase and a timing phase.
    pub fn measure(throughput: &PhaseResult, timing: &PhaseResult, lane: usize, clock: ClockCost) -> Self {
        let l = &throughput.lanes[lane];
        let (metadata, copy, _) = split(&timing.lanes[lane], clock);
        Self {
            strategy: l.strategy.to_string(),
            lane,
            maps: l.snapshot.maps,
            maps_per_sec: l.snapshot.maps as f64 / throughput.wall.as_secs_f64().max(1e-9),
            metadata_ns_per_op: metadata,
            copy_ns_per_op: copy,
            failures: l.snapshot.total_failures(),
            inflight_bytes_peak: l.snapshot.inflight_bytes_peak,
            shared_bytes_peak: shared_peak(&l.pool, 0),
        }
    }
}

/// How an [`AbMetric`] is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Per second.
    Rate,
    /// Nanoseconds.
    Ns,
    /// A count.
    Count,
    /// Bytes.
    Bytes,
}

/// A figure an A/B table compares: name, unit, value.
type Metric = (&'static str, Unit, fn(&AbSide) -> f64);

/// The figures an A/B table compares.
const METRICS: [Metric; 6] = [
    ("maps/s", Unit::Rate, |s| s.maps_per_sec),
    ("metadata ns/pair", Unit::Ns, |s| s.metadata_ns_per_op),
    ("copy ns/pair", Unit::Ns, |s| s.copy_ns_per_op),
    ("failures", Unit::Count, |s| s.failures as f64),
    ("in-flight peak", Unit::Bytes, |s| s.inflight_bytes_peak as f64),
    ("shared peak", Unit::Bytes, |s| s.shared_bytes_peak as f64),
];

/// One row of the A/B table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AbMetric {
    /// What is compared.
    pub metric: &'static str,
    /// How it is printed.
    pub unit: Unit,
    /// A's median over the rounds.
    pub a: f64,
    /// B's median over the rounds.
    pub b: f64,
    /// The median of the rounds' B/A ratios (`None` when A was 0 in a round).
    pub ratio: Option<f64>,
    /// The lowest round's B/A.
    pub ratio_min: Option<f64>,
    /// The highest round's B/A.
    pub ratio_max: Option<f64>,
}

impl AbMetric {
    /// The row of `metric` over `rounds` (A, B).
    fn over(rounds: &[[AbSide; 2]], (metric, unit, value): Metric) -> Self {
        let mut a: Vec<f64> = rounds.iter().map(|r| value(&r[0])).collect();
        let mut b: Vec<f64> = rounds.iter().map(|r| value(&r[1])).collect();
        let mut ratios: Option<Vec<f64>> =
            rounds.iter().map(|r| (value(&r[0]) > 0.0).then(|| value(&r[1]) / value(&r[0]))).collect();
        let (ratio, ratio_min, ratio_max) = match ratios.as_deref_mut() {
            Some(v) if !v.is_empty() => {
                let m = median(v);
                (Some(m), v.first().copied(), v.last().copied())
            }
            _ => (None, None, None),
        };
        Self { metric, unit, a: median(&mut a), b: median(&mut b), ratio, ratio_min, ratio_max }
    }

    fn value(&self, v: f64) -> String {
        match self.unit {
            Unit::Rate => rate(v),
            Unit::Ns | Unit::Count => format!("{v:.0}"),
            // A median of byte counts: whole and never negative.
            Unit::Bytes => bytes(u64::try_from(v as i128).unwrap_or(0)),
        }
    }

    /// The cells: metric, A, B, B/A, spread.
    fn cells(&self) -> [String; 5] {
        let r = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |x| format!("{x:.2}"));
        let spread = match (self.ratio_min, self.ratio_max) {
            (Some(lo), Some(hi)) => format!("{lo:.2}..{hi:.2}"),
            _ => "-".to_string(),
        };
        [self.metric.to_string(), self.value(self.a), self.value(self.b), r(self.ratio), spread]
    }
}

/// An A/B run of one (workload, threads).
#[derive(Clone, Debug, serde::Serialize)]
pub struct AbResult {
    /// Strategy A (lane 0, the `.a` devices).
    pub a: String,
    /// Strategy B (lane 1, the `.b` devices).
    pub b: String,
    /// Workload name.
    pub workload: String,
    /// Worker threads.
    pub threads: usize,
    /// Each round's figures, A then B.
    pub rounds: Vec<[AbSide; 2]>,
    /// The table: medians, B/A and its spread.
    pub metrics: Vec<AbMetric>,
    /// The whole guest (both instances, every device with its lane) in the median round.
    pub record: Record,
}

/// The machine of an A/B run of `plan` (split by [`Plan::ab_split`]): `machine` with one
/// instance of `a` on lane 0 and one of `b` on lane 1, each from `machine`'s command line
/// with its own `swiotlb.strategy=`, the `.a` devices routed to lane 0 and the `.b`
/// devices to lane 1. Pass `[b, a]` to swap the sides: the instance built first (whose
/// pool comes first in guest memory) and the device copies (whose buffers do) then
/// belong to B.
pub fn ab_machine(machine: &Machine, [a, b]: [StrategyKind; 2], plan: &Plan) -> Machine {
    let one = |k: StrategyKind| BootConfig {
        strategy: Some(k.name().to_string()),
        routes: Vec::new(),
        ..machine.boot.clone()
    };
    let routes =
        plan.devices.iter().enumerate().map(|(i, d)| (d.device.name().to_string(), i % AB_SUFFIXES.len())).collect();
    Machine { lanes: Some(Lanes { configs: vec![one(a), one(b)], routes }), ..machine.clone() }
}

/// Runs `pair` (A, B) over every workload and thread count of `cfg`, `cfg.rounds` rounds
/// each: the results in [`CompareResults::ab`], with the clock cost taken out of the
/// timing. `report` is called with each finished result.
///
/// # Errors
/// The first [`RunError`].
pub fn run_ab(
    cfg: &CompareConfig,
    pair: [StrategyKind; 2],
    progress: &Progress,
    report: &mut dyn FnMut(&AbResult),
) -> Result<CompareResults, RunError> {
    let clock = ClockCost::measure(&SimGuest::with(PlatformKind::Plain, 1 << 20, 1));
    let ctor = AnyStrategy::<SimGuest>::from_boot;
    let tick = || progress.tick();
    let mut out = Vec::new();
    for &threads in &cfg.threads {
        for &w in &cfg.workloads {
            let plan = Arc::new(workload_plan(cfg, w, threads, cfg.limit).ab_split());
            let timing_plan = Arc::new(workload_plan(cfg, w, threads, cfg.timing_limit).ab_split());
            let machine = ab_machine(&cfg.machine, pair, &plan);
            let swapped = ab_machine(&cfg.machine, [pair[1], pair[0]], &plan);
            let platform = cfg.machine.platform.name();
            let meta = RunMeta { workload: w.name(), threads, platform, seed: cfg.seed, verified: cfg.verify };
            let mut rounds = Vec::with_capacity(cfg.rounds);
            let mut records = Vec::with_capacity(cfg.rounds);
            for round in 1..=cfg.rounds.max(1) {
                let what = format!("{}/{} · {w} · {threads} threads · round {round}", pair[0], pair[1]);
                progress.phase(format!("{what} · throughput"));
                let opts = PhaseOptions { verify: cfg.verify, ..PhaseOptions::default() };
                // Every other round the sides swap lanes and device copies, so where
                // a side's pool and buffers lie in guest memory (which moves copy times
                // by several percent) is not counted as a difference between them.
                let (machine, lanes) = if round % 2 == 0 { (&swapped, [1, 0]) } else { (&machine, [0, 1]) };
                let tp = run_phase(ctor, ROUTED, machine, &plan, cfg.limit, opts, &tick)?;
                progress.inc();
                progress.phase(format!("{what} · copy/metadata split"));
                let opts = PhaseOptions { timing: true, ..PhaseOptions::default() };
                let tm = run_phase(ctor, ROUTED, machine, &timing_plan, cfg.timing_limit, opts, &tick)?;
                progress.inc();
                rounds.push(lanes.map(|lane| AbSide::measure(&tp, &tm, lane, clock)));
                records.push(Record::from_phases(&meta, &tp, Some(&tm), clock));
            }
            let mut record = median_round(records);
            record.strategy = AB_ROW.to_string();
            let res = AbResult {
                a: pair[0].name().to_string(),
                b: pair[1].name().to_string(),
                workload: w.name().to_string(),
                threads,
                metrics: METRICS.iter().map(|&m| AbMetric::over(&rounds, m)).collect(),
                rounds,
                record,
            };
            report(&res);
            out.push(res);
        }
    }
    Ok(CompareResults { results: Vec::new(), copy_limit: Vec::new(), sweeps: Vec::new(), clock: Some(clock), ab: out })
}

const HEADERS: [&str; 5] = ["metric", "A median", "B median", "B/A median", "B/A spread"];

/// The heading line of a result: who is A, who is B, and the rounds.
pub fn heading(r: &AbResult) -> String {
    let devs: Vec<&str> = r.record.devices.iter().filter_map(|d| d.device.strip_suffix(AB_SUFFIXES[0])).collect();
    format!(
        "A = {}, B = {}, each on its own copy of {}; {} thread(s), {} round(s), B/A per round \
         (the sides swap instance order and device copies every other round)",
        r.a,
        r.b,
        devs.join(", "),
        r.threads,
        r.rounds.len()
    )
}

/// The plain-text A/B table.
pub fn text_table(r: &AbResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<18} {:>12} {:>12} {:>11} {:>13}",
        HEADERS[0], HEADERS[1], HEADERS[2], HEADERS[3], HEADERS[4]
    );
    for m in &r.metrics {
        let [name, a, b, ratio, spread] = m.cells();
        let _ = writeln!(out, "  {name:<18} {a:>12} {b:>12} {ratio:>11} {spread:>13}");
    }
    let _ =
        writeln!(out, "  (the sides share the threads: maps/s differs only by failed maps, speed shows in ns/pair)");
    if let Some(p) = &r.record.problem {
        let _ = writeln!(out, "PROBLEM {}: {p}", r.record.strategy);
    }
    out
}

/// The markdown A/B table.
pub fn markdown_table(r: &AbResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(out, "|{}", HEADERS.iter().map(|_| "---|").collect::<String>());
    for m in &r.metrics {
        let _ = writeln!(out, "| {} |", m.cells().join(" | "));
    }
    out
}
