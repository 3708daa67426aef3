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
//! ## The registry
//! One `strategies! { Variant(Type, "name", "summary"), ... }` invocation below is the
//! only list of strategies: it generates [`StrategyKind`] (with [`StrategyKind::ALL`],
//! names, summaries and [`StrategyKind::visit`], which hands a [`StrategyVisitor`] the
//! concrete type), [`KNOWN_STRATEGIES`] and [`AnyStrategy`] with its dispatch, boot and
//! parameter check. The bench CLI, the fuzzer (each strategy's `SMALL_CMDLINES`), the
//! C ABI and the guest scripts (`bounce list --names`) take the list from here.
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
use alloc::vec::Vec;
use core::fmt;

use bounce_framework::{BootConfig, Bouncer, BouncerOptions, InitError, LaneRoutes, Platform, Strategy, TestProfile};

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

/// The registry: **one line per strategy** generates everything that names the
/// strategies, so a strategy added here is everywhere (the boot parser, [`AnyStrategy`]
/// and its dispatch, the bench CLI, fuzzing, the tests that iterate
/// [`StrategyKind::ALL`], `bounce list` for the scripts), and one left out of a
/// `match` over [`StrategyKind`] is a compile error. Each line is
/// `Variant(crate::Type, "boot name", "one-line summary")`; the type's `NAME` must equal the
/// boot name (checked at compile time), and its `from_boot` and `PARAMS` are used. The
/// first line is the baseline every ratio is taken against.
macro_rules! strategies {
    ($($variant:ident($($ty:ident)::+, $name:literal, $summary:literal)),+ $(,)?) => {
        /// The strategy names `swiotlb.strategy=` accepts, in the order of
        /// [`StrategyKind::ALL`] (pass to [`BootConfig::parse`]).
        pub const KNOWN_STRATEGIES: &[&str] = &[$($name),+];

        /// Which strategy an [`AnyStrategy`] holds.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum StrategyKind {
            $(
                #[doc = concat!("`swiotlb.strategy=", $name, "`: ", $summary, ".")]
                $variant,
            )+
        }

        impl StrategyKind {
            /// Every strategy, in [`KNOWN_STRATEGIES`] order (the registry's).
            pub const ALL: [Self; KNOWN_STRATEGIES.len()] = [$(Self::$variant),+];

            /// The boot name (`swiotlb.strategy=<name>`).
            pub const fn name(self) -> &'static str {
                KNOWN_STRATEGIES[self as usize]
            }

            /// One line on what the strategy is, for `--help`, `bounce list` and reports.
            pub const fn summary(self) -> &'static str {
                match self {
                    $(Self::$variant => $summary,)+
                }
            }

            /// The strategy a boot name selects.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|k| k.name() == name)
            }

            /// Hands the strategy's concrete type on platform `P` and its boot
            /// constructor to `v` (monomorphised per strategy: direct calls on the map
            /// path of whatever `v` runs).
            pub fn visit<P: Platform + 'static, V: StrategyVisitor<P>>(self, v: &mut V) -> V::Output {
                match self {
                    $(Self::$variant => v.visit::<$($ty)::+<P>>($name, $($ty)::+::<P>::from_boot),)+
                }
            }
        }

        /// The boot-selected strategy: one of the registry's, dispatching
        /// [`Strategy`] to it.
        #[enum_dispatch::enum_dispatch(Strategy)]
        pub enum AnyStrategy<P: Platform> {
            $(
                #[doc = concat!("`swiotlb.strategy=", $name, "`.")]
                $variant($($ty)::+<P>),
            )+
        }

        impl<P: Platform> AnyStrategy<P> {
            /// Fails the build (when `from_boot` is instantiated) if a strategy's `NAME`
            /// differs from its registry line.
            const NAMES_MATCH: () = assert!(
                true $(&& str_eq($($ty)::+::<P>::NAME, $name))+,
                "a strategy's NAME differs from its registry line"
            );

            /// Builds the strategy `boot.strategy` names ([`DEFAULT_STRATEGY`] when it
            /// names none) with that strategy's `from_boot`, after checking the
            /// `swiotlb.<strategy>.*` parameters of *every* strategy, so a mistyped
            /// parameter of a strategy that is not booted is still an error.
            ///
            /// # Errors
            /// [`InitError::Cmdline`] for an unknown parameter of any strategy,
            /// [`InitError::Config`] for a strategy name outside [`KNOWN_STRATEGIES`]
            /// (possible only with a hand-built [`BootConfig`]; `BootConfig::parse`
            /// already refuses it), and whatever the selected strategy's `from_boot`
            /// returns.
            pub fn from_boot(platform: P, boot: &BootConfig) -> Result<Self, InitError> {
                let () = Self::NAMES_MATCH;
                $(boot.params_for($name).check_known($($ty)::+::<P>::PARAMS)?;)+
                let kind = match boot.strategy.as_deref() {
                    None => DEFAULT_STRATEGY,
                    Some(name) => StrategyKind::from_name(name).ok_or_else(|| {
                        InitError::Config(format!(
                            "unknown strategy `{name}` (known: {})",
                            KNOWN_STRATEGIES.join(", ")
                        ))
                    })?,
                };
                Ok(match kind {
                    $(StrategyKind::$variant => Self::$variant($($ty)::+::from_boot(platform, boot)?),)+
                })
            }

            /// Which strategy this is.
            pub const fn kind(&self) -> StrategyKind {
                match self {
                    $(Self::$variant(_) => StrategyKind::$variant,)+
                }
            }

            /// The parameters (`swiotlb.<name>.<param>`) the strategy of `kind` takes.
            pub const fn params(kind: StrategyKind) -> &'static [&'static str] {
                match kind {
                    $(StrategyKind::$variant => $($ty)::+::<P>::PARAMS,)+
                }
            }

            /// The strategy's boot command lines with small pools (its
            /// `SMALL_CMDLINES`), for fuzzing and tests that need exhaustion, growth and
            /// shrinking within a few hundred operations.
            pub const fn small_cmdlines(kind: StrategyKind) -> &'static [&'static str] {
                match kind {
                    $(StrategyKind::$variant => $($ty)::+::<P>::SMALL_CMDLINES,)+
                }
            }

            /// What the strategy-generic tests (fault matrix, hostile host, fuzzer)
            /// boot and expect of the strategy of `kind` (its `TEST_PROFILE`).
            pub const fn test_profile(kind: StrategyKind) -> TestProfile {
                match kind {
                    $(StrategyKind::$variant => $($ty)::+::<P>::TEST_PROFILE,)+
                }
            }
        }
    };
}

strategies! {
    Legacy(bounce_legacy::Legacy, "legacy", "Linux 6.12's swiotlb: one pool of 2 KiB slots converted at boot, per-CPU areas"),
    Dynamic(bounce_dynamic::Dynamic, "dynamic", "size classes refilled and shrunk in the background by kccd, memory that follows demand"),
    Magazine(bounce_magazine::Magazine, "magazine", "per-CPU magazines of ready shared buffers over the dynamic size-class pools"),
    Bitmap(bounce_bitmap::Bitmap, "bitmap", "Linux's pool and placements, free slots in a bitmap instead of per-slot free counts"),
}

impl<P: Platform> AnyStrategy<P> {
    /// The strategy instances the command line asks for, with the device routes
    /// between them, for [`Bouncer::with_lanes`]: lane 0 is the default strategy
    /// ([`AnyStrategy::from_boot`]); every other strategy a route names gets one
    /// instance of its own (its own pool and statistics), shared by every device routed
    /// to it. A route naming the default strategy maps through lane 0.
    ///
    /// # Errors
    /// As [`AnyStrategy::from_boot`], for any of the instances.
    pub fn boot_lanes(platform: &P, boot: &BootConfig) -> Result<(Vec<Self>, LaneRoutes), InitError> {
        let (configs, routes) = boot.lanes();
        let mut lanes = Vec::with_capacity(configs.len());
        for c in &configs {
            lanes.push(Self::from_boot(platform.clone(), c)?);
        }
        Ok((lanes, routes))
    }

    /// A bouncer over the instances and routes of [`AnyStrategy::boot_lanes`].
    ///
    /// # Errors
    /// As [`AnyStrategy::boot_lanes`] and [`Bouncer::with_lanes`].
    pub fn boot_bouncer(
        platform: P,
        boot: &BootConfig,
        options: BouncerOptions,
    ) -> Result<Bouncer<P, Self>, InitError> {
        let (lanes, routes) = Self::boot_lanes(&platform, boot)?;
        Bouncer::with_lanes(platform, lanes, &routes, options)
    }
}

/// The strategy booted when the command line names none: `legacy`, Linux's own
/// allocator, so a kernel without `swiotlb.strategy=` behaves as upstream.
pub const DEFAULT_STRATEGY: StrategyKind = StrategyKind::ALL[0];

/// Something to do with one concrete strategy type: [`StrategyKind::visit`] calls
/// [`StrategyVisitor::visit`] with the type, its boot name and its boot constructor.
pub trait StrategyVisitor<P: Platform> {
    /// The result.
    type Output;
    /// Called with the strategy's boot name and boot constructor (`S::from_boot`).
    fn visit<S: Strategy + 'static>(
        &mut self,
        name: &'static str,
        ctor: fn(P, &BootConfig) -> Result<S, InitError>,
    ) -> Self::Output;
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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
