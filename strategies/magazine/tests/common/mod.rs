//! Shared test configuration.
#![allow(dead_code)]

use bounce_framework::sim::SimGuest;
use bounce_framework::Platform;
use bounce_magazine::{Magazine, MagazineConfig};
use bounce_pools::PoolConfig;

/// The conformance configuration: the default class sizes with small targets, so the
/// pools stay between 1 and 32 MiB on the suite's 128 MiB guest (targets ≈ 6.5 MiB of
/// buffers, a 24 MiB cap); magazine sizes are the defaults.
pub fn small_config() -> MagazineConfig {
    MagazineConfig { pools: PoolConfig::small_seed(), ..MagazineConfig::default() }
}

/// The magazine strategy with [`small_config`] on `platform`.
pub fn small<P: Platform>(platform: &P) -> Magazine<P> {
    Magazine::new(platform.clone(), small_config()).expect("magazine strategy on the suite guest")
}

/// The suite's factory.
pub fn suite(guest: &SimGuest) -> Magazine<SimGuest> {
    small(guest)
}

/// A simulated guest whose IRQ-safe lock can be told to fail the next `n` `try_lock`
/// calls: deterministic depot-lock contention (only the magazine depot uses
/// `try_lock`). Everything else forwards to the [`SimGuest`].
pub mod contended {
    use std::fmt;
    use std::sync::atomic::{AtomicU64, Ordering};

    use bounce_framework::sim::{SimGuest, SimLock};
    use bounce_framework::{
        BouncedEvent, DmaAddr, IrqState, LogLevel, PageCount, PageRequest, PhysAddr, Platform, PlatformError,
        RawIrqLock,
    };

    static FAIL_TRY_LOCKS: AtomicU64 = AtomicU64::new(0);

    /// The next `n` `try_lock` calls fail as if another CPU held the lock.
    pub fn contend(n: u64) {
        FAIL_TRY_LOCKS.store(n, Ordering::SeqCst);
    }

    /// Injected failures not consumed yet.
    pub fn pending() -> u64 {
        FAIL_TRY_LOCKS.load(Ordering::SeqCst)
    }

    /// [`SimLock`] with injectable `try_lock` failures.
    pub struct FlakyLock(SimLock);

    // SAFETY: mutual exclusion is `SimLock`'s; an injected failure only refuses a lock
    // that would have been granted, which never grants two holders.
    unsafe impl RawIrqLock for FlakyLock {
        fn new() -> Self {
            Self(SimLock::new())
        }
        fn lock_irqsave(&self) -> IrqState {
            self.0.lock_irqsave()
        }
        fn try_lock_irqsave(&self) -> Option<IrqState> {
            let mut n = FAIL_TRY_LOCKS.load(Ordering::SeqCst);
            while n > 0 {
                match FAIL_TRY_LOCKS.compare_exchange(n, n - 1, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => return None,
                    Err(seen) => n = seen,
                }
            }
            self.0.try_lock_irqsave()
        }
        unsafe fn unlock_irqrestore(&self, state: IrqState) {
            // SAFETY: forwarded contract: the caller holds the lock.
            unsafe { self.0.unlock_irqrestore(state) }
        }
    }

    /// The guest with [`FlakyLock`].
    #[derive(Clone)]
    pub struct ContendedGuest(pub SimGuest);

    impl Platform for ContendedGuest {
        type Lock = FlakyLock;
        fn alloc_pages(&self, req: PageRequest) -> Result<PhysAddr, PlatformError> {
            self.0.alloc_pages(req)
        }
        fn free_pages(&self, addr: PhysAddr, pages: PageCount) {
            self.0.free_pages(addr, pages);
        }
        fn set_decrypted(&self, addr: PhysAddr, pages: PageCount) -> Result<(), PlatformError> {
            self.0.set_decrypted(addr, pages)
        }
        fn set_encrypted(&self, addr: PhysAddr, pages: PageCount) -> Result<(), PlatformError> {
            self.0.set_encrypted(addr, pages)
        }
        fn max_conversion_pages(&self) -> usize {
            self.0.max_conversion_pages()
        }
        fn current_cpu(&self) -> usize {
            self.0.current_cpu()
        }
        fn cpu_count(&self) -> usize {
            self.0.cpu_count()
        }
        fn total_ram_bytes(&self) -> usize {
            self.0.total_ram_bytes()
        }
        fn is_confidential(&self) -> bool {
            self.0.is_confidential()
        }
        fn phys_to_dma(&self, addr: PhysAddr) -> DmaAddr {
            self.0.phys_to_dma(addr)
        }
        fn dma_to_phys(&self, addr: DmaAddr) -> PhysAddr {
            self.0.dma_to_phys(addr)
        }
        fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize) {
            self.0.copy(dst, src, len);
        }
        fn fill(&self, dst: PhysAddr, byte: u8, len: usize) {
            self.0.fill(dst, byte, len);
        }
        fn now_ns(&self) -> u64 {
            self.0.now_ns()
        }
        fn wake_refill(&self) {
            self.0.wake_refill();
        }
        fn log(&self, level: LogLevel, args: fmt::Arguments<'_>) {
            self.0.log(level, args);
        }
        fn trace_bounced(&self, event: &BouncedEvent<'_>) {
            self.0.trace_bounced(event);
        }
    }
}
