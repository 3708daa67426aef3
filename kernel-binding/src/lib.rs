//! # bounce-kernel: one C ABI for every strategy
//!
//! A bounce instance is created from a kernel command line and a table of platform
//! hooks (C function pointers plus a context pointer). The command line selects the
//! strategy at run time (`swiotlb.strategy=<name>`, any of the registry's, through
//! [`bounce_strategies::AnyStrategy`]), so one build carries all of them. The C header
//! is `include/bounce.h`, generated from [`abi`] and [`ffi`] by cbindgen and checked
//! in CI (`.ci/c-tests.sh` regenerates and diffs it).
//!
//! ## Flavours
//! - **std** (default feature, the host): links std for the allocator and panic
//!   handler; every entry point runs under `catch_unwind`, and a panic poisons the
//!   instance (`-ENOTRECOVERABLE` from then on) instead of unwinding into C. The C tests
//!   link this staticlib.
//! - **kernel** (`--no-default-features`, implied on bare-metal targets such as the
//!   kernel target of `kernel-binding/toolchain/`): `no_std`; the heap is
//!   `bounce_host_alloc`/`bounce_host_free` and panics call `bounce_host_panic`, all
//!   provided by the host (see the `kernel` module source); built with `panic=abort`.
//!   `.ci/nostd-build.sh --staticlib bounce-kernel OUT.a` builds, prelinks and checks it.
//!
//! ## The ABI
//!
//! | function | kernel counterpart |
//! |---|---|
//! | [`bounce_create`]`(cmdline, hooks, flags, &inst, err, err_len)` | `swiotlb_init` / `swiotlb_init_late` |
//! | [`bounce_destroy`]`(inst)` | `swiotlb_exit` |
//! | [`bounce_map_single`]`(inst, dev, phys, size, align_mask, dir, attrs, &dma)` | `swiotlb_map`, `swiotlb_tbl_map_single` |
//! | [`bounce_unmap_single`]`(inst, dev, dma, size, dir, attrs)` | `__swiotlb_tbl_unmap_single` |
//! | [`bounce_sync_single_for_cpu`] / [`bounce_sync_single_for_device`] | `__swiotlb_sync_single_for_cpu/_device` |
//! | [`bounce_map_sg`] / [`bounce_unmap_sg`] / [`bounce_sync_sg_for_cpu`] / [`bounce_sync_sg_for_device`] | `dma_direct_map_sg` & co. over swiotlb |
//! | [`bounce_max_mapping_size`]`(inst, dev)` | `swiotlb_max_mapping_size` |
//! | [`bounce_dma_supported`]`(inst, mask)` | the swiotlb part of `dma_direct_supported` |
//! | [`bounce_is_bounce_buffer`]`(inst, dma)` | `swiotlb_find_pool() != NULL`, `is_swiotlb_buffer` |
//! | [`bounce_stats`] / [`bounce_reset_hiwater`] | debugfs `io_tlb_*` (writing 0 to `io_tlb_used_hiwater`) |
//! | [`bounce_run_background`] / [`bounce_background_pending`] | the `kccd` kthread loop / the dynamic pool's work item |
//! | [`bounce_audit`], [`bounce_strategy_name`], [`bounce_last_error`], [`bounce_abi_version`] | (bounce's own) |
//!
//! Errors are negative errno values, documented per function and listed in [`errno`].
//! Addresses handed in and out by the mapping calls are *bus* addresses (what
//! `phys_to_dma` of the hook table returns for the bounce buffer); the kernel glue
//! converts a `tlb_addr` it holds with `phys_to_dma_unencrypted(dev, tlb_addr)`.
//!
//! ## How Linux 6.12 calls it
//! The glue keeps one `struct bounce *` (created from an `arch_initcall`, like the
//! cc-swiotlb RFC's kccd, once the page allocator and `set_memory_decrypted()` work; the
//! command line is `saved_command_line`) and a `struct bounce_device` built per call
//! from `dev_name(dev)`, `min_not_zero(*dev->dma_mask, dev->bus_dma_limit)`,
//! `dma_get_min_align_mask(dev)` and `dma_get_max_seg_size(dev)`:
//!
//! - `swiotlb_map(dev, phys, size, dir, attrs)` returns the `dma` that
//!   `bounce_map_single(b, &bd, phys, size, 0, dir, attrs, &dma)` stored
//!   (`DMA_MAPPING_ERROR` on failure), then `arch_sync_dma_for_device()` for
//!   non-coherent devices as today;
//! - `swiotlb_tbl_map_single(dev, phys, size, align_mask, dir, attrs)`: the same call
//!   with `align_mask`, returning `dma_to_phys(dev, dma)`;
//! - `swiotlb_find_pool(dev, paddr)` (behind `swiotlb_tbl_unmap_single`,
//!   `swiotlb_sync_single_for_*` and `dma_direct_need_sync`): non-NULL (a static dummy
//!   pool) when `bounce_is_bounce_buffer(b, phys_to_dma_unencrypted(dev, paddr)) == 1`;
//! - `__swiotlb_tbl_unmap_single(dev, tlb, size, dir, attrs, pool)`:
//!   `bounce_unmap_single(b, &bd, phys_to_dma_unencrypted(dev, tlb), size, dir, attrs)`;
//! - `__swiotlb_sync_single_for_device/_cpu(dev, tlb, size, dir, pool)`:
//!   `bounce_sync_single_for_device/_cpu(b, &bd, phys_to_dma_unencrypted(dev, tlb), size, dir)`;
//! - `swiotlb_max_mapping_size(dev)`: `bounce_max_mapping_size(b, &bd)`;
//!   `is_swiotlb_active(dev)`: `b != NULL`; `dma_direct_supported()`: also
//!   `bounce_dma_supported(b, mask)`;
//! - debugfs `io_tlb_nslabs`, `io_tlb_used`, `io_tlb_used_hiwater` (writing 0:
//!   `bounce_reset_hiwater`), `io_tlb_transient_nslabs`: `bounce_stats`;
//! - the dynamic pool's work item / kccd: a kthread running `bounce_run_background`
//!   until it returns 0, then sleeping until the `wake_refill` hook
//!   (`wake_up_process`) wakes it;
//! - `swiotlb_exit()`: `bounce_destroy` (refused while mappings are live).
//!
//! `dma_direct_map_sg` and friends loop over the single calls, so the list functions
//! are for callers that bounce whole lists (they roll back on failure). The hooks:
//! `alloc_pages_exact()` (`GFP_KERNEL`, or `GFP_NOWAIT | __GFP_NOWARN` without
//! `may_sleep`, `GFP_DMA32` when `limit` is 4 GiB) / `free_pages_exact()`,
//! `set_memory_decrypted()` / `set_memory_encrypted()` on `phys_to_virt(phys)`,
//! `raw_smp_processor_id()`, `num_possible_cpus()`, `totalram_pages() << PAGE_SHIFT`,
//! `cc_platform_has(CC_ATTR_MEM_ENCRYPT)`, `memcpy`/`memset` on `phys_to_virt()`,
//! `ktime_get_ns()`, `printk`, `trace_swiotlb_bounced()`, `local_irq_save`/`_restore`.
//! `phys_to_dma`/`dma_to_phys` stay NULL on x86 (for a device without a
//! `dma_range_map`, `phys_to_dma_unencrypted()` is the identity); the hooks carry no
//! device, so per-device DMA offsets (`dma_range_map`) are not expressible.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(all(feature = "std", feature = "kernel"))]
compile_error!("bounce-kernel: the `std` and `kernel` flavours are exclusive; build the kernel flavour with --no-default-features --features kernel");

#[cfg(not(any(feature = "std", feature = "kernel", target_os = "none")))]
compile_error!(
    "bounce-kernel needs a flavour: `std` (host, the default feature) or `kernel` (allocation and panics through the bounce_host_* C hooks; implied on bare-metal targets)"
);

pub mod abi;
pub mod errno;
pub mod ffi;
pub mod instance;
pub mod platform;
pub mod text;

#[cfg(all(not(feature = "std"), any(feature = "kernel", target_os = "none")))]
mod kernel;

pub use abi::*;
pub use ffi::*;
pub use instance::Bounce;
pub use platform::{HookIrq, HookLock, HookPlatform};
