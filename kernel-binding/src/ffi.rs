//! The exported `extern "C"` entry points (`bounce_*`).
//!
//! Conventions shared by every function:
//! - `int` results are 0 (or a documented non-negative value) on success and a negative
//!   errno on failure (see [`crate::errno`]); the message of the failure can then be
//!   read with `bounce_last_error()` on the same CPU.
//! - A NULL instance returns `-EINVAL` without recording a message. Any other bad
//!   argument (NULL pointer, `DMA_NONE`, zero size, malformed mask) returns `-EINVAL`,
//!   is counted in `failures[BOUNCE_FAILURE_BAD_ARGUMENT]`, and changes nothing else.
//! - Nothing panics across the boundary: the kernel flavour is built with
//!   `panic=abort` and its panic handler calls `bounce_host_panic`; the std flavour runs
//!   each call under `catch_unwind`, poisons the instance and returns
//!   `-ENOTRECOVERABLE`.
//! - An instance may be used from any number of threads at once, except that
//!   `bounce_destroy()` must not race with any other call on it.

use core::ffi::{c_char, c_int};

use bounce_framework::{BounceSnapshot, DmaAddr, DmaAttrs, DmaDirection, PhysAddr, PoolStats, SgEntry, Strategy};

use crate::abi::BOUNCE_ABI_VERSION;
use crate::abi::{
    BounceAudit, BounceBackgroundReport, BounceDevice, BounceDeviceStats, BounceHooks, BounceSg, BounceStats,
    BOUNCE_DEVICE_NAME_BUF, BOUNCE_DEVICE_NAME_MAX, BOUNCE_DEVICE_SLOTS, BOUNCE_FAIL_SIZE_BUCKETS, BOUNCE_LANE_NATIVE,
};
use crate::errno::{map_errno, EBUSY, EINVAL, ENOENT, ENOTRECOVERABLE, EUCLEAN};
use crate::instance::{check_masks, device_from_c, is_low_mask, with_masks, Bounce};
use crate::text::{copy_into, copy_out};

/// `DMA_MAPPING_ERROR`: what a failed map leaves in its `dma_out`.
const DMA_MAPPING_ERROR: u64 = u64::MAX;

/// Runs `f`, turning a panic into `on_panic` (std flavour; the kernel flavour aborts on
/// panic, so there is nothing to catch).
#[cfg(feature = "std")]
fn guarded<R>(f: impl FnOnce() -> R, on_panic: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => on_panic(),
    }
}

#[cfg(not(feature = "std"))]
fn guarded<R>(f: impl FnOnce() -> R, _on_panic: impl FnOnce() -> R) -> R {
    f()
}

/// Refuses a NULL or poisoned instance, then runs `f` guarded.
fn with_instance<R>(
    inst: Option<&Bounce>,
    what: &'static str,
    err: impl Fn(c_int) -> R,
    f: impl FnOnce(&Bounce) -> R,
) -> R {
    let Some(inst) = inst else { return err(-EINVAL) };
    if inst.is_poisoned() {
        return err(inst.fail(
            ENOTRECOVERABLE,
            format_args!(
                "{what}: the instance is poisoned by an earlier internal error; only bounce_destroy (which leaks it) \
                 is left"
            ),
        ));
    }
    guarded(
        || f(inst),
        || {
            inst.poison();
            err(inst.fail(ENOTRECOVERABLE, format_args!("{what}: internal error (panic); the instance is poisoned")))
        },
    )
}

/// `with_instance` for `int`-returning calls.
fn entry(inst: Option<&Bounce>, what: &'static str, f: impl FnOnce(&Bounce) -> c_int) -> c_int {
    with_instance(inst, what, |e| e, f)
}

/// Converts a raw direction, counting and recording a bad one.
fn direction(inst: &Bounce, what: &str, dir: u32) -> Result<DmaDirection, c_int> {
    DmaDirection::from_raw(dir).map_err(|e| inst.bad_argument(format_args!("{what}: {e}")))
}

/// Converts a C device, counting and recording a NULL or malformed one. A device with
/// an attachment this instance handed out (`bounce_attach_device()`) is taken from it:
/// no name is read, no lookup made. Any other attachment (another instance's, or
/// stale) is ignored and the device is looked up by name, as with none.
///
/// # Safety
/// `dev` is NULL or points to a valid `bounce_device` whose name is NULL or
/// NUL-terminated.
unsafe fn device(inst: &Bounce, what: &str, dev: *const BounceDevice) -> Result<bounce_framework::Device, c_int> {
    // SAFETY: the caller passes NULL or a valid device.
    let d = unsafe { device_ref(inst, what, dev) }?;
    if d.attachment != 0 {
        if let Some(attached) = inst.bouncer().device_from_handle(d.attachment) {
            return match check_masks(d) {
                Ok(()) => Ok(with_masks(attached, d)),
                Err(m) => Err(inst.bad_argument(format_args!("{what}: {m}"))),
            };
        }
    }
    // SAFETY: the name contract is the caller's.
    unsafe { device_by_name(inst, what, d) }
}

/// The C device behind `dev`, counting and recording a NULL one.
///
/// # Safety
/// `dev` is NULL or points to a valid `bounce_device`.
unsafe fn device_ref<'a>(inst: &Bounce, what: &str, dev: *const BounceDevice) -> Result<&'a BounceDevice, c_int> {
    // SAFETY: the caller passes NULL or a valid device.
    unsafe { dev.as_ref() }.ok_or_else(|| inst.bad_argument(format_args!("{what}: device is NULL")))
}

/// Converts `d` by its name (whatever attachment it carries), counting and recording a
/// malformed one.
///
/// # Safety
/// `d.name` is NULL or NUL-terminated.
unsafe fn device_by_name(inst: &Bounce, what: &str, d: &BounceDevice) -> Result<bounce_framework::Device, c_int> {
    // SAFETY: the name contract is the caller's.
    unsafe { device_from_c(d) }.map_err(|m| inst.bad_argument(format_args!("{what}: {m}")))
}

/// The prologue of every call on a device in a direction: the instance (NULL,
/// poisoned, panics: [`entry`]), then the device and the direction, each refused with
/// `-EINVAL` and recorded; then `f`.
///
/// # Safety
/// `b` is NULL or a live instance; `dev` as for [`device`].
unsafe fn on_device(
    b: *const Bounce,
    what: &'static str,
    dev: *const BounceDevice,
    dir: u32,
    f: impl FnOnce(&Bounce, bounce_framework::Device, DmaDirection) -> c_int,
) -> c_int {
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, what, |inst| {
        // SAFETY: `dev` is NULL or a valid device (caller).
        let dev = match unsafe { device(inst, what, dev) } {
            Ok(d) => d,
            Err(rc) => return rc,
        };
        match direction(inst, what, dir) {
            Ok(d) => f(inst, dev, d),
            Err(rc) => rc,
        }
    })
}

/// [`on_device`] for a scatter-gather call: also the list, refused as [`sg_list`] does.
///
/// # Safety
/// As [`on_device`]; `sg` as for [`sg_list`].
unsafe fn on_list(
    b: *const Bounce,
    what: &'static str,
    dev: *const BounceDevice,
    sg: *mut BounceSg,
    nents: usize,
    dir: u32,
    f: impl FnOnce(&Bounce, bounce_framework::Device, &mut [SgEntry], DmaDirection) -> c_int,
) -> c_int {
    // SAFETY: forwarded (caller).
    unsafe {
        on_device(b, what, dev, dir, |inst, dev, dir| match sg_list(inst, what, sg, nents) {
            Ok(list) => f(inst, dev, list, dir),
            Err(rc) => rc,
        })
    }
}

/// Views a C scatter-gather array as the framework's entries, refusing NULL or empty
/// lists and lengths an `int` cannot count.
///
/// # Safety
/// `sg` is NULL or valid for reads and writes of `nents` entries, not aliased during
/// the call.
unsafe fn sg_list<'a>(inst: &Bounce, what: &str, sg: *mut BounceSg, nents: usize) -> Result<&'a mut [SgEntry], c_int> {
    if sg.is_null() {
        return Err(inst.bad_argument(format_args!("{what}: scatter-gather list is NULL")));
    }
    if nents == 0 || nents > c_int::MAX as usize {
        return Err(inst.bad_argument(format_args!("{what}: {nents} entries (need 1 ..= INT_MAX)")));
    }
    // SAFETY: `BounceSg` and `SgEntry` have the same size, alignment and field offsets
    // (asserted at compile time in `abi.rs`) and both consist of plain integers, so
    // every `BounceSg` is a valid `SgEntry`; the caller guarantees `nents` entries.
    Ok(unsafe { core::slice::from_raw_parts_mut(sg.cast::<SgEntry>(), nents) })
}

/// The ABI version this library implements (`BOUNCE_ABI_VERSION` of its header).
#[no_mangle]
pub extern "C" fn bounce_abi_version() -> u32 {
    BOUNCE_ABI_VERSION
}

/// Creates a bounce instance.
///
/// `cmdline` is a kernel command line (NULL: empty); bounce reads `swiotlb=`,
/// `swiotlb.strategy=` (a name `bounce list --names` prints; absent: `legacy`),
/// `swiotlb.scrub=` and `swiotlb.<strategy>.<param>=` and ignores everything else.
/// `hooks` is copied. `flags` is 0 or `BOUNCE_CREATE_TIMING`. On success `*out` is the
/// instance; on failure `*out` is NULL and, when `err` is non-NULL, a NUL-terminated
/// message (truncated to `err_len - 1` bytes) is written to `err`.
///
/// Returns 0, or:
/// - `-EINVAL`: `hooks` or `out` NULL, wrong `abi_version`, a required hook NULL,
///   `cpu_count` 0, half or differing IRQ pair, unknown flags, command line not UTF-8
///   or malformed (unknown strategy, bad number, unknown parameter ...);
/// - `-ENODEV`: `swiotlb=noforce`;
/// - `-ENOMEM`: page allocation or memory for the instance failed;
/// - `-EIO`: converting the initial pool to shared failed (pages quarantined);
/// - `-EDQUOT`: the initial pool exceeds the configured cap;
/// - `-ENOTRECOVERABLE`: internal error (std flavour).
///
/// # Context
/// Process context (may sleep: the initial pool is allocated and converted).
///
/// # Safety
/// `cmdline` is NULL or NUL-terminated; `hooks` is NULL or a valid table whose hooks
/// honour the `bounce_hooks` contract for the instance's lifetime; `out` is NULL or
/// writable; `err` is NULL or writable for `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn bounce_create(
    cmdline: *const c_char,
    hooks: *const BounceHooks,
    flags: u32,
    out: *mut *mut Bounce,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    let report = |msg: &str| {
        // SAFETY: `err` is NULL or writable for `err_len` bytes (caller).
        unsafe { copy_out(msg, err, err_len) }
    };
    if out.is_null() {
        report("bounce_create: out is NULL");
        return -EINVAL;
    }
    // SAFETY: `out` is writable (caller).
    unsafe { *out = core::ptr::null_mut() };
    // SAFETY: `hooks` is NULL or a valid table (caller).
    let Some(hooks) = (unsafe { hooks.as_ref() }) else {
        report("bounce_create: hooks is NULL");
        return -EINVAL;
    };
    let r = guarded(
        || {
            // SAFETY: the string and hook contracts are the caller's.
            unsafe { Bounce::create(cmdline, hooks, flags) }.map_err(|e| {
                report(e.msg.as_str());
                -e.errno
            })
        },
        || {
            report("bounce_create: internal error (panic) while building the strategy");
            Err(-ENOTRECOVERABLE)
        },
    );
    match r {
        Ok(inst) => {
            report("");
            // SAFETY: `out` is writable (caller).
            unsafe { *out = alloc::boxed::Box::into_raw(inst) };
            0
        }
        Err(rc) => rc,
    }
}

/// Destroys an instance, returning its pools to the host (the strategy converts its
/// shared memory back to private and frees it; pages whose conversion fails stay
/// quarantined).
///
/// Returns 0 (the pointer is then invalid), or:
/// - `-EINVAL`: `b` is NULL;
/// - `-EBUSY`: mappings are still live; nothing changes and the instance stays usable;
/// - `-ENOTRECOVERABLE`: the instance is poisoned; it is leaked on purpose (its
///   memory may still be in a device's hands) and the pointer must not be used again.
///
/// # Context
/// Process context (may sleep). No other call on `b` may run concurrently or later.
///
/// # Safety
/// `b` is NULL or a live instance from `bounce_create`.
#[no_mangle]
pub unsafe extern "C" fn bounce_destroy(b: *mut Bounce) -> c_int {
    // SAFETY: the caller passes NULL or a live instance.
    let Some(inst) = (unsafe { b.as_ref() }) else { return -EINVAL };
    if inst.is_poisoned() {
        return -ENOTRECOVERABLE;
    }
    let s = inst.bouncer().stats();
    if s.inflight_bytes != 0 {
        return inst.fail(
            EBUSY,
            format_args!(
                "bounce_destroy: {} mappings ({} bytes) are still live; unmap them first",
                s.maps.saturating_sub(s.unmaps),
                s.inflight_bytes
            ),
        );
    }
    guarded(
        || {
            // SAFETY: `b` came from `Box::into_raw` in `bounce_create` and, by the
            // caller's contract, nobody uses it during or after this call.
            drop(unsafe { alloc::boxed::Box::from_raw(b) });
            0
        },
        || -ENOTRECOVERABLE,
    )
}

/// Copies the message of the last failed call made on the current CPU into `buf`
/// (NUL-terminated, truncated to `len - 1` bytes) and returns the message's full
/// length; 0 and an empty string when this CPU recorded no failure or `b` is NULL.
///
/// Messages are kept per CPU (`current_cpu`), written only by failing calls: read it
/// right after the failure on the same CPU (in the kernel: with preemption disabled,
/// or accept that a migration may show another call's message).
///
/// # Context
/// Any context (process context with `BOUNCE_DMA_ATTR_MAY_BLOCK`, as
/// `bounce_map_single`).
///
/// # Safety
/// `b` is NULL or a live instance; `buf` is NULL or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn bounce_last_error(b: *const Bounce, buf: *mut c_char, len: usize) -> usize {
    // SAFETY: the caller passes NULL or a live instance.
    if let Some(inst) = unsafe { b.as_ref() } {
        // SAFETY: `buf` is NULL or writable for `len` bytes (caller).
        unsafe { inst.last_error(buf, len) }
    } else {
        // SAFETY: as above.
        unsafe { copy_out("", buf, len) };
        0
    }
}

/// The active strategy's name (its `swiotlb.strategy=` name) as a NUL-terminated
/// string that lives as long as the instance; NULL when `b` is NULL.
///
/// # Safety
/// `b` is NULL or a live instance.
#[no_mangle]
pub unsafe extern "C" fn bounce_strategy_name(b: *const Bounce) -> *const c_char {
    // SAFETY: the caller passes NULL or a live instance.
    unsafe { b.as_ref() }.map_or(core::ptr::null(), Bounce::name_ptr)
}

/// `swiotlb_map` / `swiotlb_tbl_map_single`: bounces `size` bytes at physical address
/// `phys` for `dev` and stores the bus address the device must use in `*dma_out`.
///
/// Always copies original -> bounce, whatever `dir` (CVE-2022-0854). `alloc_align_mask`
/// (`2^k - 1`, 0 for none) aligns the buffer's start; the device's `min_align_mask`
/// bits of `phys` are kept. `attrs` holds `BOUNCE_DMA_ATTR_*` bits (others ignored).
///
/// Returns 0, or (with `*dma_out` = `DMA_MAPPING_ERROR` when `dma_out` is non-NULL):
/// - `-EINVAL`: `b`, `dev` or `dma_out` NULL; `dir` is `DMA_NONE` or no direction;
///   `size` 0; `phys + size` wraps; a mask not of the form `2^k - 1` or
///   `min_align_mask` at or above 64 KiB; an alignment the strategy cannot honour;
/// - `-E2BIG`: `size` exceeds `bounce_max_mapping_size(dev)`;
/// - `-ENOSPC`: no free bounce buffer (the refill engine was woken where the strategy
///   has one);
/// - `-EDQUOT`: the shared-memory cap stops the pool from growing;
/// - `-ERANGE`: the bounce buffer would lie beyond `dev->dma_mask`.
///
/// # Context
/// Any context, including hard IRQ: never sleeps, never allocates, never converts.
/// With `BOUNCE_DMA_ATTR_MAY_BLOCK` in `attrs` (process context only: the caller
/// promises it may sleep) a map that finds no free buffer wakes the refill engine and
/// sleeps through the `sleep` hook between tries, for up to 1 s, before it fails.
///
/// # Safety
/// `b` is NULL or a live instance; `dev` is NULL or valid (name NULL or
/// NUL-terminated); `dma_out` is NULL or writable; `phys .. phys + size` is memory the
/// `copy` hook may read and write.
#[no_mangle]
pub unsafe extern "C" fn bounce_map_single(
    b: *const Bounce,
    dev: *const BounceDevice,
    phys: u64,
    size: usize,
    alloc_align_mask: u64,
    dir: u32,
    attrs: u64,
    dma_out: *mut u64,
) -> c_int {
    const WHAT: &str = "bounce_map_single";
    if !dma_out.is_null() {
        // SAFETY: `dma_out` is writable (caller).
        unsafe { *dma_out = DMA_MAPPING_ERROR };
    }
    let body = |inst: &Bounce, dev: bounce_framework::Device, dir: DmaDirection| {
        if dma_out.is_null() {
            return inst.bad_argument(format_args!("{WHAT}: dma_out is NULL"));
        }
        if !is_low_mask(alloc_align_mask) {
            return inst.bad_argument(format_args!(
                "{WHAT}: alloc_align_mask {alloc_align_mask:#x} is not of the form 2^k - 1"
            ));
        }
        let attrs = DmaAttrs::from_bits_truncate(attrs);
        match inst.bouncer().map_with_align(&dev, PhysAddr(phys), size, alloc_align_mask, dir, attrs) {
            Ok(dma) => {
                // SAFETY: checked non-NULL above; writable (caller).
                unsafe { *dma_out = dma.0 };
                0
            }
            Err(e) => inst.fail(map_errno(&e), format_args!("{WHAT}: {e}")),
        }
    };
    // SAFETY: `b` and `dev` as the caller promises.
    unsafe { on_device(b, WHAT, dev, dir, body) }
}

/// `swiotlb_tbl_unmap_single` (called with the bus address): copies bounce -> original
/// for `DMA_FROM_DEVICE` and `DMA_BIDIRECTIONAL` (unless `DMA_ATTR_SKIP_CPU_SYNC`),
/// clamping `size` to the mapping, then releases the buffer. `dma` must be the address
/// the map returned. A `size` of 0 copies nothing but still releases.
///
/// Returns 0, or (nothing copied or released):
/// - `-EINVAL`: `b` or `dev` NULL, bad `dir`, bad device mask, or `dma` inside a mapping
///   that starts elsewhere;
/// - `-EFAULT`: `dma` is no bounce buffer address;
/// - `-ENOENT`: no live mapping at `dma` (never mapped, or a double unmap).
///
/// # Context
/// Any context.
///
/// # Safety
/// As `bounce_map_single()`.
#[no_mangle]
pub unsafe extern "C" fn bounce_unmap_single(
    b: *const Bounce,
    dev: *const BounceDevice,
    dma: u64,
    size: usize,
    dir: u32,
    attrs: u64,
) -> c_int {
    const WHAT: &str = "bounce_unmap_single";
    // SAFETY: `b` and `dev` as the caller promises.
    unsafe {
        on_device(b, WHAT, dev, dir, |inst, dev, dir| {
            inst.lookup_status(
                WHAT,
                inst.bouncer().unmap_single(&dev, DmaAddr(dma), size, dir, DmaAttrs::from_bits_truncate(attrs)),
            )
        })
    }
}

/// Shared body of the two single syncs.
///
/// # Safety
/// As `bounce_map_single()`.
unsafe fn sync_single(
    b: *const Bounce,
    what: &'static str,
    dev: *const BounceDevice,
    dma: u64,
    size: usize,
    dir: u32,
    for_device: bool,
) -> c_int {
    // SAFETY: `b` and `dev` as the caller promises.
    unsafe {
        on_device(b, what, dev, dir, |inst, dev, dir| {
            let r = if for_device {
                inst.bouncer().sync_single_for_device(&dev, DmaAddr(dma), size, dir)
            } else {
                inst.bouncer().sync_single_for_cpu(&dev, DmaAddr(dma), size, dir)
            };
            inst.lookup_status(what, r)
        })
    }
}

/// `swiotlb_sync_single_for_cpu`: copies bounce -> original for `DMA_FROM_DEVICE` and
/// `DMA_BIDIRECTIONAL`. `dma` may point inside a mapping (partial sync); a `size`
/// running past the mapping is clamped and counted in `overflows_clamped`; a `size` of
/// 0 copies nothing.
///
/// Returns 0, or `-EINVAL` (NULL `b`/`dev`, bad `dir` or device mask), `-EFAULT` (no
/// bounce address), `-ENOENT` (no live mapping covers `dma`); nothing is copied then.
///
/// # Context
/// Any context.
///
/// # Safety
/// As `bounce_map_single()`.
#[no_mangle]
pub unsafe extern "C" fn bounce_sync_single_for_cpu(
    b: *const Bounce,
    dev: *const BounceDevice,
    dma: u64,
    size: usize,
    dir: u32,
) -> c_int {
    // SAFETY: forwarded.
    unsafe { sync_single(b, "bounce_sync_single_for_cpu", dev, dma, size, dir, false) }
}

/// `swiotlb_sync_single_for_device`: copies original -> bounce for `DMA_TO_DEVICE` and
/// `DMA_BIDIRECTIONAL`; partial syncs and clamping as `bounce_sync_single_for_cpu()`.
///
/// Returns as `bounce_sync_single_for_cpu()`.
///
/// # Context
/// Any context.
///
/// # Safety
/// As `bounce_map_single()`.
#[no_mangle]
pub unsafe extern "C" fn bounce_sync_single_for_device(
    b: *const Bounce,
    dev: *const BounceDevice,
    dma: u64,
    size: usize,
    dir: u32,
) -> c_int {
    // SAFETY: forwarded.
    unsafe { sync_single(b, "bounce_sync_single_for_device", dev, dma, size, dir, true) }
}

/// `map_sg`: maps every entry (`phys`, `length`), setting its `dma_address` and
/// `dma_length`; all or nothing. On failure every entry mapped by this call is
/// unmapped again without copying back, and the message names the failing entry.
///
/// Returns `nents`, or a negative errno as `bounce_map_single()` for the failing
/// entry, or `-EINVAL` for a NULL `sg`, `nents` 0 or above `INT_MAX`.
///
/// # Context
/// Any context.
///
/// # Safety
/// As `bounce_map_single()`; `sg` is NULL or valid for reads and writes of `nents`
/// entries.
#[no_mangle]
pub unsafe extern "C" fn bounce_map_sg(
    b: *const Bounce,
    dev: *const BounceDevice,
    sg: *mut BounceSg,
    nents: usize,
    dir: u32,
    attrs: u64,
) -> c_int {
    const WHAT: &str = "bounce_map_sg";
    // SAFETY: `b`, `dev` and `sg` as the caller promises.
    unsafe {
        on_list(b, WHAT, dev, sg, nents, dir, |inst, dev, list, dir| {
            match inst.bouncer().map_sg(&dev, list, dir, DmaAttrs::from_bits_truncate(attrs)) {
                // `sg_list` bounded `nents` by INT_MAX.
                Ok(n) => c_int::try_from(n).unwrap_or(c_int::MAX),
                Err(e) => inst.fail(map_errno(&e.error), format_args!("{WHAT}: {e}")),
            }
        })
    }
}

/// `unmap_sg`: unmaps every entry of a list mapped by `bounce_map_sg()` (copying back
/// per direction, unless `DMA_ATTR_SKIP_CPU_SYNC`). Entries that fail do not stop the
/// others.
///
/// Returns 0, or the first failing entry's errno as `bounce_unmap_single()`, or
/// `-EINVAL` for a NULL `sg` or `nents` 0 / above `INT_MAX`.
///
/// # Context
/// Any context.
///
/// # Safety
/// As `bounce_map_sg()`.
#[no_mangle]
pub unsafe extern "C" fn bounce_unmap_sg(
    b: *const Bounce,
    dev: *const BounceDevice,
    sg: *mut BounceSg,
    nents: usize,
    dir: u32,
    attrs: u64,
) -> c_int {
    const WHAT: &str = "bounce_unmap_sg";
    // SAFETY: `b`, `dev` and `sg` as the caller promises.
    unsafe {
        on_list(b, WHAT, dev, sg, nents, dir, |inst, dev, list, dir| {
            inst.lookup_status(WHAT, inst.bouncer().unmap_sg(&dev, list, dir, DmaAttrs::from_bits_truncate(attrs)))
        })
    }
}

/// Shared body of the two list syncs.
///
/// # Safety
/// As `bounce_map_sg()`.
unsafe fn sync_sg(
    b: *const Bounce,
    what: &'static str,
    dev: *const BounceDevice,
    sg: *mut BounceSg,
    nents: usize,
    dir: u32,
    for_device: bool,
) -> c_int {
    // SAFETY: `b`, `dev` and `sg` as the caller promises.
    unsafe {
        on_list(b, what, dev, sg, nents, dir, |inst, dev, list, dir| {
            let r = if for_device {
                inst.bouncer().sync_sg_for_device(&dev, list, dir)
            } else {
                inst.bouncer().sync_sg_for_cpu(&dev, list, dir)
            };
            inst.lookup_status(what, r)
        })
    }
}

/// `sync_sg_for_cpu`: `bounce_sync_single_for_cpu()` on every entry's `dma_address`
/// and `dma_length`. Returns 0 or the first failing entry's errno (the other entries
/// are still synced), or `-EINVAL` for a NULL `sg` or `nents` 0 / above `INT_MAX`.
///
/// # Context
/// Any context.
///
/// # Safety
/// As `bounce_map_sg()`.
#[no_mangle]
pub unsafe extern "C" fn bounce_sync_sg_for_cpu(
    b: *const Bounce,
    dev: *const BounceDevice,
    sg: *mut BounceSg,
    nents: usize,
    dir: u32,
) -> c_int {
    // SAFETY: forwarded.
    unsafe { sync_sg(b, "bounce_sync_sg_for_cpu", dev, sg, nents, dir, false) }
}

/// `sync_sg_for_device`: as `bounce_sync_sg_for_cpu()`, towards the device.
///
/// # Context
/// Any context.
///
/// # Safety
/// As `bounce_map_sg()`.
#[no_mangle]
pub unsafe extern "C" fn bounce_sync_sg_for_device(
    b: *const Bounce,
    dev: *const BounceDevice,
    sg: *mut BounceSg,
    nents: usize,
    dir: u32,
) -> c_int {
    // SAFETY: forwarded.
    unsafe { sync_sg(b, "bounce_sync_sg_for_device", dev, sg, nents, dir, true) }
}

/// `swiotlb_max_mapping_size(dev)`: the longest single mapping for `dev` (bytes), or
/// `-EINVAL` for a NULL `b`/`dev` or a bad device mask.
///
/// # Context
/// Any context.
///
/// # Safety
/// `b` is NULL or a live instance; `dev` as in `bounce_map_single()`.
#[no_mangle]
pub unsafe extern "C" fn bounce_max_mapping_size(b: *const Bounce, dev: *const BounceDevice) -> isize {
    const WHAT: &str = "bounce_max_mapping_size";
    let to_isize = |rc: c_int| rc as isize;
    // SAFETY: `b` is NULL or a live instance (caller).
    with_instance(unsafe { b.as_ref() }, WHAT, to_isize, |inst| {
        // SAFETY: `dev` is NULL or a valid device (caller).
        match unsafe { device(inst, WHAT, dev) } {
            Ok(d) => isize::try_from(inst.bouncer().max_mapping_size(&d)).unwrap_or(isize::MAX),
            Err(rc) => to_isize(rc),
        }
    })
}

/// `dma_supported(dev, mask)`: 1 when a device with `mask` reaches every bounce buffer
/// this instance may hand out, 0 when not, `-EINVAL` for a NULL `b`.
///
/// # Context
/// Any context.
///
/// # Safety
/// `b` is NULL or a live instance.
#[no_mangle]
pub unsafe extern "C" fn bounce_dma_supported(b: *const Bounce, mask: u64) -> c_int {
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, "bounce_dma_supported", |inst| c_int::from(inst.bouncer().dma_supported(mask)))
}

/// `is_swiotlb_buffer` / `swiotlb_find_pool() != NULL`: 1 when the bus address `dma`
/// lies in memory this instance manages (mapped or not), 0 when not, `-EINVAL` for a
/// NULL `b`.
///
/// # Context
/// Any context.
///
/// # Safety
/// `b` is NULL or a live instance.
#[no_mangle]
pub unsafe extern "C" fn bounce_is_bounce_buffer(b: *const Bounce, dma: u64) -> c_int {
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, "bounce_is_bounce_buffer", |inst| {
        c_int::from(inst.bouncer().is_bounce_buffer(DmaAddr(dma)))
    })
}

/// The C statistics of a pool report and the DMA-API counters that go with it.
fn c_stats(pool: &PoolStats, api: &BounceSnapshot) -> BounceStats {
    let dbg = pool.debugfs();
    let c = pool.conversions;
    BounceStats {
        io_tlb_nslabs: dbg.io_tlb_nslabs as u64,
        io_tlb_used: dbg.io_tlb_used as u64,
        io_tlb_used_hiwater: dbg.io_tlb_used_hiwater as u64,
        io_tlb_transient_nslabs: dbg.io_tlb_transient_nslabs as u64,
        capacity_bytes: pool.capacity_bytes as u64,
        used_bytes: pool.used_bytes as u64,
        used_hiwater_bytes: pool.used_hiwater_bytes as u64,
        transient_bytes: pool.transient_bytes as u64,
        decrypt_calls: c.decrypt_calls,
        pages_decrypted: c.pages_decrypted,
        encrypt_calls: c.encrypt_calls,
        pages_encrypted: c.pages_encrypted,
        conversion_failures: c.failed_calls,
        quarantined_pages: c.quarantined_pages,
        page_alloc_failures: c.alloc_failures,
        conversion_ns: c.conversion_ns,
        shared_bytes: c.shared_bytes,
        shared_bytes_peak: c.shared_bytes_peak,
        refill_wakeups: pool.refill.wakeups,
        refill_grow_batches: pool.refill.grow_batches,
        refill_shrink_batches: pool.refill.shrink_batches,
        refill_busy_ns: pool.refill.busy_ns,
        maps: api.maps,
        unmaps: api.unmaps,
        syncs_for_cpu: api.syncs_for_cpu,
        syncs_for_device: api.syncs_for_device,
        bytes_to_bounce: api.bytes_to_bounce,
        bytes_from_bounce: api.bytes_from_bounce,
        overflows_clamped: api.overflows_clamped,
        inflight_bytes: api.inflight_bytes,
        inflight_bytes_peak: api.inflight_bytes_peak,
        timed_ops: api.timed_ops,
        op_ns: api.op_ns,
        copy_ns: api.copy_ns,
        failures: api.failures,
        blocked_maps: api.blocked_maps,
        blocked_ns: api.blocked_ns,
    }
}

/// Fills `*out` with a statistics snapshot (debugfs numbers and bounce's counters).
/// Returns 0, or `-EINVAL` for a NULL `b` or `out`.
///
/// # Context
/// Any context.
///
/// # Safety
/// `b` is NULL or a live instance; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bounce_stats(b: *const Bounce, out: *mut BounceStats) -> c_int {
    const WHAT: &str = "bounce_stats";
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, WHAT, |inst| {
        if out.is_null() {
            return inst.bad_argument(format_args!("{WHAT}: out is NULL"));
        }
        let s = c_stats(&inst.bouncer().pool_stats(), &inst.bouncer().stats());
        // SAFETY: checked non-NULL; writable (caller).
        unsafe { out.write(s) };
        0
    })
}

// The ABI's constants are the framework's.
const _: () = assert!(BOUNCE_DEVICE_NAME_MAX == bounce_framework::DEVICE_NAME_MAX);
const _: () = assert!(BOUNCE_DEVICE_NAME_BUF == BOUNCE_DEVICE_NAME_MAX + 1);
const _: () = assert!(crate::abi::BOUNCE_NAME_BUF == crate::abi::BOUNCE_NAME_MAX + 1);
const _: () = assert!(BOUNCE_DEVICE_SLOTS as usize == bounce_framework::DEVICE_SLOTS);
const _: () = assert!(BOUNCE_FAIL_SIZE_BUCKETS == bounce_framework::FAIL_SIZE_BOUNDS.len());
const _: () = assert!(BOUNCE_LANE_NATIVE == bounce_framework::devices::NATIVE as u32);

/// Strategy instances (*lanes*) of the instance: 1 without per-device routes, one more
/// per further strategy `swiotlb.strategy=<default>,<device>:<strategy>,...` names.
/// `-EINVAL` for a NULL `b`.
///
/// # Context
/// Any context.
///
/// # Safety
/// `b` is NULL or a live instance.
#[no_mangle]
pub unsafe extern "C" fn bounce_lane_count(b: *const Bounce) -> c_int {
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, "bounce_lane_count", |inst| {
        c_int::try_from(inst.bouncer().lanes().len()).unwrap_or(c_int::MAX)
    })
}

/// The strategy name of lane `lane` as a NUL-terminated string that lives as long as
/// the instance; NULL for a NULL `b` or a lane that does not exist.
///
/// # Safety
/// `b` is NULL or a live instance.
#[no_mangle]
pub unsafe extern "C" fn bounce_lane_name(b: *const Bounce, lane: u32) -> *const c_char {
    // SAFETY: the caller passes NULL or a live instance.
    unsafe { b.as_ref() }.map_or(core::ptr::null(), |inst| inst.lane_name_ptr(lane as usize))
}

/// Fills `*out` with lane `lane`'s statistics: its pool's figures and the DMA-API
/// counters of the devices it serves (in-flight figures summed over them). Returns 0,
/// `-ENOENT` for a lane that does not exist, `-EINVAL` for a NULL `b` or `out`.
///
/// # Context
/// Any context.
///
/// # Safety
/// `b` is NULL or a live instance; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bounce_lane_stats(b: *const Bounce, lane: u32, out: *mut BounceStats) -> c_int {
    const WHAT: &str = "bounce_lane_stats";
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, WHAT, |inst| {
        if out.is_null() {
            return inst.bad_argument(format_args!("{WHAT}: out is NULL"));
        }
        let lane = lane as usize;
        let Some(s) = inst.bouncer().lanes().get(lane) else { return -ENOENT };
        let st = c_stats(&s.stats(), &inst.bouncer().lane_stats(lane));
        // SAFETY: checked non-NULL; writable (caller).
        unsafe { out.write(st) };
        0
    })
}

/// Fills `*out` with the counters of device slot `index` (0 to
/// `BOUNCE_DEVICE_SLOTS - 1`): the device's name, the strategy that serves it, and what
/// it did. Returns 0, `-ENOENT` for a slot no device has claimed (or the overflow slot
/// while it counted nothing), `-EINVAL` for a NULL `b` or `out`.
///
/// # Context
/// Any context; never allocates.
///
/// # Safety
/// `b` is NULL or a live instance; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bounce_device_stats(b: *const Bounce, index: u32, out: *mut BounceDeviceStats) -> c_int {
    const WHAT: &str = "bounce_device_stats";
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, WHAT, |inst| {
        if out.is_null() {
            return inst.bad_argument(format_args!("{WHAT}: out is NULL"));
        }
        let Some(d) = inst.bouncer().device_at(index as usize) else { return -ENOENT };
        let mut st = BounceDeviceStats {
            lane: u32::try_from(d.lane).unwrap_or(BOUNCE_LANE_NATIVE),
            maps: d.stats.maps,
            unmaps: d.stats.unmaps,
            syncs_for_cpu: d.stats.syncs_for_cpu,
            syncs_for_device: d.stats.syncs_for_device,
            bytes_to_bounce: d.stats.bytes_to_bounce,
            bytes_from_bounce: d.stats.bytes_from_bounce,
            overflows_clamped: d.stats.overflows_clamped,
            inflight_bytes: d.stats.inflight_bytes,
            inflight_bytes_peak: d.stats.inflight_bytes_peak,
            timed_ops: d.stats.timed_ops,
            op_ns: d.stats.op_ns,
            copy_ns: d.stats.copy_ns,
            failures: d.stats.failures,
            fail_sizes: d.fail_sizes,
            ..BounceDeviceStats::default()
        };
        copy_into(d.name(), &mut st.name);
        let strategy = inst.bouncer().lanes().get(d.lane).map_or(bounce_framework::NATIVE_ROUTE, |s| s.name());
        copy_into(strategy, &mut st.strategy);
        // SAFETY: checked non-NULL; writable (caller).
        unsafe { out.write(st) };
        0
    })
}

/// Whether a strategy of this instance serves `dev`: 1, or 0 for a device the command
/// line leaves to the platform's own swiotlb (`<device>:linux`), whose mappings the
/// caller makes elsewhere. `-EINVAL` for a NULL `b` or `dev` or a bad device.
///
/// # Context
/// Any context; never allocates.
///
/// # Safety
/// `b` is NULL or a live instance; `dev` as for `bounce_map_single`.
#[no_mangle]
pub unsafe extern "C" fn bounce_serves_device(b: *const Bounce, dev: *const BounceDevice) -> c_int {
    const WHAT: &str = "bounce_serves_device";
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, WHAT, |inst| {
        // SAFETY: `dev` is NULL or a valid device (caller).
        match unsafe { device(inst, WHAT, dev) } {
            Ok(d) => c_int::from(inst.bouncer().serves(&d)),
            Err(rc) => rc,
        }
    })
}

/// Resolves `dev` once (by name: its statistics slot and its strategy instance) and
/// writes to `*out` the word to keep beside the device and pass back in
/// `bounce_device.attachment` on every later call, so that no call reads the name or
/// searches the device table again (as Linux sets `dev->dma_io_tlb_mem` once per
/// device). `*out` is 0 when the device table is full (the device is counted in the
/// overflow slot and keeps being looked up by name). An attachment already in `dev`
/// is ignored. Returns 0, or `-EINVAL` for a NULL `b`, `dev` or `out` or a bad
/// device (then `*out` is 0).
///
/// # Context
/// Any context; never allocates. The first call for a device takes the device
/// table's registration lock (IRQ-safe).
///
/// # Safety
/// `b` is NULL or a live instance; `dev` as for `bounce_map_single`; `out` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn bounce_attach_device(b: *const Bounce, dev: *const BounceDevice, out: *mut u64) -> c_int {
    const WHAT: &str = "bounce_attach_device";
    if !out.is_null() {
        // SAFETY: `out` is writable (caller).
        unsafe { out.write(0) };
    }
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, WHAT, |inst| {
        if out.is_null() {
            return inst.bad_argument(format_args!("{WHAT}: out is NULL"));
        }
        // By name, whatever attachment `dev` carries.
        // SAFETY: `dev` is NULL or a valid device with a valid name (caller).
        match unsafe { device_ref(inst, WHAT, dev).and_then(|d| device_by_name(inst, WHAT, d)) } {
            Ok(named) => {
                // SAFETY: checked non-NULL above; writable (caller).
                unsafe { out.write(inst.bouncer().attach_handle(&named)) };
                0
            }
            Err(rc) => rc,
        }
    })
}

/// Devices the command line leaves to the platform's own swiotlb (`<device>:linux`
/// routes): when 0, `bounce_serves_device` is 1 for every device. `-EINVAL` for a
/// NULL `b`.
///
/// # Safety
/// `b` is NULL or a live instance.
#[no_mangle]
pub unsafe extern "C" fn bounce_native_routes(b: *const Bounce) -> c_int {
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, "bounce_native_routes", |inst| {
        c_int::try_from(inst.bouncer().native_routes()).unwrap_or(c_int::MAX)
    })
}

/// Writing 0 to debugfs `io_tlb_used_hiwater`: resets the high-water marks to the
/// current use. Returns 0, or `-EINVAL` for a NULL `b`.
///
/// # Context
/// Any context.
///
/// # Safety
/// `b` is NULL or a live instance.
#[no_mangle]
pub unsafe extern "C" fn bounce_reset_hiwater(b: *const Bounce) -> c_int {
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, "bounce_reset_hiwater", |inst| {
        inst.bouncer().reset_hiwater();
        0
    })
}

/// One step of the refill engine (the body of the kernel's `kccd` loop): runs the
/// strategy's pending background work (growth in batches, shrinking of idle memory)
/// and, when `report` is non-NULL, stores what was done.
///
/// Returns 1 when more work is pending (call again soon), 0 when idle, `-EINVAL` for a
/// NULL `b`.
///
/// # Context
/// Process context: may sleep (allocates and converts pages).
///
/// # Safety
/// `b` is NULL or a live instance; `report` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bounce_run_background(b: *const Bounce, report: *mut BounceBackgroundReport) -> c_int {
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, "bounce_run_background", |inst| {
        let r = inst.bouncer().run_background();
        let more = r.more || inst.bouncer().background_pending();
        if !report.is_null() {
            let rep = BounceBackgroundReport {
                buffers_added: r.buffers_added,
                pages_grown: r.pages_grown,
                pages_shrunk: r.pages_shrunk,
                pages_quarantined: r.pages_quarantined,
                more: r.more,
            };
            // SAFETY: checked non-NULL; writable (caller).
            unsafe { report.write(rep) };
        }
        c_int::from(more)
    })
}

/// Whether background work is pending (the kccd thread should run
/// `bounce_run_background()`): 1 or 0, `-EINVAL` for a NULL `b`.
///
/// # Context
/// Any context.
///
/// # Safety
/// `b` is NULL or a live instance.
#[no_mangle]
pub unsafe extern "C" fn bounce_background_pending(b: *const Bounce) -> c_int {
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, "bounce_background_pending", |inst| c_int::from(inst.bouncer().background_pending()))
}

/// Walks the strategy's data structures and checks its invariants (every byte free, in
/// flight or quarantined; counters matching); stores the accounting in `*out` when
/// non-NULL.
///
/// Returns 0, `-EUCLEAN` when an invariant is broken (a bug; the message names it), or
/// `-EINVAL` for a NULL `b`.
///
/// # Context
/// Process context (may sleep; takes every lock in turn), not concurrently with
/// `bounce_run_background()` on the same instance: the walk takes the locks one after
/// another, and a pool grown or shrunk in between reads as a broken invariant. Maps,
/// unmaps and syncs may run concurrently.
///
/// # Safety
/// `b` is NULL or a live instance; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bounce_audit(b: *const Bounce, out: *mut BounceAudit) -> c_int {
    // SAFETY: `b` is NULL or a live instance (caller).
    entry(unsafe { b.as_ref() }, "bounce_audit", |inst| match inst.bouncer().strategy().audit() {
        Ok(a) => {
            if !out.is_null() {
                let audit = BounceAudit {
                    live_mappings: a.live_mappings as u64,
                    used_bytes: a.used_bytes as u64,
                    free_bytes: a.free_bytes as u64,
                    owned_bytes: a.owned_bytes as u64,
                    quarantined_pages: a.quarantined_pages,
                };
                // SAFETY: checked non-NULL; writable (caller).
                unsafe { out.write(audit) };
            }
            0
        }
        Err(e) => inst.fail(EUCLEAN, format_args!("bounce_audit: {e}")),
    })
}

#[cfg(test)]
mod tests {
    //! The poisoning path, which no input reaches from outside (a panic means a bug):
    //! driven here by panicking inside `with_instance` on a real instance.

    use std::sync::Mutex;
    use std::vec::Vec;

    use super::*;
    use crate::errno::ENOTRECOVERABLE;

    /// A 4 MiB arena at physical 1 MiB with a bump page allocator.
    struct Arena {
        mem: Mutex<(Vec<u8>, usize)>,
    }

    const BASE: u64 = 1 << 20;

    fn arena(ctx: *mut core::ffi::c_void) -> &'static Arena {
        // SAFETY: every test passes a leaked `Arena` as ctx.
        unsafe { &*ctx.cast::<Arena>() }
    }

    unsafe extern "C" fn alloc(ctx: *mut core::ffi::c_void, pages: usize, _: bool, _: u64, out: *mut u64) -> c_int {
        let mut g = arena(ctx).mem.lock().unwrap();
        let (len, next) = (g.0.len(), g.1);
        if next + pages * 4096 > len {
            return -12;
        }
        g.1 += pages * 4096;
        // SAFETY: bounce passes a valid out-pointer.
        unsafe { *out = BASE + next as u64 };
        0
    }
    unsafe extern "C" fn free(_: *mut core::ffi::c_void, _: u64, _: usize) {}
    unsafe extern "C" fn convert(_: *mut core::ffi::c_void, _: u64, _: usize) -> c_int {
        0
    }
    unsafe extern "C" fn cpu(_: *mut core::ffi::c_void) -> u32 {
        0
    }
    unsafe extern "C" fn cpus(_: *mut core::ffi::c_void) -> u32 {
        1
    }
    unsafe extern "C" fn ram(_: *mut core::ffi::c_void) -> u64 {
        4 << 20
    }
    unsafe extern "C" fn copy(ctx: *mut core::ffi::c_void, dst: u64, src: u64, len: usize) {
        let mut g = arena(ctx).mem.lock().unwrap();
        let (d, s) = ((dst - BASE) as usize, (src - BASE) as usize);
        g.0.copy_within(s..s + len, d);
    }
    unsafe extern "C" fn fill(ctx: *mut core::ffi::c_void, dst: u64, byte: u8, len: usize) {
        let mut g = arena(ctx).mem.lock().unwrap();
        let d = (dst - BASE) as usize;
        g.0[d..d + len].fill(byte);
    }
    unsafe extern "C" fn now(_: *mut core::ffi::c_void) -> u64 {
        0
    }

    fn instance() -> *mut Bounce {
        let a: &'static Arena = Box::leak(Box::new(Arena { mem: Mutex::new((vec![0; 4 << 20], 0)) }));
        let hooks = BounceHooks {
            abi_version: BOUNCE_ABI_VERSION,
            ctx: core::ptr::from_ref(a).cast_mut().cast(),
            alloc_pages: Some(alloc),
            free_pages: Some(free),
            set_decrypted: Some(convert),
            set_encrypted: Some(convert),
            max_conversion_pages: 0,
            current_cpu: Some(cpu),
            cpu_count: Some(cpus),
            total_ram_bytes: Some(ram),
            is_confidential: None,
            phys_to_dma: None,
            dma_to_phys: None,
            copy: Some(copy),
            fill: Some(fill),
            now_ns: Some(now),
            wake_refill: None,
            log: None,
            trace_bounced: None,
            irq_save: None,
            irq_restore: None,
            sleep: None,
        };
        let mut b = core::ptr::null_mut();
        // SAFETY: valid table and out-pointer; no error buffer.
        let rc = unsafe {
            bounce_create(c"swiotlb=128".as_ptr(), &raw const hooks, 0, &raw mut b, core::ptr::null_mut(), 0)
        };
        assert_eq!(rc, 0);
        b
    }

    fn message(b: *const Bounce) -> std::string::String {
        let mut buf = [0 as c_char; 256];
        // SAFETY: live instance; 256 writable bytes.
        unsafe { bounce_last_error(b, buf.as_mut_ptr(), buf.len()) };
        // SAFETY: NUL-terminated by bounce_last_error.
        unsafe { core::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_poisons_the_instance_and_every_later_call_fails() {
        let b = instance();
        // SAFETY: `b` is live.
        let inst = unsafe { b.as_ref() };
        let rc = entry(inst, "test_entry", |_| panic!("injected"));
        assert_eq!(rc, -ENOTRECOVERABLE);
        assert!(message(b).contains("test_entry: internal error (panic)"), "{}", message(b));
        let mut s = BounceStats::default();
        // SAFETY: `b` is live; `s` writable.
        assert_eq!(unsafe { bounce_stats(b, &raw mut s) }, -ENOTRECOVERABLE);
        assert!(message(b).contains("poisoned"));
        // SAFETY: `b` is live.
        assert_eq!(unsafe { bounce_background_pending(b) }, -ENOTRECOVERABLE);
        // The name stays readable; destroy refuses and leaks it on purpose.
        // SAFETY: `b` is live.
        assert!(!unsafe { bounce_strategy_name(b) }.is_null());
        // SAFETY: `b` is live; after this call it must not be used again.
        assert_eq!(unsafe { bounce_destroy(b) }, -ENOTRECOVERABLE);
    }

    #[test]
    fn a_healthy_instance_is_not_poisoned_by_errors() {
        let b = instance();
        let mut dma = 0;
        let dev = unnamed();
        // SAFETY: live instance, valid device and out-pointer.
        let rc = unsafe { bounce_map_single(b, &raw const dev, BASE + (2 << 20), 0, 0, 0, 0, &raw mut dma) };
        assert_eq!(rc, -EINVAL);
        // SAFETY: as above; the original lies in the arena.
        let rc = unsafe { bounce_map_single(b, &raw const dev, BASE + (2 << 20), 100, 0, 0, 0, &raw mut dma) };
        assert_eq!(rc, 0);
        // SAFETY: live instance; a mapping is live.
        assert_eq!(unsafe { bounce_destroy(b) }, -EBUSY);
        // SAFETY: live instance and device.
        assert_eq!(unsafe { bounce_unmap_single(b, &raw const dev, dma, 100, 0, 0) }, 0);
        // SAFETY: live instance, nothing mapped, no concurrent call.
        assert_eq!(unsafe { bounce_destroy(b) }, 0);
    }

    /// A device with no name, a 64-bit mask and no attachment.
    fn unnamed() -> BounceDevice {
        BounceDevice {
            name: core::ptr::null(),
            dma_mask: u64::MAX,
            min_align_mask: 0,
            max_segment_size: 0,
            attachment: 0,
        }
    }

    fn named(name: &core::ffi::CStr) -> BounceDevice {
        BounceDevice { name: name.as_ptr(), ..unnamed() }
    }

    /// The slot index of the device named `name` in `bounce_device_stats`, and its maps.
    fn slot_of(b: *const Bounce, name: &str) -> Option<(u32, u64)> {
        (0..crate::abi::BOUNCE_DEVICE_SLOTS).find_map(|i| {
            let mut st = crate::abi::BounceDeviceStats::default();
            // SAFETY: live instance; `st` writable.
            (unsafe { bounce_device_stats(b, i, &raw mut st) } == 0).then_some(())?;
            // SAFETY: NUL-terminated by bounce_device_stats.
            let n = unsafe { core::ffi::CStr::from_ptr(st.name.as_ptr()) }.to_string_lossy().into_owned();
            (n == name).then_some((i, st.maps))
        })
    }

    #[test]
    fn an_attached_device_is_known_by_its_word_alone() {
        let b = instance();
        let orig = BASE + (2 << 20);
        let mut dev = named(c"vda");
        let mut a = 0;
        // SAFETY: live instance, valid device and out-pointer.
        assert_eq!(unsafe { bounce_attach_device(b, &raw const dev, &raw mut a) }, 0);
        assert_ne!(a, 0);
        // The word alone: a device with no name maps and unmaps as "vda".
        dev.name = core::ptr::null();
        dev.attachment = a;
        let mut dma = 0;
        // SAFETY: live instance, valid device and out-pointer; the original is in the arena.
        assert_eq!(unsafe { bounce_map_single(b, &raw const dev, orig, 100, 0, 0, 0, &raw mut dma) }, 0);
        // SAFETY: as above; `dma` is mapped.
        assert_eq!(unsafe { bounce_unmap_single(b, &raw const dev, dma, 100, 0, 0) }, 0);
        assert_eq!(slot_of(b, "vda").map(|(_, maps)| maps), Some(1));
        // Messages name it from the device table.
        // SAFETY: as above; 1 MiB is beyond the 256 KiB limit.
        let rc = unsafe { bounce_map_single(b, &raw const dev, orig, 1 << 20, 0, 0, 0, &raw mut dma) };
        assert!(rc < 0);
        assert!(message(b).starts_with("bounce_map_single: "), "{}", message(b));
        // Attaching again gives the same word; masks are still checked per call.
        let vda = named(c"vda");
        // SAFETY: live instance, valid device and out-pointer.
        assert_eq!(unsafe { bounce_attach_device(b, &raw const vda, &raw mut a) }, 0);
        assert_eq!(a, dev.attachment);
        let bad = BounceDevice { min_align_mask: 5, ..dev };
        // SAFETY: as above.
        assert_eq!(unsafe { bounce_map_single(b, &raw const bad, orig, 100, 0, 0, 0, &raw mut dma) }, -EINVAL);

        // A word this instance did not hand out is ignored: the name decides.
        let other = instance();
        let mut foreign = 0;
        let vdb = named(c"vdb");
        // SAFETY: live instance, valid device and out-pointer.
        assert_eq!(unsafe { bounce_attach_device(other, &raw const vdb, &raw mut foreign) }, 0);
        for word in [foreign, a ^ (1 << 8), a | (0xff << 8), u64::MAX] {
            let stray = BounceDevice { attachment: word, ..named(c"vdc") };
            // SAFETY: as above.
            assert_eq!(unsafe { bounce_map_single(b, &raw const stray, orig, 100, 0, 0, 0, &raw mut dma) }, 0);
            // SAFETY: as above; `dma` is mapped.
            assert_eq!(unsafe { bounce_unmap_single(b, &raw const stray, dma, 100, 0, 0) }, 0);
        }
        assert_eq!(slot_of(b, "vdc").map(|(_, maps)| maps), Some(4));
        assert_eq!(slot_of(b, "vda").map(|(_, maps)| maps), Some(1));
        // Bad arguments.
        // SAFETY: NULL out / NULL device are refused.
        assert_eq!(unsafe { bounce_attach_device(b, &raw const dev, core::ptr::null_mut()) }, -EINVAL);
        // SAFETY: as above.
        assert_eq!(unsafe { bounce_attach_device(b, core::ptr::null(), &raw mut a) }, -EINVAL);
        assert_eq!(a, 0);
        // SAFETY: live instances, nothing mapped, no concurrent call.
        assert_eq!(unsafe { bounce_destroy(b) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { bounce_destroy(other) }, 0);
    }

    #[test]
    fn a_full_device_table_hands_out_no_word() {
        let b = instance();
        let names: std::vec::Vec<std::ffi::CString> = (0..crate::abi::BOUNCE_DEVICE_SLOTS as usize + 2)
            .map(|i| std::ffi::CString::new(std::format!("d{i}")).unwrap())
            .collect();
        let words: std::vec::Vec<u64> = names
            .iter()
            .map(|n| {
                let (mut a, d) = (0, named(n));
                // SAFETY: live instance, valid device and out-pointer.
                assert_eq!(unsafe { bounce_attach_device(b, &raw const d, &raw mut a) }, 0);
                a
            })
            .collect();
        let (given, none) = words.split_at(crate::abi::BOUNCE_DEVICE_SLOTS as usize - 1);
        assert!(given.iter().all(|&w| w != 0));
        assert!(none.iter().all(|&w| w == 0), "the overflow slot's devices keep their names");
        // SAFETY: live instance, nothing mapped, no concurrent call.
        assert_eq!(unsafe { bounce_destroy(b) }, 0);
    }

    #[test]
    fn may_block_without_a_sleep_hook_fails_at_once() {
        let b = instance();
        let dev = unnamed();
        let orig = BASE + (2 << 20);
        let mut live = std::vec::Vec::new();
        let rc = loop {
            let mut dma = 0;
            // SAFETY: live instance, valid device and out-pointer; the original lies in
            // the arena.
            let rc = unsafe { bounce_map_single(b, &raw const dev, orig, 16384, 0, 0, 0, &raw mut dma) };
            if rc != 0 {
                break rc;
            }
            live.push(dma);
            assert!(live.len() < 1000, "a 256 KiB pool never ran out");
        };
        assert_eq!(rc, -crate::errno::ENOSPC);
        let mut dma = 0;
        // SAFETY: as above.
        let rc = unsafe {
            bounce_map_single(b, &raw const dev, orig, 16384, 0, 0, crate::abi::BOUNCE_DMA_ATTR_MAY_BLOCK, &raw mut dma)
        };
        assert_eq!(rc, -crate::errno::ENOSPC, "no sleep hook: the map fails as an atomic one");
        let mut s = BounceStats::default();
        // SAFETY: live instance; `s` writable.
        assert_eq!(unsafe { bounce_stats(b, &raw mut s) }, 0);
        assert_eq!((s.blocked_maps, s.blocked_ns), (0, 0));
        for d in live {
            // SAFETY: live instance and device; `d` is mapped.
            assert_eq!(unsafe { bounce_unmap_single(b, &raw const dev, d, 16384, 0, 0) }, 0);
        }
        // SAFETY: live instance, nothing mapped, no concurrent call.
        assert_eq!(unsafe { bounce_destroy(b) }, 0);
    }
}
