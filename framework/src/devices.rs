//! Per-device routing and statistics: which strategy instance (*lane*) serves a device,
//! and what the device did.
//!
//! A [`Bouncer`](crate::Bouncer) holds one or more lanes, each a strategy instance with
//! its own pool (`swiotlb.strategy=<default>,<device>:<strategy>,...`; lane 0 is the
//! default). Devices are told apart by name (`dev_name()`), as the command line names
//! them. Each device seen gets a slot in a [`DeviceTable`] fixed at boot
//! ([`DEVICE_SLOTS`] slots; later devices share the last, *overflow* slot, named
//! [`OVERFLOW_DEVICE`]): its lane and its own [`BounceStats`]. The bouncer's totals
//! are the sum over the slots, so the map path counts each event once.
//!
//! # Cost on the map path
//! A [`Device`] attached with [`Bouncer::attach`](crate::Bouncer::attach) carries its
//! slot and lane: resolving it is one comparison. An unattached device (the C ABI passes
//! a name per call) is looked up by name: a scan of the claimed slots, no lock, no write.
//! Only the first map of a device never seen before takes the table's registration lock
//! (IRQ-safe, never held across anything that sleeps) to claim a slot; so does every
//! call of an unattached device counted in the overflow slot (more than
//! `DEVICE_SLOTS - 1` devices), which has no slot of its own to be found in.
//!
//! # Memory
//! Each slot's [`BounceStats`] has one shard per CPU (at most
//! [`STAT_SHARDS`](crate::stats::STAT_SHARDS)): about 400 bytes per CPU per slot, so
//! 13 KiB on 2 CPUs and 400 KiB on 64, allocated once at boot.

use alloc::boxed::Box;
use alloc::string::String;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::dma::{Device, DeviceName, DEVICE_NAME_MAX};
use crate::lock::{IrqMutex, RawIrqLock};
use crate::stats::{BounceSnapshot, BounceStats};

/// Device slots per bouncer, the overflow slot included.
pub const DEVICE_SLOTS: usize = 16;

/// The name the overflow slot reports: every device beyond the first
/// `DEVICE_SLOTS - 1` is counted there.
pub const OVERFLOW_DEVICE: &str = "(other devices)";

/// Lanes (strategy instances) per bouncer at most.
pub const MAX_LANES: usize = 8;

/// [`DeviceRoute::lane`] of a device left to the platform's own bounce buffering
/// ([`NATIVE_LANE`](crate::NATIVE_LANE) on the command line).
pub const NATIVE: u8 = u8::MAX;

/// Failure size buckets: a failed request of `n` bytes counts in the first bucket whose
/// bound is at least `n` (the last bucket takes everything larger).
pub const FAIL_SIZE_BOUNDS: [usize; 7] = [512, 2048, 4096, 16 << 10, 64 << 10, 256 << 10, usize::MAX];

/// The bucket of [`FAIL_SIZE_BOUNDS`] a request of `size` bytes counts in.
pub fn fail_size_bucket(size: usize) -> usize {
    FAIL_SIZE_BOUNDS.iter().position(|&b| size <= b).unwrap_or(FAIL_SIZE_BOUNDS.len() - 1)
}

const WORDS: usize = DEVICE_NAME_MAX / 8;
const FREE: u32 = 0;
/// `state` of a claimed slot: `READY | name length`.
const READY: u32 = 1 << 16;

/// One device's slot.
struct Slot {
    /// 0 while free; `READY | len` once the name below is written (Release).
    state: AtomicU32,
    /// The name, zero padded, as [`Device::name_words`] gives it.
    name: [AtomicU64; WORDS],
    lane: AtomicU8,
    stats: BounceStats,
    /// Failures by [`FAIL_SIZE_BOUNDS`] bucket (cold: not sharded).
    fail_sizes: [AtomicU64; FAIL_SIZE_BOUNDS.len()],
}

impl Slot {
    fn new(cpus: usize) -> Self {
        Self {
            state: AtomicU32::new(FREE),
            name: core::array::from_fn(|_| AtomicU64::new(0)),
            lane: AtomicU8::new(0),
            stats: BounceStats::with_shards(cpus),
            fail_sizes: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Whether the slot is claimed by the device named `words` (`len` bytes).
    #[inline]
    fn is(&self, words: &[u64; WORDS], len: usize) -> bool {
        let s = self.state.load(Ordering::Acquire);
        s & READY != 0
            && (s & 0xffff) as usize == len
            && self.name.iter().zip(words).all(|(a, &b)| a.load(Ordering::Relaxed) == b)
    }

    /// The name, once claimed.
    fn name(&self) -> Option<DeviceName> {
        let s = self.state.load(Ordering::Acquire);
        (s & READY != 0).then(|| {
            let mut bytes = [0u8; DEVICE_NAME_MAX];
            for (chunk, w) in bytes.chunks_exact_mut(8).zip(&self.name) {
                chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            DeviceName { bytes, len: (s & 0xffff) as u8 }
        })
    }
}

/// Where a device's activity goes: its slot in the [`DeviceTable`] and its lane
/// ([`NATIVE`] for a device no instance serves).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceRoute {
    /// The slot index.
    pub slot: u8,
    /// The lane (strategy instance) index.
    pub lane: u8,
}

/// A device's slot as [`Device`] caches it: which table it belongs to, and the route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Attachment {
    /// The [`DeviceTable::id`] of the table, 0 for none.
    pub table: u32,
    /// The route in that table.
    pub route: DeviceRoute,
}

impl Attachment {
    /// The attachment as one word, for a caller that keeps it beside its own device
    /// (the C ABI's `bounce_device.attachment`): 0 for none.
    pub const fn to_bits(self) -> u64 {
        (self.table as u64) << 16 | (self.route.slot as u64) << 8 | self.route.lane as u64
    }

    /// The attachment [`Attachment::to_bits`] gave (any word decodes; only
    /// [`DeviceTable::is_valid`] says whether it is a route the table handed out).
    pub const fn from_bits(bits: u64) -> Self {
        Self { table: (bits >> 16) as u32, route: DeviceRoute { slot: (bits >> 8) as u8, lane: bits as u8 } }
    }
}

static NEXT_TABLE_ID: AtomicU32 = AtomicU32::new(1);

/// The device slots of one bouncer and the boot routes (device name → lane).
pub struct DeviceTable<R: RawIrqLock> {
    id: u32,
    slots: Box<[Slot]>,
    /// Routes from the command line, by name; every other device takes lane 0.
    routes: Box<[(String, u8)]>,
    register: IrqMutex<R, ()>,
}

/// What one device did: [`DeviceTable::get`], [`DeviceTable::snapshot`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceSnapshot {
    name: DeviceName,
    /// Its lane ([`NATIVE`] as `usize` for a device no instance serves).
    pub lane: usize,
    /// Its DMA-API counters (in-flight bytes and peak are the device's own).
    pub stats: BounceSnapshot,
    /// Its failures by [`FAIL_SIZE_BOUNDS`] bucket.
    pub fail_sizes: [u64; FAIL_SIZE_BOUNDS.len()],
}

impl DeviceSnapshot {
    /// The device name ([`OVERFLOW_DEVICE`] for the overflow slot).
    pub fn name(&self) -> &str {
        self.name.as_str()
    }
}

impl<R: RawIrqLock> DeviceTable<R> {
    /// A table for `cpus` CPUs whose devices in `routes` take the given lanes (every
    /// other device lane 0). The routed devices get their slots now, in order.
    ///
    /// # Context
    /// Boot: allocates.
    pub fn new(cpus: usize, routes: &[(String, u8)]) -> Self {
        // Checked by the caller (`check_routes`); here only the slots that exist are
        // claimed.
        let routes = &routes[..routes.len().min(DEVICE_SLOTS - 1)];
        let slots: Box<[Slot]> = (0..DEVICE_SLOTS).map(|_| Slot::new(cpus)).collect();
        let t = Self {
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            slots,
            routes: routes.iter().map(|(n, l)| (n.clone(), *l)).collect(),
            register: IrqMutex::new(()),
        };
        t.claim(DEVICE_SLOTS - 1, &Device::new(OVERFLOW_DEVICE), 0);
        for (i, (name, lane)) in routes.iter().enumerate() {
            t.claim(i, &Device::new(name), *lane);
        }
        t
    }

    /// Checks routes for [`DeviceTable::new`].
    ///
    /// # Errors
    /// A message when `routes` names more devices than there are slots (one is kept for
    /// overflow), a device twice, or a name longer than [`DEVICE_NAME_MAX`].
    pub fn check_routes(routes: &[(String, u8)]) -> Result<(), String> {
        if routes.len() >= DEVICE_SLOTS {
            return Err(alloc::format!("{} device routes, at most {} are supported", routes.len(), DEVICE_SLOTS - 1));
        }
        for (i, (name, _)) in routes.iter().enumerate() {
            if routes[..i].iter().any(|(n, _)| n == name) {
                return Err(alloc::format!("device `{name}` is routed twice"));
            }
            if name.is_empty() || name.len() > DEVICE_NAME_MAX {
                return Err(alloc::format!("device name `{name}` is empty or longer than {DEVICE_NAME_MAX} bytes"));
            }
        }
        Ok(())
    }

    /// Devices the routes leave to the platform's own bounce buffering.
    pub fn native_routes(&self) -> usize {
        self.routes.iter().filter(|(_, l)| *l == NATIVE).count()
    }

    /// This table's identity in [`Attachment::table`] (never 0).
    pub fn id(&self) -> u32 {
        self.id
    }

    fn claim(&self, i: usize, dev: &Device, lane: u8) {
        let s = &self.slots[i];
        for (a, b) in s.name.iter().zip(dev.name_words()) {
            a.store(b, Ordering::Relaxed);
        }
        s.lane.store(lane, Ordering::Relaxed);
        // Publishes the name and lane to `Slot::is`'s acquire load.
        s.state.store(READY | dev.name_len() as u32, Ordering::Release);
    }

    /// The lane the command line gives `name` (0 when it names none).
    fn lane_for(&self, name: &str) -> u8 {
        self.routes.iter().find(|(n, _)| n == name).map_or(0, |(_, l)| *l)
    }

    /// Whether `a` is a route this table hands out for one named device: this table's
    /// id, a claimed slot other than the overflow slot, and that slot's lane. Two loads;
    /// any context.
    #[inline]
    pub fn is_valid(&self, a: Attachment) -> bool {
        let slot = usize::from(a.route.slot);
        a.table == self.id
            && slot < DEVICE_SLOTS - 1
            && self.slots[slot].state.load(Ordering::Acquire) & READY != 0
            && self.slots[slot].lane.load(Ordering::Relaxed) == a.route.lane
    }

    /// The name of the device in slot `slot` (empty while the slot is free).
    pub fn slot_name(&self, slot: u8) -> DeviceName {
        self.slots.get(usize::from(slot)).and_then(Slot::name).unwrap_or_default()
    }

    /// The route of `dev`: from its attachment when it is to this table, else by name,
    /// claiming a slot on first sight (the overflow slot when none is left).
    ///
    /// # Context
    /// Any context. Never allocates; takes the registration lock only for a device
    /// never seen before.
    #[inline]
    pub fn route(&self, dev: &Device) -> DeviceRoute {
        let a = dev.attachment();
        if a.table == self.id {
            return a.route;
        }
        self.lookup(dev)
    }

    fn lookup(&self, dev: &Device) -> DeviceRoute {
        let (words, len) = (dev.name_words(), dev.name_len());
        let found = |slots: &[Slot]| {
            slots
                .iter()
                .position(|s| s.is(&words, len))
                .map(|i| DeviceRoute { slot: i as u8, lane: slots[i].lane.load(Ordering::Relaxed) })
        };
        if let Some(r) = found(&self.slots) {
            return r;
        }
        let _g = self.register.lock();
        if let Some(r) = found(&self.slots) {
            return r;
        }
        let lane = self.lane_for(dev.name());
        match self.slots[..DEVICE_SLOTS - 1].iter().position(|s| s.state.load(Ordering::Relaxed) == FREE) {
            Some(i) => {
                self.claim(i, dev, lane);
                DeviceRoute { slot: i as u8, lane }
            }
            // Full: the overflow slot counts it, but the route still holds.
            None => DeviceRoute { slot: (DEVICE_SLOTS - 1) as u8, lane },
        }
    }

    /// The statistics of slot `slot`.
    #[inline]
    pub(crate) fn stats(&self, slot: u8) -> &BounceStats {
        &self.slots[usize::from(slot)].stats
    }

    /// Counts a failed request of `size` bytes in slot `slot`'s size buckets.
    pub(crate) fn fail_size(&self, slot: u8, size: usize) {
        self.slots[usize::from(slot)].fail_sizes[fail_size_bucket(size)].fetch_add(1, Ordering::Relaxed);
    }

    /// Slot `i`'s device and counters: `None` for a slot no device claimed, and for
    /// the overflow slot while it counted nothing.
    ///
    /// # Context
    /// Any context; never allocates.
    pub fn get(&self, i: usize) -> Option<DeviceSnapshot> {
        let s = self.slots.get(i)?;
        let name = s.name()?;
        let stats = s.stats.snapshot();
        if i == DEVICE_SLOTS - 1 && stats == BounceSnapshot::default() {
            return None;
        }
        Some(DeviceSnapshot {
            name,
            lane: usize::from(s.lane.load(Ordering::Relaxed)),
            stats,
            fail_sizes: core::array::from_fn(|b| s.fail_sizes[b].load(Ordering::Relaxed)),
        })
    }

    /// Every claimed slot's counters ([`DeviceTable::get`]), the routed devices first,
    /// the overflow slot last (when it counted anything).
    pub fn snapshot(&self) -> alloc::vec::Vec<DeviceSnapshot> {
        (0..DEVICE_SLOTS).filter_map(|i| self.get(i)).collect()
    }

    /// The summed counters of the devices lane `lane` serves.
    ///
    /// # Context
    /// Any context; never allocates.
    pub fn lane_total(&self, lane: usize) -> BounceSnapshot {
        let mut t = BounceSnapshot::default();
        for d in (0..DEVICE_SLOTS).filter_map(|i| self.get(i)).filter(|d| d.lane == lane) {
            t.merge(&d.stats);
        }
        t
    }

    /// The sum of every slot's counters (in-flight bytes summed; the peak is the sum of
    /// the devices' peaks, an upper bound of the true peak).
    pub fn total(&self) -> BounceSnapshot {
        let mut t = BounceSnapshot::default();
        for s in &*self.slots {
            t.merge(&s.stats.snapshot());
        }
        t
    }

    /// Resets every device's in-flight peak to its current value.
    pub fn reset_inflight_peaks(&self) {
        for s in &*self.slots {
            s.stats.reset_inflight_peak();
        }
    }
}
