//! The device model: DMA through bus addresses, checked like an IOMMU-less CVM would
//! enforce it (and stricter: only inside live mappings).

use std::format;

use crate::addr::DmaAddr;
use crate::bouncer::Bouncer;
use crate::dma::Device;
use crate::platform::Platform;
use crate::strategy::Strategy;

use super::guest::{PageState, SimGuest};

/// Who knows which bus addresses are live mappings (the bouncer).
pub trait MappingOracle {
    /// The live mapping containing `dma`: `(its start, bytes from dma to its end)`.
    fn live_range(&self, dma: DmaAddr) -> Option<(DmaAddr, usize)>;
}

impl<P: Platform, S: Strategy> MappingOracle for Bouncer<P, S> {
    fn live_range(&self, dma: DmaAddr) -> Option<(DmaAddr, usize)> {
        Bouncer::live_range(self, dma)
    }
}

/// A device access the model refused; each is also recorded as a guest violation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The access reaches past the device's `dma_mask`.
    #[error("device {device}: {dma} + {len} is beyond dma_mask {mask:#x}")]
    BeyondMask {
        /// Device name.
        device: std::string::String,
        /// Bus address.
        dma: DmaAddr,
        /// Bytes.
        len: usize,
        /// The mask.
        mask: u64,
    },
    /// The access touches memory outside the guest.
    #[error("device {device}: {dma} + {len} is outside guest memory")]
    OutsideMemory {
        /// Device name.
        device: std::string::String,
        /// Bus address.
        dma: DmaAddr,
        /// Bytes.
        len: usize,
    },
    /// The access touches a private (or quarantined) page: the host cannot see it.
    #[error("device {device}: {dma} + {len} touches a page that is not shared")]
    NotShared {
        /// Device name.
        device: std::string::String,
        /// Bus address.
        dma: DmaAddr,
        /// Bytes.
        len: usize,
    },
    /// The access is not inside one live mapping.
    #[error("device {device}: {dma} + {len} is not inside a live mapping")]
    NotMapped {
        /// Device name.
        device: std::string::String,
        /// Bus address.
        dma: DmaAddr,
        /// Bytes.
        len: usize,
    },
}

/// A simulated device on a [`SimGuest`].
#[derive(Clone, Debug)]
pub struct SimDevice {
    guest: SimGuest,
    dev: Device,
}

impl SimDevice {
    /// A device described by `dev`.
    pub fn new(guest: &SimGuest, dev: Device) -> Self {
        Self { guest: guest.clone(), dev }
    }

    /// The device description.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    fn check(
        &self,
        oracle: Option<&dyn MappingOracle>,
        dma: DmaAddr,
        len: usize,
    ) -> Result<crate::PhysAddr, DeviceError> {
        let device = || self.dev.name().into();
        let end = dma.0.checked_add((len as u64).saturating_sub(1));
        if end.is_none_or(|e| e > self.dev.dma_mask) {
            return Err(DeviceError::BeyondMask { device: device(), dma, len, mask: self.dev.dma_mask });
        }
        let phys = self.guest.dma_to_phys(dma);
        if self.guest.page_state(phys).is_none() || self.guest.page_state(phys + len.saturating_sub(1) as u64).is_none()
        {
            return Err(DeviceError::OutsideMemory { device: device(), dma, len });
        }
        if !self.guest.range_is(phys, len, PageState::Shared) {
            return Err(DeviceError::NotShared { device: device(), dma, len });
        }
        if let Some(o) = oracle {
            match o.live_range(dma) {
                Some((_, remaining)) if remaining >= len => {}
                _ => return Err(DeviceError::NotMapped { device: device(), dma, len }),
            }
        }
        Ok(phys)
    }

    fn record<T>(&self, r: Result<T, DeviceError>) -> Result<T, DeviceError> {
        if let Err(e) = &r {
            self.guest.violation(format!("{e}"));
        }
        r
    }

    /// DMA read (device ← memory) of `buf.len()` bytes at `dma`, inside a live mapping.
    ///
    /// # Errors
    /// [`DeviceError`] (also recorded as a violation) when the access is not allowed.
    pub fn read(&self, oracle: &dyn MappingOracle, dma: DmaAddr, buf: &mut [u8]) -> Result<(), DeviceError> {
        let phys = self.record(self.check(Some(oracle), dma, buf.len()))?;
        self.guest.raw_read(phys, buf);
        Ok(())
    }

    /// DMA write (device → memory) of `data` at `dma`, inside a live mapping.
    ///
    /// # Errors
    /// [`DeviceError`] (also recorded as a violation) when the access is not allowed.
    pub fn write(&self, oracle: &dyn MappingOracle, dma: DmaAddr, data: &[u8]) -> Result<(), DeviceError> {
        let phys = self.record(self.check(Some(oracle), dma, data.len()))?;
        self.guest.raw_write(phys, data);
        Ok(())
    }

    /// A hostile host's read: any shared page, mapped or not, at any time. Refused only
    /// for memory the host physically cannot see (private pages). Not a violation.
    ///
    /// # Errors
    /// [`DeviceError`] when the memory is not shared or not guest memory.
    pub fn host_read(&self, dma: DmaAddr, buf: &mut [u8]) -> Result<(), DeviceError> {
        let phys = self.check(None, dma, buf.len())?;
        self.guest.raw_read(phys, buf);
        Ok(())
    }

    /// A hostile host's write: any shared page, at any time (e.g. after the guest copied
    /// a `FromDevice` buffer). Not a violation.
    ///
    /// # Errors
    /// [`DeviceError`] when the memory is not shared or not guest memory.
    pub fn host_write(&self, dma: DmaAddr, data: &[u8]) -> Result<(), DeviceError> {
        let phys = self.check(None, dma, data.len())?;
        self.guest.raw_write(phys, data);
        Ok(())
    }
}
