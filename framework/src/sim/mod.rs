//! A simulated confidential guest (feature `sim`).
//!
//! [`SimGuest`] is a [`Platform`]: an arena of guest-physical memory with a per-page
//! private/shared state, a page allocator, conversion cost models for `plain`, `tdx` and
//! `snp` guests (charged as virtual time and optionally spun for real), fault injection,
//! and a log. [`SimDevice`] is a device that can only touch shared pages inside live
//! mappings below its `dma_mask`; anything else is a [`Violation`] a test fails on.
//!
//! Conversions destroy page contents (the shared and private views of a TDX/SNP page are
//! different memory), so a strategy that expects data to survive a conversion fails.

mod alloc_count;
mod device;
mod guest;
mod lock_count;

pub use alloc_count::{count_allocations, CountingAlloc};
pub use lock_count::{count_locks, LockCount, MAX_DISTINCT_LOCKS};

pub use device::{DeviceError, MappingOracle, SimDevice};
pub use guest::{
    current_cpu_override, set_current_cpu, CostModel, FaultInjector, PageState, PlatformKind, SimConfig, SimGuest,
    SimLock, SimStats, Violation,
};
