//! The command line (clap) and the subcommands' drivers.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bounce_framework::sim::PlatformKind;
use bounce_framework::DmaDirection;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::compare::{compare, phase_count, CompareConfig, CompareResults, Progress};
use crate::engine::{ClockCost, Limit, Machine};
use crate::mapbench::{self, MapBench, Params};
use crate::record::{fill_ratios, Record, RunMeta};
use crate::registry::{self, Runnable, StrategyKind};
use crate::replay::{parse_trace, plan_from_trace, Recorder, ReplayOptions};
use crate::report::{self, ReportContext};
use crate::stress::{Sabotage, StressConfig, StressDoc};
use crate::workload::Workload;

/// `bounce`: compare DMA bounce-buffer strategies on a simulated confidential guest.
#[derive(Debug, Parser)]
#[command(name = "bounce", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run strategies over workloads and compare throughput, latency, copy vs metadata
    /// time, shared memory and failures.
    Compare(CompareArgs),
    /// Replay a `swiotlb_bounced` ftrace trace over the strategies.
    Replay(ReplayArgs),
    /// The kernel's `dma_map_benchmark` on the simulated guest (same flags and output).
    #[command(name = "map-bench")]
    MapBench(MapBenchArgs),
    /// Record a sample `swiotlb_bounced` trace of a workload on the simulator.
    Record(RecordArgs),
    /// Run strategies under full-rate concurrent load, checking every byte through the
    /// device model, then audit them (PASS/FAIL).
    Stress(StressArgs),
    /// List the strategies and workloads.
    List(ListArgs),
}

/// `bounce list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print only the strategies' boot names, one per line (for scripts: the registry
    /// in `bounce-strategies` is the one list).
    #[arg(long)]
    pub names: bool,
}

/// The simulated platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlatformArg {
    /// No memory encryption: conversions cost nothing.
    Plain,
    /// Intel TDX: 20 µs per conversion call + 1 µs per page to shared, 8 µs per page back.
    Tdx,
    /// AMD SEV-SNP: 5 µs per 64-entry Page State Change + 1.5 µs per page.
    Snp,
}

impl PlatformArg {
    /// The simulator's kind.
    pub const fn kind(self) -> PlatformKind {
        match self {
            Self::Plain => PlatformKind::Plain,
            Self::Tdx => PlatformKind::Tdx,
            Self::Snp => PlatformKind::Snp,
        }
    }
}

/// Mapping direction for replays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirArg {
    /// `DMA_BIDIRECTIONAL`: copied in on map and out on unmap.
    Bidirectional,
    /// `DMA_TO_DEVICE`.
    ToDevice,
    /// `DMA_FROM_DEVICE`.
    FromDevice,
}

impl DirArg {
    fn dir(self) -> DmaDirection {
        match self {
            Self::Bidirectional => DmaDirection::Bidirectional,
            Self::ToDevice => DmaDirection::ToDevice,
            Self::FromDevice => DmaDirection::FromDevice,
        }
    }
}

/// Parses a duration: a number with `ns`, `us`, `ms`, `s` or `m` (`1.5s`, `500ms`).
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration (e.g. 1s, 500ms, 2.5s)"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "" => 1.0,
        "m" | "min" => 60.0,
        other => return Err(format!("unknown unit `{other}` in `{s}` (use ns, us, ms, s or m)")),
    };
    let secs = v * scale;
    if !(secs > 0.0 && secs < 86_400.0) {
        return Err(format!("`{s}` must be more than zero and less than a day"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a byte size with an optional K/M/G suffix (kernel `memparse`).
///
/// # Errors
/// A message when malformed or zero.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let v = bounce_framework::cmdline::parse_size(s).ok_or_else(|| format!("`{s}` is not a size (e.g. 2G, 512M)"))?;
    if v < 64 << 20 {
        return Err(format!("`{s}`: the guest needs at least 64M"));
    }
    usize::try_from(v).map_err(|_| format!("`{s}` is too large"))
}

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=256).contains(&n) => Ok(n),
        _ => Err(format!("`{s}`: threads must be a number from 1 to 256")),
    }
}

fn parse_min_align(s: &str) -> Result<(String, u64), String> {
    let (name, mask) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected DEVICE=MASK, e.g. nvme0=0xfff"))?;
    let mask = bounce_framework::cmdline::parse_ulong(mask).ok_or_else(|| format!("`{mask}` is not a number"))?;
    if mask.checked_add(1).is_none_or(|m| !m.is_power_of_two()) {
        return Err(format!("`{s}`: the mask must be 2^n - 1"));
    }
    Ok((name.to_string(), mask))
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// Options shared by `compare` and `replay`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Strategies to run, comma-separated, `linux` for Linux 6.12's own swiotlb
    /// compiled from its source (a reference row), and `routed` for --cmdline's
    /// per-device routes (the other rows run unrouted) [default: all, with `linux` when
    /// this build has it; only `routed` when --cmdline has routes].
    #[arg(long, short = 's', value_delimiter = ',', value_parser = registry::parse_runnable)]
    pub strategies: Vec<Runnable>,
    /// The simulated platform; conversions spin for real so they cost throughput.
    #[arg(long, value_enum, default_value_t = PlatformArg::Tdx)]
    pub platform: PlatformArg,
    /// Guest RAM (strategies size their default pools from it, e.g. legacy's 6 %).
    #[arg(long, value_parser = parse_bytes, default_value = "2G")]
    pub memory: usize,
    /// Boot command line for the strategies, e.g. "swiotlb=65536 swiotlb.dynamic.cap=64M".
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Check every mapping's data through the simulated device (slower).
    #[arg(long)]
    pub verify: bool,
    /// Map everything in atomic context: storage devices (NVMe, AHCI, virtio-blk) do
    /// not pass `DMA_ATTR_MAY_BLOCK`, so a map that finds no free buffer fails instead of
    /// waiting for the refill engine
    #[arg(long)]
    pub atomic: bool,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write report.md and SVG plots into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Never draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// `bounce compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Shared run options.
    #[command(flatten)]
    pub run: RunArgs,
    /// Workloads, comma-separated [default: all].
    #[arg(long, short = 'w', value_delimiter = ',', value_enum)]
    pub workload: Vec<Workload>,
    /// Worker threads; a comma-separated list runs each count [default: the CPU count].
    #[arg(long, short = 't', value_delimiter = ',', value_parser = parse_threads)]
    pub threads: Vec<usize>,
    /// How long each strategy runs each workload (e.g. 1s, 500ms).
    #[arg(long, short = 'd', value_parser = parse_duration, default_value = "1s", conflicts_with = "ops")]
    pub duration: Duration,
    /// Run a fixed number of map requests instead of a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,
    /// Seed of the op streams (the same seed gives every strategy the same ops).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Skip the 1500-byte map+unmap vs memcpy check.
    #[arg(long)]
    pub no_copy_limit: bool,
    /// Run every (strategy, workload, threads) this many times, strategies alternating,
    /// and report the median round (for noisy machines) [default: 1; with --ab: 5].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub rounds: Option<u32>,
    /// A/B in one guest: two strategies, A,B (the same twice is an A/A run), each its own
    /// instance, running the workload at the same time. Every device is split into two
    /// identical copies, `<device>.a` on A and `<device>.b` on B, each issued the same
    /// half of the device's requests with half its queue depth; the table shows each
    /// side's median over the rounds (maps/s, metadata and copy ns per map+unmap,
    /// failures, in-flight and shared-memory peaks), the median B/A ratio and its spread
    /// (lowest..highest round). The sides share the threads, so their maps/s differ only
    /// by failed maps: speed shows in the ns columns. Not with --strategies or with
    /// swiotlb.strategy= in --cmdline.
    #[arg(long, value_name = "A,B", value_delimiter = ',', value_parser = registry::parse_strategy, conflicts_with = "strategies")]
    pub ab: Vec<StrategyKind>,
}

/// `bounce replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The trace: `swiotlb_bounced` lines as printed by ftrace, or bare tracepoint lines.
    pub file: PathBuf,
    /// Shared run options.
    #[command(flatten)]
    pub run: RunArgs,
    /// Mappings in flight per device and thread before the oldest is unmapped.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub inflight: u32,
    /// Worker threads; events go to thread `traced CPU % threads`.
    #[arg(long, short = 't', default_value_t = 1, value_parser = parse_threads)]
    pub threads: usize,
    /// Direction of every mapping (the tracepoint does not record it).
    #[arg(long, value_enum, default_value_t = DirArg::Bidirectional)]
    pub dir: DirArg,
    /// Replay the trace this many times.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub repeat: u32,
    /// Count and skip malformed lines instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// A device's `min_align_mask`, DEVICE=MASK (devices named nvme* default to 0xfff).
    #[arg(long, value_parser = parse_min_align)]
    pub min_align_mask: Vec<(String, u64)>,
}

/// `bounce map-bench`: flags as `dma_map_benchmark`.
#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct MapBenchArgs {
    /// Threads mapping in parallel (1-1024).
    #[arg(short = 't', default_value_t = 1, allow_negative_numbers = true)]
    pub threads: i64,
    /// Seconds to run (1-300).
    #[arg(short = 's', default_value_t = 20, allow_negative_numbers = true)]
    pub seconds: i64,
    /// NUMA node (-1: none; the simulated guest has node 0 only).
    #[arg(short = 'n', default_value_t = -1, allow_negative_numbers = true)]
    pub node: i64,
    /// DMA mask bits (20-64).
    #[arg(short = 'b', default_value_t = 32, allow_negative_numbers = true)]
    pub bits: i64,
    /// Direction: 0 bidirectional, 1 to device, 2 from device.
    #[arg(short = 'd', default_value_t = 0, allow_negative_numbers = true)]
    pub dir: i64,
    /// Nanoseconds of pretend DMA transfer between map and unmap (0-10000000).
    #[arg(short = 'x', default_value_t = 0, allow_negative_numbers = true)]
    pub xdelay: i64,
    /// Pages per mapping (1-1024).
    #[arg(short = 'g', default_value_t = 1, allow_negative_numbers = true)]
    pub granule: i64,
    /// The strategy to benchmark, or `linux` for Linux's own swiotlb compiled from its
    /// source (not in the kernel tool).
    #[arg(long, value_parser = registry::parse_runnable, default_value = "legacy")]
    pub strategy: Runnable,
    /// The simulated platform (not in the kernel tool).
    #[arg(long, value_enum, default_value_t = PlatformArg::Tdx)]
    pub platform: PlatformArg,
    /// Run this long instead of -s, which still sets the printed seconds (not in the
    /// kernel tool; for quick checks).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Guest RAM.
    #[arg(long, value_parser = parse_bytes, default_value = "2G")]
    pub memory: usize,
    /// Boot command line for the strategy.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Also print nanosecond averages and the loop count (after the tool's lines).
    #[arg(long)]
    pub detail: bool,
}

/// `bounce record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The workload to record.
    #[arg(long, short = 'w', value_enum, default_value_t = Workload::Mixed)]
    pub workload: Workload,
    /// The strategy that serves the mappings.
    #[arg(long, value_parser = registry::parse_strategy, default_value = "legacy")]
    pub strategy: StrategyKind,
    /// Maps to record.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub ops: u64,
    /// Simulated CPUs the maps are spread over.
    #[arg(long, default_value_t = 2, value_parser = parse_threads)]
    pub cpus: usize,
    /// Seed of the op streams.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the trace (stdout without).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// The simulated platform.
    #[arg(long, value_enum, default_value_t = PlatformArg::Tdx)]
    pub platform: PlatformArg,
}

/// `bounce stress`.
#[derive(Debug, Args)]
pub struct StressArgs {
    /// A strategy to run (repeat or comma-separate) [default: the one `swiotlb.strategy=`
    /// in --cmdline names, else all].
    #[arg(long = "strategy", short = 's', alias = "strategies", value_delimiter = ',', value_parser = registry::parse_strategy)]
    pub strategies: Vec<StrategyKind>,
    /// How long each strategy runs (e.g. 30, 30s, 500ms).
    #[arg(long, short = 'd', value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Worker threads, one per simulated CPU [default: the CPU count, at least 2].
    #[arg(long, short = 't', value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// The simulated platform; conversions spin for real.
    #[arg(long, value_enum, default_value_t = PlatformArg::Tdx)]
    pub platform: PlatformArg,
    /// Seed of the op streams and of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Inject conversion and allocation failures in bursts (exercises quarantine).
    #[arg(long)]
    pub faults: bool,
    /// Guest RAM (grown when the workers' own buffers need it).
    #[arg(long, value_parser = parse_bytes, default_value = "2G")]
    pub memory: usize,
    /// Boot command line for the strategies, e.g. `swiotlb.dynamic.idle_ms=50`.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Write the figures as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// A deliberate bug, to prove the checker catches it (for the test suite).
    #[arg(long, value_enum, hide = true)]
    pub sabotage: Option<Sabotage>,
}

/// A failed command: the message and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// What to print.
    pub message: String,
    /// Exit status.
    pub code: u8,
}

macro_rules! failure_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                Self { message: e.to_string(), code: 1 }
            }
        }
    )*};
}
failure_from!(String, crate::engine::RunError, crate::mapbench::MapBenchError, crate::plot::PlotError);

fn machine(platform: PlatformArg, memory: usize, cmdline: &str) -> Result<Machine, Failure> {
    let boot = registry::parse_cmdline(cmdline).map_err(|e| Failure { message: format!("--cmdline: {e}"), code: 2 })?;
    Ok(Machine { platform: platform.kind(), memory, boot, lanes: None })
}

/// `v`, baseline first (so ratios and tables read top-down), each once.
fn baseline_first<T: Copy + PartialEq>(mut v: Vec<T>, is_baseline: impl Fn(T) -> bool) -> Vec<T> {
    v.sort_by_key(|k| !is_baseline(*k));
    let mut seen = Vec::with_capacity(v.len());
    v.retain(|k| {
        let new = !seen.contains(k);
        seen.push(*k);
        new
    });
    v
}

/// The registry's strategies `v` names, or all of them.
fn strategies_or_all(v: &[StrategyKind]) -> Vec<StrategyKind> {
    let s = if v.is_empty() { StrategyKind::ALL.to_vec() } else { v.to_vec() };
    baseline_first(s, |k| k == registry::BASELINE)
}

/// What `v` names, or every strategy and the `linux` row; prints one line when the
/// `linux` row is left out because this build lacks the Linux source.
fn runnables_or_all(v: &[Runnable]) -> Vec<Runnable> {
    let s = if v.is_empty() {
        let (all, note) = Runnable::all();
        if let Some(note) = note {
            println!("{note}");
        }
        all
    } else {
        v.to_vec()
    };
    baseline_first(s, Runnable::is_baseline)
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn problems(res: &CompareResults) -> Vec<String> {
    res.results
        .iter()
        .chain(res.ab.iter().map(|r| &r.record))
        .filter_map(|r| r.problem.as_ref().map(|p| format!("{} on {}: {p}", r.strategy, r.workload)))
        .collect()
}

fn write_outputs(
    run: &RunArgs,
    res: &CompareResults,
    targets: &[report::Target],
    descriptions: Vec<(String, String)>,
    settings: Vec<String>,
) -> Result<(), Failure> {
    let cmd = command_line();
    if let Some(path) = &run.json {
        report::write_json(path, &cmd, res, targets).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &run.out {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let plots = write_plots(dir, res, run.platform)?;
        let ctx = ReportContext { command: cmd, workloads: descriptions, plots, settings };
        let md = dir.join("report.md");
        report::write_markdown(&md, res, targets, &ctx).map_err(|e| format!("writing {}: {e}", md.display()))?;
        eprintln!("wrote {} and {} plots", md.display(), ctx.plots.len());
    }
    Ok(())
}

fn write_plots(dir: &Path, res: &CompareResults, platform: PlatformArg) -> Result<Vec<(String, String)>, Failure> {
    let mut plots = Vec::new();
    if !res.sweeps.is_empty() {
        let f = "throughput_vs_size.svg";
        crate::plot::throughput_vs_size(&dir.join(f), &res.sweeps, platform.kind().name())?;
        plots.push((f.to_string(), "Throughput vs request size".to_string()));
    }
    let mut groups: Vec<(String, usize)> = res.results.iter().map(|r| (r.workload.clone(), r.threads)).collect();
    groups.dedup();
    let multi = groups.iter().map(|g| g.1).collect::<std::collections::BTreeSet<_>>().len() > 1;
    for (w, t) in groups {
        let group: Vec<&Record> = res.results.iter().filter(|r| r.workload == w && r.threads == t).collect();
        let stem: String = w.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let stem = if multi { format!("{stem}_{t}t") } else { stem };
        let f = format!("latency_cdf_{stem}.svg");
        crate::plot::latency_cdf(&dir.join(&f), &w, &group)?;
        plots.push((f, format!("Latency CDF: {w} ({t} threads)")));
        let f = format!("shared_memory_{stem}.svg");
        crate::plot::shared_over_time(&dir.join(&f), &w, &group)?;
        plots.push((f, format!("Shared memory over time: {w} ({t} threads)")));
    }
    Ok(plots)
}

/// The `--ab` pair, checked against the rest of the command line (usage errors, exit 2).
fn ab_pair(a: &CompareArgs, machine: &Machine) -> Result<Option<[StrategyKind; 2]>, Failure> {
    if a.ab.is_empty() {
        return Ok(None);
    }
    let usage = |message: String| Failure { message, code: 2 };
    let &[x, y] = a.ab.as_slice() else {
        return Err(usage(format!(
            "--ab takes exactly two strategy names, A,B (e.g. --ab legacy,magazine, or --ab magazine,magazine for an A/A run), not {}",
            a.ab.len()
        )));
    };
    if !machine.boot.routes.is_empty() {
        return Err(usage(
            "--ab routes the devices itself (<device>.a to A, <device>.b to B); drop the device routes from --cmdline's swiotlb.strategy=".into(),
        ));
    }
    if let Some(s) = &machine.boot.strategy {
        return Err(usage(format!("--ab names both strategies; drop swiotlb.strategy={s} from --cmdline")));
    }
    Ok(Some([x, y]))
}

fn run_compare(a: &CompareArgs) -> Result<(), Failure> {
    let machine = machine(a.run.platform, a.run.memory, &a.run.cmdline)?;
    let ab = ab_pair(a, &machine)?;
    // Per-device routes on --cmdline (or --ab's own): the routed row (every device
    // through its strategy), unless rows are named.
    let strategies = if ab.is_some() || (!machine.boot.routes.is_empty() && a.run.strategies.is_empty()) {
        vec![Runnable::Routed]
    } else {
        runnables_or_all(&a.run.strategies)
    };
    let mut workloads = if a.workload.is_empty() { Workload::ALL.to_vec() } else { a.workload.clone() };
    workloads.dedup();
    let mut threads = if a.threads.is_empty() { vec![default_threads()] } else { a.threads.clone() };
    threads.dedup();
    let (limit, timing_limit) = match a.ops {
        Some(n) => (Limit::Ops(n), Limit::Ops(n)),
        None => (Limit::Duration(a.duration), Limit::Duration((a.duration / 4).max(Duration::from_millis(100)))),
    };
    let default_rounds = if ab.is_some() { crate::ab::AB_ROUNDS } else { 1 };
    let cfg = CompareConfig {
        strategies,
        workloads,
        threads,
        machine,
        limit,
        timing_limit,
        seed: a.seed,
        verify: a.run.verify,
        atomic: a.run.atomic,
        // The sweep and the copy limit measure one strategy at a time: not A/B.
        sweep: ab.is_none() && a.run.out.is_some(),
        copy_limit: ab.is_none() && !a.no_copy_limit,
        rounds: a.rounds.map_or(default_rounds, |r| r as usize),
    };
    let progress = Progress::new(phase_count(&cfg), !a.run.no_progress && std::io::stderr().is_terminal());
    let mut print = |recs: &[Record]| {
        if let Some(r) = recs.first() {
            let desc = cfg.workloads.iter().find(|w| w.name() == r.workload).map_or("", |w| w.description());
            progress.println(&format!("\n== {} == {desc}\n{}", r.workload, report::text_table(recs)));
            if let Some(t) = report::device_table(recs) {
                progress.println(&t);
            }
        }
    };
    let mut print_ab = |r: &crate::ab::AbResult| {
        let devices = report::device_table(std::slice::from_ref(&r.record)).unwrap_or_default();
        let (heading, table) = (crate::ab::heading(r), crate::ab::text_table(r));
        let text = format!("\n== {} == A/B in one guest: {heading}\n{table}{devices}", r.workload);
        progress.println(text.trim_end());
    };
    let res = match ab {
        Some(pair) => crate::ab::run_ab(&cfg, pair, &progress, &mut print_ab)?,
        None => compare(&cfg, &progress, &mut print)?,
    };
    progress.finish();
    if !res.copy_limit.is_empty() {
        println!(
            "\n== copy limit == map+unmap of {} B (DMA_TO_DEVICE, one thread, hot cache) vs a bare memcpy",
            res.copy_limit[0].size
        );
        for c in &res.copy_limit {
            println!(
                "  {:<10} {:>8.1} ns vs memcpy {:>6.1} ns = {:.2}x   (strategy reserve+find+release {:.1} ns, rest {:.1} ns)",
                c.strategy,
                c.map_unmap_ns,
                c.memcpy_ns,
                c.ratio,
                c.strategy_ns,
                c.framework_ns()
            );
        }
    }
    // The targets are about strategies each on its own: not measured by an A/B run.
    let targets = if ab.is_some() { Vec::new() } else { report::targets(&res) };
    if let Some(c) = res.clock {
        println!("\n{}", report::clock_text(&c));
    }
    if ab.is_none() {
        println!("\n== targets ==\n{}", report::targets_text(&targets));
    }
    let descriptions = cfg.workloads.iter().map(|w| (w.name().to_string(), w.description().to_string())).collect();
    let mut settings = vec![
        format!("platform: {} (conversions spin for real)", a.run.platform.kind().name()),
        format!("guest RAM: {} (grown when a workload's own buffers need it)", report::bytes(a.run.memory as u64)),
        format!(
            "threads: {:?}; seed {}; {}; {} round(s), the median reported",
            cfg.threads,
            cfg.seed,
            describe_limits(cfg.limit, cfg.timing_limit),
            cfg.rounds
        ),
        if a.run.cmdline.trim().is_empty() {
            "boot command line: none (every strategy's documented defaults)".to_string()
        } else {
            format!("boot command line: `{}`", a.run.cmdline)
        },
        format!("data verified through the device model: {}", if cfg.verify { "yes" } else { "no (use --verify)" }),
    ];
    if let Some([x, y]) = ab {
        settings.push(format!(
            "A/B in one guest: A = {x} (lane 0, the .a copy of every device), B = {y} (lane 1, the .b copies), each copy half of its device's requests"
        ));
    }
    if let Some(c) = res.clock {
        settings.push(report::clock_text(&c));
    }
    write_outputs(&a.run, &res, &targets, descriptions, settings)?;
    finish(&res)
}

fn describe_limits(limit: Limit, timing: Limit) -> String {
    let one = |l: Limit| match l {
        Limit::Duration(d) => format!("{d:?}"),
        Limit::Ops(n) => format!("{n} map requests"),
        Limit::Streams => "each stream once".to_string(),
    };
    format!("{} per strategy and workload (timing phase: {})", one(limit), one(timing))
}

fn finish(res: &CompareResults) -> Result<(), Failure> {
    let p = problems(res);
    if p.is_empty() {
        Ok(())
    } else {
        Err(Failure { message: format!("{} run(s) found problems:\n  {}", p.len(), p.join("\n  ")), code: 1 })
    }
}

fn run_replay(a: &ReplayArgs) -> Result<(), Failure> {
    let text = std::fs::read_to_string(&a.file).map_err(|e| format!("reading {}: {e}", a.file.display()))?;
    let trace = parse_trace(&text, a.skip_bad).map_err(|e| format!("{}: {e}", a.file.display()))?;
    if !trace.bad.is_empty() {
        eprintln!("skipped {} malformed line(s); first: {}", trace.bad.len(), trace.bad[0]);
    }
    if trace.events.is_empty() {
        return Err(Failure { message: format!("{}: no swiotlb_bounced events", a.file.display()), code: 1 });
    }
    let stem = a.file.file_stem().map_or_else(|| "trace".into(), |s| s.to_string_lossy().into_owned());
    let name = format!("replay:{stem}");
    let opts = ReplayOptions {
        threads: a.threads,
        inflight: a.inflight as usize,
        dir: a.dir.dir(),
        repeat: a.repeat as usize,
        min_align: a.min_align_mask.clone(),
    };
    let plan = Arc::new(
        plan_from_trace(&name, &trace, &opts)
            .map_err(|e| Failure { message: format!("{}: {e}", a.file.display()), code: 1 })?,
    );
    println!(
        "{}: {} events on {} device(s) ({} comment lines, {} other events, {} malformed skipped), replayed {}x with {} in flight per device and thread",
        a.file.display(),
        trace.events.len(),
        plan.devices.len(),
        trace.comments,
        trace.other_events,
        trace.bad.len(),
        a.repeat,
        a.inflight
    );
    let strategies = runnables_or_all(&a.run.strategies);
    let machine = machine(a.run.platform, a.run.memory, &a.run.cmdline)?;
    let progress = Progress::new(strategies.len() as u64 * 2, !a.run.no_progress && std::io::stderr().is_terminal());
    let clock = ClockCost::measure(&bounce_framework::sim::SimGuest::with(PlatformKind::Plain, 1 << 20, 1));
    let limit = Limit::Streams;
    let meta = RunMeta {
        workload: &name,
        threads: a.threads,
        platform: a.run.platform.kind().name(),
        seed: 0,
        verified: a.run.verify,
    };
    let mut records = Vec::new();
    for s in &strategies {
        let mut v = crate::compare::MeasurePlan {
            machine: &machine,
            plan: plan.clone(),
            timing_plan: plan.clone(),
            limit,
            timing_limit: limit,
            verify: a.run.verify,
            meta: meta.clone(),
            clock,
            progress: &progress,
        };
        records.push(s.visit(&mut v)?);
    }
    fill_ratios(&mut records, registry::BASELINE.name());
    progress.finish();
    println!("\n== {name} ==\n{}", report::text_table(&records));
    let results = CompareResults {
        results: records,
        copy_limit: Vec::new(),
        sweeps: Vec::new(),
        clock: Some(clock),
        ab: Vec::new(),
    };
    let settings = vec![
        format!("trace: {} ({} events)", a.file.display(), trace.events.len()),
        format!("platform: {}", a.run.platform.kind().name()),
        format!("in flight per device and thread: {}; threads: {}; direction: {}", a.inflight, a.threads, a.dir.dir()),
    ];
    let desc = vec![(
        name.clone(),
        format!("Replay of {} with {} mappings in flight per device.", a.file.display(), a.inflight),
    )];
    write_outputs(&a.run, &results, &[], desc, settings)?;
    finish(&results)
}

fn run_map_bench(a: &MapBenchArgs) -> Result<(), Failure> {
    let p = Params {
        threads: a.threads,
        seconds: a.seconds,
        node: a.node,
        bits: a.bits,
        dir: a.dir,
        xdelay: a.xdelay,
        granule: a.granule,
    };
    mapbench::validate(&p).map_err(|e| Failure { message: e.to_string(), code: 1 })?;
    let machine = machine(a.platform, a.memory, &a.cmdline)?;
    let duration = a.duration.unwrap_or(Duration::from_secs(p.seconds.unsigned_abs()));
    let mut v = MapBench { machine: &machine, params: p, duration };
    let out = a.strategy.visit(&mut v)?;
    for l in out.lines(&p) {
        println!("{l}");
    }
    if a.detail {
        let s = out.sums;
        let n = s.loops.max(1) as f64;
        println!(
            "bounce: strategy:{} loops:{} average map latency(ns):{:.1} average unmap latency(ns):{:.1}",
            a.strategy,
            s.loops,
            s.map_ns as f64 / n,
            s.unmap_ns as f64 / n
        );
    }
    Ok(())
}

fn run_record(a: &RecordArgs) -> Result<(), Failure> {
    let machine = machine(a.platform, 2 << 30, "")?;
    let plan = Arc::new(a.workload.plan(a.cpus, 4096, a.seed, true));
    let mut v = Recorder { machine: &machine, plan, ops: a.ops as usize };
    let lines = a.strategy.visit(&mut v)?;
    let text = lines.join("\n") + "\n";
    match &a.output {
        Some(p) => {
            std::fs::write(p, text).map_err(|e| format!("writing {}: {e}", p.display()))?;
            eprintln!("wrote {} lines to {}", lines.len(), p.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn run_stress(a: &StressArgs) -> Result<(), Failure> {
    let machine = machine(a.platform, a.memory, &a.cmdline)?;
    let named = match (a.strategies.is_empty(), machine.boot.strategy.as_deref()) {
        (true, Some(n)) => vec![registry::parse_strategy(n).map_err(|message| Failure { message, code: 2 })?],
        _ => a.strategies.clone(),
    };
    let strategies = strategies_or_all(&named);
    let cfg = StressConfig {
        machine,
        duration: a.duration,
        threads: a.threads.unwrap_or_else(|| default_threads().max(2)),
        seed: a.seed,
        faults: a.faults,
        sabotage: a.sabotage,
    };
    let mut reports = Vec::with_capacity(strategies.len());
    for s in &strategies {
        eprintln!("stress: {s} for {:?} on {} threads ...", cfg.duration, cfg.threads);
        let r = crate::stress::stress(&cfg, *s)?;
        println!("{}", crate::stress::text(&r));
        reports.push(r);
    }
    let failed: Vec<&str> = reports.iter().filter(|r| !r.pass).map(|r| r.strategy.as_str()).collect();
    if let Some(path) = &a.json {
        let cmd = command_line();
        let doc = StressDoc {
            command: &cmd,
            duration_secs: cfg.duration.as_secs_f64(),
            pass: failed.is_empty(),
            results: &reports,
        };
        let text = serde_json::to_string_pretty(&doc).map_err(|e| format!("encoding JSON: {e}"))?;
        std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if failed.is_empty() {
        let n = reports.len();
        println!("stress: PASS ({n} {}, no violations)", if n == 1 { "strategy" } else { "strategies" });
        Ok(())
    } else {
        println!("stress: FAIL ({} of {})", failed.len(), reports.len());
        Err(Failure { message: format!("stress found violations in: {}", failed.join(", ")), code: 1 })
    }
}

fn run_list(a: &ListArgs) {
    if a.names {
        for k in StrategyKind::ALL {
            println!("{k}");
        }
        return;
    }
    println!("strategies:");
    for k in StrategyKind::ALL {
        let params = bounce_strategies::AnyStrategy::<bounce_framework::sim::SimGuest>::params(k);
        println!("  {:<10} {} (parameters: swiotlb.{k}.{{{}}})", k.name(), k.summary(), params.join(","));
    }
    println!("reference rows (compare, replay, map-bench; not boot choices):");
    let status = bounce_linux_ref::available().map_or_else(|why| format!("unavailable: {why}"), |()| "built".into());
    println!("  {:<10} Linux 6.12's own swiotlb.c compiled from its source ({status})", registry::LINUX);
    println!("workloads:");
    for w in Workload::ALL {
        println!("  {:<10} {}", w.name(), w.description());
    }
}

/// Runs the parsed command line.
pub fn run(cli: &Cli) -> ExitCode {
    let r = match &cli.command {
        Command::Compare(a) => run_compare(a),
        Command::Replay(a) => run_replay(a),
        Command::MapBench(a) => run_map_bench(a),
        Command::Record(a) => run_record(a),
        Command::Stress(a) => run_stress(a),
        Command::List(a) => {
            run_list(a);
            Ok(())
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("bounce: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
