//! A minimal test-only strategy: one fixed pool of 2 KiB granules, first fit under one
//! lock. It exists to run the conformance suite inside the framework's own tests; the
//! real strategies live in `bounce-strategies`.

#![allow(dead_code)]

use bounce_framework::sim::{SimGuest, SimLock};
use bounce_framework::{
    AuditError, AuditReport, Detail, Device, IrqMutex, Located, MapError, PageCount, PageRequest, PhysAddr, Platform,
    PoolStats, ReleaseError, Released, Request, Reservation, SharedMemory, Strategy, UsageCounter, IO_TLB_SEGSIZE,
    IO_TLB_SIZE,
};

#[derive(Clone, Copy)]
struct Rec {
    tlb: PhysAddr,
    orig: PhysAddr,
    size: usize,
    first: usize,
    n: usize,
}

struct State {
    owner: Vec<Option<usize>>,
    recs: Vec<Option<Rec>>,
}

pub struct FirstFit {
    guest: SimGuest,
    shared: SharedMemory<SimGuest>,
    base: PhysAddr,
    granules: usize,
    state: IrqMutex<SimLock, State>,
    usage: UsageCounter,
    /// Broken on purpose: the pool is never converted to shared.
    pub private_pool: bool,
}

impl FirstFit {
    pub fn new(guest: &SimGuest, pool_bytes: usize) -> Self {
        Self::build(guest, pool_bytes, false)
    }

    /// A strategy that "forgets" to convert its pool: the device model must catch it.
    pub fn broken_private(guest: &SimGuest, pool_bytes: usize) -> Self {
        Self::build(guest, pool_bytes, true)
    }

    fn build(guest: &SimGuest, pool_bytes: usize, private_pool: bool) -> Self {
        let shared = SharedMemory::new(guest.clone(), usize::MAX);
        let req = PageRequest::sleeping(PageCount::for_bytes(pool_bytes));
        let base = if private_pool { guest.alloc_pages(req).unwrap() } else { shared.alloc_shared(req).unwrap() };
        let granules = pool_bytes / IO_TLB_SIZE;
        Self {
            guest: guest.clone(),
            shared,
            base,
            granules,
            state: IrqMutex::new(State { owner: vec![None; granules], recs: vec![None; granules] }),
            usage: UsageCounter::new(),
            private_pool,
        }
    }

    fn granule(&self, addr: PhysAddr) -> Option<usize> {
        let off = addr.offset_from(self.base)? as usize / IO_TLB_SIZE;
        (off < self.granules).then_some(off)
    }

    fn rec_at(&self, st: &State, addr: PhysAddr) -> Option<Rec> {
        let g = self.granule(addr)?;
        let r = st.recs[st.owner[g]?]?;
        (addr >= r.tlb && addr.0 < r.tlb.0 + r.size as u64).then_some(r)
    }
}

impl Strategy for FirstFit {
    fn name(&self) -> &'static str {
        "first-fit-test"
    }

    fn reserve(&self, req: &Request) -> Result<Reservation, MapError> {
        let offset = (req.orig.0 & req.min_align_mask) as usize;
        let align =
            ((req.min_align_mask + 1).next_power_of_two().max(req.alloc_align_mask + 1) as usize).max(IO_TLB_SIZE);
        let n = (offset + req.alloc_size).div_ceil(IO_TLB_SIZE);
        let mut st = self.state.lock();
        let mut g = 0;
        while g + n <= self.granules {
            let addr = self.base.0 + (g * IO_TLB_SIZE) as u64;
            if addr % align as u64 != 0 {
                g += 1;
                continue;
            }
            if let Some(busy) = (g..g + n).position(|i| st.owner[i].is_some()) {
                g += busy + 1;
                continue;
            }
            let tlb = PhysAddr(addr + offset as u64);
            for i in g..g + n {
                st.owner[i] = Some(g);
            }
            st.recs[g] = Some(Rec { tlb, orig: req.orig, size: req.alloc_size, first: g, n });
            self.usage.add(n * IO_TLB_SIZE);
            return Ok(Reservation { addr: tlb });
        }
        let used = self.usage.used() / IO_TLB_SIZE;
        Err(MapError::Exhausted {
            size: req.size,
            detail: Detail::new("test pool full for {} bytes")
                .with("size", req.size)
                .with("granules", self.granules)
                .with("used", used),
        })
    }

    fn release(&self, addr: PhysAddr) -> Result<Released, ReleaseError> {
        let mut st = self.state.lock();
        let Some(g) = self.granule(addr) else { return Err(ReleaseError::Foreign) };
        let Some(r) = st.owner[g].and_then(|o| st.recs[o]) else { return Err(ReleaseError::NotMapped) };
        if r.tlb != addr {
            return Err(ReleaseError::NotStart { start: r.tlb });
        }
        for i in r.first..r.first + r.n {
            st.owner[i] = None;
        }
        st.recs[r.first] = None;
        self.usage.sub(r.n * IO_TLB_SIZE);
        Ok(Released { orig: r.orig, size: r.size })
    }

    fn locate(&self, addr: PhysAddr) -> Option<Located> {
        let st = self.state.lock();
        let r = self.rec_at(&st, addr)?;
        let off = addr.0 - r.tlb.0;
        Some(Located { start: r.tlb, orig: r.orig + off, remaining: r.size - off as usize })
    }

    fn owns(&self, addr: PhysAddr) -> bool {
        self.granule(addr).is_some()
    }

    fn max_mapping_size(&self, dev: &Device) -> usize {
        IO_TLB_SIZE * IO_TLB_SEGSIZE - dev.min_align_slot_bytes()
    }

    fn addressing_limit(&self) -> PhysAddr {
        self.base + (self.granules * IO_TLB_SIZE) as u64
    }

    fn stats(&self) -> PoolStats {
        PoolStats {
            capacity_bytes: self.granules * IO_TLB_SIZE,
            used_bytes: self.usage.used(),
            used_hiwater_bytes: self.usage.hiwater(),
            transient_bytes: 0,
            conversions: self.shared.stats(),
            refill: bounce_framework::RefillStats::default(),
        }
    }

    fn reset_hiwater(&self) {
        self.usage.reset_hiwater();
    }

    fn audit(&self) -> Result<AuditReport, AuditError> {
        let st = self.state.lock();
        let mut used = 0;
        let mut live = 0;
        for (g, r) in st.recs.iter().enumerate() {
            if let Some(r) = r {
                live += 1;
                used += r.n * IO_TLB_SIZE;
                if (r.first..r.first + r.n).any(|i| st.owner[i] != Some(g)) {
                    return Err(AuditError(format!("granules of mapping at {} not owned by it", r.tlb)));
                }
            }
        }
        let owned = st.owner.iter().filter(|o| o.is_some()).count() * IO_TLB_SIZE;
        if used != self.usage.used() || owned != used {
            return Err(AuditError(format!("used counter {} != records {used} != owned {owned}", self.usage.used())));
        }
        let _ = &self.guest;
        Ok(AuditReport {
            live_mappings: live,
            used_bytes: used,
            free_bytes: self.granules * IO_TLB_SIZE - used,
            owned_bytes: self.granules * IO_TLB_SIZE,
            quarantined_pages: self.shared.stats().quarantined_pages,
        })
    }
}
