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
//!   bounce-refill's `ThreadRunner` calling `run_background`) races the workers on its
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
}

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
    corrupted: bool,
}

impl<'a, S: Strategy> Worker<'a, S> {
    fn new(sh: &'a Shared<S>, me: usize, regions: Vec<PhysAddr>, seed: u64) -> Self {
        Self {
            sh,
            me,
            rng: thread_rng(seed, "stress", me),
            regions,
            free: sh.plan.devices.iter().map(|d| (0..d.depth).rev().collect()).collect(),
            rings: sh.plan.devices.iter().map(|d| VecDeque::with_capacity(d.depth)).collect(),
            pos: 0,
            generation: 0,
            scratch: Vec::new(),
            counts: Counts::default(),
            problems: Problems::default(),
            corrupted: false,
        }
    }

    fn home(&self) -> usize {
        self.me % self.sh.cpus
    }

    fn problem(&mut self, what: &str) {
        self.problems.push(format!("thread {}: {what}", self.me));
    }

    /// The scratch buffer, at least `len` bytes long (zeroed allocations: `resize` is
    /// slow in debug builds, which the command-line tests run).
    fn take_scratch(&mut self, len: usize) -> Vec<u8> {
        let buf = std::mem::take(&mut self.scratch);
        if buf.len() >= len {
            buf
        } else {
            vec![0; len.next_power_of_two()]
        }
    }

    /// A fresh pattern (`which` 0: CPU data, 1: device data), unique per call.
    fn pattern(&mut self, len: usize, which: u64) -> Vec<u8> {
        self.generation += 1;
        let mut b = vec![0; len];
        fill_pattern(&mut b, self.me as u16, self.generation, which);
        b
    }

    fn next_op(&mut self) -> Op {
        let s = &self.sh.plan.streams[self.me];
        let op = s[self.pos];
        self.pos = (self.pos + 1) % s.len();
        op
    }

    /// `(offset, size)` of `n` buffers for `first`'s device: its own and those of the
    /// device's next ops in the stream (the workload's size mix).
    fn shapes(&self, first: Op, n: usize) -> Vec<(usize, usize)> {
        let s = &self.sh.plan.streams[self.me];
        let mut v = vec![(first.offset as usize, first.size as usize)];
        for i in self.pos..self.pos + 256 {
            if v.len() == n {
                break;
            }
            let o = s[i % s.len()];
            if o.device == first.device {
                v.push((o.offset as usize, o.size as usize));
            }
        }
        while v.len() < n {
            v.push(v[0]);
        }
        v
    }

    fn slot_start(&self, d: usize, slot: usize) -> PhysAddr {
        self.regions[d] + (slot * self.sh.slot_bytes[d]) as u64
    }

    /// Checks the original buffer around `[orig, orig + size)` in its slot: the model's
    /// bytes inside (the guard byte when `model` is `None`), the guard byte around.
    fn check_original(&mut self, d: usize, slot: usize, orig: PhysAddr, size: usize, model: Option<&[u8]>, when: &str) {
        let start = self.slot_start(d, slot);
        let end = start + self.sh.slot_bytes[d] as u64;
        let lo = PhysAddr(orig.0.saturating_sub(GUARD_WINDOW as u64).max(start.0));
        let hi = PhysAddr((orig.0 + (size + GUARD_WINDOW) as u64).min(end.0));
        let n = (hi.0 - lo.0) as usize;
        let mut buf = self.take_scratch(n);
        self.sh.guest.read(lo, &mut buf[..n]);
        let inner = (orig.0 - lo.0) as usize;
        let bad = not_guard(&buf[..inner]).map(|i| (i, GUARD)).or_else(|| {
            let mid = &buf[inner..inner + size];
            match model {
                Some(m) => first_difference(mid, m).map(|i| (inner + i, m[i])),
                None => not_guard(mid).map(|i| (inner + i, GUARD)),
            }
            .or_else(|| not_guard(&buf[inner + size..n]).map(|i| (inner + size + i, GUARD)))
        });
        if let Some((i, want)) = bad {
            let at = lo + i as u64;
            let what = if at >= orig && at < orig + size as u64 && model.is_some() {
                format!("byte {} of the mapping", at.0 - orig.0)
            } else {
                "a byte no mapping covers".into()
            };
            let dev = self.sh.plan.devices[d].device.name().to_string();
            self.problem(&format!(
                "{dev}: the original buffer at {at} ({what}, slot {slot}) holds {:#04x} {when}; the model says {want:#04x}",
                buf[i]
            ));
        }
        self.scratch = buf;
    }

    /// The device reads `want.len()` bytes at `dma`; they must equal `want`.
    fn device_check(&mut self, d: usize, dma: DmaAddr, want: &[u8], when: &str) {
        let mut buf = self.take_scratch(want.len());
        let got = &mut buf[..want.len()];
        self.counts.device_reads += 1;
        let dev = &self.sh.devices[d];
        match dev.read(&*self.sh.bouncer, dma, got) {
            Ok(()) => {
                if let Some(i) = first_difference(got, want) {
                    let name = dev.device().name().to_string();
                    self.problem(&format!(
                        "{name}: the device read {} bytes at {dma} {when} and byte {i} is {:#04x}, not the {:#04x} the CPU or device wrote",
                        want.len(),
                        got[i],
                        want[i]
                    ));
                }
            }
            Err(e) => self.problem(&format!("device read {when} refused: {e}")),
        }
        self.scratch = buf;
    }

    /// The device writes `data` at offset `a` of `e`'s bounce buffer; the model follows.
    fn device_write(&mut self, d: usize, e: &mut Entry, a: usize, data: &[u8]) {
        self.counts.device_writes += 1;
        match self.sh.devices[d].write(&*self.sh.bouncer, e.dma + a as u64, data) {
            Ok(()) => e.dev[a..a + data.len()].copy_from_slice(data),
            Err(err) => self.problem(&format!("device write refused: {err}")),
        }
    }

    /// Returns an entry's slot: the guard byte back over its bytes.
    fn release_slot(&mut self, d: usize, e: &Entry) {
        self.sh.guest.fill(e.orig, GUARD, e.size);
        self.free[d].push(e.slot);
    }

    /// One request: make room in the device's ring (unmapping the oldest), then map a
    /// buffer or a scatter-gather list.
    fn step(&mut self) {
        let op = self.next_op();
        let d = usize::from(op.device);
        let n = if self.rng.random_ratio(1, SG_ONE_IN) { self.rng.random_range(2..=SG_MAX_ENTRIES) } else { 1 };
        let n = n.min(self.sh.plan.devices[d].depth);
        while self.free[d].len() < n {
            let Some(old) = self.rings[d].pop_front() else { break };
            self.unmap(old);
        }
        let shapes = self.shapes(op, n.min(self.free[d].len()));
        self.map(d, op.dir, n > 1, &shapes);
    }

    fn map(&mut self, d: usize, dir: DmaDirection, sg: bool, shapes: &[(usize, usize)]) {
        let sh = self.sh;
        let dev = sh.plan.devices[d].device;
        let mut entries = Vec::with_capacity(shapes.len());
        for &(offset, size) in shapes {
            let Some(slot) = self.free[d].pop() else { break };
            let orig = self.slot_start(d, slot) + offset as u64;
            self.check_original(d, slot, orig, size, None, "before its map");
            let cpu = self.pattern(size, 0);
            sh.guest.write(orig, &cpu);
            entries.push(Entry { slot, orig, size, dma: DmaAddr(0), cpu, dev: Vec::new() });
        }
        if entries.is_empty() {
            return;
        }
        self.counts.requests += 1;
        let r = if sg {
            let mut list: Vec<SgEntry> = entries.iter().map(|e| SgEntry::new(e.orig, e.size)).collect();
            match sh.bouncer.map_sg(&dev, &mut list, dir, DmaAttrs::NO_WARN) {
                Ok(n) => {
                    if n != list.len() {
                        self.problem(&format!("map_sg of {} entries reported {n}", list.len()));
                    }
                    for (e, s) in entries.iter_mut().zip(&list) {
                        e.dma = s.dma_address;
                        if s.dma_length != e.size {
                            self.problem(&format!("map_sg set dma_length {} for {} bytes", s.dma_length, e.size));
                        }
                    }
                    Ok(())
                }
                Err(SgError { index, error }) => Err((index, error)),
            }
        } else {
            match sh.bouncer.map_single(&dev, entries[0].orig, entries[0].size, dir, DmaAttrs::NO_WARN) {
                Ok(dma) => {
                    entries[0].dma = dma;
                    Ok(())
                }
                Err(e) => Err((0, e)),
            }
        };
        if let Err((rolled_back, error)) = r {
            self.map_failed(d, dir, entries, rolled_back, &error);
            return;
        }
        let n = entries.len() as u64;
        self.counts.maps += n;
        self.counts.bytes_to_bounce += entries.iter().map(|e| e.size as u64).sum::<u64>();
        if sg {
            self.counts.sg_lists += 1;
            self.counts.sg_entries += n;
        } else {
            self.counts.singles += 1;
        }
        for e in &mut entries {
            // Map copies in for every direction (CVE-2022-0854): the device sees what
            // the CPU wrote.
            e.dev.clone_from(&e.cpu);
            self.device_check(d, e.dma, &e.dev, "right after the map");
            if dir.from_device() {
                let w = self.pattern(e.size, 1);
                self.device_write(d, e, 0, &w);
            }
        }
        self.rings[d].push_back(Mapping { device: d, dir, sg, entries });
    }

    /// A refused map: counted by reason; allowed when the pool is exhausted or capped
    /// (or the request is over the strategy's stated maximum); the originals untouched.
    fn map_failed(&mut self, d: usize, dir: DmaDirection, entries: Vec<Entry>, rolled_back: usize, error: &MapError) {
        let reason = error.reason();
        self.counts.failures[reason as usize] += 1;
        // Entries of a list mapped before the failing one were unmapped again (without
        // a copy back).
        self.counts.maps += rolled_back as u64;
        self.counts.unmaps += rolled_back as u64;
        self.counts.bytes_to_bounce +=
            entries[..rolled_back.min(entries.len())].iter().map(|e| e.size as u64).sum::<u64>();
        let dev = self.sh.plan.devices[d].device;
        let size = entries.get(rolled_back).map_or(0, |e| e.size);
        let allowed = matches!(reason, FailureReason::Exhausted | FailureReason::Cap)
            || (reason == FailureReason::TooLarge && size > self.sh.bouncer.max_mapping_size(&dev));
        if !allowed {
            self.problem(&format!(
                "{}: a map of {size} bytes ({dir}) failed, and not for lack of memory: {error}",
                dev.name()
            ));
        }
        for e in entries {
            self.check_original(d, e.slot, e.orig, e.size, Some(&e.cpu), "after a refused map");
            self.release_slot(d, &e);
        }
    }

    fn unmap(&mut self, mut m: Mapping) {
        let sh = self.sh;
        let d = m.device;
        if self.rng.random_ratio(1, PARTIAL_ONE_IN) {
            self.partial_sync(&mut m);
        }
        if m.sg && self.rng.random_ratio(1, 3) {
            self.sg_sync(&mut m);
        }
        // Nobody else wrote this bounce buffer while it was live.
        for e in &m.entries {
            self.device_check(d, e.dma, &e.dev, "before the unmap");
        }
        let remote = sh.cpus > 1 && self.rng.random_ratio(1, REMOTE_ONE_IN);
        if remote {
            let other = (self.home() + self.rng.random_range(1..sh.cpus)) % sh.cpus;
            set_current_cpu(Some(other));
            self.counts.remote_unmaps += 1;
        }
        let dev = sh.plan.devices[d].device;
        let r = if m.sg {
            let mut list = m.sg_list();
            sh.bouncer.unmap_sg(&dev, &mut list, m.dir, DmaAttrs::empty())
        } else {
            let e = &m.entries[0];
            sh.bouncer.unmap_single(&dev, e.dma, e.size, m.dir, DmaAttrs::empty())
        };
        if remote {
            set_current_cpu(Some(self.home()));
        }
        match r {
            Ok(()) => {
                self.counts.unmaps += m.entries.len() as u64;
                if m.dir.from_device() {
                    self.counts.bytes_from_bounce += m.bytes();
                    for e in &mut m.entries {
                        e.cpu.copy_from_slice(&e.dev);
                    }
                }
            }
            Err(e) => self.problem(&format!("{}: unmap of {} ({}) refused: {e}", dev.name(), m.entries[0].dma, m.dir)),
        }
        for e in m.entries {
            self.check_original(d, e.slot, e.orig, e.size, Some(&e.cpu), "after its unmap");
            self.release_slot(d, &e);
        }
    }

    /// A sync of part of one buffer, for the CPU or for the device; one in
    /// [`OVERFLOW_ONE_IN`] asks for more than the mapping holds (the bouncer clamps).
    fn partial_sync(&mut self, m: &mut Mapping) {
        let sh = self.sh;
        let (d, dir) = (m.device, m.dir);
        let dev = sh.plan.devices[d].device;
        let i = self.rng.random_range(0..m.entries.len());
        let e = &mut m.entries[i];
        let a = self.rng.random_range(0..e.size);
        let len = self.rng.random_range(1..=e.size - a);
        let overflow = self.rng.random_ratio(1, OVERFLOW_ONE_IN);
        let asked = if overflow { e.size - a + self.rng.random_range(1..=PAGE_SIZE) } else { len };
        let copied = asked.min(e.size - a);
        let at = e.dma + a as u64;
        self.counts.partial_syncs += 1;
        if self.rng.random_bool(0.5) {
            if dir.from_device() {
                let w = self.pattern(len, 1);
                self.device_write(d, e, a, &w);
            }
            if let Err(err) = sh.bouncer.sync_single_for_cpu(&dev, at, asked, dir) {
                self.problem(&format!("{}: sync_single_for_cpu({at}, {asked}, {dir}) refused: {err}", dev.name()));
                return;
            }
            self.counts.syncs_for_cpu += 1;
            if dir.from_device() {
                self.counts.overflows_clamped += u64::from(overflow);
                self.counts.bytes_from_bounce += copied as u64;
                e.cpu[a..a + copied].copy_from_slice(&e.dev[a..a + copied]);
            }
            self.check_original(d, e.slot, e.orig, e.size, Some(&e.cpu), "after a partial sync for the CPU");
        } else {
            if dir.to_device() {
                let w = self.pattern(len, 0);
                sh.guest.write(e.orig + a as u64, &w);
                e.cpu[a..a + len].copy_from_slice(&w);
            }
            if let Err(err) = sh.bouncer.sync_single_for_device(&dev, at, asked, dir) {
                self.problem(&format!("{}: sync_single_for_device({at}, {asked}, {dir}) refused: {err}", dev.name()));
                return;
            }
            self.counts.syncs_for_device += 1;
            if dir.to_device() {
                self.counts.overflows_clamped += u64::from(overflow);
                self.counts.bytes_to_bounce += copied as u64;
                e.dev[a..a + copied].copy_from_slice(&e.cpu[a..a + copied]);
            }
            self.device_check(d, e.dma, &e.dev, "after a partial sync for the device");
        }
    }

    /// `sync_sg_for_cpu` or `sync_sg_for_device` over a whole list.
    fn sg_sync(&mut self, m: &mut Mapping) {
        let sh = self.sh;
        let (d, dir) = (m.device, m.dir);
        let dev = sh.plan.devices[d].device;
        let list = m.sg_list();
        let n = m.entries.len() as u64;
        if self.rng.random_bool(0.5) {
            if dir.from_device() {
                for e in &mut m.entries {
                    let w = self.pattern(e.size, 1);
                    self.device_write(d, e, 0, &w);
                }
            }
            if let Err(err) = sh.bouncer.sync_sg_for_cpu(&dev, &list, dir) {
                self.problem(&format!("{}: sync_sg_for_cpu of {n} entries refused: {err}", dev.name()));
                return;
            }
            self.counts.syncs_for_cpu += n;
            if dir.from_device() {
                self.counts.bytes_from_bounce += m.bytes();
                for e in &mut m.entries {
                    e.cpu.copy_from_slice(&e.dev);
                }
            }
            for e in &m.entries {
                self.check_original(d, e.slot, e.orig, e.size, Some(&e.cpu), "after sync_sg_for_cpu");
            }
        } else {
            if dir.to_device() {
                for e in &mut m.entries {
                    let w = self.pattern(e.size, 0);
                    sh.guest.write(e.orig, &w);
                    e.cpu = w;
                }
            }
            if let Err(err) = sh.bouncer.sync_sg_for_device(&dev, &list, dir) {
                self.problem(&format!("{}: sync_sg_for_device of {n} entries refused: {err}", dev.name()));
                return;
            }
            self.counts.syncs_for_device += n;
            if dir.to_device() {
                self.counts.bytes_to_bounce += m.bytes();
                for e in &mut m.entries {
                    e.dev.copy_from_slice(&e.cpu);
                }
            }
        }
    }

    fn drain(&mut self) {
        for d in 0..self.rings.len() {
            while let Some(m) = self.rings[d].pop_front() {
                self.unmap(m);
            }
        }
    }

    /// A refused map must leave the counters, the pool and the audit as they were.
    fn check_unchanged(&mut self, before: &Quiet, reason: FailureReason, live: usize, what: &str) {
        let b = &*self.sh.bouncer;
        let after = Quiet::read(b);
        let mut want = *before;
        want.failures[reason as usize] += 1;
        if after != want {
            self.problem(&format!(
                "{what} changed the state: before {before:?} (+1 {}), after {after:?}",
                reason.name()
            ));
        }
        self.check_audit(live, after.used_bytes, &format!("after {what}"));
    }

    /// The strategy's audit (kccd held) must count `live` mappings using `used` bytes.
    fn check_audit(&mut self, live: usize, used: usize, when: &str) {
        match self.sh.audit() {
            Ok(r) if r.live_mappings == live && r.used_bytes == used => {}
            Ok(r) => self.problem(&format!(
                "{when}: the audit counts {} live mappings using {} bytes; {live} are live using {used} bytes",
                r.live_mappings, r.used_bytes
            )),
            Err(e) => self.problem(&format!("{when}: {e}")),
        }
    }

    /// Run by one thread while the others are parked: a too-large map, then the largest
    /// mappings until the pool refuses one; every refusal must change nothing. Then the
    /// audit must find nothing in flight.
    fn pressure_check(&mut self) {
        let sh = self.sh;
        let b = &*sh.bouncer;
        let d = (0..sh.slot_bytes.len()).max_by_key(|&d| sh.slot_bytes[d]).unwrap_or(0);
        let dev = sh.plan.devices[d].device;
        // The lowest slot: the too-large map reads past it into the (idle) next ones.
        let Some(i) = (0..self.free[d].len()).min_by_key(|&i| self.free[d][i]) else { return };
        let slot = self.free[d].swap_remove(i);
        self.counts.pressure_checks += 1;
        let orig = self.slot_start(d, slot);
        let region_end = self.regions[d] + (sh.plan.devices[d].depth * sh.slot_bytes[d]) as u64;
        let max = b.max_mapping_size(&dev);
        if orig + (max as u64 + 1) <= region_end {
            let before = Quiet::read(b);
            self.counts.requests += 1;
            match b.map_single(&dev, orig, max + 1, DmaDirection::ToDevice, DmaAttrs::NO_WARN) {
                Ok(dma) => {
                    self.problem(&format!(
                        "{}: a map of {} bytes was accepted; the maximum is {max}",
                        dev.name(),
                        max + 1
                    ));
                    self.counts.maps += 1;
                    self.counts.bytes_to_bounce += max as u64 + 1;
                    if b.unmap_single(&dev, dma, max + 1, DmaDirection::ToDevice, DmaAttrs::empty()).is_ok() {
                        self.counts.unmaps += 1;
                    }
                }
                Err(e) => {
                    self.counts.failures[e.reason() as usize] += 1;
                    if e.reason() != FailureReason::TooLarge {
                        self.problem(&format!("{}: a map over the maximum failed with `{e}`", dev.name()));
                    }
                    self.check_unchanged(&before, e.reason(), 0, "a too-large map");
                }
            }
            // A refused map reads nothing and writes nothing.
            self.check_original(d, slot, orig, sh.slot_bytes[d], None, "after a too-large map");
        }
        let size = max.min(sh.slot_bytes[d]);
        let cpu = self.pattern(size, 0);
        sh.guest.write(orig, &cpu);
        let mut live: Vec<DmaAddr> = Vec::new();
        while live.len() * size < FLOOD_BYTES {
            let before = Quiet::read(b);
            self.counts.requests += 1;
            match b.map_single(&dev, orig, size, DmaDirection::ToDevice, DmaAttrs::NO_WARN) {
                Ok(dma) => {
                    self.counts.maps += 1;
                    self.counts.bytes_to_bounce += size as u64;
                    // The first in full, then both ends of each (the flood maps one
                    // original; the copies are the bouncer's, checked all run long).
                    if live.is_empty() || size <= 2 * GUARD_WINDOW {
                        self.device_check(d, dma, &cpu, "during the pressure check");
                    } else {
                        let end = size - GUARD_WINDOW;
                        self.device_check(d, dma, &cpu[..GUARD_WINDOW], "during the pressure check");
                        self.device_check(d, dma + end as u64, &cpu[end..], "during the pressure check");
                    }
                    live.push(dma);
                }
                Err(e) => {
                    let reason = e.reason();
                    self.counts.failures[reason as usize] += 1;
                    if !matches!(reason, FailureReason::Exhausted | FailureReason::Cap) {
                        self.problem(&format!("{}: a map under pressure failed with `{e}`", dev.name()));
                    }
                    self.check_unchanged(&before, reason, live.len(), "a map refused under pressure");
                    break;
                }
            }
        }
        self.counts.pressure_maps += live.len() as u64;
        for dma in live {
            match b.unmap_single(&dev, dma, size, DmaDirection::ToDevice, DmaAttrs::empty()) {
                Ok(()) => self.counts.unmaps += 1,
                Err(e) => {
                    self.problem(&format!("{}: unmap of {dma} after the pressure check refused: {e}", dev.name()));
                }
            }
        }
        self.check_original(d, slot, orig, size, Some(&cpu), "after the pressure check");
        sh.guest.fill(orig, GUARD, size);
        self.free[d].push(slot);
        self.check_audit(0, 0, "mid-run, with nothing in flight");
        if sh.sabotage == Some(Sabotage::Corrupt) && !self.corrupted {
            // Sabotage for the tests: one stray byte in an idle original buffer.
            let last = self.regions.len() - 1;
            if let Some(&slot) = self.free[last].first() {
                let at = self.slot_start(last, slot) + 100;
                sh.guest.write(at, &[!GUARD]);
                self.corrupted = true;
            }
        }
    }

    /// After the last drain: every slot free, every original byte the guard byte.
    fn final_sweep(&mut self) {
        const CHUNK: usize = 1 << 20;
        for d in 0..self.regions.len() {
            let depth = self.sh.plan.devices[d].depth;
            let name = self.sh.plan.devices[d].device.name().to_string();
            if self.free[d].len() != depth || !self.rings[d].is_empty() {
                self.problem(&format!("{name}: {} buffers still in use after the drain", depth - self.free[d].len()));
            }
            let total = depth * self.sh.slot_bytes[d];
            let mut buf = self.take_scratch(CHUNK);
            let mut bad = None;
            let mut off = 0;
            while off < total && bad.is_none() {
                let n = CHUNK.min(total - off);
                self.sh.guest.read(self.regions[d] + off as u64, &mut buf[..n]);
                bad = not_guard(&buf[..n]).map(|i| (off + i, buf[i]));
                off += n;
            }
            self.scratch = buf;
            if let Some((at, got)) = bad {
                let slot_bytes = self.sh.slot_bytes[d];
                self.problem(&format!(
                    "{name}: after the run the original buffer slot {} holds {got:#04x} at byte {}; nothing maps it, so the model says {GUARD:#04x}",
                    at / slot_bytes,
                    at % slot_bytes
                ));
            }
        }
    }

    fn cycles(&mut self) {
        let sh = self.sh;
        loop {
            if !sh.gate.wait() {
                break;
            }
            let until = (Instant::now() + BURST_ACTIVE).min(sh.end);
            while Instant::now() < until {
                for _ in 0..16 {
                    self.step();
                }
            }
            self.drain();
            if !sh.gate.wait() {
                break;
            }
            if self.me == 0 {
                self.pressure_check();
                if Instant::now() + BURST_IDLE >= sh.end {
                    sh.stop.store(true, Ordering::Release);
                }
            }
            if !sh.gate.wait() || sh.stop.load(Ordering::Acquire) {
                break;
            }
            thread::sleep(BURST_IDLE);
        }
        self.drain();
        self.final_sweep();
    }

    fn run(mut self) -> (Counts, Problems) {
        set_current_cpu(Some(self.home()));
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.cycles())) {
            self.problem(&format!("panicked: {}", panic_message(&*p)));
            self.sh.gate.abort();
            // Give the mappings back, so the audit reports the panic and not its fallout.
            if catch_unwind(AssertUnwindSafe(|| self.drain())).is_err() {
                self.problem("panicked again while unmapping after the first panic");
            }
        }
        self.sh.done.fetch_add(1, Ordering::Release);
        set_current_cpu(None);
        (self.counts, self.problems)
    }
}

/// The fault controller (`--faults`): until the workers are done, every few
/// milliseconds arm one fault, in bursts. Conversion faults stop once an eighth of the
/// guest's pages is quarantined, so the run keeps enough memory to test anything.
fn inject_faults<S: Strategy>(sh: &Shared<S>, seed: u64) -> u64 {
    let mut rng = thread_rng(seed, "stress-faults", 0);
    let f = sh.guest.faults();
    let budget = (sh.guest.config().memory_bytes / PAGE_SIZE / 8) as u64;
    let mut armed = 0;
    while sh.done.load(Ordering::Acquire) < sh.threads {
        thread::sleep(Duration::from_millis(rng.random_range(2..=20)));
        let room = sh.bouncer.pool_stats().conversions.quarantined_pages < budget;
        match rng.random_range(0..5u32) {
            0 if room => f.fail_nth_decrypt(rng.random_range(1..=3)),
            1 if room => f.fail_nth_encrypt(rng.random_range(1..=2)),
            2 if room => {
                f.fail_all_decrypt(true);
                thread::sleep(Duration::from_micros(rng.random_range(200..=2000)));
                f.fail_all_decrypt(false);
            }
            3 => {
                f.fail_all_alloc(true);
                thread::sleep(Duration::from_micros(rng.random_range(500..=5000)));
                f.fail_all_alloc(false);
            }
            4 => f.fail_nth_alloc(rng.random_range(1..=4)),
            _ => continue,
        }
        armed += 1;
    }
    f.clear();
    armed
}

/// A strategy with a deliberate bug (see [`Sabotage`]); everything else passes through.
struct Sabotaged<S> {
    inner: S,
    kind: Sabotage,
    calls: AtomicU64,
}

impl<S: Strategy> Sabotaged<S> {
    fn fires(&self) -> bool {
        self.calls.fetch_add(1, Ordering::Relaxed) % SABOTAGE_EVERY == SABOTAGE_EVERY - 1
    }
}

impl<S: Strategy> Strategy for Sabotaged<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn reserve(&self, req: &Request) -> Result<Reservation, MapError> {
        self.inner.reserve(req)
    }
    fn release(&self, addr: PhysAddr) -> Result<Released, ReleaseError> {
        if self.kind == Sabotage::Leak && self.fires() {
            if let Some(l) = self.inner.locate(addr).filter(|l| l.start == addr) {
                return Ok(Released { orig: l.orig, size: l.remaining });
            }
        }
        self.inner.release(addr)
    }
    fn locate(&self, addr: PhysAddr) -> Option<Located> {
        let l = self.inner.locate(addr)?;
        if self.kind == Sabotage::Locate && self.fires() {
            return Some(Located { orig: l.orig + 1, ..l });
        }
        Some(l)
    }
    fn owns(&self, addr: PhysAddr) -> bool {
        self.inner.owns(addr)
    }
    fn max_mapping_size(&self, dev: &Device) -> usize {
        self.inner.max_mapping_size(dev)
    }
    fn addressing_limit(&self) -> PhysAddr {
        self.inner.addressing_limit()
    }
    fn stats(&self) -> PoolStats {
        self.inner.stats()
    }
    fn reset_hiwater(&self) {
        self.inner.reset_hiwater();
    }
    fn background_pending(&self) -> bool {
        self.inner.background_pending()
    }
    fn run_background(&self) -> BackgroundReport {
        self.inner.run_background()
    }
    fn audit(&self) -> Result<AuditReport, AuditError> {
        self.inner.audit()
    }
}

/// Compares what the bouncer, the pool, the strategy and the guest report after the
/// drain with what the threads counted.
fn final_checks<S: Strategy>(bouncer: &Bouncer<SimGuest, S>, guest: &SimGuest, c: &Counts, p: &mut Problems) -> String {
    let snap = bouncer.stats();
    let pool = bouncer.pool_stats();
    let sim = guest.stats();
    let pairs = [
        ("maps", snap.maps, c.maps),
        ("unmaps", snap.unmaps, c.unmaps),
        ("syncs for the CPU", snap.syncs_for_cpu, c.syncs_for_cpu),
        ("syncs for the device", snap.syncs_for_device, c.syncs_for_device),
        ("bytes to bounce", snap.bytes_to_bounce, c.bytes_to_bounce),
        ("bytes from bounce", snap.bytes_from_bounce, c.bytes_from_bounce),
        ("clamped overflows", snap.overflows_clamped, c.overflows_clamped),
    ];
    for (what, stats, threads) in pairs {
        if stats != threads {
            p.push(format!("statistics: BounceStats counts {stats} {what}, the threads made {threads}"));
        }
    }
    for r in FailureReason::ALL {
        let (stats, threads) = (snap.failures_of(r), c.failures[r as usize]);
        if stats != threads {
            p.push(format!(
                "statistics: BounceStats counts {stats} `{}` failures, the threads saw {threads}",
                r.name()
            ));
        }
    }
    if snap.maps != snap.unmaps {
        p.push(format!("{} maps but {} unmaps after the drain", snap.maps, snap.unmaps));
    }
    if snap.inflight_bytes != 0 {
        p.push(format!("{} bytes still in flight after the drain", snap.inflight_bytes));
    }
    if pool.used_bytes != 0 {
        p.push(format!("the pool reports {} bytes used after the drain", pool.used_bytes));
    }
    let q = pool.conversions.quarantined_pages;
    if sim.unknown_pages != q {
        p.push(format!("the guest has {} pages in unknown state, the strategy quarantined {q}", sim.unknown_pages));
    }
    if sim.shared_pages * PAGE_SIZE as u64 != pool.conversions.shared_bytes {
        p.push(format!(
            "the guest has {} shared pages, the strategy says {} bytes are shared",
            sim.shared_pages, pool.conversions.shared_bytes
        ));
    }
    if snap.inflight_bytes_peak > pool.conversions.shared_bytes_peak {
        p.push(format!(
            "{} bytes were in flight at once, more than the {} bytes ever shared",
            snap.inflight_bytes_peak, pool.conversions.shared_bytes_peak
        ));
    }
    match bouncer.strategy().audit() {
        Ok(r) => {
            let mut bad = Vec::new();
            if r.live_mappings != 0 {
                bad.push(format!("{} live mappings", r.live_mappings));
            }
            if r.used_bytes != 0 {
                bad.push(format!("{} bytes used", r.used_bytes));
            }
            if r.quarantined_pages != q {
                bad.push(format!("{} quarantined pages where the pool statistics say {q}", r.quarantined_pages));
            }
            if bad.is_empty() {
                format!(
                    "ok: nothing live or used, {} free and {} owned, {} pages quarantined",
                    bytes(r.free_bytes as u64),
                    bytes(r.owned_bytes as u64),
                    r.quarantined_pages
                )
            } else {
                let s = format!("failed: after the drain the audit finds {}", bad.join(", "));
                p.push(format!("audit {s}"));
                s
            }
        }
        Err(e) => {
            p.push(e.to_string());
            format!("failed: {}", e.0)
        }
    }
}

fn run_one<S: Strategy + 'static>(
    cfg: &StressConfig,
    name: &'static str,
    build: impl FnOnce(SimGuest, &BootConfig) -> Result<S, InitError>,
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
    let shared = Shared {
        bouncer: bouncer.clone(),
        guest: guest.clone(),
        devices: plan.devices.iter().map(|d| SimDevice::new(&guest, d.device)).collect(),
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
    let audit = final_checks(&bouncer, &guest, &counts, &mut problems);
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

/// The one-screen report of a run.
pub fn text(r: &StressReport) -> String {
    let c = &r.counts;
    let mut s = String::new();
    let faults = if r.faults { ", faults injected" } else { "" };
    let _ = writeln!(
        s,
        "== stress: {} == {} guest, {} threads, {:.1} s, seed {}{faults}",
        r.strategy, r.platform, r.threads, r.wall_secs, r.seed
    );
    let _ = writeln!(
        s,
        "  ops         {} ({:.0}/s): {} maps ({} single, {} entries in {} sg lists), {} unmaps ({} on another CPU)",
        r.ops, r.ops_per_sec, c.maps, c.singles, c.sg_entries, c.sg_lists, c.unmaps, c.remote_unmaps
    );
    let _ = writeln!(
        s,
        "  syncs       {} for the CPU, {} for the device ({} partial, {} clamped overflows)",
        c.syncs_for_cpu, c.syncs_for_device, c.partial_syncs, c.overflows_clamped
    );
    let _ = writeln!(
        s,
        "  bytes       {} copied in, {} copied out; {} device reads and {} device writes checked",
        bytes(c.bytes_to_bounce),
        bytes(c.bytes_from_bounce),
        c.device_reads,
        c.device_writes
    );
    let failures = if r.failures.is_empty() {
        "none".to_string()
    } else {
        r.failures.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(s, "  failures    {failures} (of {} map requests)", c.requests);
    let _ = writeln!(
        s,
        "  pressure    {} checks (a too-large map, then the largest maps until one is refused): {} maps",
        c.pressure_checks, c.pressure_maps
    );
    if r.faults {
        let _ = writeln!(
            s,
            "  faults      {} armed: {} conversion failures, {} allocation failures; {} pages quarantined",
            r.faults_injected, r.conversion_failures, r.alloc_failures, r.quarantined_pages
        );
    } else {
        let _ = writeln!(s, "  faults      off; {} pages quarantined", r.quarantined_pages);
    }
    let _ = writeln!(
        s,
        "  memory      peak shared {}, peak in flight {}, {} conversion calls, {} refill runs",
        bytes(r.shared_bytes_peak),
        bytes(r.inflight_bytes_peak),
        r.conversion_calls,
        r.refill_runs
    );
    let _ = writeln!(s, "  audit       {}", r.audit);
    let _ = writeln!(
        s,
        "  violations  {} ({} found by the checker, {} recorded by the simulated guest)",
        r.problems + r.sim_violations,
        r.problems,
        r.sim_violations
    );
    for v in &r.violations {
        let _ = writeln!(s, "    - {v}");
    }
    let _ = writeln!(s, "  result      {}", if r.pass { "PASS" } else { "FAIL" });
    s
}

/// The `--json` document.
#[derive(Debug, serde::Serialize)]
pub struct StressDoc<'a> {
    /// The command line.
    pub command: &'a str,
    /// Seconds each strategy was asked to run.
    pub duration_secs: f64,
    /// Whether every run passed.
    pub pass: bool,
    /// One report per strategy.
    pub results: &'a [StressReport],
}

#[cfg(test)]
mod tests {
    use super::*;
    use bounce_framework::sim::PlatformKind;

    use crate::registry::fixture::Classes;

    fn cfg() -> StressConfig {
        StressConfig {
            machine: Machine { platform: PlatformKind::Plain, memory: 256 << 20, boot: BootConfig::default() },
            duration: Duration::from_millis(400),
            threads: 2,
            seed: 3,
            faults: false,
            sabotage: None,
        }
    }

    #[test]
    fn a_correct_strategy_passes_and_every_kind_of_operation_ran() {
        let r = run_one(&cfg(), "fixture", Classes::from_boot).unwrap();
        assert!(r.pass, "{}", text(&r));
        let c = r.counts;
        for (what, n) in [
            ("singles", c.singles),
            ("sg lists", c.sg_lists),
            ("syncs for the CPU", c.syncs_for_cpu),
            ("syncs for the device", c.syncs_for_device),
            ("partial syncs", c.partial_syncs),
            ("clamped overflows", c.overflows_clamped),
            ("bytes from bounce", c.bytes_from_bounce),
            ("device writes", c.device_writes),
            ("remote unmaps", c.remote_unmaps),
            ("pressure checks", c.pressure_checks),
        ] {
            assert!(n > 0, "no {what}:\n{}", text(&r));
        }
        assert_eq!(c.maps, c.unmaps);
        // Every pressure check ends in a refusal (the fixture cannot grow) and a
        // too-large map.
        assert_eq!(r.failures.get("too_large").copied(), Some(c.pressure_checks), "{}", text(&r));
        assert!(r.failures.get("exhausted").copied().unwrap_or(0) >= c.pressure_checks);
        assert!(r.audit.starts_with("ok"), "{}", r.audit);
    }

    #[test]
    fn a_strategy_that_hands_one_buffer_to_two_mappings_fails() {
        let r = run_one(&cfg(), "broken", Classes::broken_from_boot).unwrap();
        assert!(!r.pass, "{}", text(&r));
        assert!(r.problems > 0);
        assert!(r.violations.iter().any(|v| v.contains("the device read")), "{:?}", r.violations);
    }

    #[test]
    fn gate_releases_everyone_and_can_be_abandoned() {
        let g = Gate::new(3);
        thread::scope(|s| {
            let hs: Vec<_> = (0..3).map(|_| s.spawn(|| (0..50).all(|_| g.wait()))).collect();
            assert!(hs.into_iter().all(|h| h.join().unwrap()));
        });
        let g = Gate::new(2);
        thread::scope(|s| {
            let h = s.spawn(|| g.wait());
            thread::sleep(Duration::from_millis(20));
            g.abort();
            assert!(!h.join().unwrap());
        });
        assert!(!g.wait());
    }
}
