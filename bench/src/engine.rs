//! The run engine: one strategy, one [`Plan`], on a fresh simulated guest.
//!
//! A phase builds a guest (conversions spin for real so they cost throughput; bus
//! addresses without the TDX shared bit, as Linux 6.12 on x86 hands them out), boots
//! the strategy from a [`BootConfig`], lets its background work settle (kccd fills the
//! pools before I/O starts, as after boot), then releases the worker threads together.
//! A refill thread calls `run_background()` whenever the map path wakes it (or every
//! millisecond while work is pending), and the main thread samples shared memory and
//! bytes in flight every few milliseconds.
//!
//! Latency is measured on one map+unmap pair in [`LATENCY_SAMPLE_EVERY`] (two clock reads
//! around each of the two calls), so the clock costs little throughput. The copy versus
//! metadata split comes from a separate phase with the bouncer's own timing switched on
//! (see [`ClockCost`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use bounce_framework::sim::{set_current_cpu, PlatformKind, SimConfig, SimDevice, SimGuest};
use bounce_framework::{
    BackgroundReport, BootConfig, BounceSnapshot, Bouncer, BouncerOptions, ConversionStats, DeviceSnapshot, DmaAddr,
    DmaAttrs, DmaDirection, InitError, LaneRoutes, PhysAddr, Platform, PoolStats, Strategy, PAGE_SIZE,
};
use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;

use crate::workload::{Handoff, Op, Plan};

/// One map+unmap pair in this many has its latency measured.
pub const LATENCY_SAMPLE_EVERY: u64 = 16;

/// Builds a strategy on a guest from boot parameters (`X::from_boot`).
pub type Ctor<S> = fn(SimGuest, &BootConfig) -> Result<S, InitError>;

/// How long a phase runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Until the time is up.
    Duration(Duration),
    /// This many map requests in total, split evenly over the threads.
    Ops(u64),
    /// Each thread runs its own stream once (replays: streams differ in length).
    Streams,
}

/// The simulated machine.
#[derive(Clone, Debug)]
pub struct Machine {
    /// TDX, SNP or plain.
    pub platform: PlatformKind,
    /// Guest RAM in bytes (the strategies size their default pools from it); grown
    /// automatically when a plan's own buffers need more than half of it.
    pub memory: usize,
    /// The boot command line the strategies read.
    pub boot: BootConfig,
    /// Strategy instances and device routes the bench sets itself (`compare --ab`: two
    /// instances even of one strategy); `None`: those of `boot`'s per-device routes.
    pub lanes: Option<Lanes>,
}

/// Strategy instances (lanes) and the devices routed to them, as a boot's per-device
/// routes give them ([`BootConfig::lanes`]) but chosen by the bench.
#[derive(Clone, Debug, Default)]
pub struct Lanes {
    /// One boot configuration per instance, lane 0 (every unrouted device's) first.
    pub configs: Vec<BootConfig>,
    /// `(device name, lane)` per routed device.
    pub routes: LaneRoutes,
}

impl Machine {
    /// The strategy instances to boot and the routes between them: the `lanes` field
    /// when set, else `boot`'s ([`BootConfig::lanes`]).
    pub fn lanes(&self) -> (Vec<BootConfig>, LaneRoutes) {
        self.lanes.as_ref().map_or_else(|| self.boot.lanes(), |l| (l.configs.clone(), l.routes.clone()))
    }

    /// The guest RAM a plan runs with: `memory`, or more when the workload's buffers
    /// would take over half of it.
    pub fn memory_for(&self, plan: &Plan) -> usize {
        let need = buffer_bytes(plan) * 2 + (256 << 20);
        self.memory.max(need).next_multiple_of(PAGE_SIZE)
    }
}

/// What a phase measures besides throughput.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseOptions {
    /// Bouncer timing (copy versus metadata split).
    pub timing: bool,
    /// Check every mapping's data through the device model.
    pub verify: bool,
    /// Record `swiotlb_bounced` trace lines.
    pub trace: bool,
}

/// A sample of memory over time.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Milliseconds since the workers started.
    pub t_ms: f64,
    /// Shared bytes committed by the strategy.
    pub shared_bytes: u64,
    /// Bytes of live mappings.
    pub inflight_bytes: u64,
    /// Bytes reserved by live mappings (rounding included).
    pub used_bytes: u64,
    /// Conversion calls since boot.
    pub conversion_calls: u64,
}

/// Everything one phase measured.
#[derive(Debug)]
pub struct PhaseResult {
    /// The strategy's name.
    pub strategy: &'static str,
    /// Wall time the workers were active (bursts: the active windows only).
    pub wall: Duration,
    /// Map requests attempted.
    pub attempted: u64,
    /// Successful maps.
    pub maps: u64,
    /// Completed map+unmap pairs.
    pub pairs: u64,
    /// Copies the bouncer made (map always, unmap for device-to-memory directions).
    pub copies: u64,
    /// DMA-API counters at the end.
    pub snapshot: BounceSnapshot,
    /// The same per device, with the strategy instance (lane) each maps through.
    pub devices: Vec<(DeviceSnapshot, &'static str)>,
    /// Per strategy instance (lane), the default first.
    pub lanes: Vec<LaneResult>,
    /// Pool statistics at the end.
    pub pool: PoolStats,
    /// Conversions before the workers started (boot and settling).
    pub conv_before: ConversionStats,
    /// Map+unmap latency (sampled pairs), nanoseconds.
    pub latency: Histogram<u64>,
    /// Memory over time.
    pub timeline: Vec<Sample>,
    /// Device-model and guest violations.
    pub violations: usize,
    /// The first violations recorded.
    pub violation_examples: Vec<String>,
    /// Data mismatches found in `--verify` mode.
    pub data_errors: u64,
    /// Unmaps the bouncer refused (a strategy bug).
    pub unmap_errors: u64,
    /// The first data or unmap error.
    pub first_error: Option<String>,
    /// The strategy's audit after all mappings were released.
    pub audit: Result<(), String>,
    /// Live mappings the audit found after the drain (must be 0).
    pub leaked_mappings: usize,
    /// Guest RAM used.
    pub memory: usize,
    /// Trace lines recorded (`PhaseOptions::trace`), with the CPU and time of each map.
    pub trace: Vec<String>,
    /// Cumulative bouncer timing at every sample (timing phases only).
    pub timing: Vec<TimingSample>,
}

/// One strategy instance's (lane's) share of a phase.
#[derive(Clone, Debug)]
pub struct LaneResult {
    /// The strategy.
    pub strategy: &'static str,
    /// DMA-API counters of the devices it served ([`Bouncer::lane_stats`]: the in-flight
    /// peak is the sum of their peaks).
    pub snapshot: BounceSnapshot,
    /// Its own pool statistics.
    pub pool: PoolStats,
    /// Copies the bouncer made for its devices.
    pub copies: u64,
    /// Its devices' cumulative timing at every sample (timing phases only).
    pub timing: Vec<TimingSample>,
}

/// The bouncer's cumulative timing counters at one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimingSample {
    /// Operations timed so far.
    pub timed_ops: u64,
    /// Nanoseconds in timed operations.
    pub op_ns: u64,
    /// Nanoseconds of those copying.
    pub copy_ns: u64,
    /// Unmaps so far (completed pairs).
    pub unmaps: u64,
}

impl TimingSample {
    /// The timing counters of `s`.
    pub const fn of(s: &BounceSnapshot) -> Self {
        Self { timed_ops: s.timed_ops, op_ns: s.op_ns, copy_ns: s.copy_ns, unmaps: s.unmaps }
    }
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The strategy refused its boot configuration.
    #[error("strategy {strategy} could not boot: {source}")]
    Init {
        /// The strategy.
        strategy: String,
        /// Its error.
        source: InitError,
    },
    /// The guest has no room for the workload's own buffers.
    #[error("guest memory of {memory} bytes has no room for {need} bytes of workload buffers; raise --memory")]
    NoMemory {
        /// Guest RAM.
        memory: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A worker thread panicked.
    #[error("a worker thread panicked: {0}")]
    Worker(String),
}

/// What the bouncer's own timing adds to what it measures, measured on this machine.
///
/// With timing on, the bouncer reads the clock at the start and end of every operation
/// and around every copy. Reads inside a window add to it. Rather than model that, the
/// exact pattern is replayed with nothing between the reads: what an operation window
/// minus its copy window shows then is pure clock overhead, and so is what an empty copy
/// window shows. Those amounts are taken out of the timing phase's sums.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ClockCost {
    /// Nanoseconds per `Platform::now_ns` call (for the record).
    pub ns_per_read: f64,
    /// Overhead in "operation minus copy" of an operation that copies once.
    pub op_with_copy_ns: f64,
    /// Overhead of an operation that does not copy.
    pub op_without_copy_ns: f64,
    /// Overhead inside one copy window.
    pub copy_window_ns: f64,
}

impl ClockCost {
    /// No overhead (tests).
    pub const ZERO: Self =
        Self { ns_per_read: 0.0, op_with_copy_ns: 0.0, op_without_copy_ns: 0.0, copy_window_ns: 0.0 };

    /// Measures the simulated guest's clock: each pattern in 200 chunks of 250
    /// repetitions, the median chunk (a chunk the OS preempted is an outlier, not the
    /// answer).
    pub fn measure(guest: &SimGuest) -> Self {
        const CHUNKS: usize = 200;
        const N: u32 = 250;
        let now = || std::hint::black_box(guest.now_ns());
        let mut read = Vec::with_capacity(CHUNKS);
        let mut with_copy = Vec::with_capacity(CHUNKS);
        let mut copy_window = Vec::with_capacity(CHUNKS);
        let mut without_copy = Vec::with_capacity(CHUNKS);
        for _ in 0..CHUNKS {
            let t = Instant::now();
            let mut acc = 0u64;
            for _ in 0..N {
                acc = acc.wrapping_add(now());
            }
            std::hint::black_box(acc);
            read.push(t.elapsed().as_nanos() as f64 / f64::from(N));
            // The bouncer's pattern for an operation with one copy ...
            let (mut op, mut copy) = (0u64, 0u64);
            for _ in 0..N {
                let t0 = now();
                let c0 = now();
                let c1 = now();
                let t1 = now();
                op += t1.saturating_sub(t0);
                copy += c1.saturating_sub(c0);
            }
            with_copy.push(op.saturating_sub(copy) as f64 / f64::from(N));
            copy_window.push(copy as f64 / f64::from(N));
            // ... and without a copy.
            let mut op = 0u64;
            for _ in 0..N {
                let t0 = now();
                let t1 = now();
                op += t1.saturating_sub(t0);
            }
            without_copy.push(op as f64 / f64::from(N));
        }
        Self {
            ns_per_read: median(&mut read),
            op_with_copy_ns: median(&mut with_copy),
            op_without_copy_ns: median(&mut without_copy),
            copy_window_ns: median(&mut copy_window),
        }
    }

    /// The overhead in `(metadata, copy)` sums of `ops` timed operations of which
    /// `copies` copied once.
    pub fn overhead(&self, ops: f64, copies: f64) -> (f64, f64) {
        let copies = copies.min(ops);
        (copies * self.op_with_copy_ns + (ops - copies) * self.op_without_copy_ns, copies * self.copy_window_ns)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Per-thread buffer bytes a plan needs.
pub fn buffer_bytes(plan: &Plan) -> usize {
    let per_thread: usize = plan.devices.iter().map(|d| d.depth * slot_size(d.max_extent)).sum();
    per_thread * plan.streams.len()
}

pub(crate) fn slot_size(max_extent: usize) -> usize {
    max_extent.next_multiple_of(PAGE_SIZE)
}

/// The buffers for the original data: per thread of `plan`, one region of `depth`
/// slots per device, every byte set to `fill`.
pub(crate) fn alloc_regions(guest: &SimGuest, plan: &Plan, fill: u8) -> Result<Vec<Vec<PhysAddr>>, RunError> {
    let mut regions = Vec::with_capacity(plan.streams.len());
    for _ in &plan.streams {
        let mut per = Vec::with_capacity(plan.devices.len());
        for d in &plan.devices {
            let bytes = d.depth * slot_size(d.max_extent);
            let a = guest
                .alloc_private(bytes)
                .map_err(|_| RunError::NoMemory { memory: guest.config().memory_bytes, need: buffer_bytes(plan) })?;
            guest.fill(a, fill, bytes);
            per.push(a);
        }
        regions.push(per);
    }
    Ok(regions)
}

/// A live mapping.
#[derive(Clone, Copy, Debug)]
struct Live {
    dma: DmaAddr,
    orig: PhysAddr,
    size: u32,
    dir: DmaDirection,
    device: u8,
    owner: u16,
    cpu: Option<u16>,
    seq: u64,
    map_ns: Option<u64>,
}

/// State shared by the workers of one phase.
struct Shared<S: Strategy> {
    bouncer: Arc<Bouncer<SimGuest, S>>,
    guest: SimGuest,
    plan: Arc<Plan>,
    devices: Vec<SimDevice>,
    stop: AtomicBool,
    /// `NextCpu` handoff: one inbox per thread, and each producer's count in flight.
    queues: Vec<ArrayQueue<Live>>,
    inflight: Vec<AtomicUsize>,
    producers_done: AtomicUsize,
    workers_done: AtomicUsize,
    start: Barrier,
    verify: bool,
    threads: usize,
    cpus: usize,
    /// Ops per thread in `Limit::Ops` mode (`u64::MAX`: until stopped).
    quota: Vec<u64>,
    cycles: usize,
    cycle_barrier: Barrier,
}

struct WorkerOut {
    attempted: u64,
    maps: u64,
    pairs: u64,
    /// Copies per plan device.
    copies: Vec<u64>,
    data_errors: u64,
    unmap_errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
    windows: Vec<(Instant, Instant)>,
}

struct Worker<'a, S: Strategy> {
    sh: &'a Shared<S>,
    me: usize,
    regions: Vec<PhysAddr>,
    seqs: Vec<u64>,
    rings: Vec<VecDeque<Live>>,
    stream_pos: usize,
    issued: u64,
    out: WorkerOut,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

/// The deterministic bytes of one mapping (`which` 0: written by the CPU before the
/// map, 1: written by the device): a 64-byte block drawn from the mapping's identity,
/// repeated with each block's first 8 bytes replaced by its index, so data copied to
/// the wrong offset or from another mapping does not compare equal.
pub(crate) fn fill_pattern(buf: &mut [u8], owner: u16, seq: u64, which: u64) {
    let mut x = (u64::from(owner) << 48) ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (which << 62) | 1;
    let mut block = [0u8; 64];
    for word in block.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
    for (i, chunk) in buf.chunks_mut(64).enumerate() {
        let n = chunk.len();
        chunk.copy_from_slice(&block[..n]);
        let tag = (i as u64 ^ x).to_le_bytes();
        let t = n.min(8);
        chunk[..t].copy_from_slice(&tag[..t]);
    }
}

impl<'a, S: Strategy> Worker<'a, S> {
    fn new(sh: &'a Shared<S>, me: usize, regions: Vec<PhysAddr>) -> Self {
        let n = sh.plan.devices.len();
        Self {
            sh,
            me,
            regions,
            seqs: vec![0; n],
            rings: sh.plan.devices.iter().map(|d| VecDeque::with_capacity(d.depth)).collect(),
            stream_pos: 0,
            issued: 0,
            out: WorkerOut {
                attempted: 0,
                maps: 0,
                pairs: 0,
                copies: vec![0; n],
                data_errors: 0,
                unmap_errors: 0,
                first_error: None,
                latency: new_histogram(),
                windows: Vec::new(),
            },
        }
    }

    fn error(&mut self, msg: String) {
        if self.out.first_error.is_none() {
            self.out.first_error = Some(msg);
        }
    }

    fn home_cpu(&self) -> usize {
        self.me % self.sh.cpus
    }

    /// The next op of this thread's stream, or `None` when its quota or stream is done.
    fn next_op(&mut self) -> Option<Op> {
        let stream = &self.sh.plan.streams[self.me];
        if stream.is_empty() || self.issued >= self.sh.quota[self.me] || self.sh.stop.load(Ordering::Relaxed) {
            return None;
        }
        if self.stream_pos == stream.len() {
            if !self.sh.plan.repeat {
                return None;
            }
            self.stream_pos = 0;
        }
        let op = stream[self.stream_pos];
        self.stream_pos += 1;
        self.issued += 1;
        Some(op)
    }

    fn map(&mut self, op: Op) -> Option<Live> {
        let sh = self.sh;
        let d = usize::from(op.device);
        let spec = &sh.plan.devices[d];
        let seq = self.seqs[d];
        let slot = (seq % spec.depth as u64) as usize;
        let orig = self.regions[d] + (slot * slot_size(spec.max_extent) + op.offset as usize) as u64;
        let size = op.size as usize;
        if sh.verify {
            let mut buf = vec![0; size];
            fill_pattern(&mut buf, self.me as u16, seq, 0);
            sh.guest.write(orig, &buf);
        }
        if let Some(cpu) = op.cpu {
            set_current_cpu(Some(usize::from(cpu) % sh.cpus));
        }
        self.out.attempted += 1;
        let sample = self.out.attempted % LATENCY_SAMPLE_EVERY == 1;
        let t0 = sample.then(Instant::now);
        let attrs = if spec.may_block { DmaAttrs::NO_WARN | DmaAttrs::MAY_BLOCK } else { DmaAttrs::NO_WARN };
        // The attached device: its route was resolved once, at attach.
        let r = sh.bouncer.map_single(sh.devices[d].device(), orig, size, op.dir, attrs);
        let map_ns = t0.map(|t| t.elapsed().as_nanos() as u64);
        if op.cpu.is_some() {
            set_current_cpu(Some(self.home_cpu()));
        }
        let Ok(dma) = r else { return None };
        self.seqs[d] += 1;
        self.out.maps += 1;
        self.out.copies[d] += 1;
        if sh.verify {
            self.device_side(d, dma, op, seq);
        }
        Some(Live {
            dma,
            orig,
            size: op.size,
            dir: op.dir,
            device: op.device,
            owner: self.me as u16,
            cpu: op.cpu,
            seq,
            map_ns,
        })
    }

    /// What the device does while the mapping is live: read it (every direction: map
    /// copies in even for `FromDevice`) and, for device-to-memory directions, write.
    fn device_side(&mut self, d: usize, dma: DmaAddr, op: Op, seq: u64) {
        let dev = &self.sh.devices[d];
        let size = op.size as usize;
        let mut want = vec![0; size];
        fill_pattern(&mut want, self.me as u16, seq, 0);
        let mut got = vec![0; size];
        match dev.read(&*self.sh.bouncer, dma, &mut got) {
            Ok(()) if got == want => {}
            Ok(()) => {
                self.out.data_errors += 1;
                let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                self.error(format!(
                    "{}: device read of {dma} differs from the original at byte {at}",
                    dev.device().name()
                ));
            }
            Err(e) => {
                self.out.data_errors += 1;
                self.error(format!("device read refused: {e}"));
            }
        }
        if op.dir.from_device() {
            fill_pattern(&mut want, self.me as u16, seq, 1);
            if let Err(e) = dev.write(&*self.sh.bouncer, dma, &want) {
                self.out.data_errors += 1;
                self.error(format!("device write refused: {e}"));
            }
        }
    }

    fn unmap(&mut self, l: Live) {
        let sh = self.sh;
        let d = usize::from(l.device);
        let dev = sh.devices[d].device();
        if let Some(cpu) = l.cpu {
            set_current_cpu(Some(usize::from(cpu) % sh.cpus));
        }
        let t0 = l.map_ns.map(|_| Instant::now());
        let r = sh.bouncer.unmap_single(dev, l.dma, l.size as usize, l.dir, DmaAttrs::empty());
        let unmap_ns = t0.map(|t| t.elapsed().as_nanos() as u64);
        if l.cpu.is_some() {
            set_current_cpu(Some(self.home_cpu()));
        }
        if let Err(e) = r {
            self.out.unmap_errors += 1;
            self.error(format!("unmap of {} refused: {e}", l.dma));
            return;
        }
        self.out.pairs += 1;
        if l.dir.from_device() {
            self.out.copies[d] += 1;
        }
        if let (Some(m), Some(u)) = (l.map_ns, unmap_ns) {
            self.out.latency.saturating_record((m + u).max(1));
        }
        if sh.verify {
            let mut want = vec![0; l.size as usize];
            fill_pattern(&mut want, l.owner, l.seq, u64::from(l.dir.from_device()));
            let got = sh.guest.read_vec(l.orig, l.size as usize);
            if got != want {
                self.out.data_errors += 1;
                let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                self.error(format!(
                    "{}: original at {} holds wrong data after unmap ({}), first difference at byte {at}",
                    dev.name(),
                    l.orig,
                    l.dir
                ));
            }
        }
    }

    /// `SameCpu`: per-device rings, oldest unmapped first.
    fn run_rings(&mut self) {
        while let Some(op) = self.next_op() {
            self.ring_step(op);
        }
        self.drain_rings();
    }

    /// One ring operation: unmap the device's oldest mapping when its ring is full,
    /// then map `op`.
    fn ring_step(&mut self, op: Op) {
        let d = usize::from(op.device);
        if self.rings[d].len() >= self.sh.plan.devices[d].depth {
            if let Some(old) = self.rings[d].pop_front() {
                self.unmap(old);
            }
        }
        if let Some(l) = self.map(op) {
            self.rings[d].push_back(l);
        }
    }

    fn drain_rings(&mut self) {
        for d in 0..self.rings.len() {
            while let Some(l) = self.rings[d].pop_front() {
                self.unmap(l);
            }
        }
    }

    /// `NextCpu`: map here, unmap on the next thread (or the next simulated CPU).
    fn run_handoff(&mut self) {
        const BATCH: usize = 16;
        let sh = self.sh;
        let n = sh.threads;
        let next = (self.me + 1) % n;
        let unmap_cpu = if n == 1 { (self.home_cpu() + 1) % sh.cpus } else { self.home_cpu() };
        let depth = sh.plan.devices.iter().map(|d| d.depth).sum::<usize>();
        let mut producing = true;
        loop {
            let mut progressed = false;
            if n == 1 {
                set_current_cpu(Some(unmap_cpu));
            }
            for _ in 0..BATCH {
                let Some(l) = sh.queues[self.me].pop() else { break };
                let owner = usize::from(l.owner);
                self.unmap(l);
                sh.inflight[owner].fetch_sub(1, Ordering::Release);
                progressed = true;
            }
            if n == 1 {
                set_current_cpu(Some(self.home_cpu()));
            }
            if producing {
                for _ in 0..BATCH {
                    if sh.inflight[self.me].load(Ordering::Acquire) >= depth {
                        break;
                    }
                    let Some(op) = self.next_op() else {
                        producing = false;
                        sh.producers_done.fetch_add(1, Ordering::Release);
                        break;
                    };
                    progressed = true;
                    if let Some(l) = self.map(op) {
                        sh.inflight[self.me].fetch_add(1, Ordering::Relaxed);
                        if sh.queues[next].push(l).is_err() {
                            // Cannot happen: each inbox has one producer, bounded by `depth`.
                            unreachable!("handoff queue overflow");
                        }
                    }
                }
            }
            if !producing && sh.producers_done.load(Ordering::Acquire) == n && sh.queues[self.me].is_empty() {
                break;
            }
            if !progressed {
                thread::yield_now();
            }
        }
    }

    fn run(mut self) -> WorkerOut {
        set_current_cpu(Some(self.home_cpu()));
        self.sh.start.wait();
        if let Some(burst) = self.sh.plan.burst {
            let per_cycle = if self.sh.quota[self.me] == u64::MAX {
                u64::MAX
            } else {
                self.sh.quota[self.me].div_ceil(self.sh.cycles as u64)
            };
            let quota = self.sh.quota[self.me];
            for cycle in 0..self.sh.cycles {
                self.sh.cycle_barrier.wait();
                thread::sleep(burst.idle);
                let start = Instant::now();
                let deadline = start + burst.active;
                let limit = if per_cycle == u64::MAX { u64::MAX } else { (per_cycle * (cycle as u64 + 1)).min(quota) };
                loop {
                    if self.issued >= limit || (per_cycle == u64::MAX && Instant::now() >= deadline) {
                        break;
                    }
                    let Some(op) = self.next_op() else { break };
                    self.ring_step(op);
                }
                self.drain_rings();
                self.out.windows.push((start, Instant::now()));
            }
        } else {
            let start = Instant::now();
            match self.sh.plan.handoff {
                Handoff::SameCpu => self.run_rings(),
                Handoff::NextCpu => self.run_handoff(),
            }
            self.out.windows.push((start, Instant::now()));
        }
        self.sh.workers_done.fetch_add(1, Ordering::Release);
        set_current_cpu(None);
        self.out
    }
}

/// Runs background work until the strategy is idle (bounded), as kccd does after boot.
pub(crate) fn settle<S: Strategy>(bouncer: &Bouncer<SimGuest, S>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while bouncer.background_pending() && Instant::now() < deadline {
        bouncer.run_background();
    }
}

/// The refill thread (kccd): bounce-pools's std-thread runner, woken by the map path
/// through the simulated guest and ticking every few milliseconds, calling the
/// strategy's `run_background()` until stopped.
pub struct RefillThread {
    runner: Option<bounce_pools::ThreadRunner>,
}

impl RefillThread {
    /// Starts the thread.
    ///
    /// # Panics
    /// When the OS cannot spawn a thread.
    pub fn start<S: Strategy + 'static>(bouncer: Arc<Bouncer<SimGuest, S>>) -> Self {
        let guest = bouncer.platform().clone();
        Self::spawn(guest, move || bouncer.run_background())
    }

    /// Starts the thread with each run holding `pause`: whoever takes the lock between
    /// two runs (the `bounce stress` audits) finds no growth or shrink halfway done.
    ///
    /// # Panics
    /// When the OS cannot spawn a thread.
    pub fn start_pausable<S: Strategy + 'static>(bouncer: Arc<Bouncer<SimGuest, S>>, pause: Arc<Mutex<()>>) -> Self {
        let guest = bouncer.platform().clone();
        Self::spawn(guest, move || {
            let _running = pause.lock().unwrap_or_else(PoisonError::into_inner);
            bouncer.run_background()
        })
    }

    fn spawn(guest: SimGuest, work: impl FnMut() -> BackgroundReport + Send + 'static) -> Self {
        let runner = bounce_pools::ThreadRunner::for_sim(guest, work).expect("spawning the refill thread");
        Self { runner: Some(runner) }
    }

    /// Stops and joins the thread; returns how often it ran.
    pub fn stop(mut self) -> bounce_pools::RunnerTotals {
        self.runner.take().map(bounce_pools::ThreadRunner::stop).unwrap_or_default()
    }
}

/// Builds the guest for a plan.
pub fn make_guest(machine: &Machine, plan: &Plan) -> SimGuest {
    let threads = plan.streams.len().max(1);
    let mut cfg = SimConfig::new(machine.platform, machine.memory_for(plan), threads.max(2));
    cfg.spin = true;
    SimGuest::new(cfg)
}

/// Boots strategy `S` on a fresh guest for `plan`.
///
/// # Errors
/// [`RunError::Init`] when the strategy refuses the configuration.
pub fn boot<S: Strategy + 'static>(
    ctor: impl Fn(SimGuest, &BootConfig) -> Result<S, InitError>,
    name: &str,
    machine: &Machine,
    plan: &Plan,
    options: BouncerOptions,
) -> Result<Arc<Bouncer<SimGuest, S>>, RunError> {
    let guest = make_guest(machine, plan);
    let init = |source| RunError::Init { strategy: name.into(), source };
    // The bench's own lanes (`Machine::lanes`, e.g. --ab) always apply; --cmdline's
    // per-device routes apply in the routed row only. One instance per lane, each built
    // by `ctor` from its own command line; every other row runs its strategy alone,
    // unrouted, as the baseline.
    let (configs, routes) = if name == crate::registry::ROUTED || machine.lanes.is_some() {
        machine.lanes()
    } else {
        (vec![BootConfig { routes: Vec::new(), ..machine.boot.clone() }], LaneRoutes::new())
    };
    let mut lanes = Vec::with_capacity(configs.len());
    for c in &configs {
        lanes.push(ctor(guest.clone(), c).map_err(init)?);
    }
    // `swiotlb.scrub=on` on --cmdline applies as on a kernel command line.
    let options = BouncerOptions { scrub: options.scrub || machine.boot.scrub, ..options };
    let bouncer = Arc::new(Bouncer::with_lanes(guest, lanes, &routes, options).map_err(init)?);
    settle(&bouncer);
    Ok(bouncer)
}

/// The plan's devices on `bouncer`'s guest, attached to it (their routes resolved once,
/// as a kernel driver's `struct device` is set up once).
pub(crate) fn attached_devices<S: Strategy>(bouncer: &Bouncer<SimGuest, S>, plan: &Plan) -> Vec<SimDevice> {
    plan.devices
        .iter()
        .map(|d| {
            let mut dev = d.device;
            bouncer.attach(&mut dev);
            SimDevice::new(bouncer.platform(), dev)
        })
        .collect()
}

/// Runs one phase of `plan` on strategy `S`. `tick` is called from the sampling loop.
///
/// # Errors
/// [`RunError`] when the strategy does not boot, memory is short or a worker panics.
pub fn run_phase<S: Strategy + 'static>(
    ctor: Ctor<S>,
    name: &'static str,
    machine: &Machine,
    plan: &Arc<Plan>,
    limit: Limit,
    opts: PhaseOptions,
    tick: &dyn Fn(),
) -> Result<PhaseResult, RunError> {
    let options = BouncerOptions { timing: opts.timing, trace: opts.trace, ..BouncerOptions::default() };
    let bouncer = boot(ctor, name, machine, plan, options)?;
    let guest = bouncer.platform().clone();
    if opts.trace {
        guest.record_trace(true);
    }
    let threads = plan.streams.len();
    let cpus = guest.config().cpus;
    // Application buffers are resident: fault them in now, not inside the timed copies.
    let regions = alloc_regions(&guest, plan, 0x5a)?;
    let quota: Vec<u64> = match limit {
        Limit::Duration(_) => vec![u64::MAX; threads],
        Limit::Ops(n) => (0..threads as u64).map(|t| n / threads as u64 + u64::from(t < n % threads as u64)).collect(),
        Limit::Streams => plan.streams.iter().map(|s| s.len() as u64).collect(),
    };
    let cycles = match (plan.burst, limit) {
        (None, _) => 1,
        (Some(_), Limit::Ops(_) | Limit::Streams) => 2,
        (Some(b), Limit::Duration(d)) => {
            usize::try_from(d.as_nanos() / (b.idle + b.active).as_nanos().max(1)).unwrap_or(usize::MAX).max(1)
        }
    };
    let handoff_depth: usize = plan.devices.iter().map(|d| d.depth).sum();
    let shared = Arc::new(Shared {
        bouncer: bouncer.clone(),
        guest: guest.clone(),
        plan: plan.clone(),
        devices: attached_devices(&bouncer, plan),
        stop: AtomicBool::new(false),
        queues: (0..threads).map(|_| ArrayQueue::new(handoff_depth.max(1))).collect(),
        inflight: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
        producers_done: AtomicUsize::new(0),
        workers_done: AtomicUsize::new(0),
        start: Barrier::new(threads + 1),
        verify: opts.verify,
        threads,
        cpus,
        quota,
        cycles,
        cycle_barrier: Barrier::new(threads),
    });
    let refill = RefillThread::start(bouncer.clone());
    let conv_before = bouncer.pool_stats().conversions;
    let handles: Vec<_> = regions
        .into_iter()
        .enumerate()
        .map(|(t, regs)| {
            let sh = shared.clone();
            thread::Builder::new()
                .name(format!("bounce-{t}"))
                .spawn(move || Worker::new(&sh, t, regs).run())
                .expect("spawning a worker thread")
        })
        .collect();
    let mut timeline = Vec::new();
    shared.start.wait();
    let t0 = Instant::now();
    let mut timing = Vec::new();
    // Per lane too, when there is more than one (else the same as `timing`).
    let lane_count = bouncer.lanes().len();
    let mut lane_timing: Vec<Vec<TimingSample>> = vec![Vec::new(); lane_count];
    let mut sample = |timeline: &mut Vec<Sample>| {
        let pool = bouncer.pool_stats();
        let snap = bouncer.stats();
        timeline.push(Sample {
            t_ms: t0.elapsed().as_secs_f64() * 1e3,
            shared_bytes: pool.conversions.shared_bytes,
            inflight_bytes: snap.inflight_bytes,
            used_bytes: pool.used_bytes as u64,
            conversion_calls: pool.conversions.calls(),
        });
        if opts.timing {
            timing.push(TimingSample::of(&snap));
            if lane_count > 1 {
                for (l, t) in lane_timing.iter_mut().enumerate() {
                    t.push(TimingSample::of(&bouncer.lane_stats(l)));
                }
            }
        }
    };
    sample(&mut timeline);
    let interval = Duration::from_millis(5);
    while shared.workers_done.load(Ordering::Acquire) < threads {
        thread::sleep(interval);
        sample(&mut timeline);
        tick();
        if let Limit::Duration(d) = limit {
            if plan.burst.is_none() && t0.elapsed() >= d {
                shared.stop.store(true, Ordering::Relaxed);
            }
        }
    }
    let mut results = Vec::with_capacity(threads);
    for h in handles {
        results.push(h.join().map_err(|e| RunError::Worker(panic_message(&*e)))?);
    }
    sample(&mut timeline);
    refill.stop();
    let wall = measured_wall(&results, plan.burst.is_some(), cycles);
    let snapshot = bouncer.stats();
    let pool = bouncer.pool_stats();
    if lane_count == 1 {
        lane_timing[0].clone_from(&timing);
    }
    let lanes = bouncer.lanes();
    // Copies per plan device, then per lane (the one each device is routed to).
    let mut device_copies = vec![0u64; plan.devices.len()];
    for o in &results {
        for (sum, n) in device_copies.iter_mut().zip(&o.copies) {
            *sum += n;
        }
    }
    let mut lane_copies = vec![0u64; lanes.len()];
    for (dev, n) in shared.devices.iter().zip(device_copies) {
        // A device no instance serves (a native route) has no lane to count in.
        if let Some(sum) = lane_copies.get_mut(usize::from(bouncer.route(dev.device()).lane)) {
            *sum += n;
        }
    }
    let lane_results = lanes
        .iter()
        .zip(lane_timing)
        .zip(lane_copies)
        .enumerate()
        .map(|(l, ((s, timing), copies))| LaneResult {
            strategy: s.name(),
            snapshot: bouncer.lane_stats(l),
            pool: s.stats(),
            copies,
            timing,
        })
        .collect();
    let devices = bouncer
        .device_stats()
        .into_iter()
        .map(|d| {
            let s = lanes.get(d.lane).map_or("?", Strategy::name);
            (d, s)
        })
        .collect();
    let (audit, leaked) = lanes.iter().fold((Ok(()), 0), |(audit, leaked), s| match (audit, s.audit()) {
        (Ok(()), Ok(r)) => (Ok(()), leaked + r.live_mappings),
        (Err(e), _) => (Err(e), leaked),
        (Ok(()), Err(e)) => (Err(e.to_string()), leaked),
    });
    let mut latency = new_histogram();
    let mut res = PhaseResult {
        strategy: name,
        wall,
        attempted: 0,
        maps: 0,
        pairs: 0,
        copies: 0,
        snapshot,
        devices,
        lanes: lane_results,
        pool,
        conv_before,
        latency: new_histogram(),
        timeline,
        violations: guest.violation_count(),
        violation_examples: guest.violations().into_iter().take(5).map(|v| v.what).collect(),
        data_errors: 0,
        unmap_errors: 0,
        first_error: None,
        audit,
        leaked_mappings: leaked,
        memory: guest.config().memory_bytes,
        trace: if opts.trace { guest.trace_lines() } else { Vec::new() },
        timing,
    };
    for o in results {
        res.attempted += o.attempted;
        res.maps += o.maps;
        res.pairs += o.pairs;
        res.copies += o.copies.iter().sum::<u64>();
        res.data_errors += o.data_errors;
        res.unmap_errors += o.unmap_errors;
        if res.first_error.is_none() {
            res.first_error = o.first_error;
        }
        latency.add(&o.latency).expect("histograms with equal bounds add");
    }
    res.latency = latency;
    Ok(res)
}

/// Active time: one window per thread (or per thread and burst cycle); a cycle lasts
/// from its first thread's start to its last thread's end.
fn measured_wall(outs: &[WorkerOut], burst: bool, cycles: usize) -> Duration {
    let n = if burst { cycles } else { 1 };
    (0..n)
        .filter_map(|c| {
            let start = outs.iter().filter_map(|o| o.windows.get(c).map(|w| w.0)).min()?;
            let end = outs.iter().filter_map(|o| o.windows.get(c).map(|w| w.1)).max()?;
            Some(end - start)
        })
        .sum()
}

pub(crate) fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
