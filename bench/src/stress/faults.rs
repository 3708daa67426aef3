//! Fault injection (`--faults`) and the sabotaged strategies that prove the checks
//! catch a broken strategy.

use super::{
    thread, thread_rng, AtomicU64, AuditError, AuditReport, BackgroundReport, Device, Duration, Located, MapError,
    Ordering, PhysAddr, PoolStats, ReleaseError, Released, Request, Reservation, RngExt, Sabotage, Shared, Strategy,
    PAGE_SIZE, SABOTAGE_EVERY,
};

/// The fault controller (`--faults`): until the workers are done, every few
/// milliseconds arm one fault, in bursts. Conversion faults stop once an eighth of the
/// guest's pages is quarantined, so the run keeps enough memory to test anything.
pub(super) fn inject_faults<S: Strategy>(sh: &Shared<S>, seed: u64) -> u64 {
    let mut rng = thread_rng(seed, "stress-faults", 0);
    let f = sh.guest.faults();
    let budget = (sh.guest.config().memory_bytes / PAGE_SIZE / 8) as u64;
    let mut armed = 0;
    while sh.done.load(Ordering::Acquire) < sh.threads {
        thread::sleep(Duration::from_millis(rng.random_range(2..=20)));
        let room = sh.bouncer.pool_stats().conversions.quarantined_pages < budget;
        match rng.random_range(0..5u32) {
            0 if room => f.fail_nth_decrypt(rng.random_range(1..=3)),
            1 if room => f.fail_nth_encrypt(rng.random_range(1..=2)),
            2 if room => {
                f.fail_all_decrypt(true);
                thread::sleep(Duration::from_micros(rng.random_range(200..=2000)));
                f.fail_all_decrypt(false);
            }
            3 => {
                f.fail_all_alloc(true);
                thread::sleep(Duration::from_micros(rng.random_range(500..=5000)));
                f.fail_all_alloc(false);
            }
            4 => f.fail_nth_alloc(rng.random_range(1..=4)),
            _ => continue,
        }
        armed += 1;
    }
    f.clear();
    armed
}

/// A strategy with a deliberate bug (see [`Sabotage`]); everything else passes through.
pub(super) struct Sabotaged<S> {
    pub(super) inner: S,
    pub(super) kind: Sabotage,
    pub(super) calls: AtomicU64,
}

impl<S: Strategy> Sabotaged<S> {
    fn fires(&self) -> bool {
        self.calls.fetch_add(1, Ordering::Relaxed) % SABOTAGE_EVERY == SABOTAGE_EVERY - 1
    }
}

impl<S: Strategy> Strategy for Sabotaged<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn reserve(&self, req: &Request) -> Result<Reservation, MapError> {
        self.inner.reserve(req)
    }
    fn release(&self, addr: PhysAddr) -> Result<Released, ReleaseError> {
        if self.kind == Sabotage::Leak && self.fires() {
            if let Some(l) = self.inner.locate(addr).filter(|l| l.start == addr) {
                return Ok(Released { orig: l.orig, size: l.remaining });
            }
        }
        self.inner.release(addr)
    }
    fn locate(&self, addr: PhysAddr) -> Option<Located> {
        let l = self.inner.locate(addr)?;
        if self.kind == Sabotage::Locate && self.fires() {
            return Some(Located { orig: l.orig + 1, ..l });
        }
        Some(l)
    }
    fn owns(&self, addr: PhysAddr) -> bool {
        self.inner.owns(addr)
    }
    fn max_mapping_size(&self, dev: &Device) -> usize {
        self.inner.max_mapping_size(dev)
    }
    fn addressing_limit(&self) -> PhysAddr {
        self.inner.addressing_limit()
    }
    fn stats(&self) -> PoolStats {
        self.inner.stats()
    }
    fn reset_hiwater(&self) {
        self.inner.reset_hiwater();
    }
    fn background_pending(&self) -> bool {
        self.inner.background_pending()
    }
    fn run_background(&self) -> BackgroundReport {
        self.inner.run_background()
    }
    fn audit(&self) -> Result<AuditReport, AuditError> {
        self.inner.audit()
    }
}
