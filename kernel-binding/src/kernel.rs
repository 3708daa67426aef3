//! The kernel flavour's runtime: the global allocator and the panic handler, both over
//! C functions the host links in (`bounce_host_*`; declared in `bounce.h`).
//!
//! Built only without `std` and with the `kernel` feature or on a bare-metal target, so
//! the rlib Rust tests link never installs a global allocator.
//!
//! The host implements:
//! - `void *bounce_host_alloc(size_t size, size_t align)`: memory for Rust's heap, or
//!   NULL. Called only from process context (`bounce_create`, `bounce_run_background`,
//!   `bounce_destroy`: the map path never allocates), so `kmalloc(size, GFP_KERNEL)`
//!   fits; `align` can exceed `ARCH_KMALLOC_MINALIGN` (statistics shards are 128-byte
//!   aligned): round such sizes up to a power of two at least `align`, which `kmalloc`
//!   aligns naturally.
//! - `void bounce_host_free(void *ptr, size_t size, size_t align)`: frees it (`kfree`).
//! - `void bounce_host_panic(const char *msg, size_t len)`: never returns (`panic()`);
//!   `msg` is NUL-terminated. Called on a Rust panic (a bug) and when an allocation
//!   fails (Rust's `alloc` aborts on out-of-memory).

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::{c_char, c_void};

use crate::text::FixedBuf;

extern "C" {
    /// Kernel flavour only, provided by the host: `size` bytes aligned to `align` (a
    /// power of two, possibly above the allocator's minimum alignment) for bounce's
    /// heap, or NULL. Called only from process context (`bounce_create`,
    /// `bounce_run_background`, `bounce_destroy`): the map path never allocates.
    pub fn bounce_host_alloc(size: usize, align: usize) -> *mut c_void;
    /// Kernel flavour only, provided by the host: frees memory from
    /// `bounce_host_alloc`; `size` and `align` are the allocation's.
    pub fn bounce_host_free(ptr: *mut c_void, size: usize, align: usize);
    /// Kernel flavour only, provided by the host: a bug (or out of memory inside
    /// bounce) was hit; `msg` holds `len` bytes and is NUL-terminated. Must not return
    /// (`panic()`).
    pub fn bounce_host_panic(msg: *const c_char, len: usize) -> !;
}

/// Rust's heap over `bounce_host_alloc` / `bounce_host_free`.
struct HostAllocator;

// SAFETY: `bounce_host_alloc` returns NULL or memory of at least `size` bytes aligned to
// `align` that stays valid until `bounce_host_free` (the host's contract, documented
// above and in `bounce.h`), which is what `GlobalAlloc` requires.
unsafe impl GlobalAlloc for HostAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the host's contract.
        unsafe { bounce_host_alloc(layout.size(), layout.align()) }.cast()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout (GlobalAlloc's contract).
        unsafe { bounce_host_free(ptr.cast(), layout.size(), layout.align()) }
    }
}

#[global_allocator]
static ALLOCATOR: HostAllocator = HostAllocator;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut buf = FixedBuf::<256>::new();
    buf.write_args(format_args!("bounce: {info}"));
    let (ptr, len) = buf.as_c_str();
    // SAFETY: `ptr` points at `len` bytes plus a NUL on this stack frame, which lives
    // as long as the call (which does not return).
    unsafe { bounce_host_panic(ptr, len) }
}

/// The personality routine the prebuilt (unwinding) `core` and `alloc` of a hosted
/// target reference. A kernel-flavour build on such a target (the C tests' host build)
/// is `panic=abort`, so nothing ever unwinds and this is never called; bare-metal builds
/// compile `core`/`alloc` with `panic=abort` themselves and do not reference it.
#[cfg(not(target_os = "none"))]
#[no_mangle]
extern "C" fn rust_eh_personality() {}
