//! The strategies `bounce` can run: a name → constructor table, monomorphised per
//! strategy.
//!
//! Everything that runs a strategy is generic over `S: Strategy`; a
//! [`StrategyVisitor`] is handed the concrete type and its boot constructor
//! (`X::from_boot`), so each strategy gets its own compiled copy of the engine with
//! direct calls on the map path.

use bounce_dynamic::Dynamic;
use bounce_framework::sim::SimGuest;
use bounce_framework::{BootConfig, CmdlineError, Strategy};
use bounce_legacy::Legacy;
use bounce_magazine::Magazine;

use crate::engine::Ctor;

/// Something to do with one concrete strategy type.
pub trait StrategyVisitor {
    /// The result.
    type Output;
    /// Called with the strategy's name and boot constructor.
    fn visit<S: Strategy + 'static>(&mut self, name: &'static str, ctor: Ctor<S>) -> Self::Output;
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// The boot name (`swiotlb.strategy=`).
    pub name: &'static str,
    /// Its `swiotlb.<name>.*` parameters.
    pub params: &'static [&'static str],
    /// One line for `--help` and reports.
    pub summary: &'static str,
}

/// Every strategy, legacy first (the baseline every ratio is taken against).
pub const STRATEGIES: &[Entry] = &[
    Entry {
        name: Legacy::<SimGuest>::NAME,
        params: Legacy::<SimGuest>::PARAMS,
        summary: "Linux 6.12's swiotlb: one pool of 2 KiB slots converted at boot, per-CPU areas",
    },
    Entry {
        name: Dynamic::<SimGuest>::NAME,
        params: Dynamic::<SimGuest>::PARAMS,
        summary: "cc-swiotlb done right: size classes refilled and shrunk in the background by kccd",
    },
    Entry {
        name: Magazine::<SimGuest>::NAME,
        params: Magazine::<SimGuest>::PARAMS,
        summary: "per-CPU magazines of ready shared buffers over the dynamic size-class pools",
    },
];

/// The name every ratio is taken against.
pub const BASELINE: &str = "legacy";

/// The names, in table order.
pub fn names() -> Vec<&'static str> {
    STRATEGIES.iter().map(|e| e.name).collect()
}

/// Runs `v` on the strategy called `name`; `None` for an unknown name.
pub fn visit<V: StrategyVisitor>(name: &str, v: &mut V) -> Option<V::Output> {
    match name {
        "legacy" => Some(v.visit::<Legacy<SimGuest>>(Legacy::<SimGuest>::NAME, Legacy::<SimGuest>::from_boot)),
        "dynamic" => Some(v.visit::<Dynamic<SimGuest>>(Dynamic::<SimGuest>::NAME, Dynamic::<SimGuest>::from_boot)),
        "magazine" => Some(v.visit::<Magazine<SimGuest>>(Magazine::<SimGuest>::NAME, Magazine::<SimGuest>::from_boot)),
        _ => None,
    }
}

/// Parses a boot command line for the simulated guest (`swiotlb=...`,
/// `swiotlb.<strategy>.<param>=...`), knowing every registered strategy.
///
/// # Errors
/// The [`CmdlineError`] naming the offending token.
pub fn parse_cmdline(cmdline: &str) -> Result<BootConfig, CmdlineError> {
    BootConfig::parse(cmdline, &names())
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A bench-only test strategy (not part of the product): fixed size classes of
    //! shared buffers, one free stack per class under one lock, the mapping found again
    //! arithmetically from its address. Enough to exercise the engine, the reports and
    //! the device-model checks in this crate's own unit tests.

    use bounce_framework::sim::{SimGuest, SimLock};
    use bounce_framework::{
        AuditError, AuditReport, BackgroundReport, BootConfig, Device, InitError, IrqMutex, Located, MapError,
        PageCount, PageRequest, PhysAddr, PoolStats, ReleaseError, Released, Request, Reservation, SharedMemory,
        Strategy, UsageCounter,
    };

    /// `(buffer bytes, buffers)`; every buffer is aligned to its size (to a page at least).
    const CLASSES: [(usize, usize); 3] = [(4096, 2048), (65_536, 256), (262_144 + 4096, 64)];

    #[derive(Clone, Copy)]
    struct Live {
        start: PhysAddr,
        orig: PhysAddr,
        size: usize,
    }

    struct Class {
        base: PhysAddr,
        stride: usize,
        count: usize,
    }

    struct State {
        free: Vec<Vec<usize>>,
        live: Vec<Vec<Option<Live>>>,
    }

    pub struct Classes {
        shared: SharedMemory<SimGuest>,
        table: Vec<Class>,
        state: IrqMutex<SimLock, State>,
        usage: UsageCounter,
        /// Broken on purpose: every reservation of a class gets the same buffer.
        reuse: bool,
    }

    impl Classes {
        pub fn from_boot(guest: SimGuest, boot: &BootConfig) -> Result<Self, InitError> {
            Self::build(guest, boot, false)
        }

        /// A broken variant that hands one buffer to every mapping of a class.
        pub fn broken_from_boot(guest: SimGuest, boot: &BootConfig) -> Result<Self, InitError> {
            Self::build(guest, boot, true)
        }

        fn build(guest: SimGuest, _boot: &BootConfig, reuse: bool) -> Result<Self, InitError> {
            let shared = SharedMemory::new(guest, usize::MAX);
            let mut classes = Vec::new();
            for &(size, count) in &CLASSES {
                let stride = size.next_multiple_of(4096).next_power_of_two();
                let base = shared.alloc_shared(PageRequest::sleeping(PageCount::for_bytes(stride * (count + 1))))?;
                let base = base.align_up(stride as u64);
                classes.push(Class { base, stride, count });
            }
            let state = State {
                free: classes.iter().map(|c| (0..c.count).rev().collect()).collect(),
                live: classes.iter().map(|c| vec![None; c.count]).collect(),
            };
            Ok(Self { shared, table: classes, state: IrqMutex::new(state), usage: UsageCounter::new(), reuse })
        }

        fn find(&self, addr: PhysAddr) -> Option<(usize, usize)> {
            self.table.iter().enumerate().find_map(|(c, cl)| {
                let off = addr.offset_from(cl.base)? as usize;
                (off < cl.stride * cl.count).then_some((c, off / cl.stride))
            })
        }
    }

    impl Strategy for Classes {
        fn name(&self) -> &'static str {
            "fixture"
        }
        fn reserve(&self, req: &Request) -> Result<Reservation, MapError> {
            let offset = (req.orig.0 & req.min_align_mask) as usize;
            let need = offset + req.alloc_size;
            let Some(c) = self.table.iter().position(|cl| cl.stride >= need) else {
                return Err(MapError::TooLarge { size: req.size, max: self.table[2].stride });
            };
            let mut st = self.state.lock();
            let next = if self.reuse { st.free[c].last().copied() } else { st.free[c].pop() };
            let Some(i) = next else {
                return Err(MapError::NoBufferReady { size: req.size, class_size: self.table[c].stride });
            };
            let start = self.table[c].base + (i * self.table[c].stride + offset) as u64;
            st.live[c][i] = Some(Live { start, orig: req.orig, size: req.alloc_size });
            self.usage.add(self.table[c].stride);
            Ok(Reservation { addr: start })
        }
        fn release(&self, addr: PhysAddr) -> Result<Released, ReleaseError> {
            let Some((c, i)) = self.find(addr) else { return Err(ReleaseError::Foreign) };
            let mut st = self.state.lock();
            let Some(l) = st.live[c][i] else { return Err(ReleaseError::NotMapped) };
            if l.start != addr {
                return Err(ReleaseError::NotStart { start: l.start });
            }
            st.live[c][i] = None;
            if !self.reuse {
                st.free[c].push(i);
            }
            self.usage.sub(self.table[c].stride);
            Ok(Released { orig: l.orig, size: l.size })
        }
        fn locate(&self, addr: PhysAddr) -> Option<Located> {
            let (c, i) = self.find(addr)?;
            let l = self.state.lock().live[c][i]?;
            let off = addr.offset_from(l.start)? as usize;
            (off < l.size).then(|| Located { start: l.start, orig: l.orig + off as u64, remaining: l.size - off })
        }
        fn owns(&self, addr: PhysAddr) -> bool {
            self.find(addr).is_some()
        }
        fn max_mapping_size(&self, dev: &Device) -> usize {
            self.table[2].stride / 2 - dev.min_align_slot_bytes()
        }
        fn addressing_limit(&self) -> PhysAddr {
            let last = &self.table[2];
            last.base + (last.stride * last.count) as u64
        }
        fn stats(&self) -> PoolStats {
            PoolStats {
                capacity_bytes: self.table.iter().map(|c| c.stride * c.count).sum(),
                used_bytes: self.usage.used(),
                used_hiwater_bytes: self.usage.hiwater(),
                conversions: self.shared.stats(),
                ..PoolStats::default()
            }
        }
        fn reset_hiwater(&self) {
            self.usage.reset_hiwater();
        }
        fn background_pending(&self) -> bool {
            false
        }
        fn run_background(&self) -> BackgroundReport {
            BackgroundReport::default()
        }
        fn audit(&self) -> Result<AuditReport, AuditError> {
            let st = self.state.lock();
            let live = st.live.iter().flatten().filter(|l| l.is_some()).count();
            for (c, cl) in self.table.iter().enumerate() {
                if st.free[c].len() + st.live[c].iter().filter(|l| l.is_some()).count() != cl.count {
                    return Err(AuditError(format!("class {c}: free + live != {}", cl.count)));
                }
            }
            Ok(AuditReport { live_mappings: live, used_bytes: self.usage.used(), ..AuditReport::default() })
        }
    }
}
