//! # bounce-strategies
//!
//! The allocation strategies behind one boot-selected type, [`AnyStrategy`]:
//!
//! | `swiotlb.strategy=` | type | crate |
//! |---|---|---|
//! | `legacy` (the default) | [`Legacy`] | `bounce-legacy`: Linux 6.12's fixed-slot swiotlb |
//! | `dynamic` | [`Dynamic`] | `bounce-dynamic`: size classes refilled by the kccd engine |
//! | `magazine` | [`Magazine`] | `bounce-magazine`: per-CPU magazines over a depot |
//!
//! [`AnyStrategy::from_boot`] reads the parsed command line and builds the one it
//! names, so a single build (the C ABI's static library, the kernel image, the bench
//! CLI) carries every strategy and picks one at boot.
//!
//! ## Dispatch
//! `AnyStrategy` implements [`bounce_framework::Strategy`] through `enum_dispatch`: a
//! `match` over the variants calling each strategy's method directly (no vtable, the
//! same cost as a hand-written match). `enum_dispatch` only links a trait and an enum that
//! are both annotated inside one crate, so the trait text the framework exports as
//! [`bounce_framework::strategy_trait!`] is expanded a second time in a private module
//! under `#[enum_dispatch]`; the enum's `#[enum_dispatch(Strategy)]` then generates
//! `impl<P: Platform> bounce_framework::Strategy for AnyStrategy<P>` (the `Strategy` in
//! scope at the enum is the framework's trait). Generic enums work with `enum_dispatch`
//! 0.3.13, so no hand-written fallback is needed. `enum_dispatch` also generates
//! `From<Legacy<P>>` (etc.) for `AnyStrategy<P>` and `TryInto` back.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use core::fmt;

use bounce_framework::{BootConfig, InitError, Platform, Strategy};

pub use bounce_dynamic::Dynamic;
pub use bounce_legacy::Legacy;
pub use bounce_magazine::Magazine;

/// The framework's trait text expanded under `#[enum_dispatch]` so the enum below can be
/// linked to it; see the crate documentation. Nothing uses this trait directly: the
/// generated impl is for `bounce_framework::Strategy`.
mod dispatch {
    #![allow(dead_code, unused_imports)]
    bounce_framework::strategy_trait!(#[enum_dispatch::enum_dispatch]);
}

/// The strategy names `swiotlb.strategy=` accepts, in the order of [`StrategyKind::ALL`]
/// (pass to [`BootConfig::parse`]).
pub const KNOWN_STRATEGIES: &[&str] = &["legacy", "dynamic", "magazine"];

/// The strategy booted when the command line names none: `legacy`, Linux's own
/// allocator, so a kernel without `swiotlb.strategy=` behaves as upstream.
pub const DEFAULT_STRATEGY: StrategyKind = StrategyKind::Legacy;

/// Which strategy an [`AnyStrategy`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StrategyKind {
    /// [`Legacy`].
    Legacy,
    /// [`Dynamic`].
    Dynamic,
    /// [`Magazine`].
    Magazine,
}

impl StrategyKind {
    /// Every strategy, in [`KNOWN_STRATEGIES`] order.
    pub const ALL: [Self; 3] = [Self::Legacy, Self::Dynamic, Self::Magazine];

    /// The boot name (`swiotlb.strategy=<name>`).
    pub const fn name(self) -> &'static str {
        KNOWN_STRATEGIES[self as usize]
    }

    /// The strategy a boot name selects.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The boot-selected strategy: one of the three, dispatching
/// [`Strategy`] to it.
#[enum_dispatch::enum_dispatch(Strategy)]
pub enum AnyStrategy<P: Platform> {
    /// `swiotlb.strategy=legacy`.
    Legacy(Legacy<P>),
    /// `swiotlb.strategy=dynamic`.
    Dynamic(Dynamic<P>),
    /// `swiotlb.strategy=magazine`.
    Magazine(Magazine<P>),
}

impl<P: Platform> fmt::Debug for AnyStrategy<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AnyStrategy").field(&self.kind()).finish()
    }
}

/// `a == b` in a const context.
const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl<P: Platform> AnyStrategy<P> {
    /// Fails the build (when `from_boot` is instantiated) if a strategy's `NAME` differs
    /// from its entry in [`KNOWN_STRATEGIES`].
    const NAMES_MATCH: () = assert!(
        str_eq(Legacy::<P>::NAME, StrategyKind::Legacy.name())
            && str_eq(Dynamic::<P>::NAME, StrategyKind::Dynamic.name())
            && str_eq(Magazine::<P>::NAME, StrategyKind::Magazine.name()),
        "a strategy's NAME differs from KNOWN_STRATEGIES"
    );

    /// Builds the strategy `boot.strategy` names ([`DEFAULT_STRATEGY`] when it names
    /// none) with that strategy's `from_boot`, after checking the
    /// `swiotlb.<strategy>.*` parameters of *every* strategy, so a mistyped parameter of
    /// a strategy that is not booted is still an error.
    ///
    /// # Errors
    /// [`InitError::Cmdline`] for an unknown parameter of any strategy,
    /// [`InitError::Config`] for a strategy name outside [`KNOWN_STRATEGIES`] (possible
    /// only with a hand-built [`BootConfig`]; `BootConfig::parse` already refuses it),
    /// and whatever the selected strategy's `from_boot` returns.
    pub fn from_boot(platform: P, boot: &BootConfig) -> Result<Self, InitError> {
        let () = Self::NAMES_MATCH;
        boot.params_for(Legacy::<P>::NAME).check_known(Legacy::<P>::PARAMS)?;
        boot.params_for(Dynamic::<P>::NAME).check_known(Dynamic::<P>::PARAMS)?;
        boot.params_for(Magazine::<P>::NAME).check_known(Magazine::<P>::PARAMS)?;
        let kind = match boot.strategy.as_deref() {
            None => DEFAULT_STRATEGY,
            Some(name) => StrategyKind::from_name(name).ok_or_else(|| {
                InitError::Config(format!("unknown strategy `{name}` (known: {})", KNOWN_STRATEGIES.join(", ")))
            })?,
        };
        Ok(match kind {
            StrategyKind::Legacy => Self::Legacy(Legacy::from_boot(platform, boot)?),
            StrategyKind::Dynamic => Self::Dynamic(Dynamic::from_boot(platform, boot)?),
            StrategyKind::Magazine => Self::Magazine(Magazine::from_boot(platform, boot)?),
        })
    }

    /// Which strategy this is.
    pub const fn kind(&self) -> StrategyKind {
        match self {
            Self::Legacy(_) => StrategyKind::Legacy,
            Self::Dynamic(_) => StrategyKind::Dynamic,
            Self::Magazine(_) => StrategyKind::Magazine,
        }
    }

    /// The parameters (`swiotlb.<name>.<param>`) the strategy of `kind` takes.
    pub const fn params(kind: StrategyKind) -> &'static [&'static str] {
        match kind {
            StrategyKind::Legacy => Legacy::<P>::PARAMS,
            StrategyKind::Dynamic => Dynamic::<P>::PARAMS,
            StrategyKind::Magazine => Magazine::<P>::PARAMS,
        }
    }
}
