//! # bounce-linux-ref
//!
//! Linux 6.12's own swiotlb allocator, compiled from the Linux source at build time, as
//! a [`Strategy`](bounce_framework::Strategy): [`LinuxRef`], the `linux` reference row
//! of `bounce compare`, run on the same op streams as every strategy so each can be
//! A/B-tested against upstream's code. It is a bench reference, not a boot choice: it is
//! in no strategy registry.
//!
//! Nothing of Linux is stored in this repository. The build script finds a Linux 6.12
//! tree (`$BOUNCE_LINUX_SRC`; when unset, `/work/ref/linux-source-6.12`, then
//! `target/linux-ref/linux-source-6.12` under the workspace root), cuts the allocator's
//! functions out of `kernel/dma/swiotlb.c` and `include/linux/iommu-helper.h` verbatim,
//! puts them between a shim and bounce's entry points ([`gen`]: the one place the cut list
//! and the shim are written, also used by legacy's differential test through this crate)
//! and compiles them with the `cc` crate. Without the source (or a C compiler) the crate
//! builds all the same and [`available`] says why; [`LinuxRef`] then refuses to boot with
//! that reason.
//!
//! ```sh
//! mkdir -p target/linux-ref && tar -xJf /usr/src/linux-source-6.12.tar.xz -C target/linux-ref \
//!     linux-source-6.12/kernel/dma/swiotlb.c linux-source-6.12/include/linux/iommu-helper.h
//! BOUNCE_LINUX_SRC=$PWD/target/linux-ref/linux-source-6.12 cargo run --release -p bounce-bench -- compare
//! ```
//!
//! The C runs with real locks (per-area spin locks, atomic usage counters), the CPU of
//! each request, the `!CONFIG_SWIOTLB_DYNAMIC` search and no copies of its own; the
//! [`gen`] module documents each choice. The pool is the one legacy boots with for the
//! same command line, so the `linux` and `legacy` rows differ only in whose code runs
//! (plus, for `linux`, the records that let `release` and `locate` work without the
//! device, see [`LinuxRef`]).
//!
//! All `unsafe` is in the FFI module, each block with the contract it relies on.

mod ffi;
pub mod gen;
mod linux;

pub use ffi::{linux_max_mapping_size, SlotMeta, INVALID_PHYS_ADDR};
pub use linux::{LinuxRef, NAME};

/// Why the reference was built without the C code; empty when it was built with it.
const MISSING: &str = env!("BOUNCE_LINUX_REF_MISSING");

/// Whether this build carries Linux's code.
///
/// # Errors
/// One line saying why not: where the Linux source was looked for and how to get it, or
/// why the C did not compile.
pub fn available() -> Result<(), String> {
    if cfg!(linux_ref) {
        Ok(())
    } else {
        Err(MISSING.to_string())
    }
}

/// The Linux source tree the reference was compiled from, when it was.
pub fn source() -> Option<&'static str> {
    let s = env!("BOUNCE_LINUX_REF_SOURCE");
    (cfg!(linux_ref) && !s.is_empty()).then_some(s)
}
