//! The platform hooks every strategy is built against.
//!
//! One trait, [`Platform`], carries everything that differs between the simulated guest,
//! the C test harness and the Linux kernel: page allocation, private↔shared conversion,
//! the CPU id, the IRQ-safe lock, CPU copies, the clock, waking the refill thread, and
//! logging. Strategies are generic over it, so the same strategy source runs everywhere.

use core::fmt;

use crate::addr::{DmaAddr, PageCount, PhysAddr};
use crate::dma::Device;
use crate::error::PlatformError;
use crate::lock::RawIrqLock;

/// Whether a page allocation may sleep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocContext {
    /// May sleep and reclaim (`GFP_KERNEL`): boot and the background refill thread.
    MaySleep,
    /// Must not sleep (`GFP_NOWAIT | __GFP_NOWARN`); may fail more readily.
    Atomic,
}

/// A request for contiguous pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// Number of pages; the block is page aligned.
    pub pages: PageCount,
    /// Whether the allocator may sleep.
    pub context: AllocContext,
    /// Every page must end at or below this physical address (exclusive bound), e.g.
    /// 4 GiB for a pool that 32-bit devices must reach; `PhysAddr(u64::MAX)` for none.
    pub limit: PhysAddr,
}

impl PageRequest {
    /// A sleeping allocation with no address limit.
    pub const fn sleeping(pages: PageCount) -> Self {
        Self { pages, context: AllocContext::MaySleep, limit: PhysAddr(u64::MAX) }
    }
}

/// Severity of a platform log message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Something failed (`pr_err`).
    Error,
    /// Something is off but handled (`pr_warn`).
    Warn,
    /// Information (`pr_info`).
    Info,
}

/// The `swiotlb_bounced` tracepoint: one line per bounced mapping.
#[derive(Clone, Copy, Debug)]
pub struct BouncedEvent<'a> {
    /// The device mapping.
    pub dev: &'a Device,
    /// The bus address of the *original* buffer (`phys_to_dma(dev, paddr)`).
    pub dev_addr: DmaAddr,
    /// Bytes mapped.
    pub size: usize,
    /// Whether bouncing was forced (`swiotlb=force` or a CoCo guest).
    pub force: bool,
}

impl fmt::Display for BouncedEvent<'_> {
    /// Linux's `TP_printk` format: `dev_name: %s dma_mask=%llx dev_addr=%llx size=%zu %s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dev_name: {} dma_mask={:x} dev_addr={:x} size={} {}",
            self.dev.name(),
            self.dev.dma_mask,
            self.dev_addr.0,
            self.size,
            if self.force { "FORCE" } else { "NORMAL" }
        )
    }
}

/// The platform: memory, conversion, CPUs, locks, copies, clock, wake-ups, logs.
///
/// Implementations are cheap handles (`Clone`); strategies and the bouncer each keep one.
///
/// # Context
/// Methods documented as *atomic-safe* may run with IRQs off and must not sleep:
/// `current_cpu`, `cpu_count`, `phys_to_dma`, `dma_to_phys`, `copy`, `fill`, `now_ns`,
/// `wake_refill`, `log`, `trace_bounced` and the lock. `alloc_pages` with
/// [`AllocContext::Atomic`] must not sleep either. `set_decrypted`, `set_encrypted`,
/// `free_pages` and sleeping allocations may sleep: only boot code and the background
/// refill engine call them, never the map path.
pub trait Platform: Clone + Send + Sync + 'static {
    /// The IRQ-safe lock strategies protect their shared state with.
    type Lock: RawIrqLock;

    /// Allocates `req.pages` contiguous, page-aligned, *private* pages.
    ///
    /// Any page-aligned sub-range of the block may later be freed on its own
    /// (`alloc_pages_exact` semantics), so a failed conversion can quarantine part of a
    /// batch and return the rest.
    ///
    /// # Errors
    /// [`PlatformError::AllocFailed`] when no memory satisfies the request.
    fn alloc_pages(&self, req: PageRequest) -> Result<PhysAddr, PlatformError>;

    /// Returns private pages to the page allocator. Never called for shared or
    /// quarantined pages.
    fn free_pages(&self, addr: PhysAddr, pages: PageCount);

    /// Converts private pages to shared (`set_memory_decrypted`). Contents are not
    /// preserved. May sleep.
    ///
    /// # Errors
    /// [`PlatformError::ConversionFailed`]: the pages are in an unknown state and the
    /// caller must quarantine them.
    fn set_decrypted(&self, addr: PhysAddr, pages: PageCount) -> Result<(), PlatformError>;

    /// Converts shared pages back to private (`set_memory_encrypted`, and on TDX the
    /// page accept). Contents are not preserved. May sleep.
    ///
    /// # Errors
    /// [`PlatformError::ConversionFailed`]: as for [`Platform::set_decrypted`].
    fn set_encrypted(&self, addr: PhysAddr, pages: PageCount) -> Result<(), PlatformError>;

    /// The most pages one conversion call may cover (a batch bound); `usize::MAX` when
    /// the platform has none.
    fn max_conversion_pages(&self) -> usize {
        usize::MAX
    }

    /// The CPU the caller runs on (`raw_smp_processor_id()`), below [`cpu_count`].
    ///
    /// [`cpu_count`]: Platform::cpu_count
    fn current_cpu(&self) -> usize;

    /// The number of possible CPUs.
    fn cpu_count(&self) -> usize;

    /// Guest RAM in bytes, for sizing rules such as "6 % of RAM".
    fn total_ram_bytes(&self) -> usize;

    /// Whether this is a confidential guest (memory encryption active), which changes
    /// Linux's default pool size.
    fn is_confidential(&self) -> bool {
        true
    }

    /// The bus address a device uses for a shared physical address
    /// (`phys_to_dma_unencrypted`: sets the TDX shared bit, clears the SEV C-bit).
    fn phys_to_dma(&self, addr: PhysAddr) -> DmaAddr {
        DmaAddr(addr.0)
    }

    /// The inverse of [`Platform::phys_to_dma`].
    fn dma_to_phys(&self, addr: DmaAddr) -> PhysAddr {
        PhysAddr(addr.0)
    }

    /// Copies `len` bytes from `src` to `dst` as the CPU (private or shared memory).
    /// The ranges do not overlap. Atomic-safe.
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize);

    /// Sets `len` bytes at `dst` to `byte`. Atomic-safe.
    fn fill(&self, dst: PhysAddr, byte: u8, len: usize);

    /// A monotonic clock in nanoseconds. Atomic-safe.
    fn now_ns(&self) -> u64;

    /// Wakes the background refill engine without blocking. Atomic-safe.
    fn wake_refill(&self);

    /// Sleeps the caller for about `ns` nanoseconds (`usleep_range`), for maps marked
    /// [`DmaAttrs::MAY_BLOCK`](crate::DmaAttrs::MAY_BLOCK) only: the map path calls it
    /// for no other map. Returns false when the platform cannot sleep (the default), and
    /// such maps then fail as atomic ones do.
    fn sleep(&self, ns: u64) -> bool {
        let _ = ns;
        false
    }

    /// Logs a message (`printk`). Atomic-safe. The default drops it.
    fn log(&self, level: LogLevel, args: fmt::Arguments<'_>) {
        let _ = (level, args);
    }

    /// Emits the `swiotlb_bounced` tracepoint. Atomic-safe. The default drops it.
    fn trace_bounced(&self, event: &BouncedEvent<'_>) {
        let _ = event;
    }
}
