//! The C-visible types and constants of the ABI (`include/bounce.h` is generated from
//! this file and `ffi.rs` by cbindgen).
//!
//! Every struct is `#[repr(C)]` and only holds integers, `bool`, raw pointers and
//! nullable function pointers, so the header is the whole contract. Addresses are `u64`
//! (`phys_addr_t` / `dma_addr_t` on 64-bit kernels), sizes `usize` (`size_t`).

use core::ffi::{c_char, c_int, c_ulong, c_void};

use bounce_framework::{DmaAttrs, DmaDirection, FailureReason, LogLevel, SgEntry};

/// The version of this ABI. `bounce_hooks.abi_version` must hold it; bumped whenever
/// a struct or a function signature changes.
pub const BOUNCE_ABI_VERSION: u32 = 3;

/// `DMA_BIDIRECTIONAL`.
pub const BOUNCE_DMA_BIDIRECTIONAL: u32 = 0;
/// `DMA_TO_DEVICE`.
pub const BOUNCE_DMA_TO_DEVICE: u32 = 1;
/// `DMA_FROM_DEVICE`.
pub const BOUNCE_DMA_FROM_DEVICE: u32 = 2;
/// `DMA_NONE`: refused by every call with `-EINVAL` (a driver bug).
pub const BOUNCE_DMA_NONE: u32 = 3;

/// `DMA_ATTR_SKIP_CPU_SYNC` (Linux's bit value). Other attribute bits are accepted and
/// ignored, as swiotlb ignores them.
pub const BOUNCE_DMA_ATTR_SKIP_CPU_SYNC: u64 = 1 << 5;
/// `DMA_ATTR_NO_WARN` (Linux's bit value): do not log a failed mapping.
pub const BOUNCE_DMA_ATTR_NO_WARN: u64 = 1 << 8;
/// `DMA_ATTR_MAY_BLOCK` (Michael Kelley's swiotlb throttling RFC; a bit Linux 6.12 leaves
/// free): the caller may sleep, so a map that finds no free bounce buffer wakes the
/// refill engine and waits through the `sleep` hook (up to 1 s) instead of failing at
/// once. Without a `sleep` hook it has no effect.
pub const BOUNCE_DMA_ATTR_MAY_BLOCK: u64 = 1 << 10;

/// `bounce_create` flag: time every operation and split copy from metadata time
/// (`bounce_stats.op_ns` / `copy_ns`); three clock reads per call.
pub const BOUNCE_CREATE_TIMING: u32 = 1 << 0;
/// Every `bounce_create` flag this version knows; other bits are refused (`-EINVAL`).
pub const BOUNCE_CREATE_FLAGS_ALL: u32 = BOUNCE_CREATE_TIMING;

/// Log level passed to the `log` hook: `KERN_ERR`.
pub const BOUNCE_LOG_ERR: c_int = 3;
/// Log level passed to the `log` hook: `KERN_WARNING`.
pub const BOUNCE_LOG_WARNING: c_int = 4;
/// Log level passed to the `log` hook: `KERN_INFO`.
pub const BOUNCE_LOG_INFO: c_int = 6;

/// Longest message a log hook receives, NUL excluded (longer ones are truncated).
pub const BOUNCE_LOG_MAX: usize = 255;
/// Longest message `bounce_last_error` keeps per CPU, NUL excluded.
pub const BOUNCE_ERROR_MAX: usize = 255;

/// Index of `bounce_stats.failures`: bad arguments (NULL pointers, `DMA_NONE`, zero
/// sizes, bad masks).
pub const BOUNCE_FAILURE_BAD_ARGUMENT: usize = 0;
/// Index of `bounce_stats.failures`: larger than `max_mapping_size`.
pub const BOUNCE_FAILURE_TOO_LARGE: usize = 1;
/// Index of `bounce_stats.failures`: no free bounce buffer.
pub const BOUNCE_FAILURE_EXHAUSTED: usize = 2;
/// Index of `bounce_stats.failures`: the shared-memory cap stopped growth.
pub const BOUNCE_FAILURE_CAP: usize = 3;
/// Index of `bounce_stats.failures`: bounce memory beyond the device's `dma_mask`.
pub const BOUNCE_FAILURE_UNREACHABLE: usize = 4;
/// Index of `bounce_stats.failures`: unmap/sync of an address that is no live
/// mapping (foreign, double unmap, not the mapping's start).
pub const BOUNCE_FAILURE_UNKNOWN_ADDRESS: usize = 5;
/// Index of `bounce_stats.failures`: an alignment the strategy cannot honour.
pub const BOUNCE_FAILURE_ALIGNMENT: usize = 6;
/// Number of entries of `bounce_stats.failures`.
pub const BOUNCE_FAILURE_COUNT: usize = 7;

/// Longest strategy name (`bounce_strategy_name`), NUL excluded.
pub const BOUNCE_NAME_MAX: usize = 31;

/// Longest device name bounce keeps (`dev_name()` is cut there), NUL excluded.
pub const BOUNCE_DEVICE_NAME_MAX: usize = 32;

/// Bytes of `bounce_device_stats.name`: `BOUNCE_DEVICE_NAME_MAX` and the NUL.
pub const BOUNCE_DEVICE_NAME_BUF: usize = 33;

/// Bytes of `bounce_device_stats.strategy`: `BOUNCE_NAME_MAX` and the NUL.
pub const BOUNCE_NAME_BUF: usize = 32;

/// Device slots of an instance (`bounce_device_stats` indices run below it): devices
/// claim them in the order they first map, the routed ones first; the last slot counts
/// every device beyond the others.
pub const BOUNCE_DEVICE_SLOTS: u32 = 16;

/// `bounce_device_stats.lane` of a device the command line leaves to the platform's
/// own swiotlb (`swiotlb.strategy=<default>,<device>:linux`).
pub const BOUNCE_LANE_NATIVE: u32 = 255;

/// Entries of `bounce_device_stats.fail_sizes`: failed requests of at most 512 B,
/// 2 KiB, 4 KiB, 16 KiB, 64 KiB, 256 KiB, and larger.
pub const BOUNCE_FAIL_SIZE_BUCKETS: usize = 7;

/// The largest `min_align_mask` a device may have (64 KiB - 1): enough for every IOMMU
/// granule Linux uses, and far enough below a 256 KiB segment that every strategy can
/// still map something.
pub const BOUNCE_MAX_MIN_ALIGN_MASK: u64 = (64 << 10) - 1;

// The ABI numbers are Linux's and the framework's; a change on either side breaks the
// build here rather than the C callers at run time.
const _: () = {
    assert!(BOUNCE_DMA_BIDIRECTIONAL == DmaDirection::Bidirectional as u32);
    assert!(BOUNCE_DMA_TO_DEVICE == DmaDirection::ToDevice as u32);
    assert!(BOUNCE_DMA_FROM_DEVICE == DmaDirection::FromDevice as u32);
    assert!(BOUNCE_DMA_ATTR_SKIP_CPU_SYNC == DmaAttrs::SKIP_CPU_SYNC.bits());
    assert!(BOUNCE_DMA_ATTR_NO_WARN == DmaAttrs::NO_WARN.bits());
    assert!(BOUNCE_DMA_ATTR_MAY_BLOCK == DmaAttrs::MAY_BLOCK.bits());
    assert!(BOUNCE_FAILURE_COUNT == FailureReason::COUNT);
    assert!(BOUNCE_FAILURE_BAD_ARGUMENT == FailureReason::BadArgument as usize);
    assert!(BOUNCE_FAILURE_TOO_LARGE == FailureReason::TooLarge as usize);
    assert!(BOUNCE_FAILURE_EXHAUSTED == FailureReason::Exhausted as usize);
    assert!(BOUNCE_FAILURE_CAP == FailureReason::Cap as usize);
    assert!(BOUNCE_FAILURE_UNREACHABLE == FailureReason::Unreachable as usize);
    assert!(BOUNCE_FAILURE_UNKNOWN_ADDRESS == FailureReason::UnknownAddress as usize);
    assert!(BOUNCE_FAILURE_ALIGNMENT == FailureReason::Alignment as usize);
};

/// The kernel's log level for a framework level.
pub(crate) const fn log_level(level: LogLevel) -> c_int {
    match level {
        LogLevel::Error => BOUNCE_LOG_ERR,
        LogLevel::Warn => BOUNCE_LOG_WARNING,
        LogLevel::Info => BOUNCE_LOG_INFO,
    }
}

/// The platform hooks of one instance: everything bounce needs from its host, as C
/// function pointers sharing one context pointer (the IRQ pair excepted).
///
/// Hooks marked *required* must be non-NULL; the others may be NULL and then behave as
/// documented. The table is copied by `bounce_create`; it need not outlive the call,
/// but `ctx` must outlive the instance.
///
/// # Context
/// Hooks run on whatever thread calls into bounce, concurrently with each other, so
/// they must be thread-safe. `current_cpu`, `phys_to_dma`, `dma_to_phys`, `copy`,
/// `fill`, `now_ns`, `wake_refill`, `log`, `trace_bounced`, `irq_save`, `irq_restore`
/// and `alloc_pages` with `may_sleep == false` are called on the map path, possibly
/// with interrupts disabled: they must not sleep. `alloc_pages` with `may_sleep ==
/// true`, `free_pages`, `set_decrypted` and `set_encrypted` are only called from
/// `bounce_create`, `bounce_run_background` and `bounce_destroy` (process context) and
/// may sleep.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BounceHooks {
    /// Must be `BOUNCE_ABI_VERSION`.
    pub abi_version: u32,
    /// Passed unchanged to every hook but `irq_save`/`irq_restore`.
    pub ctx: *mut c_void,
    /// Required. Allocates `pages` contiguous, page-aligned *private* pages whose last
    /// byte lies below `limit` (an exclusive physical bound; `UINT64_MAX`: none) and
    /// stores the first page's physical address in `*phys_out`. Must not sleep when
    /// `may_sleep` is false (`GFP_NOWAIT`). Any page-aligned sub-range may later be
    /// freed on its own (`alloc_pages_exact` semantics). Returns 0, or a negative errno
    /// (`-ENOMEM`) when nothing fits.
    pub alloc_pages: Option<
        unsafe extern "C" fn(ctx: *mut c_void, pages: usize, may_sleep: bool, limit: u64, phys_out: *mut u64) -> c_int,
    >,
    /// Required. Frees private pages obtained from `alloc_pages`. Never called for
    /// shared pages or pages whose conversion failed.
    pub free_pages: Option<unsafe extern "C" fn(ctx: *mut c_void, phys: u64, pages: usize)>,
    /// Required. `set_memory_decrypted`: converts private pages to shared (contents
    /// are not preserved). Returns 0 or a negative errno; after a failure the pages are
    /// never used or freed again (quarantined). May sleep.
    pub set_decrypted: Option<unsafe extern "C" fn(ctx: *mut c_void, phys: u64, pages: usize) -> c_int>,
    /// Required. `set_memory_encrypted` (and on TDX the page accept): converts shared
    /// pages back to private. Returns 0 or a negative errno (the pages are then
    /// quarantined). May sleep.
    pub set_encrypted: Option<unsafe extern "C" fn(ctx: *mut c_void, phys: u64, pages: usize) -> c_int>,
    /// The most pages one conversion call may cover (SEV-SNP batches); 0: no bound.
    pub max_conversion_pages: usize,
    /// Required. `raw_smp_processor_id()`. Values at or above `cpu_count` are reduced
    /// modulo `cpu_count`.
    pub current_cpu: Option<unsafe extern "C" fn(ctx: *mut c_void) -> u32>,
    /// Required. `num_possible_cpus()`; called once by `bounce_create`, must be at
    /// least 1.
    pub cpu_count: Option<unsafe extern "C" fn(ctx: *mut c_void) -> u32>,
    /// Required. Guest RAM in bytes (`totalram_pages() << PAGE_SHIFT`), for sizing rules
    /// such as "6 % of RAM".
    pub total_ram_bytes: Option<unsafe extern "C" fn(ctx: *mut c_void) -> u64>,
    /// Whether memory encryption is active (`cc_platform_has(CC_ATTR_MEM_ENCRYPT)`).
    /// NULL: true.
    pub is_confidential: Option<unsafe extern "C" fn(ctx: *mut c_void) -> bool>,
    /// The bus address a device uses for a *shared* physical address
    /// (`phys_to_dma_unencrypted`: sets the TDX shared bit, clears the SEV C-bit).
    /// NULL: identity.
    pub phys_to_dma: Option<unsafe extern "C" fn(ctx: *mut c_void, phys: u64) -> u64>,
    /// The inverse of `phys_to_dma` (`dma_to_phys`). NULL: identity.
    pub dma_to_phys: Option<unsafe extern "C" fn(ctx: *mut c_void, dma: u64) -> u64>,
    /// Required. Copies `len` bytes of physical memory from `src` to `dst` (the kernel
    /// does `memcpy(phys_to_virt(dst), phys_to_virt(src), len)`). The ranges never
    /// overlap. Must not sleep.
    pub copy: Option<unsafe extern "C" fn(ctx: *mut c_void, dst: u64, src: u64, len: usize)>,
    /// Required. Sets `len` bytes of physical memory at `dst` to `byte`. Must not sleep.
    pub fill: Option<unsafe extern "C" fn(ctx: *mut c_void, dst: u64, byte: u8, len: usize)>,
    /// Required. A monotonic clock in nanoseconds (`ktime_get_ns()`). Must not sleep.
    pub now_ns: Option<unsafe extern "C" fn(ctx: *mut c_void) -> u64>,
    /// Wakes the thread that calls `bounce_run_background` (`wake_up_process(kccd)`),
    /// without blocking. NULL: nothing is woken (the host polls
    /// `bounce_background_pending`).
    pub wake_refill: Option<unsafe extern "C" fn(ctx: *mut c_void)>,
    /// Prints a message: `level` is a `BOUNCE_LOG_*` (kernel log level), `msg` holds
    /// `len` bytes and is NUL-terminated. NULL: messages are dropped.
    pub log: Option<unsafe extern "C" fn(ctx: *mut c_void, level: c_int, msg: *const c_char, len: usize)>,
    /// The `swiotlb_bounced` tracepoint, called for every successful map when non-NULL.
    /// The event and its name live only during the call.
    pub trace_bounced: Option<unsafe extern "C" fn(ctx: *mut c_void, event: *const BounceTraceEvent)>,
    /// `local_irq_save()`: saves and disables local interrupts, returns the flags.
    /// With `irq_restore`, the IRQ control of every bounce lock (a spinning lock taken
    /// with interrupts off, `spin_lock_irqsave`). Both NULL: locks do not touch
    /// interrupts (hosts without interrupt handlers that map). Process-wide: the first
    /// `bounce_create` whose arguments and command line are valid installs the pair for
    /// good (before building its strategy, even if that then fails), and every later
    /// `bounce_create` must pass the same pair (`-EINVAL` otherwise). Hence no `ctx`.
    /// Bounce releases its locks in the reverse order it took them, so each
    /// `irq_restore` undoes the matching `irq_save` (`local_irq_save` semantics).
    pub irq_save: Option<unsafe extern "C" fn() -> c_ulong>,
    /// `local_irq_restore(flags)`; see `irq_save`.
    pub irq_restore: Option<unsafe extern "C" fn(flags: c_ulong)>,
    /// Sleeps the caller for about `ns` nanoseconds (`usleep_range`). Called only on
    /// behalf of maps passed `BOUNCE_DMA_ATTR_MAY_BLOCK` (whose caller may sleep) that
    /// found no free buffer, never for any other call. NULL: such maps fail at once, as
    /// atomic ones do.
    pub sleep: Option<unsafe extern "C" fn(ctx: *mut c_void, ns: u64)>,
}

/// What bounce needs to know about a device (`struct device` and its `dma_parms`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BounceDevice {
    /// `dev_name(dev)`: NUL-terminated, used in messages and traces (at most 32 bytes
    /// are read); NULL for none.
    pub name: *const c_char,
    /// `*dev->dma_mask` (`min_not_zero` with `bus_dma_limit`): every bus address handed
    /// to the device is at most this.
    pub dma_mask: u64,
    /// `dma_get_min_align_mask(dev)`: these low bits of an original address are kept in
    /// its bounce address. Must be `2^k - 1` and below 64 KiB (NVMe: 4095).
    pub min_align_mask: u64,
    /// `dma_get_max_seg_size(dev)`.
    pub max_segment_size: u32,
    /// What `bounce_attach_device()` returned for this device, kept beside it by the
    /// caller (the kernel: in `struct device`), or 0. With an attachment the calls
    /// read neither the name nor any table: the device's route is in this word. A word
    /// this instance did not hand out is ignored (the device is then looked up by
    /// name on every call, as with 0).
    pub attachment: u64,
}

/// One scatter-gather entry (`struct scatterlist` resolved to a physical address).
/// `phys` and `length` are inputs; `dma_address` and `dma_length` are set by
/// `bounce_map_sg` (`sg_dma_address`, `sg_dma_len`) and read by the unmap and sync calls.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceSg {
    /// The original buffer.
    pub phys: u64,
    /// Its length in bytes.
    pub length: usize,
    /// Set by `bounce_map_sg`: the bus address.
    pub dma_address: u64,
    /// Set by `bounce_map_sg`: the mapped length (0 after a rollback or an unmap).
    pub dma_length: usize,
}

// `BounceSg` slices are handed to the framework as `SgEntry` slices without copying
// (no allocation on the map path): the layouts must match field for field.
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<BounceSg>() == size_of::<SgEntry>());
    assert!(align_of::<BounceSg>() == align_of::<SgEntry>());
    assert!(offset_of!(BounceSg, phys) == offset_of!(SgEntry, phys));
    assert!(offset_of!(BounceSg, length) == offset_of!(SgEntry, length));
    assert!(offset_of!(BounceSg, dma_address) == offset_of!(SgEntry, dma_address));
    assert!(offset_of!(BounceSg, dma_length) == offset_of!(SgEntry, dma_length));
};

/// The `swiotlb_bounced` tracepoint's fields: `dev_name: %s dma_mask=%llx dev_addr=%llx
/// size=%zu %s` (the last field `FORCE` or `NORMAL`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BounceTraceEvent {
    /// The device name (not NUL-terminated; print with `%.*s`).
    pub dev_name: *const c_char,
    /// Bytes of `dev_name`.
    pub dev_name_len: usize,
    /// The device's `dma_mask`.
    pub dma_mask: u64,
    /// The bus address of the *original* buffer.
    pub dev_addr: u64,
    /// Bytes mapped.
    pub size: usize,
    /// Whether bouncing was forced (`swiotlb=force` or a confidential guest).
    pub force: bool,
}

/// A statistics snapshot: Linux's debugfs numbers, then bounce's own counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceStats {
    /// debugfs `io_tlb_nslabs`: pool capacity in 2 KiB slots.
    pub io_tlb_nslabs: u64,
    /// debugfs `io_tlb_used`: slots in use.
    pub io_tlb_used: u64,
    /// debugfs `io_tlb_used_hiwater`: most slots in use since the last reset.
    pub io_tlb_used_hiwater: u64,
    /// debugfs `io_tlb_transient_nslabs`: slots in transient pools.
    pub io_tlb_transient_nslabs: u64,
    /// Bytes of shared memory the strategy can hand out (free or in use).
    pub capacity_bytes: u64,
    /// Bytes reserved by live mappings, rounding and padding included.
    pub used_bytes: u64,
    /// High-water mark of `used_bytes` since the last reset.
    pub used_hiwater_bytes: u64,
    /// Bytes in short-lived (transient) pools.
    pub transient_bytes: u64,
    /// `set_decrypted` calls made.
    pub decrypt_calls: u64,
    /// Pages converted to shared.
    pub pages_decrypted: u64,
    /// `set_encrypted` calls made.
    pub encrypt_calls: u64,
    /// Pages converted back to private.
    pub pages_encrypted: u64,
    /// Conversion calls that failed.
    pub conversion_failures: u64,
    /// Pages quarantined after a failed conversion (never used, never freed).
    pub quarantined_pages: u64,
    /// Page allocations that failed.
    pub page_alloc_failures: u64,
    /// Nanoseconds spent in conversion calls.
    pub conversion_ns: u64,
    /// Shared bytes committed now.
    pub shared_bytes: u64,
    /// The most shared bytes committed at once.
    pub shared_bytes_peak: u64,
    /// Times the map path woke the refill engine.
    pub refill_wakeups: u64,
    /// Growth batches the refill engine published.
    pub refill_grow_batches: u64,
    /// Shrink operations the refill engine did.
    pub refill_shrink_batches: u64,
    /// Nanoseconds the refill engine spent working.
    pub refill_busy_ns: u64,
    /// Successful maps (each scatter-gather entry counts).
    pub maps: u64,
    /// Successful unmaps.
    pub unmaps: u64,
    /// Successful `sync_*_for_cpu` calls.
    pub syncs_for_cpu: u64,
    /// Successful `sync_*_for_device` calls.
    pub syncs_for_device: u64,
    /// Bytes copied original -> bounce.
    pub bytes_to_bounce: u64,
    /// Bytes copied bounce -> original.
    pub bytes_from_bounce: u64,
    /// Syncs or unmaps whose size ran past the mapping and was clamped.
    pub overflows_clamped: u64,
    /// Mapping bytes live now (0 exactly when no mapping is live).
    pub inflight_bytes: u64,
    /// The most mapping bytes live at once since the last reset.
    pub inflight_bytes_peak: u64,
    /// Operations timed (`BOUNCE_CREATE_TIMING`).
    pub timed_ops: u64,
    /// Nanoseconds spent in timed operations, copies included.
    pub op_ns: u64,
    /// Nanoseconds of `op_ns` spent copying (the rest is metadata: find/release).
    pub copy_ns: u64,
    /// Failed calls by reason, indexed by `BOUNCE_FAILURE_*`.
    pub failures: [u64; BOUNCE_FAILURE_COUNT],
    /// Maps passed `BOUNCE_DMA_ATTR_MAY_BLOCK` that found no free buffer and waited.
    pub blocked_maps: u64,
    /// Nanoseconds those maps waited.
    pub blocked_ns: u64,
}

/// One device's counters (`bounce_device_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BounceDeviceStats {
    /// The device's name (`dev_name()`, cut at `BOUNCE_DEVICE_NAME_MAX` bytes),
    /// NUL-terminated.
    pub name: [c_char; BOUNCE_DEVICE_NAME_BUF],
    /// The strategy that serves it ("linux" for `BOUNCE_LANE_NATIVE`), NUL-terminated.
    pub strategy: [c_char; BOUNCE_NAME_BUF],
    /// Its strategy instance (0: the default), or `BOUNCE_LANE_NATIVE`.
    pub lane: u32,
    /// Successful maps (each scatter-gather entry counts).
    pub maps: u64,
    /// Successful unmaps.
    pub unmaps: u64,
    /// Successful `sync_*_for_cpu` calls.
    pub syncs_for_cpu: u64,
    /// Successful `sync_*_for_device` calls.
    pub syncs_for_device: u64,
    /// Bytes copied original -> bounce.
    pub bytes_to_bounce: u64,
    /// Bytes copied bounce -> original.
    pub bytes_from_bounce: u64,
    /// Syncs or unmaps whose size ran past the mapping and was clamped.
    pub overflows_clamped: u64,
    /// Bytes this device has mapped and not unmapped.
    pub inflight_bytes: u64,
    /// The most of them at once since the last reset.
    pub inflight_bytes_peak: u64,
    /// Operations timed (`BOUNCE_CREATE_TIMING`).
    pub timed_ops: u64,
    /// Nanoseconds spent in timed operations, copies included.
    pub op_ns: u64,
    /// Nanoseconds of `op_ns` spent copying.
    pub copy_ns: u64,
    /// Failed calls by reason, indexed by `BOUNCE_FAILURE_*`.
    pub failures: [u64; BOUNCE_FAILURE_COUNT],
    /// Failed calls by request size (`BOUNCE_FAIL_SIZE_BUCKETS`).
    pub fail_sizes: [u64; BOUNCE_FAIL_SIZE_BUCKETS],
}

impl Default for BounceDeviceStats {
    fn default() -> Self {
        Self {
            name: [0; BOUNCE_DEVICE_NAME_BUF],
            strategy: [0; BOUNCE_NAME_BUF],
            lane: 0,
            maps: 0,
            unmaps: 0,
            syncs_for_cpu: 0,
            syncs_for_device: 0,
            bytes_to_bounce: 0,
            bytes_from_bounce: 0,
            overflows_clamped: 0,
            inflight_bytes: 0,
            inflight_bytes_peak: 0,
            timed_ops: 0,
            op_ns: 0,
            copy_ns: 0,
            failures: [0; BOUNCE_FAILURE_COUNT],
            fail_sizes: [0; BOUNCE_FAIL_SIZE_BUCKETS],
        }
    }
}

/// What one `bounce_run_background` call did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceBackgroundReport {
    /// Buffers added to free lists.
    pub buffers_added: u64,
    /// Pages converted to shared.
    pub pages_grown: u64,
    /// Pages converted back to private and freed.
    pub pages_shrunk: u64,
    /// Pages quarantined during this run.
    pub pages_quarantined: u64,
    /// Whether more work is pending (call again soon).
    pub more: bool,
}

/// The strategy's own accounting, checked by `bounce_audit`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceAudit {
    /// Live mappings.
    pub live_mappings: u64,
    /// Bytes reserved by live mappings.
    pub used_bytes: u64,
    /// Bytes free and ready to hand out.
    pub free_bytes: u64,
    /// Bytes of shared memory owned (free + used + internal slack).
    pub owned_bytes: u64,
    /// Pages quarantined.
    pub quarantined_pages: u64,
}
