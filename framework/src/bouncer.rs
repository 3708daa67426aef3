//! The [`Bouncer`]: the DMA API over any strategy and platform, with every copy rule of
//! Linux's swiotlb (SPEC §2) written once.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{DmaAddr, PhysAddr};
use crate::dma::{Device, DmaAttrs, DmaDirection};
use crate::error::{FailureReason, LookupError, MapError};
use crate::platform::{BouncedEvent, LogLevel, Platform};
use crate::stats::{BounceSnapshot, BounceStats, Counter, DebugfsView, PoolStats};
use crate::strategy::{Found, Located, ReleaseError, Request, Reservation, Strategy};

/// Options of a [`Bouncer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BouncerOptions {
    /// Time every operation and split copy from metadata time (three clock reads per
    /// operation; off by default).
    pub timing: bool,
    /// Clear a bounce buffer before it goes back to the strategy (`swiotlb.scrub=on`),
    /// so the host never sees an earlier mapping's data in a free buffer.
    pub scrub: bool,
    /// Report bouncing as forced in traces (`swiotlb=force`, or a confidential guest).
    pub force: bool,
    /// Emit the `swiotlb_bounced` tracepoint on every map.
    pub trace: bool,
}

impl Default for BouncerOptions {
    fn default() -> Self {
        Self { timing: false, scrub: false, force: true, trace: false }
    }
}

/// One entry of a scatter-gather list (`struct scatterlist`, already resolved to a
/// physical address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgEntry {
    /// The original buffer.
    pub phys: PhysAddr,
    /// Its length.
    pub length: usize,
    /// Set by `map_sg`: the bus address (`sg_dma_address`).
    pub dma_address: DmaAddr,
    /// Set by `map_sg`: the mapped length (`sg_dma_len`).
    pub dma_length: usize,
}

impl SgEntry {
    /// An unmapped entry.
    pub const fn new(phys: PhysAddr, length: usize) -> Self {
        Self { phys, length, dma_address: DmaAddr(0), dma_length: 0 }
    }
}

/// A failed `map_sg`: which entry failed, and why. Every entry mapped before it has been
/// unmapped again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("scatter-gather entry {index} could not be mapped: {error}")]
pub struct SgError {
    /// The failing entry.
    pub index: usize,
    /// Why.
    pub error: MapError,
}

/// The longest a [`DmaAttrs::MAY_BLOCK`] map waits for a free bounce buffer before it
/// fails (1 s): long enough for the refill engine to convert a large batch on any
/// platform, short enough that a leak or a full cap surfaces as an error, not a hang.
pub const MAY_BLOCK_TIMEOUT_NS: u64 = 1_000_000_000;
/// A waiting map's first sleep; each further sleep doubles, up to [`MAX_BLOCK_SLEEP_NS`].
const FIRST_BLOCK_SLEEP_NS: u64 = 20_000;
/// The longest single sleep of a waiting map.
const MAX_BLOCK_SLEEP_NS: u64 = 1_000_000;

/// Warnings are printed at most this many times per interval (Linux's
/// `DEFAULT_RATELIMIT_BURST` per `DEFAULT_RATELIMIT_INTERVAL`).
const RATELIMIT_BURST: u64 = 10;
const RATELIMIT_INTERVAL_NS: u64 = 5_000_000_000;

struct RateLimit {
    window_start: AtomicU64,
    printed: AtomicU64,
    missed: AtomicU64,
}

impl RateLimit {
    const fn new() -> Self {
        Self { window_start: AtomicU64::new(0), printed: AtomicU64::new(0), missed: AtomicU64::new(0) }
    }

    /// Whether a message may be printed now (`__ratelimit`).
    fn allow(&self, now: u64) -> bool {
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= RATELIMIT_INTERVAL_NS
            && self.window_start.compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.printed.store(0, Ordering::Relaxed);
        }
        if self.printed.fetch_add(1, Ordering::Relaxed) < RATELIMIT_BURST {
            true
        } else {
            self.missed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// The DMA-API host over a strategy `S` on platform `P`.
///
/// # Context
/// Every method but [`Bouncer::run_background`] may run in atomic context (IRQs off):
/// none sleeps, allocates or converts pages.
pub struct Bouncer<P: Platform, S: Strategy> {
    platform: P,
    strategy: S,
    options: BouncerOptions,
    stats: BounceStats,
    warn_limit: RateLimit,
}

impl<P: Platform, S: Strategy> fmt::Debug for Bouncer<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bouncer")
            .field("strategy", &self.strategy.name())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<P: Platform, S: Strategy> Bouncer<P, S> {
    /// A bouncer over `strategy`.
    pub fn new(platform: P, strategy: S, options: BouncerOptions) -> Self {
        Self { platform, strategy, options, stats: BounceStats::new(), warn_limit: RateLimit::new() }
    }

    /// The strategy.
    pub fn strategy(&self) -> &S {
        &self.strategy
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The options.
    pub fn options(&self) -> BouncerOptions {
        self.options
    }

    fn warn(&self, attrs: DmaAttrs, args: fmt::Arguments<'_>) {
        if !attrs.contains(DmaAttrs::NO_WARN) && self.warn_limit.allow(self.platform.now_ns()) {
            self.platform.log(LogLevel::Warn, args);
        }
    }

    #[inline]
    fn clock(&self) -> u64 {
        if self.options.timing {
            self.platform.now_ns()
        } else {
            0
        }
    }

    /// Copies with the copy time accounted to `copy_ns`.
    #[inline]
    fn timed_copy(&self, dst: PhysAddr, src: PhysAddr, len: usize, copy_ns: &mut u64) {
        if self.options.timing {
            let t = self.platform.now_ns();
            self.platform.copy(dst, src, len);
            *copy_ns += self.platform.now_ns() - t;
        } else {
            self.platform.copy(dst, src, len);
        }
    }

    #[inline]
    fn finish_timing(&self, cpu: usize, t0: u64, copy_ns: u64) {
        if self.options.timing {
            let op = self.platform.now_ns().saturating_sub(t0);
            self.stats.timed(cpu, op, copy_ns);
        }
    }

    /// `max_mapping_size(dev)`: the longest single mapping for this device.
    pub fn max_mapping_size(&self, dev: &Device) -> usize {
        self.strategy.max_mapping_size(dev)
    }

    /// `dma_supported(dev, mask)`: whether a device with this mask can reach every
    /// bounce buffer the strategy may hand out.
    pub fn dma_supported(&self, mask: u64) -> bool {
        let limit = self.strategy.addressing_limit();
        if limit.0 == 0 {
            return true;
        }
        self.platform.phys_to_dma(PhysAddr(limit.0 - 1)).0 <= mask
    }

    /// `map_page` / `swiotlb_map`: bounces `size` bytes at `orig` and returns the bus
    /// address the device must use.
    ///
    /// Always copies original → bounce, whatever the direction (CVE-2022-0854: a
    /// device that writes only part of the buffer must not expose stale bounce data).
    ///
    /// # Errors
    /// [`MapError`]: bad direction, zero or oversize request, exhausted pool,
    /// unreachable memory. Nothing stays reserved on error.
    pub fn map_single(
        &self,
        dev: &Device,
        orig: PhysAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<DmaAddr, MapError> {
        self.map_with_align(dev, orig, size, 0, dir, attrs)
    }

    /// `map_page` with a raw Linux direction (rejects `DMA_NONE`), for ABI callers.
    ///
    /// # Errors
    /// As [`Bouncer::map_single`], plus [`MapError::DirectionNone`] /
    /// [`MapError::BadDirection`].
    pub fn map_single_raw(
        &self,
        dev: &Device,
        orig: PhysAddr,
        size: usize,
        dir: u32,
        attrs: DmaAttrs,
    ) -> Result<DmaAddr, MapError> {
        match DmaDirection::from_raw(dir) {
            Ok(d) => self.map_single(dev, orig, size, d, attrs),
            Err(e) => {
                self.stats.fail(self.platform.current_cpu(), e.reason());
                Err(e)
            }
        }
    }

    /// `swiotlb_tbl_map_single` with an explicit `alloc_align_mask`.
    ///
    /// # Errors
    /// As [`Bouncer::map_single`].
    pub fn map_with_align(
        &self,
        dev: &Device,
        orig: PhysAddr,
        size: usize,
        alloc_align_mask: u64,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<DmaAddr, MapError> {
        let _ = dir; // map copies in for every direction
        let cpu = self.platform.current_cpu();
        let t0 = self.clock();
        let r = self.map_inner(dev, orig, size, alloc_align_mask, cpu, attrs);
        match r {
            Ok((dma, copy_ns)) => {
                self.finish_timing(cpu, t0, copy_ns);
                Ok(dma)
            }
            Err(e) => {
                self.stats.fail(cpu, e.reason());
                Err(e)
            }
        }
    }

    fn map_inner(
        &self,
        dev: &Device,
        orig: PhysAddr,
        size: usize,
        alloc_align_mask: u64,
        cpu: usize,
        attrs: DmaAttrs,
    ) -> Result<(DmaAddr, u64), MapError> {
        if size == 0 {
            return Err(MapError::ZeroSize);
        }
        if orig.checked_add(size as u64).is_none() {
            return Err(MapError::BadOriginal { orig, size });
        }
        let max = self.strategy.max_mapping_size(dev);
        if size > max {
            self.warn(attrs, format_args!("{}: bounce: mapping of {size} bytes exceeds max {max}", dev.name()));
            return Err(MapError::TooLarge { size, max });
        }
        let req = Request {
            orig,
            size,
            alloc_size: size,
            alloc_align_mask,
            min_align_mask: dev.min_align_mask,
            dma_mask: dev.dma_mask,
            cpu,
            may_block: attrs.contains(DmaAttrs::MAY_BLOCK),
        };
        let res = match self.reserve(&req, cpu, attrs) {
            Ok(r) => r,
            Err(e) => {
                self.warn(attrs, format_args!("{}: {e}", dev.name()));
                return Err(e);
            }
        };
        let tlb = res.addr;
        let dma = self.platform.phys_to_dma(tlb);
        // dma_capable(): the whole buffer must be below the device's mask.
        if dma.0.checked_add(size as u64 - 1).is_none_or(|end| end > dev.dma_mask) {
            if self.strategy.release(tlb).is_err() {
                self.platform.log(LogLevel::Error, format_args!("bounce: strategy lost a fresh mapping at {tlb}"));
            }
            self.warn(
                attrs,
                format_args!("{}: swiotlb addr {dma} + {size} overflow (mask {:#x})", dev.name(), dev.dma_mask),
            );
            return Err(MapError::Unreachable { dma, size, mask: dev.dma_mask });
        }
        let mut copy_ns = 0;
        self.timed_copy(tlb, orig, size, &mut copy_ns);
        self.stats.add(cpu, Counter::Maps, 1);
        self.stats.add(cpu, Counter::BytesToBounce, size as u64);
        self.stats.inflight_add(cpu, size);
        if self.options.trace {
            self.platform.trace_bounced(&BouncedEvent {
                dev,
                dev_addr: self.platform.phys_to_dma(orig),
                size,
                force: self.options.force,
            });
        }
        Ok((dma, copy_ns))
    }

    /// The strategy's reserve; for a [`DmaAttrs::MAY_BLOCK`] map that finds the pool
    /// exhausted (or the cap reached), waits instead of failing: it wakes the refill
    /// engine, sleeps through [`Platform::sleep`] with a doubling back-off and tries
    /// again, until a buffer is free or [`MAY_BLOCK_TIMEOUT_NS`] has passed. The
    /// strategy may keep its emergency reserves from such a map while it waits
    /// ([`Request::may_block`]); the last try, at the timeout, asks as an atomic map
    /// would, so waiting never fails a map that not waiting would have served. Any other
    /// map, and any other error, returns at once: only this caller sleeps, and only
    /// because it said it may.
    fn reserve(&self, req: &Request, cpu: usize, attrs: DmaAttrs) -> Result<Reservation, MapError> {
        let first = self.strategy.reserve(req);
        let Err(e) = first else { return first };
        if !attrs.contains(DmaAttrs::MAY_BLOCK) || !matches!(e.reason(), FailureReason::Exhausted | FailureReason::Cap)
        {
            return Err(e);
        }
        let atomic = Request { may_block: false, ..*req };
        let start = self.platform.now_ns();
        let mut nap = FIRST_BLOCK_SLEEP_NS;
        let result = loop {
            self.platform.wake_refill();
            if !self.platform.sleep(nap) {
                if nap == FIRST_BLOCK_SLEEP_NS {
                    // Cannot sleep here: an atomic map after all.
                    return self.strategy.reserve(&atomic);
                }
                break self.strategy.reserve(&atomic);
            }
            match self.strategy.reserve(req) {
                Ok(r) => break Ok(r),
                Err(_) if self.platform.now_ns().saturating_sub(start) >= MAY_BLOCK_TIMEOUT_NS => {
                    break self.strategy.reserve(&atomic);
                }
                Err(again) if matches!(again.reason(), FailureReason::Exhausted | FailureReason::Cap) => {}
                Err(other) => break Err(other),
            }
            nap = (nap * 2).min(MAX_BLOCK_SLEEP_NS);
        };
        self.stats.blocked(cpu, self.platform.now_ns().saturating_sub(start));
        result
    }

    /// The physical address of a bus address the bouncer may have handed out: `None`
    /// for one that is not the bus address of its own physical address (e.g. the
    /// private alias of a page whose shared alias carries the platform's shared bit), so
    /// such an address never reaches a bounce buffer.
    #[inline]
    fn bounce_phys(&self, dma: DmaAddr) -> Option<PhysAddr> {
        let phys = self.platform.dma_to_phys(dma);
        (self.platform.phys_to_dma(phys) == dma).then_some(phys)
    }

    /// Looks up a caller's bus address: the one lookup of an unmap or a sync.
    #[inline]
    fn find(&self, dma: DmaAddr) -> Result<(PhysAddr, Found), LookupError> {
        let Some(phys) = self.bounce_phys(dma) else { return Err(LookupError::Foreign(dma)) };
        match self.strategy.find(phys) {
            Ok(f) => Ok((phys, f)),
            Err(ReleaseError::Foreign) => Err(LookupError::Foreign(dma)),
            Err(ReleaseError::NotMapped) => Err(LookupError::NotMapped(dma)),
            Err(ReleaseError::NotStart { start }) => {
                Err(LookupError::NotMappingStart { addr: dma, start: self.platform.phys_to_dma(start) })
            }
        }
    }

    /// Copies between bounce and original for `len` bytes at `tlb`, clamping to the
    /// mapping ("Buffer overflow detected").
    fn bounce(
        &self,
        dev: &Device,
        tlb: PhysAddr,
        loc: &Located,
        len: usize,
        to_device: bool,
        cpu: usize,
        copy_ns: &mut u64,
    ) {
        let mut len = len;
        if len > loc.remaining {
            self.stats.add(cpu, Counter::OverflowsClamped, 1);
            self.warn(
                DmaAttrs::empty(),
                format_args!(
                    "{}: Buffer overflow detected. Allocation size: {}. Mapping size: {len}.",
                    dev.name(),
                    loc.remaining
                ),
            );
            len = loc.remaining;
        }
        if len == 0 {
            return;
        }
        if to_device {
            self.timed_copy(tlb, loc.orig, len, copy_ns);
            self.stats.add(cpu, Counter::BytesToBounce, len as u64);
        } else {
            self.timed_copy(loc.orig, tlb, len, copy_ns);
            self.stats.add(cpu, Counter::BytesFromBounce, len as u64);
        }
    }

    /// `unmap_page` / `swiotlb_tbl_unmap_single`: copies bounce → original for
    /// `FromDevice` and `Bidirectional` (unless `SKIP_CPU_SYNC`), then releases.
    ///
    /// # Errors
    /// [`LookupError`] for an address that is not the start of a live mapping (unknown,
    /// already unmapped, inside another mapping, foreign); nothing is copied or released.
    pub fn unmap_single(
        &self,
        dev: &Device,
        dma: DmaAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), LookupError> {
        let cpu = self.platform.current_cpu();
        let t0 = self.clock();
        let r = self.unmap_inner(dev, dma, size, dir, attrs, cpu);
        match r {
            Ok(copy_ns) => {
                self.finish_timing(cpu, t0, copy_ns);
                Ok(())
            }
            Err(e) => {
                self.stats.fail(cpu, e.reason());
                Err(e)
            }
        }
    }

    /// `unmap_page` with a raw Linux direction.
    ///
    /// # Errors
    /// As [`Bouncer::unmap_single`], plus direction errors.
    pub fn unmap_single_raw(
        &self,
        dev: &Device,
        dma: DmaAddr,
        size: usize,
        dir: u32,
        attrs: DmaAttrs,
    ) -> Result<(), LookupError> {
        match DmaDirection::from_raw(dir) {
            Ok(d) => self.unmap_single(dev, dma, size, d, attrs),
            Err(e) => {
                self.stats.fail(self.platform.current_cpu(), e.reason());
                Err(e.into())
            }
        }
    }

    fn unmap_inner(
        &self,
        dev: &Device,
        dma: DmaAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        cpu: usize,
    ) -> Result<u64, LookupError> {
        let (tlb, found) = self.find(dma)?;
        let loc = found.loc;
        if loc.start != tlb {
            return Err(LookupError::NotMappingStart { addr: dma, start: self.platform.phys_to_dma(loc.start) });
        }
        let mut copy_ns = 0;
        if dir.from_device() && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            self.bounce(dev, tlb, &loc, size, false, cpu, &mut copy_ns);
        }
        if self.options.scrub {
            let t = self.clock();
            self.platform.fill(tlb, 0, loc.remaining);
            if self.options.timing {
                copy_ns += self.platform.now_ns() - t;
            }
        }
        match self.strategy.release_found(&found, cpu) {
            Ok(rel) => {
                self.stats.add(cpu, Counter::Unmaps, 1);
                self.stats.inflight_sub(cpu, rel.size);
                Ok(copy_ns)
            }
            // Lost a race with a concurrent unmap of the same address (a caller bug):
            // report it like a double unmap.
            Err(ReleaseError::NotMapped | ReleaseError::Foreign) => Err(LookupError::NotMapped(dma)),
            Err(ReleaseError::NotStart { start }) => {
                Err(LookupError::NotMappingStart { addr: dma, start: self.platform.phys_to_dma(start) })
            }
        }
    }

    /// `sync_single_for_cpu`: copies bounce → original for `FromDevice` and
    /// `Bidirectional`. `dma` may point inside a mapping (partial sync); a size running
    /// past the mapping is clamped and counted.
    ///
    /// # Errors
    /// [`LookupError`] when `dma` is not inside a live mapping.
    pub fn sync_single_for_cpu(
        &self,
        dev: &Device,
        dma: DmaAddr,
        size: usize,
        dir: DmaDirection,
    ) -> Result<(), LookupError> {
        self.sync(dev, dma, size, dir, false)
    }

    /// `sync_single_for_device`: copies original → bounce for `ToDevice` and
    /// `Bidirectional`; partial syncs and clamping as for
    /// [`Bouncer::sync_single_for_cpu`].
    ///
    /// # Errors
    /// [`LookupError`] when `dma` is not inside a live mapping.
    pub fn sync_single_for_device(
        &self,
        dev: &Device,
        dma: DmaAddr,
        size: usize,
        dir: DmaDirection,
    ) -> Result<(), LookupError> {
        self.sync(dev, dma, size, dir, true)
    }

    fn sync(
        &self,
        dev: &Device,
        dma: DmaAddr,
        size: usize,
        dir: DmaDirection,
        for_device: bool,
    ) -> Result<(), LookupError> {
        let cpu = self.platform.current_cpu();
        let t0 = self.clock();
        let (tlb, loc) = match self.find(dma) {
            Ok((tlb, f)) => (tlb, f.loc),
            Err(e) => {
                self.stats.fail(cpu, e.reason());
                return Err(e);
            }
        };
        let mut copy_ns = 0;
        if for_device {
            if dir.to_device() {
                self.bounce(dev, tlb, &loc, size, true, cpu, &mut copy_ns);
            }
            self.stats.add(cpu, Counter::SyncsForDevice, 1);
        } else {
            if dir.from_device() {
                self.bounce(dev, tlb, &loc, size, false, cpu, &mut copy_ns);
            }
            self.stats.add(cpu, Counter::SyncsForCpu, 1);
        }
        self.finish_timing(cpu, t0, copy_ns);
        Ok(())
    }

    /// `map_sg`: maps every entry, all or nothing. On failure every entry mapped so far
    /// is unmapped again (without copying back) and the error names the failing entry.
    ///
    /// # Errors
    /// [`SgError`].
    pub fn map_sg(
        &self,
        dev: &Device,
        sg: &mut [SgEntry],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<usize, SgError> {
        for i in 0..sg.len() {
            match self.map_single(dev, sg[i].phys, sg[i].length, dir, attrs) {
                Ok(dma) => {
                    sg[i].dma_address = dma;
                    sg[i].dma_length = sg[i].length;
                }
                Err(error) => {
                    if let Err(e) = self.unmap_sg_prefix(dev, &mut sg[..i], dir, attrs | DmaAttrs::SKIP_CPU_SYNC) {
                        // Entries this call just mapped must unmap; failing is a strategy bug.
                        self.platform.log(LogLevel::Error, format_args!("bounce: map_sg rollback failed: {e}"));
                    }
                    return Err(SgError { index: i, error });
                }
            }
        }
        Ok(sg.len())
    }

    fn unmap_sg_prefix(
        &self,
        dev: &Device,
        sg: &mut [SgEntry],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), LookupError> {
        let mut first = Ok(());
        for e in sg.iter_mut() {
            let r = self.unmap_single(dev, e.dma_address, e.dma_length, dir, attrs);
            if r.is_ok() {
                e.dma_length = 0;
            } else if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// `unmap_sg`: unmaps every entry (copying back per direction).
    ///
    /// # Errors
    /// The first entry's error; the other entries are still unmapped.
    pub fn unmap_sg(
        &self,
        dev: &Device,
        sg: &mut [SgEntry],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), LookupError> {
        self.unmap_sg_prefix(dev, sg, dir, attrs)
    }

    /// `sync_sg_for_cpu`.
    ///
    /// # Errors
    /// The first entry's error; the other entries are still synced.
    pub fn sync_sg_for_cpu(&self, dev: &Device, sg: &[SgEntry], dir: DmaDirection) -> Result<(), LookupError> {
        let mut first = Ok(());
        for e in sg {
            let r = self.sync_single_for_cpu(dev, e.dma_address, e.dma_length, dir);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// `sync_sg_for_device`.
    ///
    /// # Errors
    /// The first entry's error; the other entries are still synced.
    pub fn sync_sg_for_device(&self, dev: &Device, sg: &[SgEntry], dir: DmaDirection) -> Result<(), LookupError> {
        let mut first = Ok(());
        for e in sg {
            let r = self.sync_single_for_device(dev, e.dma_address, e.dma_length, dir);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// `is_swiotlb_buffer`: whether a bus address belongs to the bounce pools.
    pub fn is_bounce_buffer(&self, dma: DmaAddr) -> bool {
        self.bounce_phys(dma).is_some_and(|phys| self.strategy.owns(phys))
    }

    /// The live mapping around `dma`: `(mapping start, bytes from dma to its end)`.
    /// The device model uses it to check every access.
    pub fn live_range(&self, dma: DmaAddr) -> Option<(DmaAddr, usize)> {
        let phys = self.bounce_phys(dma)?;
        self.strategy.locate(phys).map(|l| (self.platform.phys_to_dma(l.start), l.remaining))
    }

    /// DMA-API counters.
    pub fn stats(&self) -> BounceSnapshot {
        self.stats.snapshot()
    }

    /// Records a failure that happened before reaching the bouncer (e.g. a bad ABI
    /// argument), so every failure shows in one place.
    pub fn count_failure(&self, reason: FailureReason) {
        self.stats.fail(self.platform.current_cpu(), reason);
    }

    /// The strategy's pool statistics.
    pub fn pool_stats(&self) -> PoolStats {
        self.strategy.stats()
    }

    /// Linux's debugfs numbers.
    pub fn debugfs(&self) -> DebugfsView {
        self.strategy.stats().debugfs()
    }

    /// Writing 0 to `io_tlb_used_hiwater`: resets the strategy's high-water mark and the
    /// in-flight peak.
    pub fn reset_hiwater(&self) {
        self.strategy.reset_hiwater();
        self.stats.reset_inflight_peak();
    }

    /// Runs the strategy's background work once (kccd's loop body). May sleep.
    pub fn run_background(&self) -> crate::strategy::BackgroundReport {
        self.strategy.run_background()
    }
}
