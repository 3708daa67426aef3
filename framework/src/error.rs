//! Errors. Each variant reads as a sentence a user can act on; every error leaves the
//! state it was raised in untouched.

use crate::addr::{DmaAddr, PhysAddr};

/// Why a mapping could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// `DMA_NONE` was passed as a direction.
    #[error("DMA_NONE is not a valid mapping direction (driver bug)")]
    DirectionNone,
    /// A number that is no DMA direction.
    #[error("{0} is not a DMA direction (0 bidirectional, 1 to device, 2 from device)")]
    BadDirection(u32),
    /// A zero-length mapping.
    #[error("cannot map zero bytes")]
    ZeroSize,
    /// The request is longer than the strategy can map for this device.
    #[error("mapping of {size} bytes exceeds the maximum mapping size of {max} bytes for this device")]
    TooLarge {
        /// Bytes requested.
        size: usize,
        /// `max_mapping_size()` for the device.
        max: usize,
    },
    /// The original buffer wraps around the top of the address space.
    #[error("original buffer {orig} + {size} bytes wraps the address space")]
    BadOriginal {
        /// The original address.
        orig: PhysAddr,
        /// Bytes requested.
        size: usize,
    },
    /// No free bounce buffer can serve the request now; a strategy with a refill engine
    /// has woken it. `detail` is the strategy's own message (e.g. legacy's "swiotlb
    /// buffer is full (sz: ...)" with Linux's slot counts).
    #[error("{detail}")]
    Exhausted {
        /// Bytes requested.
        size: usize,
        /// What the strategy says about it.
        detail: Detail,
    },
    /// The shared-memory cap stops the pool from growing to serve this request.
    #[error("shared memory cap of {cap_bytes} bytes reached; {size} bytes cannot be mapped")]
    Cap {
        /// Bytes requested.
        size: usize,
        /// The configured cap.
        cap_bytes: usize,
    },
    /// No bounce memory the device can address.
    #[error("bounce buffer at {dma} + {size} bytes is beyond the device's dma_mask {mask:#x}")]
    Unreachable {
        /// The bus address that was produced.
        dma: DmaAddr,
        /// Bytes requested.
        size: usize,
        /// The device's mask.
        mask: u64,
    },
    /// The request's alignment or mask combination cannot be served by this strategy.
    #[error("cannot honour alignment mask {align_mask:#x} with min_align_mask {min_align_mask:#x} for {size} bytes")]
    BadAlignment {
        /// Bytes requested.
        size: usize,
        /// The requested allocation alignment mask.
        align_mask: u64,
        /// The device's `min_align_mask`.
        min_align_mask: u64,
    },
}

/// A strategy's own message about an exhausted pool, for [`MapError::Exhausted`]: a
/// `'static` template whose `{}` are filled with up to three named numbers, in order
/// (numbers without a `{}` follow in parentheses). It is built on the map path, so it
/// allocates nothing, and a new strategy needs no new error variant, errno or C
/// constant to explain itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detail {
    template: &'static str,
    facts: [Option<(&'static str, usize)>; 3],
}

impl Detail {
    /// A message without numbers yet.
    pub const fn new(template: &'static str) -> Self {
        Self { template, facts: [None, None, None] }
    }

    /// Adds a named number (the first three are kept; a fourth replaces the third).
    #[must_use]
    pub const fn with(mut self, name: &'static str, value: usize) -> Self {
        let mut i = 0;
        while i < self.facts.len() - 1 && self.facts[i].is_some() {
            i += 1;
        }
        self.facts[i] = Some((name, value));
        self
    }

    /// The template.
    pub const fn template(&self) -> &'static str {
        self.template
    }

    /// The number called `name`, if the detail has it.
    pub fn fact(&self, name: &str) -> Option<usize> {
        self.facts.iter().flatten().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }
}

impl core::fmt::Display for Detail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut facts = self.facts.iter().flatten();
        let mut parts = self.template.split("{}");
        if let Some(first) = parts.next() {
            f.write_str(first)?;
        }
        for part in parts {
            match facts.next() {
                Some((_, v)) => write!(f, "{v}")?,
                None => f.write_str("?")?,
            }
            f.write_str(part)?;
        }
        let mut sep = " (";
        for (name, value) in facts {
            write!(f, "{sep}{name} {value}")?;
            sep = ", ";
        }
        if sep == ", " {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Why an address handed back by a caller (unmap, sync) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The address does not belong to any bounce pool.
    #[error("{0} is not a bounce buffer address")]
    Foreign(DmaAddr),
    /// The address is inside a pool but no mapping covers it (never mapped, or already
    /// unmapped: a double unmap).
    #[error("{0} is not mapped (never mapped, or already unmapped)")]
    NotMapped(DmaAddr),
    /// Unmap was given an address inside a mapping instead of its start.
    #[error("{addr} is inside the mapping that starts at {start}; unmap takes the start address")]
    NotMappingStart {
        /// The address passed.
        addr: DmaAddr,
        /// Where the mapping starts.
        start: DmaAddr,
    },
    /// A direction error on unmap or sync.
    #[error(transparent)]
    Direction(#[from] MapError),
}

/// A platform hook failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// The page allocator had no memory for the request.
    #[error("page allocation of {pages} pages failed")]
    AllocFailed {
        /// Pages requested.
        pages: usize,
    },
    /// A private↔shared conversion failed; the pages are in an unknown state and must be
    /// quarantined (never reused, never freed).
    #[error("converting {pages} pages at {addr} to {target} failed; the pages are quarantined")]
    ConversionFailed {
        /// First page of the range.
        addr: PhysAddr,
        /// Pages in the range.
        pages: usize,
        /// `"shared"` or `"private"`.
        target: &'static str,
    },
}

/// Why pool growth (boot fill or background refill) could not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrowError {
    /// A platform hook failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// Growing would exceed the configured cap on shared memory.
    #[error("growing by {bytes} bytes would exceed the shared memory cap of {cap_bytes} bytes")]
    Cap {
        /// Bytes the growth wanted.
        bytes: usize,
        /// The configured cap.
        cap_bytes: usize,
    },
}

/// A malformed boot command line or strategy parameter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmdlineError {
    /// A number could not be parsed.
    #[error("`{token}`: `{value}` is not a number")]
    BadNumber {
        /// The whole offending token.
        token: alloc::string::String,
        /// The part that failed.
        value: alloc::string::String,
    },
    /// A value is out of its allowed range.
    #[error("`{token}`: {reason}")]
    OutOfRange {
        /// The whole offending token.
        token: alloc::string::String,
        /// What the allowed range is.
        reason: alloc::string::String,
    },
    /// Trailing or unknown text inside a `swiotlb` token.
    #[error("`{token}`: unexpected `{rest}` (expected {expected})")]
    Unexpected {
        /// The whole offending token.
        token: alloc::string::String,
        /// The text that was not understood.
        rest: alloc::string::String,
        /// What could stand there.
        expected: &'static str,
    },
    /// `swiotlb.strategy=` names no known strategy.
    #[error("`{token}`: unknown strategy `{name}` (known: {known})")]
    UnknownStrategy {
        /// The whole offending token.
        token: alloc::string::String,
        /// The name given.
        name: alloc::string::String,
        /// The known names, comma separated.
        known: alloc::string::String,
    },
    /// A `swiotlb.<strategy>.<param>` the strategy does not take.
    #[error("`{token}`: strategy `{strategy}` has no parameter `{param}` (it takes: {known})")]
    UnknownParam {
        /// The whole offending token.
        token: alloc::string::String,
        /// The strategy addressed.
        strategy: alloc::string::String,
        /// The parameter name given.
        param: alloc::string::String,
        /// The parameters the strategy takes.
        known: alloc::string::String,
    },
    /// The same setting twice.
    #[error("`{token}`: `{key}` is given more than once")]
    Duplicate {
        /// The whole offending token.
        token: alloc::string::String,
        /// The repeated key.
        key: alloc::string::String,
    },
}

/// Why a failure counter was bumped; indexes [`BounceStats`](crate::BounceStats).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(usize)]
pub enum FailureReason {
    /// Bad arguments: direction, zero size, wrapping original.
    BadArgument = 0,
    /// Larger than `max_mapping_size`.
    TooLarge = 1,
    /// The pool or size class had nothing free.
    Exhausted = 2,
    /// The shared memory cap was reached.
    Cap = 3,
    /// The device cannot address the buffer.
    Unreachable = 4,
    /// Unmap or sync of an address that is not a live mapping.
    UnknownAddress = 5,
    /// An alignment the strategy cannot honour.
    Alignment = 6,
}

impl FailureReason {
    /// Number of reasons.
    pub const COUNT: usize = 7;
    /// Every reason, in index order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::BadArgument,
        Self::TooLarge,
        Self::Exhausted,
        Self::Cap,
        Self::Unreachable,
        Self::UnknownAddress,
        Self::Alignment,
    ];

    /// A short stable name for tables and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::BadArgument => "bad_argument",
            Self::TooLarge => "too_large",
            Self::Exhausted => "exhausted",
            Self::Cap => "cap",
            Self::Unreachable => "unreachable",
            Self::UnknownAddress => "unknown_address",
            Self::Alignment => "alignment",
        }
    }
}

impl MapError {
    /// The statistics bucket of this error.
    pub const fn reason(&self) -> FailureReason {
        match self {
            Self::DirectionNone | Self::BadDirection(_) | Self::ZeroSize | Self::BadOriginal { .. } => {
                FailureReason::BadArgument
            }
            Self::TooLarge { .. } => FailureReason::TooLarge,
            Self::Exhausted { .. } => FailureReason::Exhausted,
            Self::Cap { .. } => FailureReason::Cap,
            Self::Unreachable { .. } => FailureReason::Unreachable,
            Self::BadAlignment { .. } => FailureReason::Alignment,
        }
    }
}

impl LookupError {
    /// The statistics bucket of this error.
    pub const fn reason(&self) -> FailureReason {
        match self {
            Self::Direction(e) => e.reason(),
            _ => FailureReason::UnknownAddress,
        }
    }
}

/// Why a strategy could not be built at boot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// A command-line parameter is malformed.
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    /// The initial pool could not be allocated or converted.
    #[error("initial pool: {0}")]
    Grow(#[from] GrowError),
    /// A configuration that parses but cannot work (explained).
    #[error("invalid configuration: {0}")]
    Config(alloc::string::String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn detail_fills_its_template_in_order_and_lists_the_rest() {
        let d = Detail::new("full (sz: {} bytes), total {}").with("size", 100).with("total", 128).with("used", 98);
        assert_eq!(d.to_string(), "full (sz: 100 bytes), total 128 (used 98)");
        assert_eq!((d.fact("total"), d.fact("used"), d.fact("free")), (Some(128), Some(98), None));
        let e = MapError::Exhausted { size: 100, detail: d };
        assert_eq!(e.reason(), FailureReason::Exhausted);
        assert_eq!(e.to_string(), d.to_string());
        // More numbers than fit: the last slot takes the newest; missing ones print `?`.
        let d = Detail::new("{} {} {} {}").with("a", 1).with("b", 2).with("c", 3).with("d", 4);
        assert_eq!(d.to_string(), "1 2 4 ?");
        assert_eq!(Detail::new("plain").to_string(), "plain");
    }
}
