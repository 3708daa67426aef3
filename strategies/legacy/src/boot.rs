//! The boot-time pool: what `swiotlb_init_remap()` and `swiotlb_init_io_tlb_pool()` do
//! with memory. Every pool of Linux's layout takes its memory from here (legacy, bitmap,
//! and the Linux reference row of `bounce compare`, `bounce-linux-ref`), so all of them
//! get the same pages for the same command line.

use bounce_framework::{
    GrowError, InitError, LogLevel, PageCount, PageRequest, PhysAddr, Platform, PlatformError, SharedMemory,
    IO_TLB_SEGSIZE, IO_TLB_SHIFT,
};

use crate::config::{fit_nareas, Geometry, LegacyConfig, Placement, IO_TLB_MIN_SLABS, LOW_MEMORY_LIMIT};

/// A pool's memory: allocated, converted to shared and cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolMemory {
    /// The first byte (`mem->start`).
    pub start: PhysAddr,
    /// The shape, after any shrinking.
    pub geometry: Geometry,
    /// The pages it occupies (`PAGE_ALIGN(nslabs << IO_TLB_SHIFT)`): what to hand back
    /// to [`SharedMemory::free_shared`].
    pub pages: PageCount,
}

/// Allocates the pool `config` describes on `shared`'s platform as Linux does at boot:
/// resolves the `None` fields, allocates below 4 GiB when the placement asks for it,
/// converts the pages to shared in one go through [`SharedMemory::alloc_shared`]
/// (batched at `max_conversion_pages()`), clears them and logs the banner
/// (`swiotlb_print_info()`). When the page allocator cannot provide the pool and
/// `config.shrink_on_failure` is set, retries with half the slots as
/// `swiotlb_init_remap()` does.
///
/// # Errors
/// [`InitError::Config`] for a size or area count that cannot work, and
/// [`InitError::Grow`] when the pages cannot be allocated (after shrinking, if allowed)
/// or converted. Nothing is left allocated on error.
pub fn alloc_pool<P: Platform>(shared: &SharedMemory<P>, config: &LegacyConfig) -> Result<PoolMemory, InitError> {
    let platform = shared.platform();
    let mut geometry = config.resolve(platform)?;
    let start = loop {
        match alloc_pages(shared, geometry.nslabs, config.placement) {
            Ok(a) => break a,
            // swiotlb_init_remap(): if (nslabs <= IO_TLB_MIN_SLABS) return;
            //                       nslabs = ALIGN(nslabs >> 1, IO_TLB_SEGSIZE);
            //                       nareas = limit_nareas(nareas, nslabs);
            Err(GrowError::Platform(PlatformError::AllocFailed { .. }))
                if config.shrink_on_failure && geometry.nslabs > IO_TLB_MIN_SLABS =>
            {
                let nslabs = (geometry.nslabs >> 1).next_multiple_of(IO_TLB_SEGSIZE);
                let nareas = fit_nareas(geometry.nareas, nslabs);
                platform.log(
                    LogLevel::Info,
                    format_args!(
                        "software IO TLB: SWIOTLB bounce buffer size adjusted {} -> {nslabs} slabs",
                        geometry.nslabs
                    ),
                );
                geometry = Geometry::new(nslabs, nareas)?;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let Geometry { nslabs, nareas, .. } = geometry;
    let pages = PageCount::for_bytes(nslabs << IO_TLB_SHIFT);
    // swiotlb_init_io_tlb_pool(): memset(vaddr, 0, bytes) -- after the conversion, as
    // in swiotlb_init_late(), so the host never sees stale bytes of this guest.
    platform.fill(start, 0, pages.bytes());
    // swiotlb_print_info()
    let end = start + (nslabs << IO_TLB_SHIFT) as u64;
    platform.log(
        LogLevel::Info,
        format_args!(
            "software IO TLB: mapped [mem {start:#018x}-{:#018x}] ({}MB), {nareas} area{}",
            end.0 - 1,
            (nslabs << IO_TLB_SHIFT) >> 20,
            if nareas == 1 { "" } else { "s" }
        ),
    );
    Ok(PoolMemory { start, geometry, pages })
}

/// Allocates and converts the pool's pages as `placement` says.
fn alloc_pages<P: Platform>(
    shared: &SharedMemory<P>,
    nslabs: usize,
    placement: Placement,
) -> Result<PhysAddr, GrowError> {
    let pages = PageCount::for_bytes(nslabs << IO_TLB_SHIFT);
    let low = PageRequest { limit: LOW_MEMORY_LIMIT, ..PageRequest::sleeping(pages) };
    match placement {
        Placement::Low => shared.alloc_shared(low),
        Placement::Anywhere => shared.alloc_shared(PageRequest::sleeping(pages)),
        Placement::LowThenAnywhere => match shared.alloc_shared(low) {
            Err(GrowError::Platform(PlatformError::AllocFailed { .. })) => {
                shared.alloc_shared(PageRequest::sleeping(pages))
            }
            r => r,
        },
    }
}
