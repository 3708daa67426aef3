//! Errors across the boundary: Linux errno numbers (returned negated) and the mapping
//! from the framework's error types.
//!
//! | errno | when |
//! |---|---|
//! | `EINVAL` | NULL pointer, `DMA_NONE` or another non-direction, zero size, bad mask, malformed command line, bad hook table, unmap of an address inside a mapping, unknown create flags |
//! | `E2BIG` | larger than `max_mapping_size` for the device |
//! | `ENOSPC` | no free bounce buffer (pool full, or no ready buffer and refill pending) |
//! | `EDQUOT` | the shared-memory cap stops the pool from growing |
//! | `ERANGE` | the bounce buffer would lie beyond the device's `dma_mask` |
//! | `EFAULT` | the bus address belongs to no bounce pool |
//! | `ENOENT` | the address is in a pool but no live mapping covers it (double unmap, never mapped) |
//! | `ENOMEM` | create: page or memory allocation failed |
//! | `EIO` | create: a private↔shared conversion failed (the pages are quarantined) |
//! | `ENODEV` | create: `swiotlb=noforce` disables bounce buffering |
//! | `EBUSY` | destroy: mappings are still live |
//! | `EUCLEAN` | audit: the strategy's invariants do not hold (a bug) |
//! | `ENOTRECOVERABLE` | an internal panic poisoned the instance (std flavour) |

use core::ffi::c_int;

use bounce_framework::{CmdlineError, GrowError, InitError, LookupError, MapError, PlatformError};

/// No such file or directory: no live mapping at the address.
pub const ENOENT: c_int = 2;
/// I/O error: a conversion failed while building the pool.
pub const EIO: c_int = 5;
/// Argument list too long: larger than the maximum mapping size.
pub const E2BIG: c_int = 7;
/// Out of memory.
pub const ENOMEM: c_int = 12;
/// Bad address: not a bounce buffer.
pub const EFAULT: c_int = 14;
/// Device or resource busy: mappings still live.
pub const EBUSY: c_int = 16;
/// No such device: bouncing disabled by `swiotlb=noforce`.
pub const ENODEV: c_int = 19;
/// Invalid argument.
pub const EINVAL: c_int = 22;
/// No space left: the pool is exhausted.
pub const ENOSPC: c_int = 28;
/// Result out of range: beyond the device's `dma_mask`.
pub const ERANGE: c_int = 34;
/// Structure needs cleaning: an audit found an inconsistency.
pub const EUCLEAN: c_int = 117;
/// Quota exceeded: the shared-memory cap was reached.
pub const EDQUOT: c_int = 122;
/// State not recoverable: the instance is poisoned by an internal panic.
pub const ENOTRECOVERABLE: c_int = 131;

/// The errno of a failed mapping.
pub const fn map_errno(e: &MapError) -> c_int {
    match e {
        MapError::TooLarge { .. } => E2BIG,
        MapError::Exhausted { .. } => ENOSPC,
        MapError::Cap { .. } => EDQUOT,
        MapError::Unreachable { .. } => ERANGE,
        // DirectionNone, BadDirection, ZeroSize, BadOriginal, BadAlignment and any
        // variant added later: the request itself is wrong.
        _ => EINVAL,
    }
}

/// The errno of a refused unmap or sync address.
pub const fn lookup_errno(e: &LookupError) -> c_int {
    match e {
        LookupError::Foreign(_) => EFAULT,
        LookupError::NotMapped(_) => ENOENT,
        LookupError::Direction(m) => map_errno(m),
        // NotMappingStart and anything added later.
        _ => EINVAL,
    }
}

/// The errno of a failed `bounce_create`.
pub const fn init_errno(e: &InitError) -> c_int {
    match e {
        InitError::Grow(GrowError::Platform(PlatformError::AllocFailed { .. })) => ENOMEM,
        InitError::Grow(GrowError::Platform(PlatformError::ConversionFailed { .. })) => EIO,
        InitError::Grow(GrowError::Cap { .. }) => EDQUOT,
        // Cmdline, Config and anything added later.
        _ => EINVAL,
    }
}

/// The errno of a malformed command line.
pub const fn cmdline_errno(_e: &CmdlineError) -> c_int {
    EINVAL
}
