//! Address newtypes and page math.
//!
//! Three address spaces cross module boundaries and never mix silently:
//! [`PhysAddr`] (guest-physical, what the CPU copies to and from), [`DmaAddr`] (what a
//! device is given; on TDX the shared bit is set, see
//! [`Platform::phys_to_dma`](crate::Platform::phys_to_dma)) and page counts
//! ([`PageCount`]).

use core::fmt;
use core::ops::{Add, Sub};

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// The page size every conversion works in (4 KiB on x86).
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// log2 of a legacy swiotlb slot (`IO_TLB_SHIFT`).
pub const IO_TLB_SHIFT: u32 = 11;
/// A legacy swiotlb slot: 2 KiB (`IO_TLB_SIZE`).
pub const IO_TLB_SIZE: usize = 1 << IO_TLB_SHIFT;
/// Slots in one legacy segment (`IO_TLB_SEGSIZE`): the longest contiguous mapping.
pub const IO_TLB_SEGSIZE: usize = 128;

macro_rules! addr_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw address.
            #[inline]
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// The address plus `bytes`, or `None` on overflow.
            #[inline]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Bytes from `base` up to `self`, or `None` when `self` lies below `base`.
            #[inline]
            pub const fn offset_from(self, base: Self) -> Option<u64> {
                self.0.checked_sub(base.0)
            }

            /// Rounds down to a multiple of `align` (a power of two).
            #[inline]
            #[must_use]
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }

            /// Rounds up to a multiple of `align` (a power of two); saturates at the top.
            #[inline]
            #[must_use]
            pub const fn align_up(self, align: u64) -> Self {
                Self(self.0.saturating_add(align - 1) & !(align - 1))
            }

            /// Whether the address is a multiple of `align` (a power of two).
            #[inline]
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }

            /// The page frame number (`PFN_DOWN`).
            #[inline]
            pub const fn pfn(self) -> u64 {
                self.0 >> PAGE_SHIFT
            }

            /// The offset inside the page.
            #[inline]
            pub const fn page_offset(self) -> usize {
                (self.0 & (PAGE_SIZE as u64 - 1)) as usize
            }
        }

        impl Add<u64> for $name {
            type Output = Self;
            #[inline]
            fn add(self, rhs: u64) -> Self {
                Self(self.0 + rhs)
            }
        }

        impl Sub<u64> for $name {
            type Output = Self;
            #[inline]
            fn sub(self, rhs: u64) -> Self {
                Self(self.0 - rhs)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

addr_type!(
    /// A guest-physical address: what the CPU copies to and from.
    PhysAddr
);
addr_type!(
    /// A bus (DMA) address: what a device is handed and hands back.
    DmaAddr
);

/// A number of 4 KiB pages.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
#[repr(transparent)]
pub struct PageCount(pub usize);

impl PageCount {
    /// The pages needed to hold `bytes` bytes.
    #[inline]
    pub const fn for_bytes(bytes: usize) -> Self {
        Self(bytes.div_ceil(PAGE_SIZE))
    }

    /// The bytes these pages span.
    #[inline]
    pub const fn bytes(self) -> usize {
        self.0 * PAGE_SIZE
    }

    /// The raw count.
    #[inline]
    pub const fn get(self) -> usize {
        self.0
    }
}

/// A number of 2 KiB legacy slots (the unit of Linux's `io_tlb_*` debugfs files).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
#[repr(transparent)]
pub struct SlotCount(pub usize);

impl SlotCount {
    /// The slots needed to hold `bytes` bytes (`nr_slots()` in Linux).
    #[inline]
    pub const fn for_bytes(bytes: usize) -> Self {
        Self(bytes.div_ceil(IO_TLB_SIZE))
    }

    /// Slots fully covered by `bytes` (rounding down), for reporting byte pools in slots.
    #[inline]
    pub const fn floor_bytes(bytes: usize) -> Self {
        Self(bytes / IO_TLB_SIZE)
    }

    /// The bytes these slots span.
    #[inline]
    pub const fn bytes(self) -> usize {
        self.0 * IO_TLB_SIZE
    }
}

/// Rounds `v` up to a multiple of `align` (a power of two).
#[inline]
pub const fn align_up_usize(v: usize, align: usize) -> usize {
    (v + align - 1) & !(align - 1)
}

/// A mask of the low `bits` bits (`DMA_BIT_MASK`).
#[inline]
pub const fn dma_bit_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_and_slot_math() {
        assert_eq!(PageCount::for_bytes(1).get(), 1);
        assert_eq!(PageCount::for_bytes(4096).get(), 1);
        assert_eq!(PageCount::for_bytes(4097).get(), 2);
        assert_eq!(SlotCount::for_bytes(2049).0, 2);
        assert_eq!(SlotCount::floor_bytes(4095).0, 1);
        assert_eq!(PhysAddr(0x1234).align_down(0x1000), PhysAddr(0x1000));
        assert_eq!(PhysAddr(0x1234).align_up(0x1000), PhysAddr(0x2000));
        assert_eq!(PhysAddr(u64::MAX).align_up(0x1000), PhysAddr(!0xfff));
        assert_eq!(PhysAddr(0x1234).page_offset(), 0x234);
        assert_eq!(PhysAddr(0x10).offset_from(PhysAddr(0x20)), None);
        assert_eq!(dma_bit_mask(32), 0xffff_ffff);
        assert_eq!(dma_bit_mask(64), u64::MAX);
        assert_eq!(format!("{:?}", DmaAddr(0x10)), "DmaAddr(0x10)");
    }
}
