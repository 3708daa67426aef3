//! Statistics: Linux's debugfs set and what a researcher needs on top.
//!
//! Two owners: the [`Bouncer`](crate::Bouncer) counts DMA-API activity in per-CPU
//! shards ([`BounceStats`]), and each strategy reports its pool ([`PoolStats`]) using a
//! [`UsageCounter`] for `io_tlb_used` / `io_tlb_used_hiwater` and its
//! [`SharedMemory`](crate::SharedMemory) for conversions.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::addr::SlotCount;
use crate::error::FailureReason;
use crate::percpu::PerCpuUsage;
use crate::shared::ConversionStats;

/// Bytes in use and their high-water mark (`io_tlb_used`, `io_tlb_used_hiwater`).
#[derive(Debug, Default)]
pub struct UsageCounter {
    used: AtomicUsize,
    hiwater: AtomicUsize,
}

impl UsageCounter {
    /// A zeroed counter.
    pub const fn new() -> Self {
        Self { used: AtomicUsize::new(0), hiwater: AtomicUsize::new(0) }
    }

    /// Adds `bytes` to the used count and raises the high-water mark.
    #[inline]
    pub fn add(&self, bytes: usize) {
        let now = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if now > self.hiwater.load(Ordering::Relaxed) {
            self.hiwater.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Removes `bytes` from the used count.
    #[inline]
    pub fn sub(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The high-water mark.
    pub fn hiwater(&self) -> usize {
        self.hiwater.load(Ordering::Relaxed)
    }

    /// Resets the high-water mark to the current use (writing 0 to
    /// `io_tlb_used_hiwater`).
    pub fn reset_hiwater(&self) {
        self.hiwater.store(self.used(), Ordering::Relaxed);
    }
}

/// A strategy's report on its pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of shared memory the strategy can hand out (free or in use).
    pub capacity_bytes: usize,
    /// Bytes reserved by live mappings, rounding and padding included.
    pub used_bytes: usize,
    /// The high-water mark of `used_bytes` since the last reset.
    pub used_hiwater_bytes: usize,
    /// Bytes in short-lived pools (Linux's transient pools); 0 where none exist.
    pub transient_bytes: usize,
    /// Conversions, quarantine and committed shared memory.
    pub conversions: ConversionStats,
    /// Background refill work done (wake-ups, batches).
    pub refill: RefillStats,
}

/// Activity of the background refill engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefillStats {
    /// Times the map path woke the engine.
    pub wakeups: u64,
    /// Growth batches published.
    pub grow_batches: u64,
    /// Shrink operations done.
    pub shrink_batches: u64,
    /// Nanoseconds the engine spent working.
    pub busy_ns: u64,
}

/// Linux's debugfs files under `/sys/kernel/debug/swiotlb/`, in slots of 2 KiB, with
/// the same meaning for every strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugfsView {
    /// `io_tlb_nslabs`: pool capacity in slots.
    pub io_tlb_nslabs: usize,
    /// `io_tlb_used`: slots in use.
    pub io_tlb_used: usize,
    /// `io_tlb_used_hiwater`: most slots in use since the last reset.
    pub io_tlb_used_hiwater: usize,
    /// `io_tlb_transient_nslabs`: slots in transient pools.
    pub io_tlb_transient_nslabs: usize,
}

impl PoolStats {
    /// Adds `other`'s figures to these (high-water marks summed: an upper bound of the
    /// joint peak).
    pub fn merge(&mut self, other: &PoolStats) {
        self.capacity_bytes += other.capacity_bytes;
        self.used_bytes += other.used_bytes;
        self.used_hiwater_bytes += other.used_hiwater_bytes;
        self.transient_bytes += other.transient_bytes;
        self.conversions.merge(&other.conversions);
        self.refill.wakeups += other.refill.wakeups;
        self.refill.grow_batches += other.refill.grow_batches;
        self.refill.shrink_batches += other.refill.shrink_batches;
        self.refill.busy_ns += other.refill.busy_ns;
    }

    /// The debugfs view (byte counts rounded to 2 KiB slots; used counts round up).
    pub fn debugfs(&self) -> DebugfsView {
        DebugfsView {
            io_tlb_nslabs: SlotCount::floor_bytes(self.capacity_bytes).0,
            io_tlb_used: SlotCount::for_bytes(self.used_bytes).0,
            io_tlb_used_hiwater: SlotCount::for_bytes(self.used_hiwater_bytes).0,
            io_tlb_transient_nslabs: SlotCount::floor_bytes(self.transient_bytes).0,
        }
    }
}

/// Number of per-CPU statistics shards (CPU ids wrap around).
pub const STAT_SHARDS: usize = 64;

#[derive(Default)]
#[repr(align(128))]
struct Shard {
    maps: AtomicU64,
    unmaps: AtomicU64,
    syncs_for_cpu: AtomicU64,
    syncs_for_device: AtomicU64,
    bytes_to_bounce: AtomicU64,
    bytes_from_bounce: AtomicU64,
    failures: [AtomicU64; FailureReason::COUNT],
    overflows_clamped: AtomicU64,
    blocked_maps: AtomicU64,
    blocked_ns: AtomicU64,
    timed_ops: AtomicU64,
    op_ns: AtomicU64,
    copy_ns: AtomicU64,
}

/// DMA-API counters kept by the bouncer, sharded per CPU so the map path does not
/// bounce one cache line between CPUs.
///
/// The shards (16 KiB) live on the heap, filled one by one: built inline they would be
/// a 16 KiB temporary in the constructor's stack frame, as large as a whole kernel
/// stack (`bounce_create` runs on one).
pub struct BounceStats {
    shards: Box<[Shard]>,
    /// Bytes in flight, per CPU (the peak is exact to within one
    /// [`USAGE_BATCH`](crate::USAGE_BATCH) per other CPU under concurrent maps; see
    /// [`PerCpuUsage`]).
    inflight: PerCpuUsage,
}

/// What a shard counter counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    Maps,
    Unmaps,
    SyncsForCpu,
    SyncsForDevice,
    BytesToBounce,
    BytesFromBounce,
    OverflowsClamped,
}

impl Default for BounceStats {
    fn default() -> Self {
        Self::new()
    }
}

impl BounceStats {
    /// Zeroed counters.
    ///
    /// # Context
    /// Allocates (16 KiB): construction time only, never the map path.
    pub fn new() -> Self {
        Self::with_shards(STAT_SHARDS)
    }

    /// Zeroed counters with `shards` per-CPU shards (1 to [`STAT_SHARDS`]; CPU ids
    /// wrap around): one per CPU of the machine is enough.
    ///
    /// # Context
    /// Allocates (256 bytes per shard): construction time only.
    pub fn with_shards(shards: usize) -> Self {
        let n = shards.clamp(1, STAT_SHARDS);
        Self { shards: (0..n).map(|_| Shard::default()).collect(), inflight: PerCpuUsage::new(n) }
    }

    #[inline]
    fn shard(&self, cpu: usize) -> &Shard {
        // A CPU id below the shard count (every real one) needs no division.
        let n = self.shards.len();
        &self.shards[if cpu < n { cpu } else { cpu % n }]
    }

    #[inline]
    pub(crate) fn add(&self, cpu: usize, c: Counter, n: u64) {
        let s = self.shard(cpu);
        let a = match c {
            Counter::Maps => &s.maps,
            Counter::Unmaps => &s.unmaps,
            Counter::SyncsForCpu => &s.syncs_for_cpu,
            Counter::SyncsForDevice => &s.syncs_for_device,
            Counter::BytesToBounce => &s.bytes_to_bounce,
            Counter::BytesFromBounce => &s.bytes_from_bounce,
            Counter::OverflowsClamped => &s.overflows_clamped,
        };
        a.fetch_add(n, Ordering::Relaxed);
    }

    /// A [`DmaAttrs::MAY_BLOCK`](crate::DmaAttrs::MAY_BLOCK) map that waited `ns`.
    pub(crate) fn blocked(&self, cpu: usize, ns: u64) {
        let s = self.shard(cpu);
        s.blocked_maps.fetch_add(1, Ordering::Relaxed);
        s.blocked_ns.fetch_add(ns, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn fail(&self, cpu: usize, reason: FailureReason) {
        self.shard(cpu).failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn timed(&self, cpu: usize, op_ns: u64, copy_ns: u64) {
        let s = self.shard(cpu);
        s.timed_ops.fetch_add(1, Ordering::Relaxed);
        s.op_ns.fetch_add(op_ns, Ordering::Relaxed);
        s.copy_ns.fetch_add(copy_ns, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn inflight_add(&self, cpu: usize, bytes: usize) {
        self.inflight.add(cpu, bytes);
    }

    #[inline]
    pub(crate) fn inflight_sub(&self, cpu: usize, bytes: usize) {
        self.inflight.sub(cpu, bytes);
    }

    /// Resets the in-flight peak to the current value.
    pub fn reset_inflight_peak(&self) {
        self.inflight.reset_hiwater();
    }

    /// Sums the shards.
    pub fn snapshot(&self) -> BounceSnapshot {
        let mut s = BounceSnapshot {
            inflight_bytes: self.inflight.used() as u64,
            inflight_bytes_peak: self.inflight.hiwater() as u64,
            ..BounceSnapshot::default()
        };
        for sh in &self.shards {
            s.maps += sh.maps.load(Ordering::Relaxed);
            s.unmaps += sh.unmaps.load(Ordering::Relaxed);
            s.syncs_for_cpu += sh.syncs_for_cpu.load(Ordering::Relaxed);
            s.syncs_for_device += sh.syncs_for_device.load(Ordering::Relaxed);
            s.bytes_to_bounce += sh.bytes_to_bounce.load(Ordering::Relaxed);
            s.bytes_from_bounce += sh.bytes_from_bounce.load(Ordering::Relaxed);
            s.overflows_clamped += sh.overflows_clamped.load(Ordering::Relaxed);
            s.blocked_maps += sh.blocked_maps.load(Ordering::Relaxed);
            s.blocked_ns += sh.blocked_ns.load(Ordering::Relaxed);
            s.timed_ops += sh.timed_ops.load(Ordering::Relaxed);
            s.op_ns += sh.op_ns.load(Ordering::Relaxed);
            s.copy_ns += sh.copy_ns.load(Ordering::Relaxed);
            for (i, f) in sh.failures.iter().enumerate() {
                s.failures[i] += f.load(Ordering::Relaxed);
            }
        }
        s
    }
}

/// A point-in-time sum of [`BounceStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceSnapshot {
    /// Successful maps (each scatter-gather entry counts).
    pub maps: u64,
    /// Successful unmaps.
    pub unmaps: u64,
    /// `sync_*_for_cpu` calls that succeeded.
    pub syncs_for_cpu: u64,
    /// `sync_*_for_device` calls that succeeded.
    pub syncs_for_device: u64,
    /// Bytes copied original → bounce.
    pub bytes_to_bounce: u64,
    /// Bytes copied bounce → original.
    pub bytes_from_bounce: u64,
    /// Failures, indexed by [`FailureReason`] as `usize`.
    pub failures: [u64; FailureReason::COUNT],
    /// Syncs or unmaps whose size ran past the mapping and was clamped
    /// ("Buffer overflow detected").
    pub overflows_clamped: u64,
    /// Maps marked `DMA_ATTR_MAY_BLOCK` that found no free buffer and waited (whether
    /// they were then served or failed).
    pub blocked_maps: u64,
    /// Nanoseconds those maps spent waiting.
    pub blocked_ns: u64,
    /// Mapping bytes live now.
    pub inflight_bytes: u64,
    /// The most mapping bytes live at once.
    pub inflight_bytes_peak: u64,
    /// Operations timed (timing enabled).
    pub timed_ops: u64,
    /// Nanoseconds spent in timed operations, copies included.
    pub op_ns: u64,
    /// Nanoseconds of those spent copying.
    pub copy_ns: u64,
}

impl BounceSnapshot {
    /// Adds `other`'s counters to these (in-flight bytes and peaks are summed too).
    pub fn merge(&mut self, other: &BounceSnapshot) {
        self.maps += other.maps;
        self.unmaps += other.unmaps;
        self.syncs_for_cpu += other.syncs_for_cpu;
        self.syncs_for_device += other.syncs_for_device;
        self.bytes_to_bounce += other.bytes_to_bounce;
        self.bytes_from_bounce += other.bytes_from_bounce;
        for (a, b) in self.failures.iter_mut().zip(other.failures) {
            *a += b;
        }
        self.overflows_clamped += other.overflows_clamped;
        self.blocked_maps += other.blocked_maps;
        self.blocked_ns += other.blocked_ns;
        self.inflight_bytes += other.inflight_bytes;
        self.inflight_bytes_peak += other.inflight_bytes_peak;
        self.timed_ops += other.timed_ops;
        self.op_ns += other.op_ns;
        self.copy_ns += other.copy_ns;
    }

    /// Failures of one kind.
    pub const fn failures_of(&self, reason: FailureReason) -> u64 {
        self.failures[reason as usize]
    }

    /// All failures.
    pub fn total_failures(&self) -> u64 {
        self.failures.iter().sum()
    }

    /// Nanoseconds of timed operations that were not copying (allocation, lookup,
    /// bookkeeping, locks).
    pub const fn metadata_ns(&self) -> u64 {
        self.op_ns.saturating_sub(self.copy_ns)
    }
}
