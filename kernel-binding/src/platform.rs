//! [`HookPlatform`]: the framework's [`Platform`] over the C hook table, and
//! [`HookIrq`]: the process-wide IRQ control behind every bounce lock.
//!
//! # The IRQ hooks are process-wide
//! The framework's [`SpinIrqLock<I>`] calls `I::save_disable()` / `I::restore()`, which
//! are associated functions without `self`: a lock has no way to reach a per-instance
//! table. So the pair lives in statics, installed once by the first `bounce_create`
//! that gets past argument and command-line checking (before it builds its strategy)
//! and never changed afterwards (a later `bounce_create` with a different pair is
//! refused). Because the pair can only go from "unset" to one fixed value, and every
//! lock is created and first taken after that transition (locks are built by the
//! strategy inside `bounce_create`, after installation), a lock's `save_disable` and its
//! matching `restore` always reach the same functions. In the kernel the pair is
//! `local_irq_save` / `local_irq_restore`, which have no context either.
//!
//! Like `spin_lock_irqsave`, the pair nests only in LIFO order: a lock released while
//! a lock taken after it is still held restores "interrupts on" too early. The C tests
//! and the ABI property test check every strategy releases its locks that way.

use core::ffi::{c_char, c_int, c_ulong, c_void};
use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use bounce_framework::{
    AllocContext, BouncedEvent, DmaAddr, IrqControl, IrqState, LogLevel, PageCount, PageRequest, PhysAddr, Platform,
    PlatformError, SpinIrqLock, PAGE_SIZE,
};

use crate::abi::{log_level, BounceHooks, BounceTraceEvent, BOUNCE_ABI_VERSION, BOUNCE_LOG_MAX};
use crate::text::FixedBuf;

type AllocFn = unsafe extern "C" fn(*mut c_void, usize, bool, u64, *mut u64) -> c_int;
type FreeFn = unsafe extern "C" fn(*mut c_void, u64, usize);
type ConvertFn = unsafe extern "C" fn(*mut c_void, u64, usize) -> c_int;
type CpuFn = unsafe extern "C" fn(*mut c_void) -> u32;
type U64Fn = unsafe extern "C" fn(*mut c_void) -> u64;
type BoolFn = unsafe extern "C" fn(*mut c_void) -> bool;
type AddrFn = unsafe extern "C" fn(*mut c_void, u64) -> u64;
type CopyFn = unsafe extern "C" fn(*mut c_void, u64, u64, usize);
type FillFn = unsafe extern "C" fn(*mut c_void, u64, u8, usize);
type WakeFn = unsafe extern "C" fn(*mut c_void);
type LogFn = unsafe extern "C" fn(*mut c_void, c_int, *const c_char, usize);
type TraceFn = unsafe extern "C" fn(*mut c_void, *const BounceTraceEvent);
type SleepFn = unsafe extern "C" fn(*mut c_void, u64);
type IrqSaveFn = unsafe extern "C" fn() -> c_ulong;
type IrqRestoreFn = unsafe extern "C" fn(c_ulong);

/// The lock every strategy of an instance uses: a spinlock taken with interrupts
/// disabled through the process-wide IRQ hooks (`spin_lock_irqsave`).
pub type HookLock = SpinIrqLock<HookIrq>;

/// Why a hook table was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookError {
    /// `abi_version` is not [`BOUNCE_ABI_VERSION`].
    Version(u32),
    /// A required hook is NULL.
    Missing(&'static str),
    /// `cpu_count` returned 0.
    NoCpus,
    /// Only one of `irq_save` / `irq_restore` is set.
    HalfIrqPair,
    /// The IRQ pair differs from the one installed process-wide.
    IrqPairDiffers,
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Version(v) => write!(
                f,
                "hook table has ABI version {v}, this library speaks version {BOUNCE_ABI_VERSION}; rebuild against this bounce.h"
            ),
            Self::Missing(name) => write!(f, "required hook `{name}` is NULL"),
            Self::NoCpus => f.write_str("the cpu_count hook returned 0; at least one CPU is needed"),
            Self::HalfIrqPair => f.write_str("irq_save and irq_restore must both be set or both be NULL"),
            Self::IrqPairDiffers => f.write_str(
                "irq_save/irq_restore differ from the process-wide pair installed by the first bounce_create; \
                 every instance must pass the same pair",
            ),
        }
    }
}

// ------------------------------------------------------------------ IRQ control

/// `IRQ_STATE`: no pair installed yet.
const IRQ_UNSET: u8 = 0;
/// `IRQ_STATE`: a `bounce_create` is storing the pair.
const IRQ_INSTALLING: u8 = 1;
/// `IRQ_STATE`: the pair is installed for good (possibly "none": both 0).
const IRQ_SET: u8 = 2;

static IRQ_STATE: AtomicU8 = AtomicU8::new(IRQ_UNSET);
/// `irq_save` as an address, 0 for none. Written once, before `IRQ_STATE` becomes
/// `IRQ_SET` (release), read after observing `IRQ_SET` (acquire).
static IRQ_SAVE: AtomicUsize = AtomicUsize::new(0);
/// `irq_restore` as an address, 0 for none; as `IRQ_SAVE`.
static IRQ_RESTORE: AtomicUsize = AtomicUsize::new(0);

/// Installs the process-wide IRQ pair, or checks that `save`/`restore` equal the
/// installed one.
///
/// # Errors
/// [`HookError::HalfIrqPair`] or [`HookError::IrqPairDiffers`]; nothing changes.
pub(crate) fn install_irq_hooks(save: Option<IrqSaveFn>, restore: Option<IrqRestoreFn>) -> Result<(), HookError> {
    if save.is_some() != restore.is_some() {
        return Err(HookError::HalfIrqPair);
    }
    let s = save.map_or(0, |f| f as usize);
    let r = restore.map_or(0, |f| f as usize);
    loop {
        match IRQ_STATE.compare_exchange(IRQ_UNSET, IRQ_INSTALLING, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => {
                IRQ_SAVE.store(s, Ordering::Relaxed);
                IRQ_RESTORE.store(r, Ordering::Relaxed);
                IRQ_STATE.store(IRQ_SET, Ordering::Release);
                return Ok(());
            }
            Err(IRQ_SET) => {
                return if IRQ_SAVE.load(Ordering::Relaxed) == s && IRQ_RESTORE.load(Ordering::Relaxed) == r {
                    Ok(())
                } else {
                    Err(HookError::IrqPairDiffers)
                };
            }
            // Another bounce_create is between its two stores: wait for it.
            Err(_) => core::hint::spin_loop(),
        }
    }
}

/// Interrupt control through the process-wide hooks; see the module documentation.
///
/// # Context
/// Any context; never sleeps (the hooks must not).
#[derive(Debug)]
pub struct HookIrq;

impl IrqControl for HookIrq {
    #[inline]
    fn save_disable() -> IrqState {
        if IRQ_STATE.load(Ordering::Acquire) != IRQ_SET {
            return IrqState(0);
        }
        let f = IRQ_SAVE.load(Ordering::Relaxed);
        if f == 0 {
            return IrqState(0);
        }
        // SAFETY: a non-zero IRQ_SAVE was stored by `install_irq_hooks` from a valid
        // `IrqSaveFn` (the same type) and never changes after IRQ_SET was published;
        // the acquire load above orders this read after that store.
        let save: IrqSaveFn = unsafe { core::mem::transmute::<usize, IrqSaveFn>(f) };
        // SAFETY: the hook contract: `irq_save` may be called from any context.
        let flags = unsafe { save() };
        IrqState(flags as usize)
    }

    #[inline]
    fn restore(state: IrqState) {
        if IRQ_STATE.load(Ordering::Acquire) != IRQ_SET {
            return;
        }
        let f = IRQ_RESTORE.load(Ordering::Relaxed);
        if f == 0 {
            return;
        }
        // SAFETY: as in `save_disable`, for `IRQ_RESTORE` and `IrqRestoreFn`.
        let restore: IrqRestoreFn = unsafe { core::mem::transmute::<usize, IrqRestoreFn>(f) };
        // SAFETY: the hook contract; `state` came from the matching `irq_save` (the
        // lock pairs them), and `c_ulong` is as wide as `usize` on every 64-bit target.
        unsafe { restore(state.0 as c_ulong) }
    }
}

// ------------------------------------------------------------------ the platform

/// The validated hook table of one instance: required hooks are known non-NULL.
#[derive(Clone, Copy)]
struct Hooks {
    ctx: *mut c_void,
    alloc_pages: AllocFn,
    free_pages: FreeFn,
    set_decrypted: ConvertFn,
    set_encrypted: ConvertFn,
    max_conversion_pages: usize,
    current_cpu: CpuFn,
    total_ram_bytes: U64Fn,
    is_confidential: Option<BoolFn>,
    phys_to_dma: Option<AddrFn>,
    dma_to_phys: Option<AddrFn>,
    copy: CopyFn,
    fill: FillFn,
    now_ns: U64Fn,
    wake_refill: Option<WakeFn>,
    log: Option<LogFn>,
    trace_bounced: Option<TraceFn>,
    sleep: Option<SleepFn>,
}

/// The platform of one instance: the C hooks, copied out of the caller's table.
///
/// A cheap `Copy` handle; strategies and the bouncer each keep one.
#[derive(Clone, Copy)]
pub struct HookPlatform {
    hooks: Hooks,
    cpus: usize,
}

impl fmt::Debug for HookPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookPlatform").field("ctx", &self.hooks.ctx).field("cpus", &self.cpus).finish_non_exhaustive()
    }
}

// SAFETY: the hook contract (`BounceHooks`) requires every hook to be callable from any
// thread, concurrently, with the table's `ctx`; the platform holds nothing else.
unsafe impl Send for HookPlatform {}
// SAFETY: as for `Send`: shared use only calls the hooks.
unsafe impl Sync for HookPlatform {}

fn required<T>(f: Option<T>, name: &'static str) -> Result<T, HookError> {
    f.ok_or(HookError::Missing(name))
}

impl HookPlatform {
    /// Validates a hook table and reads the CPU count.
    ///
    /// # Errors
    /// [`HookError`] for a wrong version, a missing required hook or zero CPUs.
    ///
    /// # Safety
    /// The table's hooks must honour the contract documented on [`BounceHooks`] for
    /// as long as the platform (and every copy of it) is used.
    pub unsafe fn from_table(t: &BounceHooks) -> Result<Self, HookError> {
        if t.abi_version != BOUNCE_ABI_VERSION {
            return Err(HookError::Version(t.abi_version));
        }
        let hooks = Hooks {
            ctx: t.ctx,
            alloc_pages: required(t.alloc_pages, "alloc_pages")?,
            free_pages: required(t.free_pages, "free_pages")?,
            set_decrypted: required(t.set_decrypted, "set_decrypted")?,
            set_encrypted: required(t.set_encrypted, "set_encrypted")?,
            max_conversion_pages: if t.max_conversion_pages == 0 { usize::MAX } else { t.max_conversion_pages },
            current_cpu: required(t.current_cpu, "current_cpu")?,
            total_ram_bytes: required(t.total_ram_bytes, "total_ram_bytes")?,
            is_confidential: t.is_confidential,
            phys_to_dma: t.phys_to_dma,
            dma_to_phys: t.dma_to_phys,
            copy: required(t.copy, "copy")?,
            fill: required(t.fill, "fill")?,
            now_ns: required(t.now_ns, "now_ns")?,
            wake_refill: t.wake_refill,
            log: t.log,
            trace_bounced: t.trace_bounced,
            sleep: t.sleep,
        };
        let cpu_count = required(t.cpu_count, "cpu_count")?;
        // SAFETY: the caller guarantees the hook contract.
        let cpus = unsafe { cpu_count(t.ctx) } as usize;
        if cpus == 0 {
            return Err(HookError::NoCpus);
        }
        Ok(Self { hooks, cpus })
    }

    /// Whether the host supplied a tracepoint hook.
    pub fn has_trace(&self) -> bool {
        self.hooks.trace_bounced.is_some()
    }

    /// Logs a fixed message (no formatting).
    pub fn log_str(&self, level: LogLevel, msg: &str) {
        self.log(level, format_args!("{msg}"));
    }
}

impl Platform for HookPlatform {
    type Lock = HookLock;

    fn alloc_pages(&self, req: PageRequest) -> Result<PhysAddr, PlatformError> {
        let pages = req.pages.get();
        let fail = Err(PlatformError::AllocFailed { pages });
        if pages == 0 {
            return fail;
        }
        let mut phys = 0u64;
        let may_sleep = req.context == AllocContext::MaySleep;
        // SAFETY: the hook contract; `phys` is a valid out-pointer for the call.
        let rc = unsafe { (self.hooks.alloc_pages)(self.hooks.ctx, pages, may_sleep, req.limit.0, &raw mut phys) };
        if rc != 0 {
            return fail;
        }
        let addr = PhysAddr(phys);
        let end = phys.checked_add(req.pages.bytes() as u64);
        if !addr.is_aligned(PAGE_SIZE as u64) {
            // Not page aligned: no page-granular free of it would be right; leak it.
            self.log(LogLevel::Error, format_args!("bounce: alloc_pages hook returned unaligned {addr}; leaked"));
            return fail;
        }
        if end.is_none_or(|e| e > req.limit.0) {
            self.log(
                LogLevel::Error,
                format_args!("bounce: alloc_pages hook returned {addr} + {pages} pages beyond limit {}", req.limit),
            );
            self.free_pages(addr, req.pages);
            return fail;
        }
        Ok(addr)
    }

    fn free_pages(&self, addr: PhysAddr, pages: PageCount) {
        // SAFETY: the hook contract.
        unsafe { (self.hooks.free_pages)(self.hooks.ctx, addr.0, pages.get()) }
    }

    fn set_decrypted(&self, addr: PhysAddr, pages: PageCount) -> Result<(), PlatformError> {
        // SAFETY: the hook contract.
        let rc = unsafe { (self.hooks.set_decrypted)(self.hooks.ctx, addr.0, pages.get()) };
        if rc == 0 {
            return Ok(());
        }
        self.log(LogLevel::Error, format_args!("bounce: set_memory_decrypted({addr}, {}) failed: {rc}", pages.get()));
        Err(PlatformError::ConversionFailed { addr, pages: pages.get(), target: "shared" })
    }

    fn set_encrypted(&self, addr: PhysAddr, pages: PageCount) -> Result<(), PlatformError> {
        // SAFETY: the hook contract.
        let rc = unsafe { (self.hooks.set_encrypted)(self.hooks.ctx, addr.0, pages.get()) };
        if rc == 0 {
            return Ok(());
        }
        self.log(LogLevel::Error, format_args!("bounce: set_memory_encrypted({addr}, {}) failed: {rc}", pages.get()));
        Err(PlatformError::ConversionFailed { addr, pages: pages.get(), target: "private" })
    }

    fn max_conversion_pages(&self) -> usize {
        self.hooks.max_conversion_pages
    }

    #[inline]
    fn current_cpu(&self) -> usize {
        // SAFETY: the hook contract.
        let cpu = unsafe { (self.hooks.current_cpu)(self.hooks.ctx) } as usize;
        if cpu < self.cpus {
            cpu
        } else {
            cpu % self.cpus
        }
    }

    fn cpu_count(&self) -> usize {
        self.cpus
    }

    fn total_ram_bytes(&self) -> usize {
        // SAFETY: the hook contract.
        let bytes = unsafe { (self.hooks.total_ram_bytes)(self.hooks.ctx) };
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    fn is_confidential(&self) -> bool {
        // SAFETY: the hook contract.
        self.hooks.is_confidential.is_none_or(|f| unsafe { f(self.hooks.ctx) })
    }

    #[inline]
    fn phys_to_dma(&self, addr: PhysAddr) -> DmaAddr {
        match self.hooks.phys_to_dma {
            // SAFETY: the hook contract.
            Some(f) => DmaAddr(unsafe { f(self.hooks.ctx, addr.0) }),
            None => DmaAddr(addr.0),
        }
    }

    #[inline]
    fn dma_to_phys(&self, addr: DmaAddr) -> PhysAddr {
        match self.hooks.dma_to_phys {
            // SAFETY: the hook contract.
            Some(f) => PhysAddr(unsafe { f(self.hooks.ctx, addr.0) }),
            None => PhysAddr(addr.0),
        }
    }

    #[inline]
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize) {
        // SAFETY: the hook contract; the framework only copies between an original
        // buffer the caller mapped and a bounce buffer the strategy owns.
        unsafe { (self.hooks.copy)(self.hooks.ctx, dst.0, src.0, len) }
    }

    #[inline]
    fn fill(&self, dst: PhysAddr, byte: u8, len: usize) {
        // SAFETY: the hook contract; only bounce buffers are filled.
        unsafe { (self.hooks.fill)(self.hooks.ctx, dst.0, byte, len) }
    }

    #[inline]
    fn now_ns(&self) -> u64 {
        // SAFETY: the hook contract.
        unsafe { (self.hooks.now_ns)(self.hooks.ctx) }
    }

    fn wake_refill(&self) {
        if let Some(f) = self.hooks.wake_refill {
            // SAFETY: the hook contract.
            unsafe { f(self.hooks.ctx) }
        }
    }

    fn sleep(&self, ns: u64) -> bool {
        let Some(f) = self.hooks.sleep else { return false };
        // SAFETY: the hook contract; the bouncer calls this only for a map whose caller
        // passed BOUNCE_DMA_ATTR_MAY_BLOCK, i.e. promised it may sleep.
        unsafe { f(self.hooks.ctx, ns) };
        true
    }

    fn log(&self, level: LogLevel, args: fmt::Arguments<'_>) {
        let Some(f) = self.hooks.log else { return };
        let mut buf = FixedBuf::<{ BOUNCE_LOG_MAX + 1 }>::new();
        buf.write_args(args);
        let (ptr, len) = buf.as_c_str();
        // SAFETY: the hook contract; `ptr` points at `len` bytes plus a NUL that live
        // until the call returns.
        unsafe { f(self.hooks.ctx, log_level(level), ptr, len) }
    }

    fn trace_bounced(&self, event: &BouncedEvent<'_>) {
        let Some(f) = self.hooks.trace_bounced else { return };
        let name = event.dev.name();
        let ev = BounceTraceEvent {
            dev_name: name.as_ptr().cast(),
            dev_name_len: name.len(),
            dma_mask: event.dev.dma_mask,
            dev_addr: event.dev_addr.0,
            size: event.size,
            force: event.force,
        };
        // SAFETY: the hook contract; `ev` and the name it points to live until the
        // call returns.
        unsafe { f(self.hooks.ctx, &raw const ev) }
    }
}
