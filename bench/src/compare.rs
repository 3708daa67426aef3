//! `bounce compare`: every selected strategy over every selected workload, the same op
//! streams for each, plus the copy-limit check and (for plots) a request-size sweep.

use std::cell::Cell;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bounce_framework::sim::{PlatformKind, SimGuest};
use bounce_framework::{BouncerOptions, DmaAttrs, DmaDirection, Strategy};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::{boot, run_phase, ClockCost, Ctor, Limit, Machine, PhaseOptions, PhaseResult, RunError};
use crate::record::{fill_ratios, Record, RunMeta};
use crate::registry::{self, Runnable, StrategyVisitor};
use crate::workload::{fixed_size_plan, Plan, Workload, STREAM_LEN};

/// Request sizes of the throughput-versus-size sweep.
pub const SWEEP_SIZES: [u32; 8] = [64, 512, 1500, 4096, 16_384, 65_536, 131_072, 258_048];

/// Bytes of the copy-limit check (an Ethernet MTU).
pub const COPY_LIMIT_SIZE: usize = 1500;

/// What to compare.
#[derive(Clone, Debug)]
pub struct CompareConfig {
    /// Strategies (and the `linux` reference row), baseline first when present.
    pub strategies: Vec<Runnable>,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Thread counts (one record per count).
    pub threads: Vec<usize>,
    /// The simulated machine.
    pub machine: Machine,
    /// Length of the throughput phase.
    pub limit: Limit,
    /// Length of the timing phase.
    pub timing_limit: Limit,
    /// Op-stream seed.
    pub seed: u64,
    /// Check data through the device model.
    pub verify: bool,
    /// Every map atomic: storage devices do not pass `DMA_ATTR_MAY_BLOCK` (see
    /// [`Plan::atomic`](crate::workload::Plan::atomic)).
    pub atomic: bool,
    /// Run the request-size sweep (for the throughput plot).
    pub sweep: bool,
    /// Run the 1500-byte copy-limit check.
    pub copy_limit: bool,
    /// Rounds per (strategy, workload, threads); strategies alternate within a round
    /// and the median round is reported.
    pub rounds: usize,
}

/// A point of the size sweep.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct SweepPoint {
    /// Request size, bytes.
    pub size: u32,
    /// Maps per second (all threads).
    pub maps_per_sec: f64,
    /// Bytes bounced per second.
    pub bytes_per_sec: f64,
    /// Maps that failed (any reason).
    pub failures: u64,
}

/// One strategy's (or the bare memcpy's) sweep.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sweep {
    /// Strategy name, or `memcpy`.
    pub strategy: String,
    /// Threads.
    pub threads: usize,
    /// Points by size.
    pub points: Vec<SweepPoint>,
}

/// The copy-limit check of one strategy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CopyLimit {
    /// Strategy name.
    pub strategy: String,
    /// Bytes per mapping.
    pub size: usize,
    /// Nanoseconds per map+unmap (`DMA_TO_DEVICE`: one copy of `size` bytes).
    pub map_unmap_ns: f64,
    /// Nanoseconds per bare `memcpy` of the same bytes.
    pub memcpy_ns: f64,
    /// `map_unmap_ns / memcpy_ns`.
    pub ratio: f64,
    /// Nanoseconds per `Strategy::reserve` + `find` + `release_found` of the same
    /// request, called directly: the strategy's own share. The rest,
    /// [`CopyLimit::framework_ns`], is the Bouncer's own work (checks, statistics,
    /// plumbing) plus what the copy costs beyond a hot memcpy when the strategy hands
    /// out a cold buffer (Linux's round-robin slot index walks the whole pool, so
    /// legacy's and the linux row's copies miss the cache; a per-CPU cache reuses hot
    /// buffers, so there the rest is the Bouncer's share).
    pub strategy_ns: f64,
}

impl CopyLimit {
    /// The rest of a map+unmap: neither the strategy's calls nor a hot memcpy (see
    /// [`CopyLimit::strategy_ns`]).
    pub fn framework_ns(&self) -> f64 {
        (self.map_unmap_ns - self.strategy_ns - self.memcpy_ns).max(0.0)
    }
}

/// Everything a compare run produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CompareResults {
    /// One record per (strategy, workload, threads).
    pub results: Vec<Record>,
    /// The copy-limit checks.
    pub copy_limit: Vec<CopyLimit>,
    /// The size sweeps (with `--out`).
    pub sweeps: Vec<Sweep>,
    /// The clock overhead taken out of the timing phases.
    pub clock: Option<ClockCost>,
    /// The A/B runs (`--ab`), one per (workload, threads).
    pub ab: Vec<crate::ab::AbResult>,
}

/// A progress bar on stderr that appears once a run has taken more than a second.
pub struct Progress {
    bar: ProgressBar,
    start: Instant,
    shown: Cell<bool>,
    enabled: bool,
}

impl Progress {
    /// A bar over `len` phases; `enabled: false` never draws.
    pub fn new(len: u64, enabled: bool) -> Self {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
                .expect("static progress template")
                .progress_chars("=> "),
        );
        Self { bar, start: Instant::now(), shown: Cell::new(false), enabled }
    }

    /// Called often while a phase runs.
    pub fn tick(&self) {
        if self.enabled && !self.shown.get() && self.start.elapsed() > Duration::from_secs(1) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown.set(true);
        }
        self.bar.tick();
    }

    /// Names the current phase.
    pub fn phase(&self, msg: String) {
        self.bar.set_message(msg);
        self.tick();
    }

    /// One phase done.
    pub fn inc(&self) {
        self.bar.inc(1);
    }

    /// Prints a block of text above the bar.
    pub fn println(&self, text: &str) {
        self.bar.suspend(|| println!("{text}"));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Measures one plan on each strategy it visits: a throughput phase, then a timing
/// phase for the copy/metadata split.
pub struct MeasurePlan<'a> {
    /// The machine.
    pub machine: &'a Machine,
    /// The throughput phase's plan.
    pub plan: Arc<Plan>,
    /// The timing phase's plan.
    pub timing_plan: Arc<Plan>,
    /// Length of the throughput phase.
    pub limit: Limit,
    /// Length of the timing phase.
    pub timing_limit: Limit,
    /// Check data through the device model.
    pub verify: bool,
    /// What the record is about.
    pub meta: RunMeta<'a>,
    /// The clock cost to take out of the timing.
    pub clock: ClockCost,
    /// Progress.
    pub progress: &'a Progress,
}

impl StrategyVisitor<SimGuest> for MeasurePlan<'_> {
    type Output = Result<Record, RunError>;

    fn visit<S: Strategy + 'static>(&mut self, name: &'static str, ctor: Ctor<S>) -> Self::Output {
        let p = self.progress;
        let tick = || p.tick();
        let what = format!("{name} · {} · {} threads", self.meta.workload, self.meta.threads);
        p.phase(format!("{what} · throughput"));
        let opts = PhaseOptions { verify: self.verify, ..PhaseOptions::default() };
        let a = run_phase(ctor, name, self.machine, &self.plan, self.limit, opts, &tick)?;
        p.inc();
        p.phase(format!("{what} · copy/metadata split"));
        let opts = PhaseOptions { timing: true, ..PhaseOptions::default() };
        let b = run_phase(ctor, name, self.machine, &self.timing_plan, self.timing_limit, opts, &tick)?;
        p.inc();
        Ok(Record::from_phases(&self.meta, &a, Some(&b), self.clock))
    }
}

fn stream_len(limit: Limit, threads: usize) -> usize {
    match limit {
        Limit::Ops(n) => (n.div_ceil(threads as u64) as usize).clamp(1, STREAM_LEN),
        Limit::Duration(_) | Limit::Streams => STREAM_LEN,
    }
}

/// The plan of workload `w` on `threads` threads for a phase of length `limit`, as
/// `cfg` asks for it (seed, `--atomic`).
pub fn workload_plan(cfg: &CompareConfig, w: Workload, threads: usize, limit: Limit) -> Plan {
    let plan = w.plan(threads, stream_len(limit, threads), cfg.seed, true);
    if cfg.atomic {
        plan.atomic()
    } else {
        plan
    }
}

/// Runs the comparison. `report` is called with the records of each finished workload
/// (for printing tables as they complete).
///
/// # Errors
/// The first [`RunError`].
pub fn compare(
    cfg: &CompareConfig,
    progress: &Progress,
    report: &mut dyn FnMut(&[Record]),
) -> Result<CompareResults, RunError> {
    let clock = ClockCost::measure(&SimGuest::with(PlatformKind::Plain, 1 << 20, 1));
    let mut all = Vec::new();
    for &threads in &cfg.threads {
        for &w in &cfg.workloads {
            let build = |limit| Arc::new(workload_plan(cfg, w, threads, limit));
            let (plan, timing_plan) = (build(cfg.limit), build(cfg.timing_limit));
            let platform = cfg.machine.platform.name();
            let meta = RunMeta { workload: w.name(), threads, platform, seed: cfg.seed, verified: cfg.verify };
            let mut v = MeasurePlan {
                machine: &cfg.machine,
                plan,
                timing_plan,
                limit: cfg.limit,
                timing_limit: cfg.timing_limit,
                verify: cfg.verify,
                meta,
                clock,
                progress,
            };
            let mut rounds: Vec<Vec<Record>> = vec![Vec::new(); cfg.strategies.len()];
            for _ in 0..cfg.rounds.max(1) {
                for (i, kind) in cfg.strategies.iter().enumerate() {
                    let rec = kind.visit(&mut v)?;
                    rounds[i].push(rec);
                }
            }
            let mut recs: Vec<Record> = rounds.into_iter().map(crate::record::median_round).collect();
            fill_ratios(&mut recs, registry::BASELINE.name());
            report(&recs);
            all.extend(recs);
        }
    }
    let mut copy_limit = Vec::new();
    if cfg.copy_limit {
        let memcpy_ns = memcpy_ns(COPY_LIMIT_SIZE);
        for kind in &cfg.strategies {
            progress.phase(format!("{kind} · copy limit ({COPY_LIMIT_SIZE} B)"));
            let iterations = match cfg.limit {
                Limit::Ops(n) => u32::try_from(n.clamp(1000, 50_000)).unwrap_or(50_000),
                Limit::Duration(_) | Limit::Streams => 50_000,
            };
            let mut v = CopyLimitVisitor { machine: &cfg.machine, iterations };
            let (ns, strategy_ns) = kind.visit(&mut v)?;
            copy_limit.push(CopyLimit {
                strategy: kind.name().to_string(),
                size: COPY_LIMIT_SIZE,
                map_unmap_ns: ns,
                memcpy_ns,
                ratio: ns / memcpy_ns,
                strategy_ns,
            });
            progress.inc();
        }
    }
    let mut sweeps = Vec::new();
    if cfg.sweep {
        let threads = cfg.threads.iter().copied().max().unwrap_or(1);
        let limit = match cfg.limit {
            Limit::Duration(d) => Limit::Duration((d / 8).max(Duration::from_millis(50))),
            Limit::Ops(n) => Limit::Ops((n / 8).max(64)),
            Limit::Streams => Limit::Streams,
        };
        for kind in &cfg.strategies {
            progress.phase(format!("{kind} · size sweep"));
            let mut v = SweepVisitor { machine: &cfg.machine, threads, limit, progress };
            let points = kind.visit(&mut v)?;
            sweeps.push(Sweep { strategy: kind.name().to_string(), threads, points });
            progress.inc();
        }
        let d = match limit {
            Limit::Duration(d) => d,
            Limit::Ops(_) | Limit::Streams => Duration::from_millis(20),
        };
        let points = SWEEP_SIZES
            .iter()
            .map(|&size| {
                let bps = memcpy_rate(size as usize, threads, d);
                SweepPoint { size, maps_per_sec: bps / f64::from(size), bytes_per_sec: bps, failures: 0 }
            })
            .collect();
        sweeps.push(Sweep { strategy: "memcpy".into(), threads, points });
    }
    Ok(CompareResults { results: all, copy_limit, sweeps, clock: Some(clock), ab: Vec::new() })
}

/// Progress-bar length of a compare run.
pub fn phase_count(cfg: &CompareConfig) -> u64 {
    let s = cfg.strategies.len() as u64;
    let mut n = s * cfg.workloads.len() as u64 * cfg.threads.len() as u64 * 2 * cfg.rounds.max(1) as u64;
    if cfg.copy_limit {
        n += s;
    }
    if cfg.sweep {
        n += s;
    }
    n
}

struct CopyLimitVisitor<'a> {
    machine: &'a Machine,
    iterations: u32,
}

impl StrategyVisitor<SimGuest> for CopyLimitVisitor<'_> {
    type Output = Result<(f64, f64), RunError>;

    fn visit<S: Strategy + 'static>(&mut self, name: &'static str, ctor: Ctor<S>) -> Self::Output {
        let plan = fixed_size_plan(COPY_LIMIT_SIZE as u32, 1, 1, true);
        let bouncer = boot(ctor, name, self.machine, &plan, BouncerOptions::default())?;
        let total = map_unmap_ns(&*bouncer, COPY_LIMIT_SIZE, self.iterations);
        Ok((total, reserve_release_ns(&*bouncer, COPY_LIMIT_SIZE, self.iterations)))
    }
}

/// Single-thread, hot-cache nanoseconds per `Strategy::reserve` + `find` +
/// `release_found` of the request a `size`-byte map makes (the strategy calls a map and
/// an unmap make), best of five rounds of `n` pairs: the strategy alone, without the
/// Bouncer and the copy.
pub fn reserve_release_ns<S: Strategy>(bouncer: &bounce_framework::Bouncer<SimGuest, S>, size: usize, n: u32) -> f64 {
    let guest = bouncer.platform().clone();
    let orig = guest.alloc_private(size).expect("guest memory for the copy-limit buffer");
    let s = bouncer.strategy();
    let round = || {
        let t = Instant::now();
        for _ in 0..n {
            let req = bounce_framework::Request::new(orig, size, bounce_framework::Platform::current_cpu(&guest));
            if let Ok(r) = s.reserve(std::hint::black_box(&req)) {
                if let Ok(found) = s.find(std::hint::black_box(r.addr)) {
                    let _ = s.release_found(&found, req.cpu);
                }
            }
        }
        t.elapsed().as_nanos() as f64 / f64::from(n)
    };
    round();
    (0..5).map(|_| round()).fold(f64::MAX, f64::min)
}

/// Single-thread, hot-cache nanoseconds per `map_single` + `unmap_single` of `size`
/// bytes `DMA_TO_DEVICE` (one copy), best of five rounds of `n` pairs.
pub fn map_unmap_ns<S: Strategy>(bouncer: &bounce_framework::Bouncer<SimGuest, S>, size: usize, n: u32) -> f64 {
    let guest = bouncer.platform().clone();
    let orig = guest.alloc_private(size).expect("guest memory for the copy-limit buffer");
    let mut dev = bounce_framework::Device::new("copy-limit");
    bouncer.attach(&mut dev);
    let round = || {
        let t = Instant::now();
        for _ in 0..n {
            let dma = bouncer.map_single(&dev, orig, size, DmaDirection::ToDevice, DmaAttrs::empty());
            if let Ok(dma) = dma {
                let _ = bouncer.unmap_single(&dev, dma, size, DmaDirection::ToDevice, DmaAttrs::empty());
            }
        }
        t.elapsed().as_nanos() as f64 / f64::from(n)
    };
    round();
    (0..5).map(|_| round()).fold(f64::MAX, f64::min)
}

/// Nanoseconds per bare `memcpy` of `size` hot bytes, best of five rounds.
pub fn memcpy_ns(size: usize) -> f64 {
    const N: u32 = 200_000;
    let src = vec![0x5au8; size];
    let mut dst = vec![0u8; size];
    let mut round = || {
        let t = Instant::now();
        for _ in 0..N {
            std::hint::black_box(&mut dst).copy_from_slice(std::hint::black_box(&src));
        }
        t.elapsed().as_nanos() as f64 / f64::from(N)
    };
    round();
    (0..5).map(|_| round()).fold(f64::MAX, f64::min)
}

/// Bytes per second `threads` threads copy with bare `memcpy` of `size`-byte buffers
/// (32 buffers per thread, as deep as the sweep's queues).
pub fn memcpy_rate(size: usize, threads: usize, dur: Duration) -> f64 {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            thread::spawn(move || {
                // Both buffers written once, so no page is faulted in while timed.
                let src = vec![0x5au8; size * 32];
                let mut dst = vec![0xa5u8; size * 32];
                let start = Instant::now();
                let mut bytes = 0u64;
                let mut i = 0;
                while start.elapsed() < dur {
                    for _ in 0..64 {
                        let o = (i % 32) * size;
                        std::hint::black_box(&mut dst[o..o + size]).copy_from_slice(&src[o..o + size]);
                        i += 1;
                        bytes += size as u64;
                    }
                }
                bytes as f64 / start.elapsed().as_secs_f64()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
}

struct SweepVisitor<'a> {
    machine: &'a Machine,
    threads: usize,
    limit: Limit,
    progress: &'a Progress,
}

impl StrategyVisitor<SimGuest> for SweepVisitor<'_> {
    type Output = Result<Vec<SweepPoint>, RunError>;

    fn visit<S: Strategy + 'static>(&mut self, name: &'static str, ctor: Ctor<S>) -> Self::Output {
        let mut pts = Vec::new();
        for &size in &SWEEP_SIZES {
            let plan = Arc::new(fixed_size_plan(size, self.threads, 32, true));
            let p = self.progress;
            let r: PhaseResult =
                run_phase(ctor, name, self.machine, &plan, self.limit, PhaseOptions::default(), &|| p.tick())?;
            let secs = r.wall.as_secs_f64().max(1e-9);
            pts.push(SweepPoint {
                size,
                maps_per_sec: r.maps as f64 / secs,
                bytes_per_sec: r.snapshot.bytes_to_bounce as f64 / secs,
                failures: r.snapshot.total_failures(),
            });
        }
        Ok(pts)
    }
}
