//! The [`Strategy`] trait: the one thing strategies implement.
//!
//! A strategy decides *which shared buffer* serves a request and *where it is found
//! again*. Copies, direction rules, partial syncs, clamping, scatter-gather rollback,
//! statistics of the DMA API and tracing live in the [`Bouncer`](crate::Bouncer).
//!
//! The trait text lives in the exported macro [`strategy_trait!`] so a crate can expand
//! it a second time under `#[enum_dispatch::enum_dispatch]` (`enum_dispatch` only links a
//! trait and an enum inside one compilation); `bounce-strategies` does that for its
//! boot-selected `AnyStrategy`. Everyone else simply uses [`Strategy`].

use alloc::string::String;

use crate::addr::PhysAddr;

/// A request for a shared buffer (what `swiotlb_tbl_map_single` receives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The caller's (private) buffer.
    pub orig: PhysAddr,
    /// Bytes that will be copied (`mapping_size`).
    pub size: usize,
    /// Bytes to reserve from the start of the data (`alloc_size`, at least `size`).
    pub alloc_size: usize,
    /// Required alignment of the buffer's start minus one (`alloc_align_mask`); 0 for
    /// none (the strategy applies its own minimum).
    pub alloc_align_mask: u64,
    /// The device's `min_align_mask`: `returned & mask == orig & mask` must hold.
    pub min_align_mask: u64,
    /// The device's `dma_mask`; the bouncer re-checks the bus address after reserving.
    pub dma_mask: u64,
    /// The CPU the request runs on.
    pub cpu: usize,
    /// The caller passed [`DmaAttrs::MAY_BLOCK`](crate::DmaAttrs::MAY_BLOCK): if the
    /// strategy refuses it as exhausted, the bouncer waits and asks again. A strategy
    /// may therefore keep its last free memory (emergency reserves) for atomic callers,
    /// which cannot wait; it must still never sleep itself.
    pub may_block: bool,
}

impl Request {
    /// A plain request: `size` bytes of `orig` on `cpu`, no alignment requirement, a
    /// 64-bit device, atomic. Set other fields with struct update syntax.
    pub const fn new(orig: PhysAddr, size: usize, cpu: usize) -> Self {
        Self {
            orig,
            size,
            alloc_size: size,
            alloc_align_mask: 0,
            min_align_mask: 0,
            dma_mask: u64::MAX,
            cpu,
            may_block: false,
        }
    }
}

/// A reserved buffer: the physical address the original's first byte is copied to
/// (`tlb_addr`: padding for `min_align_mask` already applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Where the data starts.
    pub addr: PhysAddr,
}

/// What a strategy knows about an address inside a live mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    /// Where the mapping's data starts (the address `reserve` returned).
    pub start: PhysAddr,
    /// The original address that corresponds to the looked-up address.
    pub orig: PhysAddr,
    /// Bytes of the mapping from the looked-up address to its end (`alloc_size` minus
    /// the offset).
    pub remaining: usize,
}

/// A strategy's own reference to a live mapping, handed out by [`Strategy::find`] and
/// taken back by [`Strategy::release_found`], so an unmap resolves its address once.
/// Opaque to the framework: each strategy says what its two words mean (the pools: the
/// chunk record, the buffer and the record's sequence word; the default: nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handle {
    /// The strategy's first word.
    pub key: u64,
    /// The strategy's second word.
    pub tag: u64,
}

/// A live mapping found by [`Strategy::find`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Where it is.
    pub loc: Located,
    /// How the strategy finds it again without a lookup.
    pub handle: Handle,
}

/// Why [`Strategy::release`] refused an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseError {
    /// Not in any pool of this strategy.
    Foreign,
    /// In a pool, but not a live mapping (double unmap).
    NotMapped,
    /// Inside a live mapping that starts elsewhere.
    NotStart {
        /// The mapping's start.
        start: PhysAddr,
    },
}

/// What a released mapping was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// The original address of the mapping's first byte.
    pub orig: PhysAddr,
    /// The mapping's `alloc_size`.
    pub size: usize,
}

/// Background work done by [`Strategy::run_background`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackgroundReport {
    /// Buffers added to free lists.
    pub buffers_added: u64,
    /// Pages converted to shared.
    pub pages_grown: u64,
    /// Pages converted back to private and freed.
    pub pages_shrunk: u64,
    /// Pages quarantined during this run.
    pub pages_quarantined: u64,
    /// Whether more work is pending (the runner should call again soon).
    pub more: bool,
}

impl BackgroundReport {
    /// Adds another report's counts.
    pub fn merge(&mut self, other: &Self) {
        self.buffers_added += other.buffers_added;
        self.pages_grown += other.pages_grown;
        self.pages_shrunk += other.pages_shrunk;
        self.pages_quarantined += other.pages_quarantined;
        self.more |= other.more;
    }

    /// Whether anything changed.
    pub fn did_work(&self) -> bool {
        self.buffers_added + self.pages_grown + self.pages_shrunk + self.pages_quarantined > 0
    }
}

/// A strategy's own accounting, checked by [`Strategy::audit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Live mappings.
    pub live_mappings: usize,
    /// Bytes reserved by live mappings (as `PoolStats::used_bytes`).
    pub used_bytes: usize,
    /// Bytes free and ready to hand out.
    pub free_bytes: usize,
    /// Bytes of shared memory owned (free + used + internal slack).
    pub owned_bytes: usize,
    /// Pages quarantined.
    pub quarantined_pages: u64,
}

/// An inconsistency found by [`Strategy::audit`]: a bug.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("strategy audit failed: {0}")]
pub struct AuditError(pub String);

/// The Strategy trait text; see the module documentation. Expands to `pub trait
/// Strategy` with the given attributes in front.
#[macro_export]
macro_rules! strategy_trait {
    ($(#[$attr:meta])*) => {
        /// A bounce-buffer allocation strategy.
        ///
        /// # Context
        /// `reserve`, `release`, `locate`, `find`, `release_found`, `owns`, `max_mapping_size`,
        /// `addressing_limit`, `stats`, `reset_hiwater` and `background_pending` run on
        /// the map path: any context, IRQs possibly off. They must not sleep, must not
        /// call the global allocator and must not convert pages; they may take the
        /// platform's IRQ-safe locks and call `Platform::wake_refill`.
        /// `run_background` and `audit` run in process context and may sleep.
        $(#[$attr])*
        pub trait Strategy: Send + Sync {
            /// The strategy's boot name (`swiotlb.strategy=`).
            fn name(&self) -> &'static str;

            /// Reserves a shared buffer for `req`.
            ///
            /// # Errors
            /// A [`MapError`](::bounce_framework::MapError) saying why nothing could be
            /// reserved; the strategy's state is unchanged.
            fn reserve(
                &self,
                req: &::bounce_framework::Request,
            ) -> ::core::result::Result<::bounce_framework::Reservation, ::bounce_framework::MapError>;

            /// Releases the mapping that starts at `addr` (the address `reserve`
            /// returned).
            ///
            /// # Errors
            /// A [`ReleaseError`](::bounce_framework::ReleaseError); state unchanged.
            fn release(
                &self,
                addr: ::bounce_framework::PhysAddr,
            ) -> ::core::result::Result<::bounce_framework::Released, ::bounce_framework::ReleaseError>;

            /// Finds the live mapping that contains `addr`.
            fn locate(&self, addr: ::bounce_framework::PhysAddr) -> ::core::option::Option<::bounce_framework::Located>;

            /// Finds the live mapping that contains `addr` with a handle to release it
            /// by ([`release_found`](Self::release_found)): the one lookup of an unmap
            /// or a sync. The default: [`locate`](Self::locate), then
            /// [`owns`](Self::owns) to tell a foreign address from an unmapped one.
            ///
            /// # Errors
            /// [`ReleaseError::Foreign`](::bounce_framework::ReleaseError::Foreign) or
            /// [`ReleaseError::NotMapped`](::bounce_framework::ReleaseError::NotMapped).
            #[inline]
            fn find(
                &self,
                addr: ::bounce_framework::PhysAddr,
            ) -> ::core::result::Result<::bounce_framework::Found, ::bounce_framework::ReleaseError> {
                match self.locate(addr) {
                    ::core::option::Option::Some(loc) => ::core::result::Result::Ok(::bounce_framework::Found {
                        loc,
                        handle: ::bounce_framework::Handle::default(),
                    }),
                    ::core::option::Option::None if self.owns(addr) => {
                        ::core::result::Result::Err(::bounce_framework::ReleaseError::NotMapped)
                    }
                    ::core::option::Option::None => ::core::result::Result::Err(::bounce_framework::ReleaseError::Foreign),
                }
            }

            /// Releases the mapping `found` (from [`find`](Self::find) at its start) on
            /// `cpu`, without looking its address up again. A racing release of the same
            /// mapping (a caller's double unmap) makes exactly one of them succeed. The
            /// default: [`release`](Self::release) of the mapping's start.
            ///
            /// # Errors
            /// A [`ReleaseError`](::bounce_framework::ReleaseError); state unchanged.
            #[inline]
            fn release_found(
                &self,
                found: &::bounce_framework::Found,
                cpu: usize,
            ) -> ::core::result::Result<::bounce_framework::Released, ::bounce_framework::ReleaseError> {
                let _ = cpu;
                self.release(found.loc.start)
            }

            /// Whether `addr` lies in memory this strategy manages (`is_swiotlb_buffer`),
            /// mapped or not.
            fn owns(&self, addr: ::bounce_framework::PhysAddr) -> bool;

            /// The longest mapping this strategy can serve for `dev`.
            fn max_mapping_size(&self, dev: &::bounce_framework::Device) -> usize;

            /// The end (exclusive) of the highest physical address a buffer may occupy;
            /// decides `dma_supported`.
            fn addressing_limit(&self) -> ::bounce_framework::PhysAddr;

            /// The pool's statistics.
            fn stats(&self) -> ::bounce_framework::PoolStats;

            /// Resets the used high-water mark.
            fn reset_hiwater(&self);

            /// Whether background work (growth, shrinking) is pending. The default,
            /// for a strategy with none (a pool fixed at boot): never.
            fn background_pending(&self) -> bool {
                false
            }

            /// Runs pending background work: growth in batches, shrinking of idle
            /// memory. May sleep. The default, for a strategy with none: nothing.
            fn run_background(&self) -> ::bounce_framework::BackgroundReport {
                ::bounce_framework::BackgroundReport::default()
            }

            /// Walks every data structure and checks the strategy's invariants: every
            /// byte free, in flight or quarantined, counters matching. May sleep.
            ///
            /// Maps, unmaps and syncs may run concurrently; [`run_background`](Self::run_background)
            /// must not: the walk takes the locks one after another, and a pool grown or
            /// shrunk in between reads as a broken invariant. Callers serialise the two
            /// (`bounce stress` pauses its refill thread for a mid-run audit).
            ///
            /// # Errors
            /// An [`AuditError`](::bounce_framework::AuditError) naming the first
            /// inconsistency.
            fn audit(
                &self,
            ) -> ::core::result::Result<::bounce_framework::AuditReport, ::bounce_framework::AuditError>;
        }
    };
}

strategy_trait!();

/// The shape of a strategy's shared memory, as the workspace's strategy-generic tests
/// (the fault matrix, the hostile-host tests, the fuzzer) judge it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolShape {
    /// One pool sized and converted at boot, as Linux's swiotlb: it never grows, never
    /// returns memory while it runs, has no background work, and refuses a request it
    /// cannot hold with [`MapError::Exhausted`](crate::MapError::Exhausted) carrying
    /// the facts `total slots` and `used slots`.
    Fixed,
    /// Memory grown by background conversions up to a cap (refusing with
    /// [`MapError::Cap`](crate::MapError::Cap) there), idle memory returned to private,
    /// and [`MapError::Exhausted`](crate::MapError::Exhausted) with the fact
    /// `class bytes` when nothing ready fits.
    Growing,
}

/// How the workspace's strategy-generic tests boot a strategy and what they expect of
/// it: each strategy crate exports one as `TEST_PROFILE`, and the registry hands it to
/// the tests, so a new strategy needs no line in them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestProfile {
    /// What kind of pool the strategy keeps.
    pub pool: PoolShape,
    /// The fault matrix's command line (`strategies/tests/fault_matrix.rs`). A fixed
    /// pool: `swiotlb=512` (1 MiB, converted in 64-page calls on the matrix's guest). A
    /// growing pool: one 8 KiB class of 8 buffers per chunk (17 pages with the
    /// alignment page, converted in one call), a boot target of one chunk with a
    /// reserve of 2 buffers, idle memory returned at once, and a cap of 8 chunks
    /// (544 KiB).
    pub fault_matrix: &'static str,
    /// The hostile-host tests' command line (`strategies/tests/hostile_host.rs`): a
    /// pool of a few MiB at most that serves 600 maps of 2 000 bytes with background
    /// work between them; a growing pool returns what demand no longer needs at once.
    pub hostile_host: &'static str,
}
