//! # bounce-framework
//!
//! The host every bounce strategy plugs into: DMA-API semantics (map, unmap, sync,
//! scatter-gather, device limits, the copy rules of Linux's swiotlb), the platform hooks
//! strategies are built against (page allocation, TDX/SNP private↔shared conversion,
//! CPU ids, IRQ-safe locks), statistics equal to Linux's debugfs set and more, and the
//! boot command line.
//!
//! `no_std` + `alloc`. The `sim` feature adds a simulated confidential guest
//! ([`sim`]), the `conformance` feature the conformance suite every strategy runs.
//!
//! Layering: [`Bouncer`] (DMA API, copies, statistics) → [`Strategy`] (which buffer,
//! found again how) → [`Platform`] (memory, conversion, locks). Strategies get shared
//! memory only through [`SharedMemory`], which batches conversions, enforces the cap
//! and quarantines pages whose conversion failed.
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![warn(missing_docs)]

extern crate alloc;
// The Strategy trait text uses absolute `::bounce_framework::` paths so it can be
// expanded in other crates; this makes those paths resolve here too.
extern crate self as bounce_framework;

pub mod addr;
pub mod bouncer;
pub mod cmdline;
pub mod devices;
pub mod dma;
pub mod error;
pub mod lock;
pub mod percpu;
pub mod pfn_map;
pub mod platform;
pub mod shared;
pub mod stats;
pub mod strategy;
pub mod sync;

#[cfg(feature = "sim")]
pub mod sim;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use addr::{
    DmaAddr, PageCount, PhysAddr, SlotCount, IO_TLB_SEGSIZE, IO_TLB_SHIFT, IO_TLB_SIZE, PAGE_SHIFT, PAGE_SIZE,
};
pub use bouncer::{Bouncer, BouncerOptions, SgEntry, SgError, MAY_BLOCK_TIMEOUT_NS};
pub use cmdline::{BootConfig, ForceMode, LaneRoutes, Route, StrategyParams, SwiotlbParam, NATIVE_LANE, NATIVE_ROUTE};
pub use devices::{
    fail_size_bucket, Attachment, DeviceRoute, DeviceSnapshot, DeviceTable, DEVICE_SLOTS, FAIL_SIZE_BOUNDS, MAX_LANES,
    OVERFLOW_DEVICE,
};
pub use dma::{Device, DeviceName, DmaAttrs, DmaDirection, DEVICE_NAME_MAX};
pub use error::{CmdlineError, Detail, FailureReason, GrowError, InitError, LookupError, MapError, PlatformError};
pub use lock::{IrqControl, IrqGuards, IrqMutex, IrqMutexGuard, IrqState, NoIrq, RawIrqLock, SpinIrqLock};
pub use percpu::{PerCpuUsage, USAGE_BATCH};
pub use pfn_map::{PfnMap, PfnMapError, PFN_LIMIT};
pub use platform::{AllocContext, BouncedEvent, LogLevel, PageRequest, Platform};
pub use shared::{ConversionStats, SharedMemory};
pub use stats::{BounceSnapshot, BounceStats, DebugfsView, PoolStats, RefillStats, UsageCounter};
pub use strategy::{
    AuditError, AuditReport, BackgroundReport, Found, Handle, Located, PoolShape, ReleaseError, Released, Request,
    Reservation, Strategy, TestProfile,
};
