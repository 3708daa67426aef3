//! Per-CPU byte counters for the map path.
//!
//! A single shared atomic that every map adds to and every unmap subtracts from makes
//! its cache line travel between CPUs on every operation. [`PerCpuUsage`] keeps a delta
//! per CPU (each on its own cache line) and folds it into a shared total only when it
//! passes [`USAGE_BATCH`] bytes either way, as Linux's `percpu_counter` does, so the
//! map path writes its own CPU's line and, about once per batch, the shared one.
//!
//! # Exactness
//! - [`PerCpuUsage::used`] sums the total and every delta: exact whenever no update runs
//!   concurrently (audits, statistics at rest).
//! - The high-water mark is raised on every add from the shared total plus the adding
//!   CPU's own delta. The other CPUs' unfolded deltas are not seen there, so under
//!   concurrent updates the mark may be off either way by less than one batch per
//!   other CPU (`(cpus - 1) × USAGE_BATCH`); with one CPU updating it is exact. Reading it takes
//!   the larger of the mark and the exact current use.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

/// Bytes a CPU's delta may drift from zero before it is folded into the shared total.
pub const USAGE_BATCH: isize = 64 << 10;

#[derive(Default)]
#[repr(align(128))]
struct Shard {
    delta: AtomicIsize,
}

#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// The shared total and the high-water mark, each on its own cache line.
#[derive(Default)]
struct Shared {
    total: Padded<AtomicIsize>,
    hiwater: Padded<AtomicUsize>,
}

/// Bytes in use, counted per CPU, and their high-water mark (see the module
/// documentation for how exact each figure is).
///
/// Two pointers wide: the cache-line-aligned parts live on the heap, so embedding the
/// counter in a strategy adds nothing to the stack frames that build it (kernel stacks
/// are 16 KiB).
pub struct PerCpuUsage {
    shards: Box<[Shard]>,
    shared: Box<Shared>,
}

impl core::fmt::Debug for PerCpuUsage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PerCpuUsage").field("used", &self.used()).field("hiwater", &self.hiwater()).finish()
    }
}

impl PerCpuUsage {
    /// A zeroed counter with one shard per CPU (`cpus` at least 1; CPU ids beyond wrap).
    ///
    /// # Context
    /// Allocates (128 bytes per CPU): construction time only.
    pub fn new(cpus: usize) -> Self {
        Self { shards: (0..cpus.max(1)).map(|_| Shard::default()).collect(), shared: Box::default() }
    }

    #[inline]
    fn shard(&self, cpu: usize) -> &Shard {
        // A CPU id below the shard count (every real one) needs no division.
        let n = self.shards.len();
        &self.shards[if cpu < n { cpu } else { cpu % n }]
    }

    /// Adds `bytes` on `cpu` and raises the high-water mark.
    ///
    /// # Context
    /// Any context; lock-free, never allocates.
    #[inline]
    pub fn add(&self, cpu: usize, bytes: usize) {
        let s = self.shard(cpu);
        let b = isize::try_from(bytes).unwrap_or(isize::MAX);
        let d = s.delta.fetch_add(b, Ordering::Relaxed) + b;
        let now = if d >= USAGE_BATCH {
            s.delta.fetch_sub(d, Ordering::Relaxed);
            self.shared.total.0.fetch_add(d, Ordering::Relaxed) + d
        } else {
            self.shared.total.0.load(Ordering::Relaxed) + d
        };
        let now = usize::try_from(now).unwrap_or(0);
        if now > self.shared.hiwater.0.load(Ordering::Relaxed) {
            self.shared.hiwater.0.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Removes `bytes` on `cpu` (which need not be the CPU that added them).
    ///
    /// # Context
    /// Any context; lock-free, never allocates.
    #[inline]
    pub fn sub(&self, cpu: usize, bytes: usize) {
        let s = self.shard(cpu);
        let b = isize::try_from(bytes).unwrap_or(isize::MAX);
        let d = s.delta.fetch_sub(b, Ordering::Relaxed) - b;
        if d <= -USAGE_BATCH {
            s.delta.fetch_sub(d, Ordering::Relaxed);
            self.shared.total.0.fetch_add(d, Ordering::Relaxed);
        }
    }

    /// Bytes in use: the shared total plus every CPU's delta (exact at rest).
    pub fn used(&self) -> usize {
        let mut t = self.shared.total.0.load(Ordering::Relaxed);
        for s in &*self.shards {
            t += s.delta.load(Ordering::Relaxed);
        }
        usize::try_from(t).unwrap_or(0)
    }

    /// The high-water mark: never below the current use.
    pub fn hiwater(&self) -> usize {
        self.shared.hiwater.0.load(Ordering::Relaxed).max(self.used())
    }

    /// Resets the high-water mark to the current use (writing 0 to
    /// `io_tlb_used_hiwater`).
    pub fn reset_hiwater(&self) {
        self.shared.hiwater.0.store(self.used(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cpu_is_exact_and_the_mark_follows_the_peak() {
        let u = PerCpuUsage::new(2);
        for _ in 0..40 {
            u.add(0, 4096);
        }
        assert_eq!(u.used(), 40 * 4096);
        for _ in 0..40 {
            u.sub(0, 4096);
        }
        assert_eq!(u.used(), 0);
        assert_eq!(u.hiwater(), 40 * 4096);
        u.reset_hiwater();
        assert_eq!(u.hiwater(), 0);
    }

    #[test]
    fn cross_cpu_unmaps_sum_exactly_and_the_mark_stays_within_a_batch() {
        let u = PerCpuUsage::new(2);
        let mut live = 0usize;
        let mut peak = 0usize;
        for i in 0..10_000usize {
            u.add(i % 2, 3000);
            live += 3000;
            peak = peak.max(live);
            if i % 3 != 0 {
                u.sub((i + 1) % 2, 3000);
                live -= 3000;
            }
            assert_eq!(u.used(), live);
        }
        let h = u.hiwater();
        assert!(h >= live && h.abs_diff(peak) < USAGE_BATCH as usize, "mark {h}, peak {peak}");
        // CPU ids beyond the shard count wrap.
        u.add(7, 1);
        assert_eq!(u.used(), live + 1);
    }
}
