//! One bounce instance: the bouncer over the boot-selected strategy on the hook
//! platform, plus per-CPU error messages.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ffi::{c_char, c_int, CStr};
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use bounce_framework::dma::DEVICE_NAME_MAX;
use bounce_framework::{
    BootConfig, Bouncer, BouncerOptions, Device, FailureReason, ForceMode, IrqMutex, LookupError, Platform, Strategy,
};
use bounce_strategies::{AnyStrategy, KNOWN_STRATEGIES};

use crate::abi::{
    BounceDevice, BounceHooks, BOUNCE_CREATE_FLAGS_ALL, BOUNCE_CREATE_TIMING, BOUNCE_ERROR_MAX,
    BOUNCE_MAX_MIN_ALIGN_MASK,
};
use crate::errno::{cmdline_errno, init_errno, lookup_errno, EINVAL, ENODEV, ENOMEM};
use crate::platform::{install_irq_hooks, HookLock, HookPlatform};
use crate::text::FixedBuf;

/// The bouncer type behind every instance.
pub type InstanceBouncer = Bouncer<HookPlatform, AnyStrategy<HookPlatform>>;

/// The last error message of one CPU.
struct ErrorSlot {
    errno: c_int,
    msg: FixedBuf<{ BOUNCE_ERROR_MAX + 1 }>,
}

/// A bounce instance (the C side's opaque `struct bounce`).
///
/// Shared by every CPU: all operations but destruction take `&self`.
pub struct Bounce {
    bouncer: InstanceBouncer,
    /// Per-CPU last-error messages, indexed by `current_cpu()`.
    errors: Box<[IrqMutex<HookLock, ErrorSlot>]>,
    /// Each lane's strategy name, NUL-terminated (unused lanes empty); lane 0's is the
    /// instance's name.
    lane_names: [[c_char; crate::abi::BOUNCE_NAME_BUF]; bounce_framework::MAX_LANES],
    /// Set when an entry point panicked (std flavour): every later call fails.
    poisoned: AtomicBool,
}

impl fmt::Debug for Bounce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bounce")
            .field("bouncer", &self.bouncer)
            .field("poisoned", &self.poisoned.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A failed `bounce_create`: the errno and the message for the caller's buffer.
pub struct CreateError {
    /// The positive errno.
    pub errno: c_int,
    /// What went wrong.
    pub msg: FixedBuf<{ BOUNCE_ERROR_MAX + 1 }>,
}

impl CreateError {
    fn new(errno: c_int, args: fmt::Arguments<'_>) -> Self {
        let mut msg = FixedBuf::new();
        msg.write_args(args);
        Self { errno, msg }
    }
}

/// Allocates `value` on the heap, reporting failure instead of aborting.
fn try_box<T>(value: T) -> Option<Box<T>> {
    let layout = core::alloc::Layout::new::<T>();
    if layout.size() == 0 {
        return Some(Box::new(value));
    }
    // SAFETY: `layout` has a non-zero size.
    let p = unsafe { alloc::alloc::alloc(layout) }.cast::<T>();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` is a fresh allocation with `T`'s layout; writing initialises it, and
    // `Box::from_raw` takes ownership of memory from the global allocator with that
    // layout.
    unsafe {
        p.write(value);
        Some(Box::from_raw(p))
    }
}

impl Bounce {
    /// Builds an instance from a command line and a hook table.
    ///
    /// # Errors
    /// [`CreateError`] with `EINVAL` (hooks, flags, command line), `ENODEV`
    /// (`swiotlb=noforce`), `ENOMEM`, `EIO` or `EDQUOT` (pool construction).
    ///
    /// # Safety
    /// `cmdline` is NULL or a NUL-terminated string; the hooks honour their contract for
    /// the instance's lifetime.
    #[expect(
        clippy::result_large_err,
        reason = "the error holds its message inline so that reporting a failure never allocates"
    )]
    pub unsafe fn create(cmdline: *const c_char, hooks: &BounceHooks, flags: u32) -> Result<Box<Self>, CreateError> {
        if flags & !BOUNCE_CREATE_FLAGS_ALL != 0 {
            return Err(CreateError::new(
                EINVAL,
                format_args!("unknown bounce_create flags {:#x}", flags & !BOUNCE_CREATE_FLAGS_ALL),
            ));
        }
        // SAFETY: the caller's hook contract.
        let platform = unsafe { HookPlatform::from_table(hooks) }
            .map_err(|e| CreateError::new(EINVAL, format_args!("bad hook table: {e}")))?;
        let text = if cmdline.is_null() {
            ""
        } else {
            // SAFETY: the caller passes a NUL-terminated string.
            unsafe { CStr::from_ptr(cmdline) }
                .to_str()
                .map_err(|e| CreateError::new(EINVAL, format_args!("command line is not UTF-8: {e}")))?
        };
        let boot = BootConfig::parse_with_native(text, KNOWN_STRATEGIES)
            .map_err(|e| CreateError::new(cmdline_errno(&e), format_args!("command line: {e}")))?;
        if boot.swiotlb.force == Some(ForceMode::NoForce) {
            return Err(CreateError::new(
                ENODEV,
                format_args!("swiotlb=noforce disables bounce buffering; no instance created"),
            ));
        }
        install_irq_hooks(hooks.irq_save, hooks.irq_restore)
            .map_err(|e| CreateError::new(EINVAL, format_args!("bad hook table: {e}")))?;

        let cpus = platform.cpu_count();
        let mut errors = Vec::new();
        errors
            .try_reserve_exact(cpus)
            .map_err(|_| CreateError::new(ENOMEM, format_args!("no memory for {cpus} per-CPU error slots")))?;
        errors.extend((0..cpus).map(|_| IrqMutex::new(ErrorSlot { errno: 0, msg: FixedBuf::new() })));

        let (lanes, routes) = AnyStrategy::boot_lanes(&platform, &boot)
            .map_err(|e| CreateError::new(init_errno(&e), format_args!("strategy construction failed: {e}")))?;
        let options = BouncerOptions {
            timing: flags & BOUNCE_CREATE_TIMING != 0,
            scrub: boot.scrub,
            force: boot.swiotlb.force == Some(ForceMode::Force) || platform.is_confidential(),
            trace: platform.has_trace(),
        };
        let mut lane_names = [[0; crate::abi::BOUNCE_NAME_BUF]; bounce_framework::MAX_LANES];
        for (dst, l) in lane_names.iter_mut().zip(&lanes) {
            crate::text::copy_into(l.name(), dst);
        }
        let bouncer = Bouncer::with_lanes(platform, lanes, &routes, options)
            .map_err(|e| CreateError::new(init_errno(&e), format_args!("routing: {e}")))?;
        let inst = Self { bouncer, errors: errors.into_boxed_slice(), lane_names, poisoned: AtomicBool::new(false) };
        try_box(inst).ok_or_else(|| CreateError::new(ENOMEM, format_args!("no memory for the instance")))
    }

    /// The bouncer.
    pub fn bouncer(&self) -> &InstanceBouncer {
        &self.bouncer
    }

    /// The strategy's name as a NUL-terminated C string (lives as long as `self`).
    pub fn name_ptr(&self) -> *const c_char {
        self.lane_names[0].as_ptr()
    }

    /// Lane `lane`'s strategy name as a NUL-terminated C string (lives as long as
    /// `self`); NULL for a lane that does not exist.
    pub fn lane_name_ptr(&self, lane: usize) -> *const c_char {
        if lane < self.bouncer.lanes().len() {
            self.lane_names.get(lane).map_or(core::ptr::null(), |n| n.as_ptr())
        } else {
            core::ptr::null()
        }
    }

    /// Whether a panic poisoned the instance.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Marks the instance poisoned.
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    fn slot(&self) -> &IrqMutex<HookLock, ErrorSlot> {
        let cpu = self.bouncer.platform().current_cpu();
        &self.errors[cpu % self.errors.len()]
    }

    /// Records a failure on the current CPU and returns `-errno`.
    ///
    /// # Context
    /// Any context: formats into a fixed buffer under an IRQ-safe spinlock.
    pub fn fail(&self, errno: c_int, args: fmt::Arguments<'_>) -> c_int {
        let mut slot = self.slot().lock();
        slot.errno = errno;
        slot.msg.clear();
        slot.msg.write_args(args);
        -errno
    }

    /// The C status of an unmap or sync: 0, or the lookup error recorded as
    /// `what: <error>` and its negative errno.
    pub fn lookup_status(&self, what: &str, r: Result<(), LookupError>) -> c_int {
        match r {
            Ok(()) => 0,
            Err(e) => self.fail(lookup_errno(&e), format_args!("{what}: {e}")),
        }
    }

    /// Records a bad argument found before reaching the bouncer: counted in the
    /// statistics as [`FailureReason::BadArgument`], and `-EINVAL` returned.
    pub fn bad_argument(&self, args: fmt::Arguments<'_>) -> c_int {
        self.bouncer.count_failure(FailureReason::BadArgument);
        self.fail(EINVAL, args)
    }

    /// Copies the current CPU's last message into `buf` and returns its full length
    /// (0 when this CPU recorded no failure).
    ///
    /// # Safety
    /// `buf` is NULL or valid for `len` bytes of writes.
    pub unsafe fn last_error(&self, buf: *mut c_char, len: usize) -> usize {
        let slot = self.slot().lock();
        if slot.errno == 0 {
            // SAFETY: forwarded caller contract.
            unsafe { crate::text::copy_out("", buf, len) };
            return 0;
        }
        // SAFETY: forwarded caller contract.
        unsafe { crate::text::copy_out(slot.msg.as_str(), buf, len) };
        slot.msg.len()
    }
}

/// Converts a C device description.
///
/// # Errors
/// A message for `-EINVAL` when the `min_align_mask` is not `2^k - 1` or too large.
///
/// # Safety
/// `d.name` is NULL or a NUL-terminated string.
pub unsafe fn device_from_c(d: &BounceDevice) -> Result<Device, &'static str> {
    check_masks(d)?;
    let mut name = [0u8; DEVICE_NAME_MAX];
    let mut n = 0;
    if !d.name.is_null() {
        while n < DEVICE_NAME_MAX {
            // SAFETY: the string is NUL-terminated and this loop stops at the NUL, so
            // every byte read lies inside it.
            let c = unsafe { *d.name.cast::<u8>().add(n) };
            if c == 0 {
                break;
            }
            name[n] = c;
            n += 1;
        }
    }
    // Keep the longest valid UTF-8 prefix (a truncated name may end mid-character).
    let text = match core::str::from_utf8(&name[..n]) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&name[..e.valid_up_to()]).unwrap_or(""),
    };
    Ok(with_masks(Device::new(text), d))
}

/// Refuses a `min_align_mask` that is not `2^k - 1` or is 64 KiB or more.
///
/// # Errors
/// The message for `-EINVAL`.
pub fn check_masks(d: &BounceDevice) -> Result<(), &'static str> {
    let m = d.min_align_mask;
    if !is_low_mask(m) {
        return Err("min_align_mask must be of the form 2^k - 1");
    }
    if m > BOUNCE_MAX_MIN_ALIGN_MASK {
        return Err("min_align_mask must be below 64 KiB");
    }
    Ok(())
}

/// `dev` with `d`'s masks and segment size (checked by [`check_masks`]).
#[inline]
pub fn with_masks(dev: Device, d: &BounceDevice) -> Device {
    dev.with_dma_mask(d.dma_mask).with_min_align_mask(d.min_align_mask).with_max_segment_size(d.max_segment_size)
}

/// Whether an `alloc_align_mask` is `2^k - 1` (0 included).
pub const fn is_low_mask(m: u64) -> bool {
    m & m.wrapping_add(1) == 0
}
