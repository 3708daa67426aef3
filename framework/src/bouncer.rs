//! The [`Bouncer`]: the DMA API over any strategy and platform, with every copy rule of
//! Linux's swiotlb (SPEC §2) written once.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{DmaAddr, PhysAddr};
use crate::cmdline::NATIVE_LANE;
use crate::devices::{Attachment, DeviceRoute, DeviceSnapshot, DeviceTable, MAX_LANES, NATIVE};
use crate::dma::{Device, DeviceName, DmaAttrs, DmaDirection};
use crate::error::{FailureReason, InitError, LookupError, MapError};
use crate::platform::{BouncedEvent, LogLevel, Platform};
use crate::stats::{BounceSnapshot, BounceStats, Counter, DebugfsView, PoolStats};
use crate::strategy::{BackgroundReport, Found, Located, ReleaseError, Request, Reservation, Strategy};

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
    /// The strategy instances; lane 0 serves every device no route names.
    lanes: Box<[S]>,
    options: BouncerOptions,
    /// Whole-bouncer counters the device slots cannot hold: the exact in-flight total
    /// and its peak, and failures counted before a device was known.
    stats: BounceStats,
    devices: DeviceTable<P::Lock>,
    warn_limit: RateLimit,
}

impl<P: Platform, S: Strategy> fmt::Debug for Bouncer<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bouncer")
            .field("lanes", &self.lanes.iter().map(Strategy::name).collect::<Vec<_>>())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<P: Platform, S: Strategy> Bouncer<P, S> {
    /// A bouncer over `strategy`, serving every device.
    pub fn new(platform: P, strategy: S, options: BouncerOptions) -> Self {
        let cpus = platform.cpu_count();
        let lanes: Box<[S]> = Box::new([strategy]);
        Self::build(platform, lanes, DeviceTable::new(cpus, &[]), options)
    }

    /// A bouncer over several strategy instances (*lanes*, each with its own pool):
    /// the devices named in `routes` map through their lane, every other device
    /// through `lanes[0]` (`swiotlb.strategy=<default>,<device>:<strategy>,...`). A
    /// mapping is always unmapped by the lane that made it.
    ///
    /// # Errors
    /// [`InitError::Config`] for no lanes or more than [`MAX_LANES`], a route to a lane
    /// that does not exist, a device routed twice, or more routes than device slots.
    pub fn with_lanes(
        platform: P,
        lanes: Vec<S>,
        routes: &[(String, usize)],
        options: BouncerOptions,
    ) -> Result<Self, InitError> {
        if lanes.is_empty() || lanes.len() > MAX_LANES {
            return Err(InitError::Config(alloc::format!(
                "{} strategy instances given, 1 to {MAX_LANES} are supported",
                lanes.len()
            )));
        }
        let mut table = Vec::with_capacity(routes.len());
        for (dev, lane) in routes {
            if *lane == NATIVE_LANE {
                table.push((dev.clone(), NATIVE));
                continue;
            }
            if *lane >= lanes.len() {
                return Err(InitError::Config(alloc::format!(
                    "device `{dev}` is routed to instance {lane}, but there are {}",
                    lanes.len()
                )));
            }
            table.push((dev.clone(), *lane as u8));
        }
        DeviceTable::<P::Lock>::check_routes(&table).map_err(InitError::Config)?;
        let cpus = platform.cpu_count();
        Ok(Self::build(platform, lanes.into_boxed_slice(), DeviceTable::new(cpus, &table), options))
    }

    fn build(platform: P, lanes: Box<[S]>, devices: DeviceTable<P::Lock>, options: BouncerOptions) -> Self {
        let stats = BounceStats::with_shards(platform.cpu_count());
        Self { platform, lanes, options, stats, devices, warn_limit: RateLimit::new() }
    }

    /// The default strategy instance (lane 0), which serves every device no route
    /// names; the only one without routes.
    pub fn strategy(&self) -> &S {
        &self.lanes[0]
    }

    /// Every strategy instance, the default first.
    pub fn lanes(&self) -> &[S] {
        &self.lanes
    }

    /// Resolves `dev`'s route once and caches it in `dev`, so its maps and unmaps skip
    /// the lookup by name (as Linux sets `dev->dma_io_tlb_mem` once per device).
    /// Unattached devices work too, looked up by name on every call.
    ///
    /// # Context
    /// Any context; never allocates.
    pub fn attach(&self, dev: &mut Device) {
        dev.set_attachment(Attachment::default());
        let route = self.devices.route(dev);
        dev.set_attachment(Attachment { table: self.devices.id(), route });
    }

    /// Attaches `dev` and returns its route as one word, for a caller that cannot keep
    /// a [`Device`] but can keep a word beside its own device (the C ABI: the kernel
    /// stores it in `struct device`); [`Bouncer::device_from_handle`] turns it back
    /// into a device with no lookup at all. 0 for a device only the overflow slot
    /// counts: such a device keeps being looked up by name.
    ///
    /// # Context
    /// Any context; never allocates.
    pub fn attach_handle(&self, dev: &Device) -> u64 {
        let mut d = *dev;
        self.attach(&mut d);
        let a = d.attachment();
        if self.devices.is_valid(a) {
            a.to_bits()
        } else {
            0
        }
    }

    /// The device an [`Bouncer::attach_handle`] word stands for: attached, with no
    /// name (messages take it from the device table), a 64-bit mask and the defaults of
    /// [`Device::new`] (the caller sets the masks). `None` for a word this bouncer did
    /// not hand out (another instance's, stale or forged).
    ///
    /// # Context
    /// Any context; two loads.
    #[inline]
    pub fn device_from_handle(&self, handle: u64) -> Option<Device> {
        let a = Attachment::from_bits(handle);
        (self.devices.is_valid(a) && usize::from(a.route.lane) < self.lanes.len()).then(|| Device::attached(a))
    }

    /// `dev`'s name for a message: its own, or the device table's for a device known by
    /// its handle only.
    fn name_of(&self, dev: &Device) -> DeviceName {
        let a = dev.attachment();
        if dev.name().is_empty() && a.table == self.devices.id() {
            self.devices.slot_name(a.route.slot)
        } else {
            DeviceName::new(dev.name())
        }
    }

    /// The route (statistics slot and lane) `dev` takes.
    #[inline]
    pub fn route(&self, dev: &Device) -> DeviceRoute {
        self.devices.route(dev)
    }

    /// Whether a strategy instance serves `dev`: false for a device the command line
    /// leaves to the platform's own bounce buffering (`<device>:linux`), which the
    /// caller must not map here (if it does, the default instance serves it).
    #[inline]
    pub fn serves(&self, dev: &Device) -> bool {
        self.route(dev).lane != NATIVE
    }

    /// Devices routed to the platform's own bounce buffering.
    pub fn native_routes(&self) -> usize {
        self.devices.native_routes()
    }

    /// The strategy instance that serves `dev`.
    #[inline]
    fn lane(&self, route: DeviceRoute) -> &S {
        // Lanes are checked against the routes at construction; lane 0 always exists.
        self.lanes.get(usize::from(route.lane)).unwrap_or(&self.lanes[0])
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
    fn finish_timing(&self, ds: &BounceStats, cpu: usize, t0: u64, copy_ns: u64) {
        if self.options.timing {
            let op = self.platform.now_ns().saturating_sub(t0);
            ds.timed(cpu, op, copy_ns);
        }
    }

    /// Counts a failure of a `size`-byte request of the device at `route`.
    fn fail(&self, route: DeviceRoute, cpu: usize, reason: FailureReason, size: usize) {
        self.devices.stats(route.slot).fail(cpu, reason);
        self.devices.fail_size(route.slot, size);
    }

    /// `max_mapping_size(dev)`: the longest single mapping for this device.
    pub fn max_mapping_size(&self, dev: &Device) -> usize {
        self.lane(self.route(dev)).max_mapping_size(dev)
    }

    /// `dma_supported(dev, mask)`: whether a device with this mask can reach every
    /// bounce buffer any strategy instance may hand out.
    pub fn dma_supported(&self, mask: u64) -> bool {
        self.lanes.iter().all(|s| {
            let limit = s.addressing_limit();
            limit.0 == 0 || self.platform.phys_to_dma(PhysAddr(limit.0 - 1)).0 <= mask
        })
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
                self.fail(self.route(dev), self.platform.current_cpu(), e.reason(), size);
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
        let route = self.route(dev);
        let r = self.map_inner(dev, route, orig, size, alloc_align_mask, cpu, attrs);
        match r {
            Ok((dma, copy_ns)) => {
                self.finish_timing(self.devices.stats(route.slot), cpu, t0, copy_ns);
                Ok(dma)
            }
            Err(e) => {
                self.fail(route, cpu, e.reason(), size);
                Err(e)
            }
        }
    }

    #[expect(clippy::too_many_arguments, reason = "the DMA API's arguments plus the resolved route and CPU")]
    fn map_inner(
        &self,
        dev: &Device,
        route: DeviceRoute,
        orig: PhysAddr,
        size: usize,
        alloc_align_mask: u64,
        cpu: usize,
        attrs: DmaAttrs,
    ) -> Result<(DmaAddr, u64), MapError> {
        let strategy = self.lane(route);
        if size == 0 {
            return Err(MapError::ZeroSize);
        }
        if orig.checked_add(size as u64).is_none() {
            return Err(MapError::BadOriginal { orig, size });
        }
        let max = strategy.max_mapping_size(dev);
        if size > max {
            self.warn(
                attrs,
                format_args!(
                    "{}: bounce: {}: mapping of {size} bytes exceeds max {max}",
                    self.name_of(dev),
                    strategy.name()
                ),
            );
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
        let ds = self.devices.stats(route.slot);
        let res = match self.reserve(strategy, ds, &req, cpu, attrs) {
            Ok(r) => r,
            Err(e) => {
                self.warn(
                    attrs,
                    format_args!(
                        "{}: bounce: {} cannot map {size} bytes ({}): {e}",
                        self.name_of(dev),
                        strategy.name(),
                        e.reason().name()
                    ),
                );
                return Err(e);
            }
        };
        let tlb = res.addr;
        let dma = self.platform.phys_to_dma(tlb);
        // dma_capable(): the whole buffer must be below the device's mask.
        if dma.0.checked_add(size as u64 - 1).is_none_or(|end| end > dev.dma_mask) {
            if strategy.release(tlb).is_err() {
                self.platform.log(LogLevel::Error, format_args!("bounce: strategy lost a fresh mapping at {tlb}"));
            }
            self.warn(
                attrs,
                format_args!("{}: swiotlb addr {dma} + {size} overflow (mask {:#x})", self.name_of(dev), dev.dma_mask),
            );
            return Err(MapError::Unreachable { dma, size, mask: dev.dma_mask });
        }
        let mut copy_ns = 0;
        self.timed_copy(tlb, orig, size, &mut copy_ns);
        ds.add(cpu, Counter::Maps, 1);
        ds.add(cpu, Counter::BytesToBounce, size as u64);
        ds.inflight_add(cpu, size);
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
    fn reserve(
        &self,
        strategy: &S,
        ds: &BounceStats,
        req: &Request,
        cpu: usize,
        attrs: DmaAttrs,
    ) -> Result<Reservation, MapError> {
        let first = strategy.reserve(req);
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
                    return strategy.reserve(&atomic);
                }
                break strategy.reserve(&atomic);
            }
            match strategy.reserve(req) {
                Ok(r) => break Ok(r),
                Err(_) if self.platform.now_ns().saturating_sub(start) >= MAY_BLOCK_TIMEOUT_NS => {
                    break strategy.reserve(&atomic);
                }
                Err(again) if matches!(again.reason(), FailureReason::Exhausted | FailureReason::Cap) => {}
                Err(other) => break Err(other),
            }
            nap = (nap * 2).min(MAX_BLOCK_SLEEP_NS);
        };
        ds.blocked(cpu, self.platform.now_ns().saturating_sub(start));
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

    /// Looks up a caller's bus address: the one lookup of an unmap or a sync. The
    /// device's own lane is asked first; an address it does not own is looked for in the
    /// other lanes, so a mapping is found (and released) by the lane that made it.
    #[inline]
    fn find(&self, route: DeviceRoute, dma: DmaAddr) -> Result<(PhysAddr, &S, Found), LookupError> {
        let Some(phys) = self.bounce_phys(dma) else { return Err(LookupError::Foreign(dma)) };
        let own = self.lane(route);
        match own.find(phys) {
            Ok(f) => Ok((phys, own, f)),
            Err(e) => self.find_elsewhere(dma, phys, e),
        }
    }

    /// The rest of [`Bouncer::find`] when the device's own lane did not find `phys`:
    /// another lane's mapping (a driver unmapping through another device than the one
    /// that mapped), else the error. Out of line: the common unmap never gets here.
    #[cold]
    #[inline(never)]
    fn find_elsewhere(
        &self,
        dma: DmaAddr,
        phys: PhysAddr,
        e: ReleaseError,
    ) -> Result<(PhysAddr, &S, Found), LookupError> {
        let r = match self.lanes.iter().find(|s| s.owns(phys)) {
            Some(s) if matches!(e, ReleaseError::Foreign) => s.find(phys).map(|f| (s, f)),
            _ => Err(e),
        };
        match r {
            Ok((s, f)) => Ok((phys, s, f)),
            Err(ReleaseError::Foreign) => Err(LookupError::Foreign(dma)),
            Err(ReleaseError::NotMapped) => Err(LookupError::NotMapped(dma)),
            Err(ReleaseError::NotStart { start }) => {
                Err(LookupError::NotMappingStart { addr: dma, start: self.platform.phys_to_dma(start) })
            }
        }
    }

    /// Copies between bounce and original for `len` bytes at `tlb`, clamping to the
    /// mapping ("Buffer overflow detected").
    #[expect(clippy::too_many_arguments, reason = "the mapping, the copy and where to count it")]
    fn bounce(
        &self,
        dev: &Device,
        ds: &BounceStats,
        tlb: PhysAddr,
        loc: &Located,
        len: usize,
        to_device: bool,
        cpu: usize,
        copy_ns: &mut u64,
    ) {
        let mut len = len;
        if len > loc.remaining {
            ds.add(cpu, Counter::OverflowsClamped, 1);
            self.warn(
                DmaAttrs::empty(),
                format_args!(
                    "{}: Buffer overflow detected. Allocation size: {}. Mapping size: {len}.",
                    self.name_of(dev),
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
            ds.add(cpu, Counter::BytesToBounce, len as u64);
        } else {
            self.timed_copy(loc.orig, tlb, len, copy_ns);
            ds.add(cpu, Counter::BytesFromBounce, len as u64);
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
        let route = self.route(dev);
        let r = self.unmap_inner(dev, route, dma, size, dir, attrs, cpu);
        match r {
            Ok(copy_ns) => {
                self.finish_timing(self.devices.stats(route.slot), cpu, t0, copy_ns);
                Ok(())
            }
            Err(e) => {
                self.fail(route, cpu, e.reason(), size);
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
                self.fail(self.route(dev), self.platform.current_cpu(), e.reason(), size);
                Err(e.into())
            }
        }
    }

    #[expect(clippy::too_many_arguments, reason = "the DMA API's arguments plus the resolved route and CPU")]
    fn unmap_inner(
        &self,
        dev: &Device,
        route: DeviceRoute,
        dma: DmaAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        cpu: usize,
    ) -> Result<u64, LookupError> {
        let (tlb, strategy, found) = self.find(route, dma)?;
        let ds = self.devices.stats(route.slot);
        let loc = found.loc;
        if loc.start != tlb {
            return Err(LookupError::NotMappingStart { addr: dma, start: self.platform.phys_to_dma(loc.start) });
        }
        let mut copy_ns = 0;
        if dir.from_device() && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            self.bounce(dev, ds, tlb, &loc, size, false, cpu, &mut copy_ns);
        }
        if self.options.scrub {
            let t = self.clock();
            self.platform.fill(tlb, 0, loc.remaining);
            if self.options.timing {
                copy_ns += self.platform.now_ns() - t;
            }
        }
        match strategy.release_found(&found, cpu) {
            Ok(rel) => {
                ds.add(cpu, Counter::Unmaps, 1);
                ds.inflight_sub(cpu, rel.size);
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
        let route = self.route(dev);
        let (tlb, loc) = match self.find(route, dma) {
            Ok((tlb, _, f)) => (tlb, f.loc),
            Err(e) => {
                self.fail(route, cpu, e.reason(), size);
                return Err(e);
            }
        };
        let ds = self.devices.stats(route.slot);
        let mut copy_ns = 0;
        if for_device {
            if dir.to_device() {
                self.bounce(dev, ds, tlb, &loc, size, true, cpu, &mut copy_ns);
            }
            ds.add(cpu, Counter::SyncsForDevice, 1);
        } else {
            if dir.from_device() {
                self.bounce(dev, ds, tlb, &loc, size, false, cpu, &mut copy_ns);
            }
            ds.add(cpu, Counter::SyncsForCpu, 1);
        }
        self.finish_timing(ds, cpu, t0, copy_ns);
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

    /// `is_swiotlb_buffer`: whether a bus address belongs to the bounce pools (of any
    /// strategy instance).
    pub fn is_bounce_buffer(&self, dma: DmaAddr) -> bool {
        self.bounce_phys(dma).is_some_and(|phys| self.lanes.iter().any(|s| s.owns(phys)))
    }

    /// The live mapping around `dma`: `(mapping start, bytes from dma to its end)`.
    /// The device model uses it to check every access.
    pub fn live_range(&self, dma: DmaAddr) -> Option<(DmaAddr, usize)> {
        let phys = self.bounce_phys(dma)?;
        let s = self.lanes.iter().find(|s| s.owns(phys))?;
        s.locate(phys).map(|l| (self.platform.phys_to_dma(l.start), l.remaining))
    }

    /// DMA-API counters of the whole bouncer: the sum over the devices, with the exact
    /// in-flight total and peak.
    pub fn stats(&self) -> BounceSnapshot {
        let mut t = self.devices.total();
        let own = self.stats.snapshot();
        t.inflight_bytes = own.inflight_bytes;
        t.inflight_bytes_peak = own.inflight_bytes_peak;
        for (a, b) in t.failures.iter_mut().zip(own.failures) {
            *a += b;
        }
        t
    }

    /// DMA-API counters per device (each with its lane), the routed devices first.
    pub fn device_stats(&self) -> Vec<DeviceSnapshot> {
        self.devices.snapshot()
    }

    /// DMA-API counters of the devices lane `lane` serves (in-flight bytes and peak
    /// summed over them).
    ///
    /// # Context
    /// Any context; never allocates.
    pub fn lane_stats(&self, lane: usize) -> BounceSnapshot {
        self.devices.lane_total(lane)
    }

    /// Device slot `i`'s device and counters ([`DeviceTable::get`]); slots run from 0
    /// to [`DEVICE_SLOTS`](crate::DEVICE_SLOTS).
    ///
    /// # Context
    /// Any context; never allocates.
    pub fn device_at(&self, i: usize) -> Option<DeviceSnapshot> {
        self.devices.get(i)
    }

    /// Records a failure that happened before reaching the bouncer (e.g. a bad ABI
    /// argument), so every failure shows in one place.
    pub fn count_failure(&self, reason: FailureReason) {
        self.stats.fail(self.platform.current_cpu(), reason);
    }

    /// The pool statistics of every strategy instance, summed (high-water marks too:
    /// an upper bound of the joint peak).
    pub fn pool_stats(&self) -> PoolStats {
        let mut t = PoolStats::default();
        for s in &*self.lanes {
            t.merge(&s.stats());
        }
        t
    }

    /// Linux's debugfs numbers, over every strategy instance.
    pub fn debugfs(&self) -> DebugfsView {
        self.pool_stats().debugfs()
    }

    /// Writing 0 to `io_tlb_used_hiwater`: resets every strategy instance's high-water
    /// mark and the in-flight peaks.
    pub fn reset_hiwater(&self) {
        for s in &*self.lanes {
            s.reset_hiwater();
        }
        self.stats.reset_inflight_peak();
        self.devices.reset_inflight_peaks();
    }

    /// Whether any strategy instance has background work.
    pub fn background_pending(&self) -> bool {
        self.lanes.iter().any(Strategy::background_pending)
    }

    /// Runs every strategy instance's background work once (kccd's loop body). May
    /// sleep.
    pub fn run_background(&self) -> BackgroundReport {
        let mut t = BackgroundReport::default();
        for s in &*self.lanes {
            let r = s.run_background();
            t.buffers_added += r.buffers_added;
            t.pages_grown += r.pages_grown;
            t.pages_shrunk += r.pages_shrunk;
            t.pages_quarantined += r.pages_quarantined;
            t.more |= r.more;
        }
        t
    }
}
