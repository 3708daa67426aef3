//! `bounce stress`: every strategy under full-rate concurrent load on the simulated
//! guest, every byte checked, and a full audit at the end.
//!
//! One run per strategy, on a fresh guest booted from the command line:
//!
//! - **Load.** Every worker thread (one per simulated CPU) maps, syncs and unmaps at full
//!   rate with the `mixed` workload's op streams (virtio-net with the cc-swiotlb seed's
//!   size mix, NVMe with `min_align_mask` 4095, a 32-bit AHCI controller, virtio-blk;
//!   [`Workload::Mixed`]), in bursts: all threads start together, run for
//!   [`BURST_ACTIVE`], drain everything and stay idle for [`BURST_IDLE`] (Andi Kleen's
//!   "all cores streaming at full bandwidth" after a quiet period). One request in
//!   [`SG_ONE_IN`] is a scatter-gather list; one mapping in [`PARTIAL_ONE_IN`] gets a
//!   partial sync (some running past the mapping's end, which must be clamped); one unmap
//!   in [`REMOTE_ONE_IN`] runs on another simulated CPU. The refill engine (kccd:
//!   bounce-pools's `ThreadRunner` calling `run_background`) races the workers on its
//!   own thread.
//! - **Data.** Each thread keeps a model of its original buffers and of what every live
//!   bounce buffer must hold. The CPU writes a fresh pattern before every map; the
//!   device model ([`SimDevice`]) reads every mapping after map and before unmap and
//!   compares it with what the CPU wrote (map copies in for every direction); for
//!   `FROM_DEVICE` and `BIDIRECTIONAL` the device writes a known pattern, and after
//!   every sync and unmap the original must hold exactly the model's bytes. Bytes around
//!   a mapping and every idle buffer hold a guard byte that nothing may change.
//! - **Pressure.** In every idle gap, with the other threads parked, one thread maps a
//!   too-large buffer and then floods the pool with the largest mappings until it is
//!   refused: a refusal (exhausted or cap) is allowed, but it must leave every counter,
//!   the pool's used bytes and the strategy's audit exactly as before. Then the audit
//!   must find nothing in flight. Mid-run audits hold kccd between two runs: a
//!   strategy's audit is exact only when no growth or shrink is halfway done.
//! - **Faults** (`--faults`): the main thread arms the simulated guest's
//!   [`FaultInjector`](bounce_framework::sim::FaultInjector) in bursts (failing
//!   decryptions, encryptions and page allocations), so pages get quarantined; a
//!   quarantined page the strategy touches again is a guest violation.
//! - **Audit.** After the last drain: `Strategy::audit()` passes with nothing live and
//!   nothing used, quarantined pages agree between the strategy, its pool statistics
//!   and the guest's page states, shared pages agree, and every `BounceStats` counter
//!   (maps, unmaps, syncs, bytes each way, clamped overflows, failures by reason, bytes
//!   in flight) equals what the threads counted themselves. Every original buffer holds
//!   the guard byte again. `SimGuest::violations()` must be empty.
//!
//! A failed map under pressure is counted by reason and is not a violation; a lost
//! buffer, a wrong byte, a device-model or guest violation, an audit error, a counter
//! that disagrees or a panic is.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use bounce_framework::sim::{set_current_cpu, SimDevice, SimGuest};
use bounce_framework::{
    AuditError, AuditReport, BackgroundReport, BootConfig, Bouncer, BouncerOptions, Device, DmaAddr, DmaAttrs,
    DmaDirection, FailureReason, InitError, Located, MapError, PhysAddr, Platform, PoolStats, ReleaseError, Released,
    Request, Reservation, SgEntry, SgError, Strategy, PAGE_SIZE,
};
use rand::RngExt;
use rand_pcg::Pcg64Mcg;

use crate::engine::{
    alloc_regions, boot, fill_pattern, panic_message, slot_size, Ctor, Machine, RefillThread, RunError,
};
use crate::registry::{StrategyKind, StrategyVisitor};
use crate::report::bytes;
use crate::workload::{thread_rng, Op, Plan, Workload, STREAM_LEN};

mod checks;
mod faults;
mod report;
#[cfg(test)]
mod tests;
mod worker;

use checks::final_checks;
use faults::{inject_faults, Sabotaged};
pub use report::{text, StressDoc};

/// How long every thread maps at full rate before the idle gap.
pub const BURST_ACTIVE: Duration = Duration::from_millis(250);
/// The idle gap between bursts (nothing in flight; the pressure check runs first).
pub const BURST_IDLE: Duration = Duration::from_millis(50);
/// One request in this many is a scatter-gather list.
pub const SG_ONE_IN: u32 = 8;
/// Entries of a scatter-gather list: 2 up to this many.
pub const SG_MAX_ENTRIES: usize = 6;
/// One mapping in this many gets a partial sync before its unmap.
pub const PARTIAL_ONE_IN: u32 = 3;
/// One partial sync in this many asks for more than the mapping holds (clamped).
pub const OVERFLOW_ONE_IN: u32 = 8;
/// One unmap in this many runs on another simulated CPU.
pub const REMOTE_ONE_IN: u32 = 4;
/// What every original byte no mapping covers holds.
pub const GUARD: u8 = 0x5a;
/// Bytes checked on each side of a mapping inside its original buffer slot.
const GUARD_WINDOW: usize = 256;
/// The most the pressure check maps before giving up on a refusal.
const FLOOD_BYTES: usize = 1 << 30;
/// Problems described in full per run.
const MAX_EXAMPLES: usize = 8;
/// A sabotaged strategy misbehaves on one call in this many.
const SABOTAGE_EVERY: u64 = 64;

/// A deliberate bug, to prove the checker catches it (hidden `--sabotage`; the test suite
/// uses it, normal runs never do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sabotage {
    /// The strategy keeps one buffer in 64 on release while reporting success (a leak).
    Leak,
    /// The strategy's lookup returns an original address one byte off, one call in 64
    /// (a copy-back to the wrong place).
    Locate,
    /// The checker's own thread overwrites one byte of an idle original buffer once, as
    /// a stray DMA or copy would.
    Corrupt,
}

/// What `bounce stress` runs.
#[derive(Clone, Debug)]
pub struct StressConfig {
    /// The simulated machine: platform, RAM, boot command line.
    pub machine: Machine,
    /// How long each strategy runs.
    pub duration: Duration,
    /// Worker threads; the guest gets as many simulated CPUs (at least 2).
    pub threads: usize,
    /// Seed of the op streams and of every random choice.
    pub seed: u64,
    /// Inject conversion and allocation failures.
    pub faults: bool,
    /// A deliberate bug (tests only).
    pub sabotage: Option<Sabotage>,
}

/// What the stress threads did, counted by themselves (and compared with the bouncer's
/// own statistics at the end).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Map requests made (single mappings, scatter-gather lists, pressure maps).
    pub requests: u64,
    /// Successful `map_single` calls inside the bouncer, scatter-gather entries included
    /// (what `BounceStats` counts as maps; entries rolled back after a failed list too).
    pub maps: u64,
    /// Successful unmaps (each scatter-gather entry counts).
    pub unmaps: u64,
    /// Single mappings made.
    pub singles: u64,
    /// Scatter-gather lists mapped.
    pub sg_lists: u64,
    /// Entries of those lists.
    pub sg_entries: u64,
    /// Successful `sync_*_for_cpu` calls (each scatter-gather entry counts).
    pub syncs_for_cpu: u64,
    /// Successful `sync_*_for_device` calls.
    pub syncs_for_device: u64,
    /// Syncs of part of a mapping.
    pub partial_syncs: u64,
    /// Syncs that ran past the mapping and were clamped.
    pub overflows_clamped: u64,
    /// Bytes the bouncer had to copy original → bounce.
    pub bytes_to_bounce: u64,
    /// Bytes the bouncer had to copy bounce → original.
    pub bytes_from_bounce: u64,
    /// Device reads checked against the model.
    pub device_reads: u64,
    /// Device writes of a known pattern.
    pub device_writes: u64,
    /// Unmaps run on another simulated CPU than the map.
    pub remote_unmaps: u64,
    /// Pressure checks run (one per idle gap).
    pub pressure_checks: u64,
    /// Mappings the pressure checks made before the pool refused one.
    pub pressure_maps: u64,
    /// Failed maps, indexed by [`FailureReason`].
    #[serde(skip)]
    pub failures: [u64; FailureReason::COUNT],
    /// Successful maps per plan device (entries counted), compared with the bouncer's
    /// per-device statistics.
    #[serde(skip)]
    pub maps_by_device: [u64; MAX_DEVICES],
    /// Successful unmaps per plan device.
    #[serde(skip)]
    pub unmaps_by_device: [u64; MAX_DEVICES],
}

/// Plan devices the per-device counts hold (the stress plan has four).
pub const MAX_DEVICES: usize = 8;

impl Counts {
    fn add(&mut self, o: &Self) {
        self.requests += o.requests;
        self.maps += o.maps;
        self.unmaps += o.unmaps;
        self.singles += o.singles;
        self.sg_lists += o.sg_lists;
        self.sg_entries += o.sg_entries;
        self.syncs_for_cpu += o.syncs_for_cpu;
        self.syncs_for_device += o.syncs_for_device;
        self.partial_syncs += o.partial_syncs;
        self.overflows_clamped += o.overflows_clamped;
        self.bytes_to_bounce += o.bytes_to_bounce;
        self.bytes_from_bounce += o.bytes_from_bounce;
        self.device_reads += o.device_reads;
        self.device_writes += o.device_writes;
        self.remote_unmaps += o.remote_unmaps;
        self.pressure_checks += o.pressure_checks;
        self.pressure_maps += o.pressure_maps;
        for (a, b) in self.failures.iter_mut().zip(o.failures) {
            *a += b;
        }
        for (a, b) in self.maps_by_device.iter_mut().zip(o.maps_by_device) {
            *a += b;
        }
        for (a, b) in self.unmaps_by_device.iter_mut().zip(o.unmaps_by_device) {
            *a += b;
        }
    }

    /// Counts `n` successful maps of plan device `d`.
    pub(crate) fn mapped(&mut self, d: usize, n: u64) {
        self.maps += n;
        if let Some(c) = self.maps_by_device.get_mut(d) {
            *c += n;
        }
    }

    /// Counts `n` successful unmaps of plan device `d`.
    pub(crate) fn unmapped(&mut self, d: usize, n: u64) {
        self.unmaps += n;
        if let Some(c) = self.unmaps_by_device.get_mut(d) {
            *c += n;
        }
    }

    /// DMA-API operations that succeeded: maps, unmaps and syncs (entries counted).
    pub fn ops(&self) -> u64 {
        self.maps + self.unmaps + self.syncs_for_cpu + self.syncs_for_device
    }
}

/// One strategy's stress run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StressReport {
    /// The strategy.
    pub strategy: String,
    /// The simulated platform.
    pub platform: &'static str,
    /// Worker threads (= simulated CPUs used).
    pub threads: usize,
    /// The seed.
    pub seed: u64,
    /// Whether faults were injected.
    pub faults: bool,
    /// Wall time of the run, idle gaps included.
    pub wall_secs: f64,
    /// What the threads did.
    #[serde(flatten)]
    pub counts: Counts,
    /// [`Counts::ops`].
    pub ops: u64,
    /// `ops` per second of wall time.
    pub ops_per_sec: f64,
    /// Failed maps by reason (pressure checks included).
    pub failures: BTreeMap<&'static str, u64>,
    /// Faults armed by `--faults`.
    pub faults_injected: u64,
    /// Conversion calls that failed (the strategy's count).
    pub conversion_failures: u64,
    /// Page allocations that failed (the strategy's count).
    pub alloc_failures: u64,
    /// Pages quarantined after failed conversions.
    pub quarantined_pages: u64,
    /// The most shared memory committed at once (boot included).
    pub shared_bytes_peak: u64,
    /// The most mapping bytes in flight at once.
    pub inflight_bytes_peak: u64,
    /// Conversion calls since boot.
    pub conversion_calls: u64,
    /// Refill-engine runs during the stress run.
    pub refill_runs: u64,
    /// The final audit: `ok (...)` or the error.
    pub audit: String,
    /// Problems the checker found (wrong data, lost buffers, counters, audit, panics).
    pub problems: u64,
    /// Violations the simulated guest and device model recorded.
    pub sim_violations: u64,
    /// The first problems and violations, described.
    pub violations: Vec<String>,
    /// No problem and no violation.
    pub pass: bool,
}

#[derive(Debug, Default)]
struct Problems {
    count: u64,
    examples: Vec<String>,
}

impl Problems {
    fn push(&mut self, what: String) {
        self.count += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(what);
        }
    }

    fn merge(&mut self, o: Self) {
        self.count += o.count;
        let room = MAX_EXAMPLES.saturating_sub(self.examples.len());
        self.examples.extend(o.examples.into_iter().take(room));
    }
}

/// A barrier that can be abandoned: a thread that panicked must not leave the others
/// waiting forever.
struct Gate {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    aborted: AtomicBool,
}

impl Gate {
    fn new(threads: usize) -> Self {
        Self { threads, arrived: AtomicUsize::new(0), generation: AtomicUsize::new(0), aborted: AtomicBool::new(false) }
    }

    /// Waits for every thread; `false` once the gate was abandoned.
    fn wait(&self) -> bool {
        if self.aborted.load(Ordering::Acquire) {
            return false;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return true;
        }
        while self.generation.load(Ordering::Acquire) == generation {
            if self.aborted.load(Ordering::Acquire) {
                return false;
            }
            thread::sleep(Duration::from_micros(100));
        }
        true
    }

    fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
    }
}

/// State every worker of one run shares.
struct Shared<S: Strategy> {
    bouncer: Arc<Bouncer<SimGuest, S>>,
    guest: SimGuest,
    plan: Plan,
    devices: Vec<SimDevice>,
    /// Bytes of one original buffer slot, per device.
    slot_bytes: Vec<usize>,
    gate: Gate,
    stop: AtomicBool,
    done: AtomicUsize,
    end: Instant,
    threads: usize,
    cpus: usize,
    sabotage: Option<Sabotage>,
    /// Held by the refill thread while it runs `run_background`, and by the mid-run
    /// audits: a strategy's audit is only exact when its background work is not halfway
    /// through a growth or a shrink.
    pause: Arc<Mutex<()>>,
}

impl<S: Strategy> Shared<S> {
    /// `Strategy::audit` with the refill engine held between two runs.
    fn audit(&self) -> Result<AuditReport, AuditError> {
        let _quiet = self.pause.lock().unwrap_or_else(PoisonError::into_inner);
        self.bouncer.strategy().audit()
    }
}

/// One buffer of a live mapping and the model of its two sides.
struct Entry {
    slot: usize,
    orig: PhysAddr,
    size: usize,
    dma: DmaAddr,
    /// What the original buffer must hold.
    cpu: Vec<u8>,
    /// What the bounce buffer must hold.
    dev: Vec<u8>,
}

/// A live mapping: one buffer, or a scatter-gather list.
struct Mapping {
    device: usize,
    dir: DmaDirection,
    sg: bool,
    entries: Vec<Entry>,
}

impl Mapping {
    fn sg_list(&self) -> Vec<SgEntry> {
        self.entries
            .iter()
            .map(|e| SgEntry { phys: e.orig, length: e.size, dma_address: e.dma, dma_length: e.size })
            .collect()
    }

    fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size as u64).sum()
    }
}

/// The counters a refused map must leave alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Quiet {
    maps: u64,
    unmaps: u64,
    inflight_bytes: u64,
    used_bytes: usize,
    failures: [u64; FailureReason::COUNT],
}

impl Quiet {
    fn read<S: Strategy>(b: &Bouncer<SimGuest, S>) -> Self {
        let s = b.stats();
        Self {
            maps: s.maps,
            unmaps: s.unmaps,
            inflight_bytes: s.inflight_bytes,
            used_bytes: b.pool_stats().used_bytes,
            failures: s.failures,
        }
    }
}

/// The first byte of `buf` that is not [`GUARD`] (compared a page at a time: the final
/// sweep reads every original buffer).
fn not_guard(buf: &[u8]) -> Option<usize> {
    static PAGE: [u8; PAGE_SIZE] = [GUARD; PAGE_SIZE];
    buf.chunks(PAGE_SIZE).enumerate().find_map(|(i, c)| {
        (c != &PAGE[..c.len()]).then(|| i * PAGE_SIZE + c.iter().position(|&b| b != GUARD).unwrap_or(0))
    })
}

fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    (got != want).then(|| got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len())))
}

struct Worker<'a, S: Strategy> {
    sh: &'a Shared<S>,
    me: usize,
    rng: Pcg64Mcg,
    /// Original buffers: one region of `depth` slots per device.
    regions: Vec<PhysAddr>,
    free: Vec<Vec<usize>>,
    rings: Vec<VecDeque<Mapping>>,
    pos: usize,
    generation: u64,
    /// Room for reading guest memory back (grown, never shrunk).
    scratch: Vec<u8>,
    counts: Counts,
    problems: Problems,
    /// The device whose idle slot `--sabotage corrupt` wrote into (that slot is out of
    /// circulation from then on).
    corrupted: Option<usize>,
}

fn run_one<S: Strategy + 'static>(
    cfg: &StressConfig,
    name: &'static str,
    build: impl Fn(SimGuest, &BootConfig) -> Result<S, InitError>,
) -> Result<StressReport, RunError> {
    let mut plan = Workload::Mixed.plan(cfg.threads, STREAM_LEN, cfg.seed, true);
    plan.name = "stress".into();
    // `swiotlb.scrub=on` on the command line applies, as in every other run.
    let bouncer = boot(build, name, &cfg.machine, &plan, BouncerOptions::default())?;
    let guest = bouncer.platform().clone();
    let slot_bytes: Vec<usize> = plan.devices.iter().map(|d| slot_size(d.max_extent)).collect();
    let regions = alloc_regions(&guest, &plan, GUARD)?;
    let cpus = guest.config().cpus;
    let pause = Arc::new(Mutex::new(()));
    // kccd, with the audits' pause lock around each run.
    let refill = RefillThread::start_pausable(bouncer.clone(), pause.clone());
    let device_names: Vec<String> = plan.devices.iter().map(|d| d.device.name().to_string()).collect();
    let shared = Shared {
        bouncer: bouncer.clone(),
        guest: guest.clone(),
        devices: crate::engine::attached_devices(&bouncer, &plan),
        plan,
        slot_bytes,
        gate: Gate::new(cfg.threads),
        stop: AtomicBool::new(false),
        done: AtomicUsize::new(0),
        end: Instant::now() + cfg.duration,
        threads: cfg.threads,
        cpus,
        sabotage: cfg.sabotage,
        pause,
    };
    let t0 = Instant::now();
    let mut problems = Problems::default();
    let mut counts = Counts::default();
    let armed = thread::scope(|s| {
        let sh = &shared;
        let handles: Vec<_> = regions
            .into_iter()
            .enumerate()
            .map(|(t, regs)| {
                thread::Builder::new()
                    .name(format!("stress-{t}"))
                    .spawn_scoped(s, move || Worker::new(sh, t, regs, cfg.seed).run())
                    .expect("spawning a stress thread")
            })
            .collect();
        let armed = if cfg.faults {
            inject_faults(sh, cfg.seed)
        } else {
            while sh.done.load(Ordering::Acquire) < sh.threads {
                thread::sleep(Duration::from_millis(5));
            }
            0
        };
        for (t, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok((c, p)) => {
                    counts.add(&c);
                    problems.merge(p);
                }
                Err(e) => problems.push(format!("thread {t} died: {}", panic_message(&*e))),
            }
        }
        armed
    });
    let wall = t0.elapsed();
    guest.faults().clear();
    let refill_runs = match catch_unwind(AssertUnwindSafe(|| refill.stop())) {
        Ok(t) => t.runs,
        Err(e) => {
            problems.push(format!("the refill thread panicked: {}", panic_message(&*e)));
            0
        }
    };
    let audit = final_checks(&bouncer, &guest, &device_names, &counts, &mut problems);
    let snap = bouncer.stats();
    let pool = bouncer.pool_stats();
    let sim_violations = guest.violation_count() as u64;
    let mut violations = problems.examples.clone();
    violations.extend(guest.violations().into_iter().take(MAX_EXAMPLES).map(|v| format!("guest: {v}")));
    let ops = counts.ops();
    Ok(StressReport {
        strategy: name.to_string(),
        platform: cfg.machine.platform.name(),
        threads: cfg.threads,
        seed: cfg.seed,
        faults: cfg.faults,
        wall_secs: wall.as_secs_f64(),
        counts,
        ops,
        ops_per_sec: ops as f64 / wall.as_secs_f64().max(1e-9),
        failures: FailureReason::ALL
            .iter()
            .filter(|r| snap.failures_of(**r) > 0)
            .map(|r| (r.name(), snap.failures_of(*r)))
            .collect(),
        faults_injected: armed,
        conversion_failures: pool.conversions.failed_calls,
        alloc_failures: pool.conversions.alloc_failures,
        quarantined_pages: pool.conversions.quarantined_pages,
        shared_bytes_peak: pool.conversions.shared_bytes_peak,
        inflight_bytes_peak: snap.inflight_bytes_peak,
        conversion_calls: pool.conversions.calls(),
        refill_runs,
        audit,
        problems: problems.count,
        sim_violations,
        violations,
        pass: problems.count == 0 && sim_violations == 0,
    })
}

struct Visit<'a> {
    cfg: &'a StressConfig,
}

impl StrategyVisitor<bounce_framework::sim::SimGuest> for Visit<'_> {
    type Output = Result<StressReport, RunError>;

    fn visit<S: Strategy + 'static>(&mut self, name: &'static str, ctor: Ctor<S>) -> Self::Output {
        match self.cfg.sabotage {
            Some(kind @ (Sabotage::Leak | Sabotage::Locate)) => run_one(self.cfg, name, move |g, b| {
                ctor(g, b).map(|inner| Sabotaged { inner, kind, calls: AtomicU64::new(0) })
            }),
            _ => run_one(self.cfg, name, ctor),
        }
    }
}

/// Stress-tests the strategy `kind`.
///
/// # Errors
/// [`RunError`] when the strategy does not boot or the guest has no room for the
/// buffers (problems found while running are in the report, not errors).
pub fn stress(cfg: &StressConfig, kind: StrategyKind) -> Result<StressReport, RunError> {
    kind.visit(&mut Visit { cfg })
}
