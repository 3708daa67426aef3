//! The `ops` oracle: random DMA-API operation sequences, valid and invalid, over one
//! strategy on a small simulated TDX guest, checked against a byte-exact model after
//! every step.
//!
//! Per step:
//! - nothing panics (strategy, framework or simulator);
//! - the simulator recorded no violation (device access outside a live mapping or to a
//!   private page, conversion of a page in the wrong state, access to a quarantined
//!   page, double free, ...);
//! - `Strategy::audit()` is `Ok`, counts exactly the live mappings of the model and
//!   agrees with `PoolStats::used_bytes`;
//! - the DMA-API counters agree with the model (maps − unmaps = live mappings,
//!   in-flight bytes = their sizes; one failure counted per failed call);
//! - every live mapping is found again with its exact extent (`live_range` at its first
//!   and last byte, never past either end) and keeps the device's `min_align_mask` bits;
//! - the originals (with guard bytes before and after) and the bounce buffers hold
//!   exactly what the copy rules of SPEC §2 say: map copies in whatever the direction,
//!   unmap copies back for `FromDevice`/`Bidirectional` unless `SKIP_CPU_SYNC`,
//!   partial syncs at any offset copy only the asked bytes and clamp at the end;
//! - invalid operations (zero size, `DMA_NONE` and junk raw directions, oversize maps,
//!   wrapping originals, unreachable devices, unknown / double / inner-address /
//!   foreign unmaps, syncs of unmapped addresses) return the documented error, count one
//!   failure and change neither the pool statistics nor any byte.
//!
//! Background work (`run_background`) runs when the input says so, so growth and
//! shrinking interleave with mappings; fault injection can fail the next conversion or
//! page allocation, so quarantine paths run too.

use crate::pattern;
use arbitrary::Arbitrary;
use bounce_framework::sim::{set_current_cpu, PlatformKind, SimConfig, SimDevice, SimGuest};
use bounce_framework::{
    BounceSnapshot, Bouncer, BouncerOptions, Device, DmaAddr, DmaAttrs, DmaDirection, FailureReason, LookupError,
    MapError, PhysAddr, Platform, PoolStats, SgEntry, Strategy, PAGE_SIZE,
};

/// Guest memory of the fuzzed guest.
pub const GUEST_MEMORY: usize = 64 << 20;
/// CPUs of the fuzzed guest.
pub const CPUS: usize = 2;
/// Operations run per input at most (the rest is ignored).
pub const MAX_OPS: usize = 192;
/// Guard bytes after each original buffer (before it there is a whole page plus the
/// in-page offset).
const GUARD_AFTER: usize = 256;
/// Unmapped originals kept for checking (older ones are freed).
const MAX_DEAD: usize = 16;
/// Stale bus addresses kept for double unmaps and stale syncs.
const MAX_STALE: usize = 32;
/// Live mapping bytes up to which every mapping is checked after every step. Above it,
/// a step that must have changed nothing (a refused call, host writes, background
/// work) still checks everything; one that touched a mapping checks that mapping, and
/// every eighth step checks everything.
const FULL_CHECK_BYTES: usize = 64 << 10;

/// What a step touched, so what must be checked after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Touched {
    /// Nothing but counters.
    Nothing,
    /// One live mapping.
    Live(usize),
    /// The mapping just retired (its original).
    Retired,
    /// Possibly anything.
    All,
}

/// One fuzz input: which strategy and configuration, then the operations.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct OpsInput {
    /// The strategy (the first input byte; the target takes it modulo the strategies).
    pub strategy: u8,
    /// The configuration variant of that strategy.
    pub config: u8,
    /// `swiotlb.scrub=on`.
    pub scrub: bool,
    /// The operations.
    pub ops: Vec<FuzzOp>,
}

/// A mapping size, resolved against the device's `max_mapping_size`.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Which distribution.
    pub kind: u8,
    /// The raw number.
    pub raw: u32,
}

/// Sizes at class and slot boundaries.
const BOUNDARY_SIZES: &[usize] =
    &[1, 2, 511, 512, 513, 1500, 2047, 2048, 2049, 4095, 4096, 4097, 8192, 16383, 16384, 16385];

impl Size {
    /// The size in bytes, at least 1 and at most `max` (1 when `max` is 0).
    pub fn resolve(self, max: usize) -> usize {
        if max == 0 {
            return 1;
        }
        let r = self.raw as usize;
        let s = match self.kind % 8 {
            0..=3 => 1 + r % 4096,
            4 | 5 => 1 + r % 65536,
            6 => 1 + r % max,
            _ => match r % (BOUNDARY_SIZES.len() + 2) {
                i if i < BOUNDARY_SIZES.len() => BOUNDARY_SIZES[i],
                i if i == BOUNDARY_SIZES.len() => max,
                _ => max.saturating_sub(1),
            },
        };
        s.clamp(1, max.max(1))
    }
}

/// Where an address for `UnmapAt`/`SyncAt` comes from.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr {
    /// A live mapping's start plus `delta` (inner addresses, padding before it, the
    /// bytes after it).
    Live {
        /// Which live mapping.
        idx: u8,
        /// Offset from its start.
        delta: i32,
    },
    /// An unmapped mapping's old start plus `delta` (double unmaps, stale syncs).
    Stale {
        /// Which stale address.
        idx: u8,
        /// Offset from it.
        delta: i16,
    },
    /// A guest-physical address turned into a bus address (private pages, the pool,
    /// free buffers).
    Guest {
        /// Page of the guest.
        page: u16,
        /// Offset in the page.
        offset: u16,
    },
    /// Any bus address.
    Raw(u64),
}

/// One operation.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum FuzzOp {
    /// Map a fresh original buffer.
    Map {
        /// Bytes.
        size: Size,
        /// Offset of the original in its page.
        offset: u16,
        /// Direction (modulo 3).
        dir: u8,
        /// Device: net, NVMe (`min_align_mask` 4095), `min_align_mask` 2047, or a
        /// 32-bit device that cannot reach the bounce memory.
        dev: u8,
        /// `alloc_align_mask`: none, 4 KiB, 16 KiB, 2 KiB.
        align: u8,
        /// `SKIP_CPU_SYNC` (map still copies in).
        skip: bool,
        /// The CPU the call runs on.
        cpu: u8,
    },
    /// Map a scatter-gather list, possibly with a bad entry.
    MapSg {
        /// Entries: size and in-page offset.
        entries: Vec<(Size, u16)>,
        /// Make this entry bad (zero length or oversize).
        bad: Option<(u8, bool)>,
        /// Direction (modulo 3).
        dir: u8,
        /// Device (as for `Map`, without the 32-bit one).
        dev: u8,
    },
    /// The device writes part of a live mapping.
    DeviceWrite {
        /// Which live mapping.
        idx: u8,
        /// Start, in 1/65536 of the mapping.
        at: u16,
        /// Length, in 1/65536 of the rest.
        len: u16,
        /// Pattern seed.
        seed: u8,
    },
    /// The CPU rewrites a live mapping's original.
    CpuWrite {
        /// Which live mapping.
        idx: u8,
        /// Pattern seed.
        seed: u8,
    },
    /// A partial sync of a live mapping; the length may run past the end.
    Sync {
        /// Which live mapping.
        idx: u8,
        /// For the CPU (else for the device).
        for_cpu: bool,
        /// Start, in 1/65536 of the mapping.
        at: u16,
        /// Length: `len % (2 × size + 2)` bytes (0 and past-the-end included).
        len: u32,
        /// A direction other than the mapping's (modulo 3).
        dir: Option<u8>,
    },
    /// Unmap a live mapping.
    Unmap {
        /// Which live mapping.
        idx: u8,
        /// A size other than the mapping's (smaller or past the end).
        len: Option<u32>,
        /// A direction other than the mapping's (modulo 3).
        dir: Option<u8>,
        /// `SKIP_CPU_SYNC`.
        skip: bool,
        /// The CPU the call runs on.
        cpu: u8,
    },
    /// Unmap at any address with a raw direction (invalid ones included).
    UnmapAt {
        /// The address.
        addr: Addr,
        /// Raw direction selector (see [`raw_dir`]).
        dir: u8,
    },
    /// Sync at any address.
    SyncAt {
        /// The address.
        addr: Addr,
        /// For the CPU (else for the device).
        for_cpu: bool,
        /// Bytes.
        len: u16,
    },
    /// The (hostile) host writes into a buffer that was unmapped.
    HostWriteStale {
        /// Which stale address.
        idx: u8,
        /// Pattern seed.
        seed: u8,
    },
    /// A map with bad arguments.
    MapBad {
        /// 0 zero size, 1 `DMA_NONE`, 2 a junk direction, 3 oversize, 4 a wrapping
        /// original.
        kind: u8,
        /// Extra bytes / junk.
        extra: u16,
        /// Device (as for `Map`).
        dev: u8,
    },
    /// Run the strategy's background work.
    Background {
        /// Runs (modulo 8, plus one).
        rounds: u8,
    },
    /// Write 0 to `io_tlb_used_hiwater`.
    ResetHiwater,
    /// Arm fault injection: fail the n-th next conversion to shared, to private, or
    /// page allocation.
    Fault {
        /// Which hook.
        kind: u8,
        /// Which call from now (modulo 4, plus one).
        nth: u8,
    },
}

/// A raw direction from a selector: 0–2 valid, then `DMA_NONE` (3) and junk values.
pub fn raw_dir(sel: u8) -> u32 {
    match sel % 8 {
        d @ 0..=2 => u32::from(d),
        3 | 4 => 3,
        _ => 4 + u32::from(sel) * 16_777_259,
    }
}

fn dir_of(sel: u8) -> DmaDirection {
    DmaDirection::ALL[usize::from(sel % 3)]
}

/// What the harness knows about the strategy and guest under test.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expect {
    /// A fixed pool (legacy): with nothing mapped, every mapping up to
    /// `max_mapping_size` with no or a 4 KiB alignment must succeed.
    pub fixed_pool: bool,
    /// Bus addresses carry the shared alias bit ([`guest`]): the 32-bit device can
    /// reach no bounce buffer. Without it, it reaches every one.
    pub alias: bool,
}

/// What a run did (for tests and tuning: a harness whose operations all bounce off
/// proves nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Successful maps (scatter-gather entries included).
    pub maps: usize,
    /// Valid maps refused (exhausted, cap, alignment, unreachable device).
    pub maps_refused: usize,
    /// Successful unmaps.
    pub unmaps: usize,
    /// Successful syncs.
    pub syncs: usize,
    /// Device writes.
    pub device_writes: usize,
    /// Invalid calls refused as they must be.
    pub invalid_refused: usize,
    /// Background runs.
    pub background_runs: usize,
    /// The most mappings live at once.
    pub peak_live: usize,
}

struct Live {
    dma: DmaAddr,
    region: PhysAddr,
    /// Offset of the original's first byte in the region.
    data: usize,
    size: usize,
    dir: DmaDirection,
    dev: usize,
    orig_model: Vec<u8>,
    bounce_model: Vec<u8>,
}

struct Dead {
    region: PhysAddr,
    model: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Stale {
    dma: DmaAddr,
    size: usize,
    dev: usize,
}

/// The fuzzed world: guest, devices, bouncer and the model.
pub struct World<S: Strategy> {
    guest: SimGuest,
    bouncer: Bouncer<SimGuest, S>,
    devs: [SimDevice; 4],
    expect: Expect,
    live: Vec<Live>,
    dead: Vec<Dead>,
    stale: Vec<Stale>,
    step: usize,
    seed: u64,
    tally: Tally,
}

/// Index of the 32-bit device.
const DEV32: usize = 3;

fn dev_index(sel: u8, allow32: bool) -> usize {
    match sel % 8 {
        7 if allow32 => DEV32,
        s => usize::from(s % 3),
    }
}

/// The guest the harness runs on: 64 MiB TDX, 2 CPUs, at 1 MiB. With `alias`, bus
/// addresses carry the shared bit 47 (a platform whose devices see the shared alias), so
/// the 32-bit device cannot reach any bounce buffer; without it (Linux 6.12 on x86) the
/// whole guest is below 4 GiB and the 32-bit device reaches everything.
pub fn guest(alias: bool) -> SimGuest {
    let mut cfg = SimConfig::new(PlatformKind::Tdx, GUEST_MEMORY, CPUS);
    if alias {
        cfg.model.shared_bit = Some(47);
    }
    SimGuest::new(cfg)
}

impl<S: Strategy> World<S> {
    /// A world over `strategy` (built on `guest`), settled.
    ///
    /// # Panics
    /// When the strategy does not settle within 10 000 background runs.
    pub fn new(guest: SimGuest, strategy: S, scrub: bool, expect: Expect) -> Self {
        let bouncer = Bouncer::new(guest.clone(), strategy, BouncerOptions { scrub, ..BouncerOptions::default() });
        let devs = [
            SimDevice::new(&guest, Device::new("virtio-net")),
            SimDevice::new(&guest, Device::new("nvme0").with_min_align_mask(4095).with_max_segment_size(1 << 20)),
            SimDevice::new(&guest, Device::new("mask2k").with_min_align_mask(0x7ff)),
            SimDevice::new(&guest, Device::new("dev32").with_dma_bits(32)),
        ];
        let mut w = Self {
            guest,
            bouncer,
            devs,
            expect,
            live: Vec::new(),
            dead: Vec::new(),
            stale: Vec::new(),
            step: 0,
            seed: 1,
            tally: Tally::default(),
        };
        // Settle: run the background work until the strategy says it is idle, or a run
        // makes no progress (growth stopped by the cap or by memory). Every run that does
        // work converts at least one page, so more runs than the guest has pages (plus
        // slack) means it converts back and forth forever.
        let limit = GUEST_MEMORY / PAGE_SIZE + 10_000;
        for _ in 0..limit {
            if !w.bouncer.strategy().background_pending() {
                break;
            }
            let r = w.bouncer.run_background();
            if !r.did_work() {
                break;
            }
            w.tally.background_runs += 1;
        }
        assert!(
            w.tally.background_runs < limit,
            "{} still converts memory after {limit} background runs at boot",
            w.bouncer.strategy().name()
        );
        w.check_all("after settling");
        w
    }

    /// Runs the operations, checking after each, then unmaps everything and checks the
    /// pool is empty again.
    pub fn run(mut self, ops: &[FuzzOp]) -> Tally {
        for op in ops.iter().take(MAX_OPS) {
            self.step += 1;
            let what = format!("step {} {op:?}", self.step);
            let touched = self.apply(op, &what);
            self.tally.peak_live = self.tally.peak_live.max(self.live.len());
            self.check_step(&what, touched);
        }
        set_current_cpu(Some(0));
        let ctx = "final unmap";
        while let Some(l) = self.live.pop() {
            let dev = self.devs[l.dev].device();
            self.bouncer
                .unmap_single(dev, l.dma, l.size, l.dir, DmaAttrs::SKIP_CPU_SYNC)
                .unwrap_or_else(|e| panic!("{ctx}: unmap of live {} failed: {e}", l.dma));
            self.guest.free_private(l.region, l.orig_model.len());
        }
        self.check_all(ctx);
        let p = self.bouncer.pool_stats();
        assert_eq!(p.used_bytes, 0, "{ctx}: {} bytes still used with nothing mapped", p.used_bytes);
        for d in self.dead.drain(..) {
            self.guest.free_private(d.region, d.model.len());
        }
        let (guest, tally) = (self.guest.clone(), self.tally);
        drop(self);
        assert_returned_everything(&guest, "after dropping the strategy with nothing mapped");
        tally
    }

    fn next_seed(&mut self) -> u64 {
        self.seed += 1;
        self.seed * 1_000_003 + self.step as u64
    }

    /// A fresh original: a page of guard, `offset` bytes, the data, guard after; filled
    /// with a pattern. `None` when the guest is out of memory.
    fn original(&mut self, size: usize, offset: usize) -> Option<(PhysAddr, usize, Vec<u8>)> {
        let data = PAGE_SIZE + offset % PAGE_SIZE;
        let total = data + size + GUARD_AFTER;
        let region = self.guest.alloc_private(total).ok()?;
        let model = pattern(self.next_seed(), total);
        self.guest.write(region, &model);
        Some((region, data, model))
    }

    fn live_bytes(&self) -> usize {
        self.live.iter().map(|l| l.size).sum()
    }

    /// The live mapping containing bus address `a`, if any.
    fn containing(&self, a: u64) -> Option<usize> {
        self.live.iter().position(|l| a >= l.dma.0 && a - l.dma.0 < l.size as u64)
    }

    fn retire(&mut self, l: Live) {
        self.stale.push(Stale { dma: l.dma, size: l.size, dev: l.dev });
        if self.stale.len() > MAX_STALE {
            self.stale.remove(0);
        }
        self.dead.push(Dead { region: l.region, model: l.orig_model });
        if self.dead.len() > MAX_DEAD {
            let d = self.dead.remove(0);
            self.guest.free_private(d.region, d.model.len());
        }
    }

    /// Applies one operation; returns what it touched.
    fn apply(&mut self, op: &FuzzOp, what: &str) -> Touched {
        match *op {
            FuzzOp::Map { size, offset, dir, dev, align, skip, cpu } => {
                set_current_cpu(Some(usize::from(cpu) % CPUS));
                let d = dev_index(dev, true);
                let align_mask = [0u64, 0xfff, 0x3fff, 0x7ff][usize::from(align % 4)];
                self.map(what, size, usize::from(offset), dir_of(dir), d, align_mask, skip)
                    .map_or(Touched::All, Touched::Live)
            }
            FuzzOp::MapSg { ref entries, bad, dir, dev } => {
                self.map_sg(what, entries, bad, dir_of(dir), dev_index(dev, false));
                Touched::All
            }
            FuzzOp::DeviceWrite { idx, at, len, seed } if !self.live.is_empty() => {
                let i = usize::from(idx) % self.live.len();
                let l = &self.live[i];
                let at = l.size * usize::from(at) / 65536;
                let len = (1 + (l.size - at) * usize::from(len) / 65536).min(l.size - at);
                let data = pattern(u64::from(seed) << 32 | self.step as u64, len);
                self.devs[l.dev]
                    .write(&self.bouncer, l.dma + at as u64, &data)
                    .unwrap_or_else(|e| panic!("{what}: device write inside a live mapping refused: {e}"));
                self.live[i].bounce_model[at..at + len].copy_from_slice(&data);
                self.tally.device_writes += 1;
                Touched::Live(i)
            }
            FuzzOp::CpuWrite { idx, seed } if !self.live.is_empty() => {
                let i = usize::from(idx) % self.live.len();
                let l = &mut self.live[i];
                let data = pattern(u64::from(seed) << 40 | self.step as u64, l.size);
                self.guest.write(l.region + l.data as u64, &data);
                l.orig_model[l.data..l.data + l.size].copy_from_slice(&data);
                Touched::Live(i)
            }
            FuzzOp::Sync { idx, for_cpu, at, len, dir } if !self.live.is_empty() => {
                let i = usize::from(idx) % self.live.len();
                let (size, dma, ldir) = (self.live[i].size, self.live[i].dma, self.live[i].dir);
                let at = size * usize::from(at) / 65536;
                let len = len as usize % (2 * size + 2);
                let d = dir.map_or(ldir, dir_of);
                self.sync_live(what, i, dma + at as u64, len, d, for_cpu);
                Touched::Live(i)
            }
            FuzzOp::Unmap { idx, len, dir, skip, cpu } if !self.live.is_empty() => {
                set_current_cpu(Some(usize::from(cpu) % CPUS));
                let i = usize::from(idx) % self.live.len();
                let size = self.live[i].size;
                let len = len.map_or(size, |n| match n % 3 {
                    0 => 1 + n as usize % size,
                    1 => size + 1 + n as usize % 8192,
                    _ => n as usize % (size + 1),
                });
                let d = dir.map_or(self.live[i].dir, dir_of);
                self.unmap_live(what, i, len, d, skip);
                Touched::Retired
            }
            FuzzOp::UnmapAt { addr, dir } => self.unmap_at(what, addr, dir),
            FuzzOp::SyncAt { addr, for_cpu, len } => self.sync_at(what, addr, for_cpu, usize::from(len)),
            FuzzOp::HostWriteStale { idx, seed } if !self.stale.is_empty() => {
                let s = self.stale[usize::from(idx) % self.stale.len()];
                let len = s.size.min(4096);
                let hits_live =
                    self.live.iter().any(|l| s.dma.0 < l.dma.0 + l.size as u64 && l.dma.0 < s.dma.0 + len as u64);
                if !hits_live {
                    // Refused when the memory went back to private: also fine.
                    let _ = self.devs[s.dev].host_write(s.dma, &pattern(u64::from(seed) << 48, len));
                }
                Touched::All
            }
            FuzzOp::MapBad { kind, extra, dev } => {
                self.map_bad(what, kind, extra, dev_index(dev, true));
                Touched::All
            }
            FuzzOp::Background { rounds } => {
                for _ in 0..=rounds % 8 {
                    self.bouncer.run_background();
                    self.tally.background_runs += 1;
                }
                Touched::All
            }
            FuzzOp::ResetHiwater => {
                self.bouncer.reset_hiwater();
                let p = self.bouncer.pool_stats();
                assert_eq!(p.used_hiwater_bytes, p.used_bytes, "{what}: hiwater after reset");
                let s = self.bouncer.stats();
                assert_eq!(s.inflight_bytes_peak, s.inflight_bytes, "{what}: in-flight peak after reset");
                Touched::Nothing
            }
            FuzzOp::Fault { kind, nth } => {
                let n = u64::from(nth % 4) + 1;
                let f = self.guest.faults();
                match kind % 3 {
                    0 => f.fail_nth_decrypt(n),
                    1 => f.fail_nth_encrypt(n),
                    _ => f.fail_nth_alloc(n),
                }
                Touched::Nothing
            }
            _ => Touched::Nothing,
        }
    }

    fn map(
        &mut self,
        what: &str,
        size: Size,
        offset: usize,
        dir: DmaDirection,
        d: usize,
        align_mask: u64,
        skip: bool,
    ) -> Option<usize> {
        let dev = *self.devs[d].device();
        let max = self.bouncer.max_mapping_size(&dev);
        // Every device maps at least a page (Linux drivers size requests from
        // dma_max_mapping_size(); regressions/boot/dynamic-largest-class-2k).
        assert!(max >= PAGE_SIZE, "{what}: max_mapping_size {max} for {} is below a page", dev.name());
        let size = size.resolve(max);
        let (region, data, model) = self.original(size, offset)?;
        let orig = region + data as u64;
        let attrs = if skip { DmaAttrs::SKIP_CPU_SYNC } else { DmaAttrs::empty() };
        let (pool0, stats0) = (self.bouncer.pool_stats(), self.bouncer.stats());
        let r = if align_mask == 0 {
            self.bouncer.map_single(&dev, orig, size, dir, attrs)
        } else {
            self.bouncer.map_with_align(&dev, orig, size, align_mask, dir, attrs)
        };
        match r {
            Ok(dma) => {
                assert!(!(d == DEV32 && self.expect.alias), "{what}: the 32-bit device got {dma} above 4 GiB");
                assert!(
                    dma.0.checked_add(size as u64 - 1).is_some_and(|end| end <= dev.dma_mask),
                    "{what}: {dma}+{size} is beyond the device's dma_mask {:#x}",
                    dev.dma_mask
                );
                let m = dev.min_align_mask;
                assert_eq!(dma.0 & m, orig.0 & m, "{what}: min_align_mask {m:#x} bits of {orig} lost in {dma}");
                if m == 0 && align_mask != 0 {
                    let phys = self.guest.dma_to_phys(dma);
                    assert_eq!(phys.0 & align_mask, 0, "{what}: {phys} not aligned to {align_mask:#x}");
                }
                if let Some(o) =
                    self.live.iter().find(|l| dma.0 < l.dma.0 + l.size as u64 && l.dma.0 < dma.0 + size as u64)
                {
                    panic!("{what}: new mapping {dma}+{size} overlaps live mapping {}+{}", o.dma, o.size);
                }
                let s = self.bouncer.stats();
                assert_eq!(s.maps, stats0.maps + 1, "{what}: maps counter");
                let bounce_model = model[data..data + size].to_vec();
                self.live.push(Live { dma, region, data, size, dir, dev: d, orig_model: model, bounce_model });
                self.tally.maps += 1;
                Some(self.live.len() - 1)
            }
            Err(e) => {
                let reason = e.reason();
                match reason {
                    FailureReason::TooLarge => {
                        assert!(size > max, "{what}: {size} <= max {max} refused as too large: {e}");
                        assert_eq!(e, MapError::TooLarge { size, max }, "{what}");
                    }
                    FailureReason::Unreachable => {
                        assert!(d == DEV32 && self.expect.alias, "{what}: {e}, but the whole guest is within reach");
                    }
                    FailureReason::Alignment => {
                        assert!(align_mask != 0 || dev.min_align_mask != 0, "{what}: {e} without alignment asked");
                    }
                    FailureReason::Exhausted | FailureReason::Cap => {
                        let easy = align_mask <= 0xfff;
                        assert!(
                            !(self.expect.fixed_pool
                                && self.live.is_empty()
                                && easy
                                && !(d == DEV32 && self.expect.alias)),
                            "{what}: the fixed pool is empty, yet {size} bytes (max {max}) failed: {e}"
                        );
                    }
                    other => panic!("{what}: a valid map failed with {other:?}: {e}"),
                }
                self.assert_unchanged(what, &pool0, &stats0, false, reason);
                self.guest.free_private(region, model.len());
                self.tally.maps_refused += 1;
                None
            }
        }
    }

    fn map_sg(&mut self, what: &str, entries: &[(Size, u16)], bad: Option<(u8, bool)>, dir: DmaDirection, d: usize) {
        let dev = *self.devs[d].device();
        let max = self.bouncer.max_mapping_size(&dev);
        let entries = &entries[..entries.len().min(6)];
        if entries.is_empty() {
            return;
        }
        let bad = bad.map(|(i, oversize)| (usize::from(i) % entries.len(), oversize));
        let mut origs = Vec::new();
        let mut sg = Vec::new();
        for (i, &(size, offset)) in entries.iter().enumerate() {
            let size = size.resolve(max).min(64 << 10);
            let Some((region, data, model)) = self.original(size, usize::from(offset)) else {
                for (r, _, m) in origs {
                    self.guest.free_private(r, Vec::len(&m));
                }
                return;
            };
            let len = match bad {
                Some((b, false)) if b == i => 0,
                Some((b, true)) if b == i => max + 1,
                _ => size,
            };
            sg.push(SgEntry::new(region + data as u64, len));
            origs.push((region, data, model));
        }
        let (pool0, stats0) = (self.bouncer.pool_stats(), self.bouncer.stats());
        match self.bouncer.map_sg(&dev, &mut sg, dir, DmaAttrs::empty()) {
            Ok(n) => {
                assert!(bad.is_none(), "{what}: map_sg accepted a bad entry {bad:?}");
                assert_eq!(n, sg.len());
                for (e, (region, data, model)) in sg.iter().zip(origs) {
                    assert_eq!(e.dma_length, e.length, "{what}: sg_dma_len");
                    let m = dev.min_align_mask;
                    assert_eq!(e.dma_address.0 & m, e.phys.0 & m, "{what}: sg min_align_mask");
                    let bounce_model = model[data..data + e.length].to_vec();
                    self.tally.maps += 1;
                    self.live.push(Live {
                        dma: e.dma_address,
                        region,
                        data,
                        size: e.length,
                        dir,
                        dev: d,
                        orig_model: model,
                        bounce_model,
                    });
                }
            }
            Err(err) => {
                match bad {
                    Some((b, oversize)) if err.index == b => {
                        let want =
                            if oversize { MapError::TooLarge { size: max + 1, max } } else { MapError::ZeroSize };
                        assert_eq!(err.error, want, "{what}: bad sg entry {b}");
                    }
                    _ => {
                        assert!(
                            bad.is_none_or(|(b, _)| err.index < b),
                            "{what}: map_sg failed past the bad entry: {err}"
                        );
                        let r = err.error.reason();
                        let too_large = sg[err.index].length > max;
                        assert!(
                            matches!(r, FailureReason::Exhausted | FailureReason::Cap | FailureReason::Alignment)
                                || (too_large && r == FailureReason::TooLarge),
                            "{what}: map_sg of good entries failed: {err}"
                        );
                    }
                }
                let (pool1, stats1) = (self.bouncer.pool_stats(), self.bouncer.stats());
                assert_eq!(pool1.used_bytes, pool0.used_bytes, "{what}: failed map_sg left bytes used");
                assert_eq!(stats1.inflight_bytes, stats0.inflight_bytes, "{what}: failed map_sg left bytes in flight");
                assert_eq!(stats1.maps - stats0.maps, stats1.unmaps - stats0.unmaps, "{what}: map_sg rollback");
                assert_eq!(stats1.total_failures(), stats0.total_failures() + 1, "{what}: failures counted");
                if bad.is_some() {
                    self.tally.invalid_refused += 1;
                } else {
                    self.tally.maps_refused += 1;
                }
                for (region, _, model) in origs {
                    assert_eq!(
                        self.guest.read_vec(region, model.len()),
                        model,
                        "{what}: map_sg rollback wrote an original"
                    );
                    self.guest.free_private(region, model.len());
                }
            }
        }
    }

    fn map_bad(&mut self, what: &str, kind: u8, extra: u16, d: usize) {
        let dev = *self.devs[d].device();
        let max = self.bouncer.max_mapping_size(&dev);
        let Some((region, data, model)) = self.original(64, usize::from(extra)) else { return };
        let orig = region + data as u64;
        let (pool0, stats0) = (self.bouncer.pool_stats(), self.bouncer.stats());
        let (r, want) = match kind % 5 {
            0 => (self.bouncer.map_single_raw(&dev, orig, 0, 1, DmaAttrs::empty()), MapError::ZeroSize),
            1 => (self.bouncer.map_single_raw(&dev, orig, 64, 3, DmaAttrs::empty()), MapError::DirectionNone),
            2 => {
                let raw = 4 + (u32::from(extra) * 65_537) % (u32::MAX - 4);
                (self.bouncer.map_single_raw(&dev, orig, 64, raw, DmaAttrs::empty()), MapError::BadDirection(raw))
            }
            3 => {
                let size = max + 1 + usize::from(extra);
                (
                    self.bouncer.map_single(&dev, orig, size, DmaDirection::ToDevice, DmaAttrs::empty()),
                    MapError::TooLarge { size, max },
                )
            }
            _ => {
                let top = PhysAddr(u64::MAX - u64::from(extra));
                let size = usize::from(extra) + 1 + usize::from(kind);
                (
                    self.bouncer.map_single(&dev, top, size, DmaDirection::FromDevice, DmaAttrs::empty()),
                    MapError::BadOriginal { orig: top, size },
                )
            }
        };
        assert_eq!(r, Err(want.clone()), "{what}: bad map");
        self.assert_unchanged(what, &pool0, &stats0, true, want.reason());
        self.tally.invalid_refused += 1;
        assert_eq!(self.guest.read_vec(region, model.len()), model, "{what}: a refused map wrote the original");
        self.guest.free_private(region, model.len());
    }

    /// Checks a failed call changed nothing but one failure counter. `strict`: the
    /// strategy was not even asked, so its statistics are identical.
    fn assert_unchanged(
        &self,
        what: &str,
        pool0: &PoolStats,
        stats0: &BounceSnapshot,
        strict: bool,
        reason: FailureReason,
    ) {
        let (pool1, stats1) = (self.bouncer.pool_stats(), self.bouncer.stats());
        if strict {
            assert_eq!(&pool1, pool0, "{what}: a refused call changed the pool statistics");
        } else {
            assert_eq!(
                (pool1.used_bytes, pool1.capacity_bytes, pool1.transient_bytes),
                (pool0.used_bytes, pool0.capacity_bytes, pool0.transient_bytes),
                "{what}: a refused call changed the pool (used, capacity, transient)"
            );
        }
        let mut want = *stats0;
        want.failures[reason as usize] += 1;
        assert_eq!(stats1.failures, want.failures, "{what}: failure counters");
        assert_eq!(
            (stats1.maps, stats1.unmaps, stats1.inflight_bytes, stats1.bytes_to_bounce, stats1.bytes_from_bounce),
            (stats0.maps, stats0.unmaps, stats0.inflight_bytes, stats0.bytes_to_bounce, stats0.bytes_from_bounce),
            "{what}: a refused call changed the DMA-API counters"
        );
    }

    /// A valid sync of live mapping `i` at bus address `at_dma` (inside it).
    fn sync_live(&mut self, what: &str, i: usize, at_dma: DmaAddr, len: usize, dir: DmaDirection, for_cpu: bool) {
        let l = &self.live[i];
        let dev = *self.devs[l.dev].device();
        let r = if for_cpu {
            self.bouncer.sync_single_for_cpu(&dev, at_dma, len, dir)
        } else {
            self.bouncer.sync_single_for_device(&dev, at_dma, len, dir)
        };
        r.unwrap_or_else(|e| panic!("{what}: sync at {at_dma} inside a live mapping at {} failed: {e}", l.dma));
        self.tally.syncs += 1;
        let l = &mut self.live[i];
        let at = (at_dma.0 - l.dma.0) as usize;
        let end = (at + len).min(l.size);
        if for_cpu && dir.from_device() {
            let (o, b) = (&mut l.orig_model, &l.bounce_model);
            o[l.data + at..l.data + end].copy_from_slice(&b[at..end]);
        } else if !for_cpu && dir.to_device() {
            let (o, b) = (&l.orig_model, &mut l.bounce_model);
            b[at..end].copy_from_slice(&o[l.data + at..l.data + end]);
        }
    }

    fn unmap_live(&mut self, what: &str, i: usize, len: usize, dir: DmaDirection, skip: bool) {
        let l = &self.live[i];
        let dev = *self.devs[l.dev].device();
        let attrs = if skip { DmaAttrs::SKIP_CPU_SYNC } else { DmaAttrs::empty() };
        let stats0 = self.bouncer.stats();
        self.bouncer
            .unmap_single(&dev, l.dma, len, dir, attrs)
            .unwrap_or_else(|e| panic!("{what}: unmap of live mapping {} failed: {e}", l.dma));
        assert_eq!(self.bouncer.stats().unmaps, stats0.unmaps + 1, "{what}: unmaps counter");
        self.tally.unmaps += 1;
        let mut l = self.live.swap_remove(i);
        if dir.from_device() && !skip {
            let n = len.min(l.size);
            let (o, b) = (&mut l.orig_model, &l.bounce_model);
            o[l.data..l.data + n].copy_from_slice(&b[..n]);
        }
        self.retire(l);
    }

    fn resolve(&self, addr: Addr) -> Option<DmaAddr> {
        Some(match addr {
            Addr::Live { idx, delta } => {
                let l = self.live.get(usize::from(idx) % self.live.len().max(1))?;
                DmaAddr(l.dma.0.wrapping_add_signed(i64::from(delta)))
            }
            Addr::Stale { idx, delta } => {
                let s = self.stale.get(usize::from(idx) % self.stale.len().max(1))?;
                DmaAddr(s.dma.0.wrapping_add_signed(i64::from(delta)))
            }
            Addr::Guest { page, offset } => {
                let pages = (GUEST_MEMORY / PAGE_SIZE) as u64;
                let p = self.guest.base() + (u64::from(page) % pages) * PAGE_SIZE as u64 + u64::from(offset % 4096);
                self.guest.phys_to_dma(p)
            }
            Addr::Raw(a) => DmaAddr(a),
        })
    }

    fn unmap_at(&mut self, what: &str, addr: Addr, dir_sel: u8) -> Touched {
        let Some(a) = self.resolve(addr) else { return Touched::Nothing };
        let raw = raw_dir(dir_sel);
        let hit = self.containing(a.0);
        if let (Ok(dir), Some(i)) = (DmaDirection::from_raw(raw), hit) {
            if self.live[i].dma == a {
                let size = self.live[i].size;
                self.unmap_live(what, i, size, dir, false);
                return Touched::Retired;
            }
        }
        let dev = *self.devs[hit.map_or(0, |i| self.live[i].dev)].device();
        let (pool0, stats0) = (self.bouncer.pool_stats(), self.bouncer.stats());
        let owned = self.bouncer.is_bounce_buffer(a);
        let r = self.bouncer.unmap_single_raw(&dev, a, 4096, raw, DmaAttrs::empty());
        let Err(e) = r else { panic!("{what}: unmap at {a} (dir {raw}) succeeded, but no live mapping starts there") };
        match (DmaDirection::from_raw(raw), &e, hit) {
            (Err(want), _, _) => assert_eq!(e, LookupError::Direction(want), "{what}: raw direction {raw}"),
            (Ok(_), LookupError::NotMappingStart { addr, start }, Some(i)) => {
                assert_eq!((*addr, *start), (a, self.live[i].dma), "{what}: inner-address unmap");
            }
            (Ok(_), _, Some(i)) => panic!("{what}: unmap inside live mapping {} returned {e:?}", self.live[i].dma),
            (Ok(_), LookupError::Foreign(x), None) => {
                assert!(*x == a && !owned, "{what}: Foreign({x}) for {a}, owned by the strategy: {owned}");
            }
            (Ok(_), LookupError::NotMapped(x), None) => {
                assert!(*x == a && owned, "{what}: NotMapped({x}) for {a}, owned by the strategy: {owned}");
            }
            (Ok(_), LookupError::NotMappingStart { start, .. }, None) => {
                // An address in a mapping's padding or tail slack: the strategy may tie it to
                // the mapping; refusing it is what matters.
                assert!(self.live.iter().any(|l| l.dma == *start), "{what}: NotMappingStart names {start}, not live");
            }
            (Ok(_), other, None) => panic!("{what}: unmap of {a} returned {other:?}"),
        }
        self.assert_unchanged(what, &pool0, &stats0, true, e.reason());
        self.tally.invalid_refused += 1;
        Touched::All
    }

    fn sync_at(&mut self, what: &str, addr: Addr, for_cpu: bool, len: usize) -> Touched {
        let Some(a) = self.resolve(addr) else { return Touched::Nothing };
        if let Some(i) = self.containing(a.0) {
            let dir = self.live[i].dir;
            self.sync_live(what, i, a, len, dir, for_cpu);
            return Touched::Live(i);
        }
        let dev = *self.devs[0].device();
        let (pool0, stats0) = (self.bouncer.pool_stats(), self.bouncer.stats());
        let r = if for_cpu {
            self.bouncer.sync_single_for_cpu(&dev, a, len, DmaDirection::Bidirectional)
        } else {
            self.bouncer.sync_single_for_device(&dev, a, len, DmaDirection::Bidirectional)
        };
        let Err(e) = r else { panic!("{what}: sync at {a}, outside every live mapping, succeeded") };
        assert!(
            matches!(e, LookupError::Foreign(x) | LookupError::NotMapped(x) if x == a),
            "{what}: sync at {a} outside every live mapping returned {e:?}"
        );
        self.assert_unchanged(what, &pool0, &stats0, true, e.reason());
        self.tally.invalid_refused += 1;
        Touched::All
    }

    fn check_live(&self, what: &str, l: &Live) {
        assert_eq!(
            self.guest.read_vec(l.region, l.orig_model.len()),
            l.orig_model,
            "{what}: original of live {}",
            l.dma
        );
        let dev = &self.devs[l.dev];
        let mut seen = vec![0; l.size];
        dev.read(&self.bouncer, l.dma, &mut seen)
            .unwrap_or_else(|e| panic!("{what}: device read of live mapping {}: {e}", l.dma));
        assert!(seen == l.bounce_model, "{what}: bounce buffer of live {} differs from the copy rules", l.dma);
        assert_eq!(
            self.bouncer.live_range(l.dma),
            Some((l.dma, l.size)),
            "{what}: live_range at the start of {}",
            l.dma
        );
        let last = l.dma + (l.size - 1) as u64;
        assert_eq!(self.bouncer.live_range(last), Some((l.dma, 1)), "{what}: live_range at the last byte of {}", l.dma);
        for outside in [l.dma.0 + l.size as u64, l.dma.0.wrapping_sub(1)] {
            if let Some((start, _)) = self.bouncer.live_range(DmaAddr(outside)) {
                assert!(start != l.dma, "{what}: {outside:#x}, outside mapping {}+{}, is found in it", l.dma, l.size);
            }
        }
        assert!(self.bouncer.is_bounce_buffer(l.dma), "{what}: live {} not a bounce buffer", l.dma);
    }

    /// Checks every live mapping and retired original.
    fn check_all(&self, what: &str) {
        for l in &self.live {
            self.check_live(what, l);
        }
        for d in &self.dead {
            assert_eq!(self.guest.read_vec(d.region, d.model.len()), d.model, "{what}: an unmapped original changed");
        }
        self.check_counters(what);
    }

    fn check_step(&self, what: &str, touched: Touched) {
        if touched == Touched::All || self.live_bytes() <= FULL_CHECK_BYTES || self.step.is_multiple_of(8) {
            self.check_all(what);
            return;
        }
        match touched {
            Touched::Live(i) => self.check_live(what, &self.live[i]),
            Touched::Retired => {
                let d = self.dead.last().expect("a retired mapping");
                assert_eq!(self.guest.read_vec(d.region, d.model.len()), d.model, "{what}: the unmapped original");
            }
            Touched::Nothing | Touched::All => {}
        }
        self.check_counters(what);
    }

    fn check_counters(&self, what: &str) {
        let v = self.guest.violations();
        assert!(
            v.is_empty(),
            "{what}: {} simulator violations, first: {:?}",
            self.guest.violation_count(),
            &v[..v.len().min(3)]
        );
        let audit = self.bouncer.strategy().audit().unwrap_or_else(|e| panic!("{what}: {e}"));
        let p = self.bouncer.pool_stats();
        assert_eq!(audit.live_mappings, self.live.len(), "{what}: audit counts {audit:?}");
        assert_eq!(audit.used_bytes, p.used_bytes, "{what}: audit used bytes vs pool stats {p:?}");
        let live_bytes = self.live_bytes();
        assert!(p.used_bytes >= live_bytes, "{what}: used {} < {live_bytes} bytes mapped", p.used_bytes);
        assert!(p.used_hiwater_bytes >= p.used_bytes, "{what}: hiwater below used: {p:?}");
        assert!(p.used_bytes <= p.capacity_bytes + p.transient_bytes, "{what}: used beyond capacity: {p:?}");
        let s = self.bouncer.stats();
        assert_eq!(s.inflight_bytes, live_bytes as u64, "{what}: in-flight bytes");
        assert_eq!(s.maps - s.unmaps, self.live.len() as u64, "{what}: maps - unmaps");
    }
}

/// Runs one input: the strategy and configuration it selects, booted from its command
/// line (`crate::strategies`) on [`guest`] (with the shared alias when bit 2 of
/// `config` is set), then its operations; returns what it did.
pub fn run_input(input: &OpsInput) -> Tally {
    let (kind, cmdline) = crate::strategies::select(input.strategy, input.config);
    let alias = (input.config / 4) % 2 == 1;
    let guest = guest(alias);
    let strategy = crate::strategies::boot(&guest, cmdline);
    let fixed_pool =
        bounce_strategies::AnyStrategy::<SimGuest>::test_profile(kind).pool == bounce_framework::PoolShape::Fixed;
    run(strategy, guest, input, Expect { fixed_pool, alias })
}

/// Builds the world over `strategy` and runs `input.ops`; returns what it did.
pub fn run<S: Strategy>(strategy: S, guest: SimGuest, input: &OpsInput, expect: Expect) -> Tally {
    set_current_cpu(Some(0));
    World::new(guest, strategy, input.scrub, expect).run(&input.ops)
}

/// Checks that a strategy dropped with nothing mapped gave every page back: none is
/// still shared, and the only pages still allocated are quarantined ones (a failed
/// conversion leaves pages in an unknown state that must never be freed); and that the
/// simulator saw nothing wrong on the way (double frees, freeing shared pages, ...).
///
/// # Panics
/// When a page leaked or a violation was recorded.
pub fn assert_returned_everything(guest: &SimGuest, what: &str) {
    let v = guest.violations();
    assert!(
        v.is_empty(),
        "{what}: {} simulator violations, first: {:?}",
        guest.violation_count(),
        &v[..v.len().min(3)]
    );
    let st = guest.stats();
    assert_eq!(st.shared_pages, 0, "{what}: {} pages still shared: {st:?}", st.shared_pages);
    assert_eq!(
        st.allocated_pages, st.unknown_pages,
        "{what}: {} pages still allocated, {} of them quarantined: {st:?}",
        st.allocated_pages, st.unknown_pages
    );
}
