//! DMA directions, attributes and the device description the DMA API passes around.

use core::fmt;

use crate::addr::{dma_bit_mask, IO_TLB_SIZE};
use crate::devices::{Attachment, DeviceRoute};
use crate::error::MapError;

/// The direction of a streaming DMA mapping (`enum dma_data_direction`).
///
/// Linux's `DMA_NONE` (3) is a driver bug; it is not a variant here, and
/// [`DmaDirection::from_raw`] rejects it with [`MapError::DirectionNone`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u32)]
pub enum DmaDirection {
    /// `DMA_BIDIRECTIONAL` (0): the device may read and write.
    Bidirectional = 0,
    /// `DMA_TO_DEVICE` (1): the device only reads.
    ToDevice = 1,
    /// `DMA_FROM_DEVICE` (2): the device only writes.
    FromDevice = 2,
}

impl DmaDirection {
    /// Every valid direction, for tests and tables.
    pub const ALL: [Self; 3] = [Self::Bidirectional, Self::ToDevice, Self::FromDevice];

    /// Converts Linux's numeric direction.
    ///
    /// # Errors
    /// [`MapError::DirectionNone`] for `DMA_NONE` (3), [`MapError::BadDirection`] for any
    /// other value that is not a direction.
    pub const fn from_raw(raw: u32) -> Result<Self, MapError> {
        match raw {
            0 => Ok(Self::Bidirectional),
            1 => Ok(Self::ToDevice),
            2 => Ok(Self::FromDevice),
            3 => Err(MapError::DirectionNone),
            other => Err(MapError::BadDirection(other)),
        }
    }

    /// Whether data flows from memory to the device (copy original → bounce).
    #[inline]
    pub const fn to_device(self) -> bool {
        matches!(self, Self::Bidirectional | Self::ToDevice)
    }

    /// Whether data flows from the device to memory (copy bounce → original).
    #[inline]
    pub const fn from_device(self) -> bool {
        matches!(self, Self::Bidirectional | Self::FromDevice)
    }

    /// Linux's name of the direction.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bidirectional => "DMA_BIDIRECTIONAL",
            Self::ToDevice => "DMA_TO_DEVICE",
            Self::FromDevice => "DMA_FROM_DEVICE",
        }
    }
}

impl fmt::Display for DmaDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

bitflags::bitflags! {
    /// DMA attributes (`DMA_ATTR_*`), with Linux's bit values.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct DmaAttrs: u64 {
        /// `DMA_ATTR_SKIP_CPU_SYNC`: the caller syncs explicitly; map/unmap do not copy
        /// where a sync would (map still copies in: CVE-2022-0854).
        const SKIP_CPU_SYNC = 1 << 5;
        /// `DMA_ATTR_NO_WARN`: do not log a failed mapping.
        const NO_WARN = 1 << 8;
        /// `DMA_ATTR_MAY_BLOCK` (Michael Kelley's swiotlb throttling RFC, August 2024; not
        /// in Linux 6.12, which leaves this bit free): the caller may sleep, so a map that
        /// finds no free bounce buffer waits for the refill engine or an unmap (up to
        /// [`MAY_BLOCK_TIMEOUT_NS`](crate::MAY_BLOCK_TIMEOUT_NS)) instead of failing at
        /// once. Storage drivers set it; a map without it never sleeps.
        const MAY_BLOCK = 1 << 10;
    }
}

/// The longest device name kept (longer names are truncated on a char boundary).
pub const DEVICE_NAME_MAX: usize = 32;

/// A device's name by value, at most [`DEVICE_NAME_MAX`] bytes (longer names are cut on
/// a char boundary): in a [`Device`], in the device table's snapshots, and in messages
/// about a device known by its route only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceName {
    /// The name's bytes, zero padded.
    pub(crate) bytes: [u8; DEVICE_NAME_MAX],
    /// How many of them are the name.
    pub(crate) len: u8,
}

impl DeviceName {
    /// A copy of `name`, cut at [`DEVICE_NAME_MAX`] bytes on a char boundary.
    pub fn new(name: &str) -> Self {
        let mut len = name.len().min(DEVICE_NAME_MAX);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; DEVICE_NAME_MAX];
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        Self { bytes, len: len as u8 }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        let b = &self.bytes[..usize::from(self.len).min(DEVICE_NAME_MAX)];
        // The bytes were copied from a `&str` and cut on a char boundary.
        core::str::from_utf8(b).unwrap_or("?")
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the bounce layer needs to know about a device (`struct device` and its
/// `dma_parms`).
///
/// Equality compares what describes the device, not its [`Attachment`].
#[derive(Clone, Copy)]
pub struct Device {
    name: DeviceName,
    /// The bouncer slot and lane cached by [`Bouncer::attach`](crate::Bouncer::attach).
    attachment: Attachment,
    /// The device's addressing limit (`*dev->dma_mask`): every bus address it is handed
    /// must be at most this.
    pub dma_mask: u64,
    /// `dma_get_min_align_mask()`: these low bits of the original address must be
    /// preserved in the bounce address (NVMe: 4095).
    pub min_align_mask: u64,
    /// `dma_get_max_seg_size()`: the longest single segment the device accepts.
    pub max_segment_size: u32,
}

impl Device {
    /// A device with a 64-bit mask, no alignment requirement and 64 KiB segments
    /// (Linux's default `max_seg_size`).
    pub fn new(name: &str) -> Self {
        let mut dev = Self {
            name: DeviceName::default(),
            attachment: Attachment { table: 0, route: DeviceRoute { slot: 0, lane: 0 } },
            dma_mask: u64::MAX,
            min_align_mask: 0,
            max_segment_size: 65536,
        };
        dev.set_name(name);
        dev
    }

    /// Sets the addressing limit from a number of bits (`DMA_BIT_MASK(bits)`).
    #[must_use]
    pub fn with_dma_bits(mut self, bits: u32) -> Self {
        self.dma_mask = dma_bit_mask(bits);
        self
    }

    /// Sets the addressing limit.
    #[must_use]
    pub fn with_dma_mask(mut self, mask: u64) -> Self {
        self.dma_mask = mask;
        self
    }

    /// Sets the `min_align_mask`.
    #[must_use]
    pub fn with_min_align_mask(mut self, mask: u64) -> Self {
        self.min_align_mask = mask;
        self
    }

    /// Sets the maximum segment size.
    #[must_use]
    pub fn with_max_segment_size(mut self, size: u32) -> Self {
        self.max_segment_size = size;
        self
    }

    /// Replaces the name (truncated to [`DEVICE_NAME_MAX`] bytes on a char boundary).
    pub fn set_name(&mut self, name: &str) {
        self.name = DeviceName::new(name);
        self.attachment = Attachment::default();
    }

    /// Where a bouncer routes this device, as [`Bouncer::attach`](crate::Bouncer::attach)
    /// cached it ([`Attachment::table`] 0: not attached).
    #[inline]
    pub fn attachment(&self) -> Attachment {
        self.attachment
    }

    /// A device known by its attachment only, with no name: what
    /// [`Bouncer::device_from_handle`](crate::Bouncer::device_from_handle) builds.
    pub(crate) fn attached(a: Attachment) -> Self {
        let mut dev = Self::new("");
        dev.attachment = a;
        dev
    }

    /// Caches `a` (see [`Bouncer::attach`](crate::Bouncer::attach)).
    pub(crate) fn set_attachment(&mut self, a: Attachment) {
        self.attachment = a;
    }

    /// The device's name (`dev_name()`).
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The name's length in bytes.
    #[inline]
    pub(crate) fn name_len(&self) -> usize {
        usize::from(self.name.len)
    }

    /// The name as four little-endian words, zero padded (how the device table stores
    /// and compares names: four loads, not one per byte).
    #[inline]
    pub fn name_words(&self) -> [u64; DEVICE_NAME_MAX / 8] {
        core::array::from_fn(|i| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.name.bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        })
    }

    /// The `min_align_mask` rounded up to a whole slot, as `swiotlb_max_mapping_size()`
    /// subtracts it (`roundup(min_align_mask, IO_TLB_SIZE)`): 0 without a mask.
    pub fn min_align_slot_bytes(&self) -> usize {
        crate::addr::align_up_usize(self.min_align_mask as usize, IO_TLB_SIZE)
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
            && self.dma_mask == other.dma_mask
            && self.min_align_mask == other.min_align_mask
            && self.max_segment_size == other.max_segment_size
    }
}

impl Eq for Device {}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name())
            .field("dma_mask", &format_args!("{:#x}", self.dma_mask))
            .field("min_align_mask", &format_args!("{:#x}", self.min_align_mask))
            .field("max_segment_size", &self.max_segment_size)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_match_linux_numbers() {
        assert_eq!(DmaDirection::from_raw(0), Ok(DmaDirection::Bidirectional));
        assert_eq!(DmaDirection::from_raw(1), Ok(DmaDirection::ToDevice));
        assert_eq!(DmaDirection::from_raw(2), Ok(DmaDirection::FromDevice));
        assert_eq!(DmaDirection::from_raw(3), Err(MapError::DirectionNone));
        assert_eq!(DmaDirection::from_raw(7), Err(MapError::BadDirection(7)));
        assert!(DmaDirection::Bidirectional.to_device());
        assert!(DmaDirection::Bidirectional.from_device());
        assert!(!DmaDirection::ToDevice.from_device());
        assert!(!DmaDirection::FromDevice.to_device());
    }

    #[test]
    fn device_names_truncate_on_char_boundaries() {
        let d = Device::new("nvme0n1");
        assert_eq!(d.name(), "nvme0n1");
        let long = "é".repeat(40);
        let d = Device::new(&long);
        assert_eq!(d.name().len(), 32);
        assert!(d.name().chars().all(|c| c == 'é'));
    }

    #[test]
    fn min_align_rounds_to_slots() {
        assert_eq!(Device::new("a").min_align_slot_bytes(), 0);
        let nvme = Device::new("nvme").with_min_align_mask(4095);
        assert_eq!(nvme.min_align_slot_bytes(), 4096);
        assert_eq!(IO_TLB_SIZE * 128 - nvme.min_align_slot_bytes(), 258_048);
    }
}
