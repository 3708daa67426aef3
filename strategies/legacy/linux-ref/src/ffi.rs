//! The C reference's entry points ([`crate::gen::API`]) and [`Pool`], the one owner of a
//! C pool. All of the crate's `unsafe` is here, each call with the contract it relies on.

use core::ffi::{c_uint, c_ulong};
use core::marker::{PhantomData, PhantomPinned};
use core::ptr::NonNull;

use bounce_framework::{MapError, Request};
use bounce_legacy::{map_size, pool_full, AreaView, Geometry};

/// `struct io_tlb_mem` of the generated C: opaque here.
#[repr(C)]
pub(crate) struct IoTlbMem {
    _opaque: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

/// One slot's `struct io_tlb_slot`, as Linux keeps it (`struct bounce_ref_slot` in the
/// generated C).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotMeta {
    /// `orig_addr`: the original address of the slot's first data byte;
    /// `INVALID_PHYS_ADDR` (`u64::MAX`) in free and padding slots.
    pub orig_addr: u64,
    /// `alloc_size`: bytes of the allocation from this slot on, less the mapping's
    /// offset (it wraps below zero in some last slots, as in Linux).
    pub alloc_size: u64,
    /// `list`: free slots from here to the segment's end; 0 when in use.
    pub list: u16,
    /// `pad_slots`: padding slots before a mapping's first data slot (set in that slot).
    pub pad_slots: u16,
}

/// `INVALID_PHYS_ADDR`.
pub const INVALID_PHYS_ADDR: u64 = u64::MAX;

/// Declares the C entry points once: an `extern` block when the reference was built, and
/// stand-ins that are never called (so the crate builds and says why it is unavailable)
/// when it was not.
macro_rules! c_api {
    ($($(#[doc = $doc:literal])+ fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;)+) => {
        #[cfg(linux_ref)]
        extern "C" {
            $($(#[doc = $doc])+ fn $name($($arg: $ty),*) $(-> $ret)?;)+
        }

        /// Stand-ins for a build without the Linux source: never called, as [`Pool::new`]
        /// and [`linux_max_mapping_size`] refuse first.
        #[cfg(not(linux_ref))]
        mod missing {
            use super::{c_uint, c_ulong, IoTlbMem, SlotMeta};
            $(
                $(#[doc = $doc])+
                pub(super) unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                    let _ = ($($arg,)*);
                    unreachable!(concat!(stringify!($name), ": bounce-linux-ref was built without the Linux source"))
                }
            )+
        }
        #[cfg(not(linux_ref))]
        use missing::*;
    };
}

c_api! {
    /// `swiotlb_init_io_tlb_pool()` and `add_mem_pool()` for a pool at `start` (no byte of
    /// it is touched); NULL when the metadata cannot be allocated.
    fn bounce_ref_create(start: u64, dma_offset: u64, nslabs: c_ulong, nareas: c_uint) -> *mut IoTlbMem;
    /// Frees what `bounce_ref_create` allocated.
    fn bounce_ref_destroy(mem: *mut IoTlbMem);
    /// `swiotlb_tbl_map_single()` on `cpu` for a device with `min_align_mask`.
    fn bounce_ref_map(
        mem: *mut IoTlbMem,
        cpu: c_uint,
        orig: u64,
        mapping_size: usize,
        alloc_align_mask: c_uint,
        min_align_mask: c_uint,
    ) -> u64;
    /// `swiotlb_release_slots()` for a device with `min_align_mask`.
    fn bounce_ref_release(mem: *mut IoTlbMem, tlb_addr: u64, min_align_mask: c_uint);
    /// `swiotlb_max_mapping_size()` for a device with `min_align_mask`.
    fn bounce_ref_max_mapping_size(min_align_mask: c_uint) -> usize;
    /// Copies slot `index` (read without a lock, as `swiotlb_bounce()` reads it).
    fn bounce_ref_slot(mem: *const IoTlbMem, index: c_ulong, out: *mut SlotMeta);
    /// Reads area `index`'s `used` and `index`.
    fn bounce_ref_area(mem: *const IoTlbMem, index: c_uint, used: *mut c_ulong, next: *mut c_uint);
    /// Takes every area's spin lock, in ascending order.
    fn bounce_ref_lock_areas(mem: *mut IoTlbMem);
    /// Releases every area's spin lock, in descending order.
    fn bounce_ref_unlock_areas(mem: *mut IoTlbMem);
    /// debugfs `io_tlb_used`: slots in use (`total_used`).
    fn bounce_ref_used(mem: *mut IoTlbMem) -> u64;
    /// debugfs `io_tlb_used_hiwater`.
    fn bounce_ref_hiwater(mem: *mut IoTlbMem) -> u64;
    /// Writes 0 to debugfs `io_tlb_used_hiwater`.
    fn bounce_ref_reset_hiwater(mem: *mut IoTlbMem);
}

/// Linux's own `swiotlb_max_mapping_size()` for a device with `min_align_mask`, or
/// `None` when the reference was built without the Linux source.
pub fn linux_max_mapping_size(min_align_mask: u32) -> Option<usize> {
    crate::available().ok()?;
    // SAFETY: available: the C is linked; the function reads only its argument.
    Some(unsafe { bounce_ref_max_mapping_size(min_align_mask) })
}

/// One C pool (`struct io_tlb_mem` with its default pool), owned.
pub(crate) struct Pool {
    mem: NonNull<IoTlbMem>,
    nslabs: usize,
    nareas: usize,
}

// SAFETY: the C pool is Linux's swiotlb state, and after `bounce_ref_create` every change
// to it is made as in Linux: slots and area counters under the area's spin lock, usage
// counters with atomics. Nothing in it belongs to a thread; `Pool` is its only owner.
unsafe impl Send for Pool {}
// SAFETY: as for `Send`: concurrent calls synchronise in C as concurrent CPUs do in Linux.
unsafe impl Sync for Pool {}

impl Pool {
    /// Initialises the metadata of a pool of `geometry` at `start`, whose bus addresses
    /// are `dma_offset` above the physical ones.
    ///
    /// # Errors
    /// Why the reference is unavailable, or that its metadata could not be allocated.
    pub(crate) fn new(start: u64, dma_offset: u64, geometry: &Geometry) -> Result<Self, String> {
        crate::available()?;
        let nslabs = c_ulong::try_from(geometry.nslabs).map_err(|e| e.to_string())?;
        let nareas = c_uint::try_from(geometry.nareas).map_err(|e| e.to_string())?;
        // SAFETY: the C is linked (available). A `Geometry` has at least one slot and a
        // power-of-two area count that divides them, which is what
        // swiotlb_init_io_tlb_pool() assumes; it is given no vaddr, so no memory at
        // `start` is written.
        let mem = unsafe { bounce_ref_create(start, dma_offset, nslabs, nareas) };
        let mem = NonNull::new(mem).ok_or("out of memory for the Linux reference's slot metadata")?;
        Ok(Self { mem, nslabs: geometry.nslabs, nareas: geometry.nareas })
    }

    /// `swiotlb_tbl_map_single()` for `req` on `req.cpu`: the address of the mapping's
    /// first data byte.
    ///
    /// # Errors
    /// What [`map_size`] refuses (before the C is called), or the pool's
    /// [`pool_full`] when Linux's search finds no room.
    pub(crate) fn map(&self, req: &Request) -> Result<u64, MapError> {
        let size = map_size(req)?;
        // SAFETY: the pool is live. `map_size` admitted a non-empty mapping, masks of the
        // form 2^n - 1 within 32 bits and a padded size within one segment, so the search
        // looks for 1 to 128 slots (never BUG_ON(!nslots)) and writes only the run it
        // finds; `cpu` is masked by the area count in C.
        let tlb = unsafe {
            bounce_ref_map(
                self.mem.as_ptr(),
                req.cpu as c_uint,
                req.orig.0,
                size.mapping_len,
                req.alloc_align_mask as c_uint,
                req.min_align_mask as c_uint,
            )
        };
        if tlb == INVALID_PHYS_ADDR {
            return Err(pool_full(size.alloc_size, self.nslabs, self.used_slots()));
        }
        Ok(tlb)
    }

    /// `swiotlb_release_slots()` of the mapping that starts at `tlb`.
    ///
    /// # Safety
    /// `tlb` is the address [`Pool::map`] returned for a live mapping made with
    /// `min_align_mask`, and this is the only release of it: Linux trusts the caller,
    /// and any other address frees slots that address implies.
    pub(crate) unsafe fn release(&self, tlb: u64, min_align_mask: u64) {
        // SAFETY: the caller's contract; the pool is live.
        unsafe { bounce_ref_release(self.mem.as_ptr(), tlb, min_align_mask as c_uint) }
    }

    /// A copy of slot `index`'s metadata (lock-free, as `swiotlb_bounce()` reads it).
    pub(crate) fn slot(&self, index: usize) -> SlotMeta {
        assert!(index < self.nslabs, "slot {index} of {}", self.nslabs);
        let mut out = SlotMeta::default();
        // SAFETY: the pool is live and `index` is one of its slots; `out` is a valid
        // `struct bounce_ref_slot` (same layout, `repr(C)`).
        unsafe { bounce_ref_slot(self.mem.as_ptr(), index as c_ulong, &raw mut out) };
        out
    }

    /// `total_used`, in slots.
    pub(crate) fn used_slots(&self) -> usize {
        // SAFETY: the pool is live; an atomic read.
        unsafe { bounce_ref_used(self.mem.as_ptr()) as usize }
    }

    /// `used_hiwater`, in slots.
    pub(crate) fn hiwater_slots(&self) -> usize {
        // SAFETY: the pool is live; an atomic read.
        unsafe { bounce_ref_hiwater(self.mem.as_ptr()) as usize }
    }

    /// Resets `used_hiwater`.
    pub(crate) fn reset_hiwater(&self) {
        // SAFETY: the pool is live; an atomic store.
        unsafe { bounce_ref_reset_hiwater(self.mem.as_ptr()) }
    }

    /// Takes every area's lock until the guard drops: no map or release changes slots
    /// or areas meanwhile. Must not be held across a map or release of this pool.
    pub(crate) fn lock_areas(&self) -> AreasLocked<'_> {
        // SAFETY: the pool is live; the guard releases the locks exactly once.
        unsafe { bounce_ref_lock_areas(self.mem.as_ptr()) };
        AreasLocked(self)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: `Pool` owns the C pool and nothing uses it after this.
        unsafe { bounce_ref_destroy(self.mem.as_ptr()) }
    }
}

/// Every area lock of a [`Pool`], held.
pub(crate) struct AreasLocked<'a>(&'a Pool);

impl AreasLocked<'_> {
    /// Area `index`'s `used` and `index`.
    pub(crate) fn area(&self, index: usize) -> AreaView {
        assert!(index < self.0.nareas, "area {index} of {}", self.0.nareas);
        let (mut used, mut next): (c_ulong, c_uint) = (0, 0);
        // SAFETY: the pool is live, `index` is one of its areas, and both outputs are
        // valid for writes.
        unsafe { bounce_ref_area(self.0.mem.as_ptr(), index as c_uint, &raw mut used, &raw mut next) };
        AreaView { used: used as usize, index: next as usize }
    }
}

impl Drop for AreasLocked<'_> {
    fn drop(&mut self) {
        // SAFETY: this guard took the locks (`Pool::lock_areas`) and releases them once.
        unsafe { bounce_ref_unlock_areas(self.0.mem.as_ptr()) }
    }
}
