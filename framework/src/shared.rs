//! Getting shared memory and giving it back: the one place that allocates pages,
//! converts them in platform-sized batches, enforces the shared-memory cap, counts
//! conversions and quarantines pages whose conversion failed.
//!
//! Every strategy and the refill engine go through a [`SharedMemory`]; none calls
//! `set_decrypted`/`set_encrypted` directly.
//!
//! # Context
//! [`SharedMemory::alloc_shared`] and [`SharedMemory::free_shared`] may sleep (they
//! convert pages): boot code and the background refill engine only. The counters may be
//! read from any context.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::addr::{PageCount, PhysAddr, PAGE_SIZE};
use crate::error::{GrowError, PlatformError};
use crate::platform::{PageRequest, Platform};

/// A snapshot of conversion activity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConversionStats {
    /// `set_decrypted` calls made.
    pub decrypt_calls: u64,
    /// Pages converted to shared successfully.
    pub pages_decrypted: u64,
    /// `set_encrypted` calls made.
    pub encrypt_calls: u64,
    /// Pages converted back to private successfully.
    pub pages_encrypted: u64,
    /// Conversion calls that failed.
    pub failed_calls: u64,
    /// Pages quarantined after a failed conversion: never used, never freed.
    pub quarantined_pages: u64,
    /// Page allocations that failed.
    pub alloc_failures: u64,
    /// Nanoseconds spent in conversion calls (platform clock).
    pub conversion_ns: u64,
    /// Shared bytes committed now (converted and not yet returned).
    pub shared_bytes: u64,
    /// The most shared bytes ever committed at once.
    pub shared_bytes_peak: u64,
}

impl ConversionStats {
    /// Adds `other`'s counts to these (peaks summed: an upper bound of the joint peak).
    pub fn merge(&mut self, other: &ConversionStats) {
        self.decrypt_calls += other.decrypt_calls;
        self.pages_decrypted += other.pages_decrypted;
        self.encrypt_calls += other.encrypt_calls;
        self.pages_encrypted += other.pages_encrypted;
        self.failed_calls += other.failed_calls;
        self.quarantined_pages += other.quarantined_pages;
        self.alloc_failures += other.alloc_failures;
        self.conversion_ns += other.conversion_ns;
        self.shared_bytes += other.shared_bytes;
        self.shared_bytes_peak += other.shared_bytes_peak;
    }

    /// Conversion calls in both directions.
    pub const fn calls(&self) -> u64 {
        self.decrypt_calls + self.encrypt_calls
    }

    /// Pages converted in both directions.
    pub const fn pages(&self) -> u64 {
        self.pages_decrypted + self.pages_encrypted
    }
}

/// The source of shared memory for one pool owner.
pub struct SharedMemory<P: Platform> {
    platform: P,
    cap_bytes: usize,
    decrypt_calls: AtomicU64,
    pages_decrypted: AtomicU64,
    encrypt_calls: AtomicU64,
    pages_encrypted: AtomicU64,
    failed_calls: AtomicU64,
    quarantined_pages: AtomicU64,
    alloc_failures: AtomicU64,
    conversion_ns: AtomicU64,
    shared_bytes: AtomicUsize,
    shared_bytes_peak: AtomicUsize,
}

impl<P: Platform> SharedMemory<P> {
    /// A source with a cap on committed shared bytes (`usize::MAX` for none).
    pub fn new(platform: P, cap_bytes: usize) -> Self {
        Self {
            platform,
            cap_bytes,
            decrypt_calls: AtomicU64::new(0),
            pages_decrypted: AtomicU64::new(0),
            encrypt_calls: AtomicU64::new(0),
            pages_encrypted: AtomicU64::new(0),
            failed_calls: AtomicU64::new(0),
            quarantined_pages: AtomicU64::new(0),
            alloc_failures: AtomicU64::new(0),
            conversion_ns: AtomicU64::new(0),
            shared_bytes: AtomicUsize::new(0),
            shared_bytes_peak: AtomicUsize::new(0),
        }
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The cap on committed shared bytes.
    pub fn cap_bytes(&self) -> usize {
        self.cap_bytes
    }

    /// Shared bytes committed now.
    pub fn shared_bytes(&self) -> usize {
        self.shared_bytes.load(Ordering::Relaxed)
    }

    /// Whether `bytes` more would stay within the cap.
    pub fn fits_cap(&self, bytes: usize) -> bool {
        self.shared_bytes().saturating_add(bytes) <= self.cap_bytes
    }

    /// Bytes the cap still allows (a hint: concurrent growers may take them first;
    /// [`SharedMemory::alloc_shared`] enforces the cap).
    pub fn room_bytes(&self) -> usize {
        self.cap_bytes.saturating_sub(self.shared_bytes())
    }

    /// Allocates `pages` contiguous private pages below `req.limit` and converts them
    /// to shared in batches of at most `max_conversion_pages()` pages (one call per
    /// batch; a single call when the block fits).
    ///
    /// On a conversion failure the failed batch is quarantined; batches already
    /// converted are converted back (or quarantined if that fails too) and every page
    /// still private is freed, so the call either fully succeeds or commits nothing.
    ///
    /// # Errors
    /// [`GrowError::Cap`] when the cap would be exceeded (nothing allocated),
    /// [`GrowError::Platform`] for allocation or conversion failures.
    pub fn alloc_shared(&self, req: PageRequest) -> Result<PhysAddr, GrowError> {
        let bytes = req.pages.bytes();
        // Reserve the bytes against the cap first so concurrent growers cannot overshoot.
        let mut cur = self.shared_bytes.load(Ordering::Relaxed);
        loop {
            let new = cur.saturating_add(bytes);
            if new > self.cap_bytes {
                return Err(GrowError::Cap { bytes, cap_bytes: self.cap_bytes });
            }
            match self.shared_bytes.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
        let addr = match self.platform.alloc_pages(req) {
            Ok(a) => a,
            Err(e) => {
                self.alloc_failures.fetch_add(1, Ordering::Relaxed);
                self.shared_bytes.fetch_sub(bytes, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        let batch = self.platform.max_conversion_pages().max(1);
        let total = req.pages.get();
        let mut done = 0;
        while done < total {
            let n = batch.min(total - done);
            let at = addr + (done * PAGE_SIZE) as u64;
            if let Err(e) = self.decrypt(at, PageCount(n)) {
                // Undo: the converted prefix goes back to private, the unconverted
                // suffix is freed, the failed batch stays quarantined.
                if done > 0 {
                    // A failure here quarantines those pages too (counted inside); the
                    // error to report is the original one.
                    let _ = self.encrypt_or_quarantine_then_free(addr, PageCount(done));
                }
                let rest = total - done - n;
                if rest > 0 {
                    self.platform.free_pages(at + (n * PAGE_SIZE) as u64, PageCount(rest));
                }
                self.shared_bytes.fetch_sub(bytes, Ordering::Relaxed);
                return Err(e.into());
            }
            done += n;
        }
        self.shared_bytes_peak.fetch_max(self.shared_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(addr)
    }

    /// Converts shared pages back to private and frees them. Pages whose conversion
    /// fails are quarantined (counted, never freed).
    ///
    /// # Errors
    /// The first conversion failure; the other batches are still processed.
    pub fn free_shared(&self, addr: PhysAddr, pages: PageCount) -> Result<(), PlatformError> {
        let r = self.encrypt_or_quarantine_then_free(addr, pages);
        self.shared_bytes.fetch_sub(pages.bytes(), Ordering::Relaxed);
        r
    }

    /// Takes shared pages out of service for good (e.g. a strategy found them in an
    /// inconsistent state): counted as quarantined and as no longer committed.
    pub fn quarantine_shared(&self, pages: PageCount) {
        self.quarantined_pages.fetch_add(pages.get() as u64, Ordering::Relaxed);
        self.shared_bytes.fetch_sub(pages.bytes(), Ordering::Relaxed);
    }

    fn encrypt_or_quarantine_then_free(&self, addr: PhysAddr, pages: PageCount) -> Result<(), PlatformError> {
        let batch = self.platform.max_conversion_pages().max(1);
        let mut first_err = None;
        let mut done = 0;
        while done < pages.get() {
            let n = batch.min(pages.get() - done);
            let at = addr + (done * PAGE_SIZE) as u64;
            match self.encrypt(at, PageCount(n)) {
                Ok(()) => self.platform.free_pages(at, PageCount(n)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
            done += n;
        }
        first_err.map_or(Ok(()), Err)
    }

    fn decrypt(&self, addr: PhysAddr, pages: PageCount) -> Result<(), PlatformError> {
        let t0 = self.platform.now_ns();
        let r = self.platform.set_decrypted(addr, pages);
        self.conversion_ns.fetch_add(self.platform.now_ns().saturating_sub(t0), Ordering::Relaxed);
        self.decrypt_calls.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(()) => {
                self.pages_decrypted.fetch_add(pages.get() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.failed_calls.fetch_add(1, Ordering::Relaxed);
                self.quarantined_pages.fetch_add(pages.get() as u64, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn encrypt(&self, addr: PhysAddr, pages: PageCount) -> Result<(), PlatformError> {
        let t0 = self.platform.now_ns();
        let r = self.platform.set_encrypted(addr, pages);
        self.conversion_ns.fetch_add(self.platform.now_ns().saturating_sub(t0), Ordering::Relaxed);
        self.encrypt_calls.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(()) => {
                self.pages_encrypted.fetch_add(pages.get() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.failed_calls.fetch_add(1, Ordering::Relaxed);
                self.quarantined_pages.fetch_add(pages.get() as u64, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ConversionStats {
        ConversionStats {
            decrypt_calls: self.decrypt_calls.load(Ordering::Relaxed),
            pages_decrypted: self.pages_decrypted.load(Ordering::Relaxed),
            encrypt_calls: self.encrypt_calls.load(Ordering::Relaxed),
            pages_encrypted: self.pages_encrypted.load(Ordering::Relaxed),
            failed_calls: self.failed_calls.load(Ordering::Relaxed),
            quarantined_pages: self.quarantined_pages.load(Ordering::Relaxed),
            alloc_failures: self.alloc_failures.load(Ordering::Relaxed),
            conversion_ns: self.conversion_ns.load(Ordering::Relaxed),
            shared_bytes: self.shared_bytes.load(Ordering::Relaxed) as u64,
            shared_bytes_peak: self.shared_bytes_peak.load(Ordering::Relaxed) as u64,
        }
    }
}
