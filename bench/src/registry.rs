//! The strategies `bounce` can run: the one registry of `bounce-strategies`
//! ([`StrategyKind`], [`StrategyVisitor`]) on the simulated guest, plus the `linux`
//! reference row ([`Runnable::Linux`]: Linux 6.12's own swiotlb compiled from its source
//! by `bounce-linux-ref`), which `compare`, `replay` and `map-bench` run like any
//! strategy but which is no boot choice: it is in neither the registry nor
//! `bounce list --names`.
//!
//! Everything that runs a strategy is generic over `S: Strategy`; a
//! [`StrategyVisitor`] is handed the concrete type and its boot constructor
//! (`X::from_boot`) by [`Runnable::visit`] (for the registry's, [`StrategyKind::visit`]),
//! so each strategy gets its own compiled copy of the engine with direct calls on the
//! map path.

use std::fmt;

use bounce_framework::sim::SimGuest;
use bounce_framework::{BootConfig, CmdlineError};
use bounce_linux_ref::LinuxRef;
use bounce_strategies::AnyStrategy;
pub use bounce_strategies::{StrategyKind, KNOWN_STRATEGIES};

/// Something to do with one concrete strategy type on the simulated guest.
pub use bounce_strategies::StrategyVisitor;

/// The strategy every ratio is taken against: the registry's first (legacy).
pub const BASELINE: StrategyKind = StrategyKind::ALL[0];

/// The reference row's name.
pub const LINUX: &str = bounce_linux_ref::NAME;

/// The name of the row that runs `--cmdline`'s per-device routes.
pub const ROUTED: &str = "routed";

/// What the bench runs: a strategy of the registry, or the `linux` reference row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runnable {
    /// A boot-selectable strategy.
    Strategy(StrategyKind),
    /// Linux 6.12's own swiotlb allocator, compiled from the Linux source
    /// ([`bounce_linux_ref::LinuxRef`]); present when [`bounce_linux_ref::available`].
    Linux,
    /// The per-device routes of `--cmdline` (`swiotlb.strategy=<default>,<device>:<name>,...`):
    /// every device through the strategy instance its route names
    /// ([`bounce_strategies::AnyStrategy`], one instance per strategy named).
    Routed,
}

impl Runnable {
    /// The name in tables, JSON and `--strategies`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Strategy(k) => k.name(),
            Self::Linux => LINUX,
            Self::Routed => ROUTED,
        }
    }

    /// Whether this is the baseline every ratio is taken against.
    pub fn is_baseline(self) -> bool {
        self == Self::Strategy(BASELINE)
    }

    /// Hands the concrete type and its boot constructor to `v`.
    pub fn visit<V: StrategyVisitor<SimGuest>>(self, v: &mut V) -> V::Output {
        match self {
            Self::Strategy(k) => k.visit(v),
            Self::Linux => v.visit::<LinuxRef<SimGuest>>(LINUX, LinuxRef::from_boot),
            Self::Routed => v.visit::<AnyStrategy<SimGuest>>(ROUTED, AnyStrategy::from_boot),
        }
    }

    /// Every strategy of the registry, then `linux` when this build carries it; else
    /// also the one line to print about the row being skipped.
    pub fn all() -> (Vec<Self>, Option<String>) {
        let mut all: Vec<Self> = StrategyKind::ALL.into_iter().map(Self::Strategy).collect();
        match bounce_linux_ref::available() {
            Ok(()) => {
                all.push(Self::Linux);
                (all, None)
            }
            Err(why) => (all, Some(format!("note: the {LINUX} reference row is skipped: {why}"))),
        }
    }
}

impl From<StrategyKind> for Runnable {
    fn from(k: StrategyKind) -> Self {
        Self::Strategy(k)
    }
}

impl fmt::Display for Runnable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses a strategy name (`--strategy` of `stress` and `record`, which run the
/// registry's strategies only).
///
/// # Errors
/// A message naming the known strategies.
pub fn parse_strategy(s: &str) -> Result<StrategyKind, String> {
    StrategyKind::from_name(s).ok_or_else(|| format!("unknown strategy `{s}` (known: {})", KNOWN_STRATEGIES.join(", ")))
}

/// Parses a name for `compare`, `replay` and `map-bench`: a strategy of the registry or
/// `linux`.
///
/// # Errors
/// A message naming the known names, or, for `linux` in a build without the Linux
/// source, why it is unavailable and how to get it.
pub fn parse_runnable(s: &str) -> Result<Runnable, String> {
    if s == ROUTED {
        return Ok(Runnable::Routed);
    }
    if s == LINUX {
        return match bounce_linux_ref::available() {
            Ok(()) => Ok(Runnable::Linux),
            Err(why) => Err(format!("the {LINUX} reference row is unavailable in this build: {why}")),
        };
    }
    StrategyKind::from_name(s).map(Runnable::Strategy).ok_or_else(|| {
        format!(
            "unknown strategy `{s}` (known: {}, the reference row {LINUX}, and {ROUTED}: --cmdline's per-device routes)",
            KNOWN_STRATEGIES.join(", ")
        )
    })
}

/// Parses a boot command line for the simulated guest (`swiotlb=...`,
/// `swiotlb.<strategy>.<param>=...`), knowing every registered strategy.
///
/// # Errors
/// The [`CmdlineError`] naming the offending token.
pub fn parse_cmdline(cmdline: &str) -> Result<BootConfig, CmdlineError> {
    BootConfig::parse(cmdline, KNOWN_STRATEGIES)
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A bench-only test strategy (not part of the product): fixed size classes of
    //! shared buffers, one free stack per class under one lock, the mapping found again
    //! arithmetically from its address. Enough to exercise the engine, the reports and
    //! the device-model checks in this crate's own unit tests.

    use bounce_framework::sim::{SimGuest, SimLock};
    use bounce_framework::{
        AuditError, AuditReport, BootConfig, Device, InitError, IrqMutex, Located, MapError, PageCount, PageRequest,
        PhysAddr, PoolStats, ReleaseError, Released, Request, Reservation, SharedMemory, Strategy, UsageCounter,
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
                return Err(bounce_pools::no_buffer(req.size, self.table[c].stride));
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
