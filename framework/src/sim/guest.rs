//! The simulated guest platform.

use std::cell::Cell;
use std::fmt;
use std::string::{String, ToString};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use std::vec::Vec;

use parking_lot::{Condvar, Mutex};

use crate::addr::{DmaAddr, PageCount, PhysAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::error::PlatformError;
use crate::lock::{IrqState, RawIrqLock};
use crate::platform::{BouncedEvent, LogLevel, PageRequest, Platform};

/// Which kind of guest is simulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlatformKind {
    /// No memory encryption: conversions are free and instant.
    Plain,
    /// Intel TDX: `MapGPA` per call, page accept on the way back, shared bit in the GPA.
    Tdx,
    /// AMD SEV-SNP: Page State Change requests (64 entries each) plus `PVALIDATE`.
    Snp,
}

impl PlatformKind {
    /// The name used on command lines (`plain`, `tdx`, `snp`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Tdx => "tdx",
            Self::Snp => "snp",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "plain" => Some(Self::Plain),
            "tdx" => Some(Self::Tdx),
            "snp" => Some(Self::Snp),
            _ => None,
        }
    }
}

/// Conversion cost: a fixed cost per call plus a cost per page, per direction.
///
/// Nobody publishes authoritative per-page figures (SPEC §1), so the defaults are
/// assumptions within the ranges reported, documented per platform:
///
/// | platform | to shared (call + page) | to private (call + page) | shared bit |
/// |---|---|---|---|
/// | plain | 0 | 0 | none |
/// | tdx | 20 µs + 1 µs | 20 µs + 8 µs (page accept: 8–150 µs measured) | = physical |
/// | snp | 5 µs + 1.5 µs | 5 µs + 1.5 µs (PSC of 64 entries + PVALIDATE) | = physical (C-bit clear) |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CostModel {
    /// The kind simulated.
    pub kind: PlatformKind,
    /// Fixed cost of one `set_decrypted` call.
    pub decrypt_call_ns: u64,
    /// Cost per page converted to shared.
    pub decrypt_page_ns: u64,
    /// Fixed cost of one `set_encrypted` call.
    pub encrypt_call_ns: u64,
    /// Cost per page converted to private.
    pub encrypt_page_ns: u64,
    /// SNP: entries per Page State Change request; each request pays the call cost.
    pub entries_per_request: Option<u64>,
    /// A GPA bit set in every bus address (`phys_to_dma`), if any. `None` by default for
    /// every platform, as in Linux 6.12 on x86, where `phys_to_dma_unencrypted` is plain
    /// `phys_to_dma` (the TDX shared bit lives in the guest's page tables, not in the bus
    /// address). Set it to model a platform whose devices see the shared alias; then
    /// devices with narrow masks cannot reach bounce memory at all.
    pub shared_bit: Option<u32>,
}

impl CostModel {
    /// The default model for a platform kind.
    pub const fn for_kind(kind: PlatformKind) -> Self {
        match kind {
            PlatformKind::Plain => Self {
                kind,
                decrypt_call_ns: 0,
                decrypt_page_ns: 0,
                encrypt_call_ns: 0,
                encrypt_page_ns: 0,
                entries_per_request: None,
                shared_bit: None,
            },
            PlatformKind::Tdx => Self {
                kind,
                decrypt_call_ns: 20_000,
                decrypt_page_ns: 1_000,
                encrypt_call_ns: 20_000,
                encrypt_page_ns: 8_000,
                entries_per_request: None,
                shared_bit: None,
            },
            PlatformKind::Snp => Self {
                kind,
                decrypt_call_ns: 5_000,
                decrypt_page_ns: 1_500,
                encrypt_call_ns: 5_000,
                encrypt_page_ns: 1_500,
                entries_per_request: Some(64),
                shared_bit: None,
            },
        }
    }

    /// Nanoseconds one call converting `pages` pages costs.
    pub fn cost_ns(&self, pages: u64, to_shared: bool) -> u64 {
        let (call, page) = if to_shared {
            (self.decrypt_call_ns, self.decrypt_page_ns)
        } else {
            (self.encrypt_call_ns, self.encrypt_page_ns)
        };
        let calls = self.entries_per_request.map_or(1, |e| pages.div_ceil(e).max(1));
        calls * call + pages * page
    }
}

/// Configuration of a [`SimGuest`].
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Bytes of guest memory in the arena (allocated lazily by the host OS).
    pub memory_bytes: usize,
    /// Physical address of the arena's first byte (page aligned).
    pub base: PhysAddr,
    /// Number of CPUs.
    pub cpus: usize,
    /// Conversion costs.
    pub model: CostModel,
    /// Burn the modelled conversion time for real (busy-wait) instead of only adding it
    /// to virtual time; benchmarks turn this on so conversions cost throughput.
    pub spin: bool,
    /// The most pages one conversion call may cover (`usize::MAX` for no bound).
    pub max_conversion_pages: usize,
    /// Count bytes copied into and out of shared pages (off for benchmarks).
    pub track_copies: bool,
}

impl SimConfig {
    /// A guest of `kind` with `memory_bytes` of memory at 1 MiB and `cpus` CPUs.
    pub fn new(kind: PlatformKind, memory_bytes: usize, cpus: usize) -> Self {
        Self {
            memory_bytes,
            base: PhysAddr(1 << 20),
            cpus: cpus.max(1),
            model: CostModel::for_kind(kind),
            spin: false,
            max_conversion_pages: usize::MAX,
            track_copies: false,
        }
    }
}

impl Default for SimConfig {
    /// A 256 MiB TDX guest with 2 CPUs.
    fn default() -> Self {
        Self::new(PlatformKind::Tdx, 256 << 20, 2)
    }
}

/// The state of one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageState {
    /// Private (encrypted): the device cannot touch it.
    Private = 0,
    /// Shared (decrypted): the device and host can touch it.
    Shared = 1,
    /// A conversion failed: unknown state, must never be used or freed again.
    Unknown = 2,
}

impl PageState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Private,
            1 => Self::Shared,
            _ => Self::Unknown,
        }
    }
}

/// Something the guest or device did that a correct bounce layer never does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What happened.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

/// Fault injection: fail the N-th next conversion or allocation, fail all of them, or
/// delay conversions. Countdowns: 0 disarmed, N fails the N-th call from now.
#[derive(Debug, Default)]
pub struct FaultInjector {
    decrypt_countdown: AtomicU64,
    encrypt_countdown: AtomicU64,
    alloc_countdown: AtomicU64,
    decrypt_fail_all: AtomicBool,
    encrypt_fail_all: AtomicBool,
    alloc_fail_all: AtomicBool,
    delay_ns: AtomicU64,
}

impl FaultInjector {
    /// The `nth` next `set_decrypted` call fails (1 = the next one).
    pub fn fail_nth_decrypt(&self, nth: u64) {
        self.decrypt_countdown.store(nth, Ordering::SeqCst);
    }
    /// The `nth` next `set_encrypted` call fails.
    pub fn fail_nth_encrypt(&self, nth: u64) {
        self.encrypt_countdown.store(nth, Ordering::SeqCst);
    }
    /// The `nth` next page allocation fails.
    pub fn fail_nth_alloc(&self, nth: u64) {
        self.alloc_countdown.store(nth, Ordering::SeqCst);
    }
    /// Every `set_decrypted` fails while `on`.
    pub fn fail_all_decrypt(&self, on: bool) {
        self.decrypt_fail_all.store(on, Ordering::SeqCst);
    }
    /// Every `set_encrypted` fails while `on`.
    pub fn fail_all_encrypt(&self, on: bool) {
        self.encrypt_fail_all.store(on, Ordering::SeqCst);
    }
    /// Every page allocation fails while `on`.
    pub fn fail_all_alloc(&self, on: bool) {
        self.alloc_fail_all.store(on, Ordering::SeqCst);
    }
    /// Every conversion sleeps this long first (a slow or starved hypervisor).
    pub fn delay_conversions(&self, d: Duration) {
        self.delay_ns.store(d.as_nanos() as u64, Ordering::SeqCst);
    }
    /// Disarms everything.
    pub fn clear(&self) {
        for c in [&self.decrypt_countdown, &self.encrypt_countdown, &self.alloc_countdown, &self.delay_ns] {
            c.store(0, Ordering::SeqCst);
        }
        for b in [&self.decrypt_fail_all, &self.encrypt_fail_all, &self.alloc_fail_all] {
            b.store(false, Ordering::SeqCst);
        }
    }

    fn fires(countdown: &AtomicU64, all: &AtomicBool) -> bool {
        if all.load(Ordering::SeqCst) {
            return true;
        }
        let mut cur = countdown.load(Ordering::SeqCst);
        while cur != 0 {
            match countdown.compare_exchange(cur, cur - 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return cur == 1,
                Err(seen) => cur = seen,
            }
        }
        false
    }
}

/// Counters the simulated hardware keeps, to cross-check what the framework reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// `set_decrypted` calls.
    pub decrypt_calls: u64,
    /// Pages made shared.
    pub pages_decrypted: u64,
    /// `set_encrypted` calls.
    pub encrypt_calls: u64,
    /// Pages made private.
    pub pages_encrypted: u64,
    /// Modelled conversion time.
    pub virtual_ns: u64,
    /// Pages currently shared.
    pub shared_pages: u64,
    /// Pages in unknown state.
    pub unknown_pages: u64,
    /// Pages currently allocated.
    pub allocated_pages: u64,
    /// CPU bytes copied into shared pages (with `track_copies`).
    pub bytes_into_shared: u64,
    /// CPU bytes copied out of shared pages (with `track_copies`).
    pub bytes_out_of_shared: u64,
    /// CPU copy calls that touched shared pages (with `track_copies`).
    pub shared_copy_calls: u64,
    /// Refill wake-ups requested.
    pub wakeups: u64,
    /// [`Platform::sleep`] calls (only `DMA_ATTR_MAY_BLOCK` maps sleep).
    pub sleeps: u64,
}

struct PageAllocator {
    bitmap: Vec<u64>,
    pages: usize,
    allocated: usize,
}

impl PageAllocator {
    fn is_set(&self, i: usize) -> bool {
        self.bitmap[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize, v: bool) {
        if v {
            self.bitmap[i / 64] |= 1 << (i % 64);
        } else {
            self.bitmap[i / 64] &= !(1 << (i % 64));
        }
    }
    /// First fit of `n` free pages among the first `limit` pages.
    fn find(&self, n: usize, limit: usize) -> Option<usize> {
        let mut run = 0;
        let mut i = 0;
        while i < limit {
            if i % 64 == 0 && self.bitmap[i / 64] == u64::MAX {
                run = 0;
                i += 64;
                continue;
            }
            if self.is_set(i) {
                run = 0;
            } else {
                run += 1;
                if run == n {
                    return Some(i + 1 - n);
                }
            }
            i += 1;
        }
        None
    }
}

struct Inner {
    cfg: SimConfig,
    /// The guest memory: a `Box<[u8]>` of `mem_len` bytes turned into a raw pointer
    /// (`Box::into_raw`) and rebuilt only in `Drop`. No `Box` may own it while `mem` is
    /// in use: moving a `Box` asserts unique access, which would invalidate `mem` (undefined
    /// behaviour under Stacked and Tree Borrows; miri reports it).
    mem: *mut u8,
    mem_len: usize,
    states: Vec<AtomicU8>,
    alloc: Mutex<PageAllocator>,
    faults: FaultInjector,
    start: Instant,
    /// The time [`Platform::now_ns`] reports when set with [`SimGuest::set_clock`];
    /// `u64::MAX`: the real time since boot.
    clock_ns: AtomicU64,
    virtual_ns: AtomicU64,
    decrypt_calls: AtomicU64,
    pages_decrypted: AtomicU64,
    encrypt_calls: AtomicU64,
    pages_encrypted: AtomicU64,
    bytes_into_shared: AtomicU64,
    bytes_out_of_shared: AtomicU64,
    shared_copy_calls: AtomicU64,
    wakeups: AtomicU64,
    sleeps: AtomicU64,
    wake_pending: AtomicBool,
    wake_lock: Mutex<()>,
    wake_cv: Condvar,
    violations: Mutex<Vec<Violation>>,
    violation_count: AtomicUsize,
    logs: Mutex<Vec<(LogLevel, String)>>,
    trace: Mutex<Option<Vec<String>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: `mem` and `mem_len` come from `Box::into_raw` of a `Box<[u8]>` of
        // `mem_len` bytes in `SimGuest::new`; `Inner` is dropped once, and with it the
        // last use of `mem`.
        drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(self.mem, self.mem_len)) });
    }
}

// SAFETY: `mem` is an owned allocation (rebuilt and freed only in `Drop`) that lives as
// long as `Inner` and is never reallocated; all access through `mem` goes through
// bounds-checked copies.
unsafe impl Send for Inner {}
// SAFETY: as above; concurrent copies to disjoint ranges are what a correct bounce layer
// does, and the simulation reports overlapping use of shared pages as violations.
unsafe impl Sync for Inner {}

/// The simulated guest: a cheap, cloneable handle.
#[derive(Clone)]
pub struct SimGuest {
    inner: Arc<Inner>,
}

impl fmt::Debug for SimGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimGuest").field("config", &self.inner.cfg).finish_non_exhaustive()
    }
}

const MAX_LOGS: usize = 10_000;
const MAX_VIOLATIONS: usize = 1_000;

thread_local! {
    static CPU: Cell<Option<usize>> = const { Cell::new(None) };
}
static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);

/// Pins the calling thread to a simulated CPU id (`None`: round-robin default).
pub fn set_current_cpu(cpu: Option<usize>) {
    CPU.with(|c| c.set(cpu));
}

/// The calling thread's pinned CPU, if set.
pub fn current_cpu_override() -> Option<usize> {
    CPU.with(Cell::get)
}

impl SimGuest {
    /// A guest with `cfg`.
    ///
    /// # Panics
    /// When the memory size is zero or not page aligned, or the base is not page
    /// aligned.
    pub fn new(cfg: SimConfig) -> Self {
        assert!(cfg.memory_bytes > 0 && cfg.memory_bytes % PAGE_SIZE == 0, "memory must be whole pages");
        assert!(cfg.base.is_aligned(PAGE_SIZE as u64), "base must be page aligned");
        let mem = Box::into_raw(vec![0u8; cfg.memory_bytes].into_boxed_slice()).cast::<u8>();
        let pages = cfg.memory_bytes / PAGE_SIZE;
        let inner = Inner {
            mem,
            mem_len: cfg.memory_bytes,
            states: (0..pages).map(|_| AtomicU8::new(PageState::Private as u8)).collect(),
            alloc: Mutex::new(PageAllocator { bitmap: vec![0; pages.div_ceil(64)], pages, allocated: 0 }),
            faults: FaultInjector::default(),
            start: Instant::now(),
            clock_ns: AtomicU64::new(u64::MAX),
            virtual_ns: AtomicU64::new(0),
            decrypt_calls: AtomicU64::new(0),
            pages_decrypted: AtomicU64::new(0),
            encrypt_calls: AtomicU64::new(0),
            pages_encrypted: AtomicU64::new(0),
            bytes_into_shared: AtomicU64::new(0),
            bytes_out_of_shared: AtomicU64::new(0),
            shared_copy_calls: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
            wake_pending: AtomicBool::new(false),
            wake_lock: Mutex::new(()),
            wake_cv: Condvar::new(),
            violations: Mutex::new(Vec::new()),
            violation_count: AtomicUsize::new(0),
            logs: Mutex::new(Vec::new()),
            trace: Mutex::new(None),
            cfg,
        };
        Self { inner: Arc::new(inner) }
    }

    /// A guest of `kind` with `memory_bytes` and `cpus`, other settings default.
    pub fn with(kind: PlatformKind, memory_bytes: usize, cpus: usize) -> Self {
        Self::new(SimConfig::new(kind, memory_bytes, cpus))
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// Fault injection controls.
    pub fn faults(&self) -> &FaultInjector {
        &self.inner.faults
    }

    /// The arena's first address.
    pub fn base(&self) -> PhysAddr {
        self.inner.cfg.base
    }

    /// The arena's end (exclusive).
    pub fn end(&self) -> PhysAddr {
        self.inner.cfg.base + self.inner.mem_len as u64
    }

    fn page_index(&self, addr: PhysAddr) -> Option<usize> {
        let off = addr.offset_from(self.inner.cfg.base)?;
        let i = (off >> PAGE_SHIFT) as usize;
        (i < self.inner.states.len()).then_some(i)
    }

    /// The state of the page holding `addr` (`None` outside the arena).
    pub fn page_state(&self, addr: PhysAddr) -> Option<PageState> {
        self.page_index(addr).map(|i| PageState::from_u8(self.inner.states[i].load(Ordering::SeqCst)))
    }

    /// Whether every page of `[addr, addr+len)` is in the arena and in `state`.
    pub fn range_is(&self, addr: PhysAddr, len: usize, state: PageState) -> bool {
        self.range_pages(addr, len).is_some_and(|(a, b)| {
            (a..b).all(|i| PageState::from_u8(self.inner.states[i].load(Ordering::SeqCst)) == state)
        })
    }

    fn range_pages(&self, addr: PhysAddr, len: usize) -> Option<(usize, usize)> {
        if len == 0 {
            return self.page_index(addr).map(|i| (i, i));
        }
        let first = self.page_index(addr)?;
        let last = self.page_index(addr.checked_add(len as u64 - 1)?)?;
        Some((first, last + 1))
    }

    /// Records a violation (also printed to stderr once per 100).
    pub fn violation(&self, what: impl Into<String>) {
        let n = self.inner.violation_count.fetch_add(1, Ordering::SeqCst);
        let what = what.into();
        if n % 100 == 0 {
            std::eprintln!("bounce sim violation #{}: {what}", n + 1);
        }
        let mut v = self.inner.violations.lock();
        if v.len() < MAX_VIOLATIONS {
            v.push(Violation { what });
        }
    }

    /// Violations recorded so far (the first 1000).
    pub fn violations(&self) -> Vec<Violation> {
        self.inner.violations.lock().clone()
    }

    /// Number of violations recorded.
    pub fn violation_count(&self) -> usize {
        self.inner.violation_count.load(Ordering::SeqCst)
    }

    /// Panics listing the violations, if any.
    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(v.is_empty(), "{} simulation violations, first: {:?}", self.violation_count(), &v[..v.len().min(5)]);
    }

    /// Messages logged through [`Platform::log`].
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.inner.logs.lock().clone()
    }

    /// Starts (or stops) recording `swiotlb_bounced` trace lines.
    pub fn record_trace(&self, on: bool) {
        *self.inner.trace.lock() = on.then(Vec::new);
    }

    /// Trace lines recorded.
    pub fn trace_lines(&self) -> Vec<String> {
        self.inner.trace.lock().clone().unwrap_or_default()
    }

    /// Stops the guest's clock at `ns`: from now on [`Platform::now_ns`] reports `ns`
    /// until the next call, so deterministic tests drive every strategy's background
    /// rules (back-off, idle times, periods) through the platform, with no strategy
    /// specific entry point.
    pub fn set_clock(&self, ns: u64) {
        assert_ne!(ns, u64::MAX, "u64::MAX is the real clock's marker");
        self.inner.clock_ns.store(ns, Ordering::SeqCst);
    }

    /// Hardware-side counters.
    pub fn stats(&self) -> SimStats {
        let mut shared = 0;
        let mut unknown = 0;
        for s in &self.inner.states {
            match PageState::from_u8(s.load(Ordering::Relaxed)) {
                PageState::Shared => shared += 1,
                PageState::Unknown => unknown += 1,
                PageState::Private => {}
            }
        }
        let i = &self.inner;
        SimStats {
            decrypt_calls: i.decrypt_calls.load(Ordering::Relaxed),
            pages_decrypted: i.pages_decrypted.load(Ordering::Relaxed),
            encrypt_calls: i.encrypt_calls.load(Ordering::Relaxed),
            pages_encrypted: i.pages_encrypted.load(Ordering::Relaxed),
            virtual_ns: i.virtual_ns.load(Ordering::Relaxed),
            shared_pages: shared,
            unknown_pages: unknown,
            allocated_pages: i.alloc.lock().allocated as u64,
            bytes_into_shared: i.bytes_into_shared.load(Ordering::Relaxed),
            bytes_out_of_shared: i.bytes_out_of_shared.load(Ordering::Relaxed),
            shared_copy_calls: i.shared_copy_calls.load(Ordering::Relaxed),
            wakeups: i.wakeups.load(Ordering::Relaxed),
            sleeps: i.sleeps.load(Ordering::Relaxed),
        }
    }

    /// Waits up to `timeout` for a [`Platform::wake_refill`]; returns whether one came.
    /// The refill runner's sleep.
    pub fn wait_for_wake(&self, timeout: Duration) -> bool {
        if self.inner.wake_pending.swap(false, Ordering::SeqCst) {
            return true;
        }
        let mut g = self.inner.wake_lock.lock();
        if self.inner.wake_pending.swap(false, Ordering::SeqCst) {
            return true;
        }
        let _ = self.inner.wake_cv.wait_for(&mut g, timeout);
        self.inner.wake_pending.swap(false, Ordering::SeqCst)
    }

    /// Allocates private pages for a caller's buffer of `bytes` (tests and workloads).
    ///
    /// # Errors
    /// When the arena is full.
    pub fn alloc_private(&self, bytes: usize) -> Result<PhysAddr, PlatformError> {
        self.alloc_pages(PageRequest::sleeping(PageCount::for_bytes(bytes.max(1))))
    }

    /// Frees a buffer from [`SimGuest::alloc_private`].
    pub fn free_private(&self, addr: PhysAddr, bytes: usize) {
        self.free_pages(addr, PageCount::for_bytes(bytes.max(1)));
    }

    fn ptr(&self, addr: PhysAddr, len: usize) -> *mut u8 {
        let off = addr.offset_from(self.inner.cfg.base).and_then(|o| usize::try_from(o).ok());
        match off {
            Some(o) if o.checked_add(len).is_some_and(|e| e <= self.inner.mem_len) => {
                // SAFETY: `o + len <= mem_len`, so the pointer stays inside the `mem` allocation.
                unsafe { self.inner.mem.add(o) }
            }
            _ => panic!(
                "bounce sim: access {addr} + {len} bytes is outside guest memory {}..{}",
                self.base(),
                self.end()
            ),
        }
    }

    /// CPU write of `data` at `addr` (any page state but unknown).
    pub fn write(&self, addr: PhysAddr, data: &[u8]) {
        self.check_cpu_access(addr, data.len());
        let p = self.ptr(addr, data.len());
        // SAFETY: `ptr` checked `[addr, addr+len)` lies in the arena; `data` is a
        // distinct host buffer.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) }
    }

    /// CPU read of `buf.len()` bytes at `addr`.
    pub fn read(&self, addr: PhysAddr, buf: &mut [u8]) {
        self.check_cpu_access(addr, buf.len());
        let p = self.ptr(addr, buf.len());
        // SAFETY: as in `write`.
        unsafe { core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) }
    }

    /// CPU read into a new vector.
    pub fn read_vec(&self, addr: PhysAddr, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.read(addr, &mut v);
        v
    }

    fn check_cpu_access(&self, addr: PhysAddr, len: usize) {
        if let Some((a, b)) = self.range_pages(addr, len) {
            if (a..b).any(|i| self.inner.states[i].load(Ordering::Relaxed) == PageState::Unknown as u8) {
                self.violation(format!("CPU access to {addr} + {len} touches a quarantined page"));
            }
        }
    }

    /// Raw access for the device model (no state checks).
    pub(crate) fn raw_write(&self, addr: PhysAddr, data: &[u8]) {
        let p = self.ptr(addr, data.len());
        // SAFETY: as in `write`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) }
    }

    /// Raw read for the device model.
    pub(crate) fn raw_read(&self, addr: PhysAddr, buf: &mut [u8]) {
        let p = self.ptr(addr, buf.len());
        // SAFETY: as in `write`.
        unsafe { core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) }
    }

    fn convert(&self, addr: PhysAddr, pages: PageCount, to_shared: bool) -> Result<(), PlatformError> {
        let (countdown, all, calls, count) = if to_shared {
            (
                &self.inner.faults.decrypt_countdown,
                &self.inner.faults.decrypt_fail_all,
                &self.inner.decrypt_calls,
                &self.inner.pages_decrypted,
            )
        } else {
            (
                &self.inner.faults.encrypt_countdown,
                &self.inner.faults.encrypt_fail_all,
                &self.inner.encrypt_calls,
                &self.inner.pages_encrypted,
            )
        };
        let target = if to_shared { "shared" } else { "private" };
        let delay = self.inner.faults.delay_ns.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_nanos(delay));
        }
        calls.fetch_add(1, Ordering::Relaxed);
        let Some((a, b)) = self.range_pages(addr, pages.bytes()).filter(|_| addr.is_aligned(PAGE_SIZE as u64)) else {
            self.violation(format!("conversion of {} pages at {addr} outside guest memory or unaligned", pages.get()));
            return Err(PlatformError::ConversionFailed { addr, pages: pages.get(), target });
        };
        let from = if to_shared { PageState::Private } else { PageState::Shared };
        {
            let alloc = self.inner.alloc.lock();
            for i in a..b {
                let st = PageState::from_u8(self.inner.states[i].load(Ordering::SeqCst));
                if !alloc.is_set(i) || st != from {
                    self.violation(format!(
                        "conversion to {target} of page {:#x}: allocated={}, state {st:?}",
                        self.inner.cfg.base.0 + (i * PAGE_SIZE) as u64,
                        alloc.is_set(i)
                    ));
                }
            }
        }
        let cost = self.inner.cfg.model.cost_ns(pages.get() as u64, to_shared);
        self.inner.virtual_ns.fetch_add(cost, Ordering::Relaxed);
        if self.inner.cfg.spin && cost > 0 {
            let until = Instant::now() + Duration::from_nanos(cost);
            while Instant::now() < until {
                core::hint::spin_loop();
            }
        }
        if FaultInjector::fires(countdown, all) {
            for i in a..b {
                self.inner.states[i].store(PageState::Unknown as u8, Ordering::SeqCst);
            }
            return Err(PlatformError::ConversionFailed { addr, pages: pages.get(), target });
        }
        // The other view of the page holds unrelated bytes.
        let p = self.ptr(addr, pages.bytes());
        // SAFETY: `ptr` bounds-checked the range; the pages are owned by the caller
        // converting them, so nobody else accesses them now.
        unsafe { core::ptr::write_bytes(p, 0xdb, pages.bytes()) };
        let to = if to_shared { PageState::Shared } else { PageState::Private };
        for i in a..b {
            self.inner.states[i].store(to as u8, Ordering::SeqCst);
        }
        count.fetch_add(pages.get() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The simulated guest's IRQ-safe lock: a spin lock as the kernel's `spin_lock_irqsave`
/// (acquire: one compare-and-swap; release: one store, no read-modify-write), that
/// yields the thread after a short spin, since simulated CPUs are threads that the host
/// may deschedule while they hold it (no interrupts in userspace).
pub struct SimLock(AtomicBool);

/// Spins on a held [`SimLock`] before yielding the thread.
const SIM_LOCK_SPINS: u32 = 128;

impl SimLock {
    #[inline]
    fn try_take(&self) -> bool {
        self.0.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }
}

// SAFETY: `lock_irqsave` returns only after this caller's compare-and-swap moved the word
// from false to true, `try_lock_irqsave` succeeds only then, and only the holder's
// `unlock_irqrestore` stores false: mutual exclusion. Acquire on taking pairs with the
// release store on unlocking, so the protected data is ordered.
unsafe impl RawIrqLock for SimLock {
    fn new() -> Self {
        Self(AtomicBool::new(false))
    }
    #[inline]
    fn lock_irqsave(&self) -> IrqState {
        let mut spins = 0u32;
        while !self.try_take() {
            // Test-and-test-and-set: wait reading until it looks free.
            while self.0.load(Ordering::Relaxed) {
                if spins < SIM_LOCK_SPINS {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        super::lock_count::note(core::ptr::from_ref(self) as usize);
        IrqState(0)
    }
    #[inline]
    fn try_lock_irqsave(&self) -> Option<IrqState> {
        // A strong compare-and-swap: a try that fails means the lock is held (the
        // magazine layer counts such failures as contention).
        let ok = !self.0.load(Ordering::Relaxed)
            && self.0.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok();
        if ok {
            super::lock_count::note(core::ptr::from_ref(self) as usize);
        }
        ok.then_some(IrqState(0))
    }
    #[inline]
    unsafe fn unlock_irqrestore(&self, _state: IrqState) {
        // Publishes the critical section's writes to the next holder.
        self.0.store(false, Ordering::Release);
    }
}

impl Platform for SimGuest {
    type Lock = SimLock;

    fn alloc_pages(&self, req: PageRequest) -> Result<PhysAddr, PlatformError> {
        let n = req.pages.get();
        if FaultInjector::fires(&self.inner.faults.alloc_countdown, &self.inner.faults.alloc_fail_all) || n == 0 {
            return Err(PlatformError::AllocFailed { pages: n });
        }
        let mut a = self.inner.alloc.lock();
        let limit_pages = match req.limit.offset_from(self.inner.cfg.base) {
            None => 0,
            Some(off) => usize::try_from(off >> PAGE_SHIFT).unwrap_or(usize::MAX).min(a.pages),
        };
        let Some(first) = a.find(n, limit_pages) else {
            return Err(PlatformError::AllocFailed { pages: n });
        };
        for i in first..first + n {
            a.set(i, true);
        }
        a.allocated += n;
        Ok(self.inner.cfg.base + (first * PAGE_SIZE) as u64)
    }

    fn free_pages(&self, addr: PhysAddr, pages: PageCount) {
        let Some((a, b)) = self.range_pages(addr, pages.bytes()).filter(|_| addr.is_aligned(PAGE_SIZE as u64)) else {
            self.violation(format!("free of {} pages at {addr}: outside guest memory or unaligned", pages.get()));
            return;
        };
        let mut al = self.inner.alloc.lock();
        for i in a..b {
            let st = PageState::from_u8(self.inner.states[i].load(Ordering::SeqCst));
            if !al.is_set(i) {
                self.violation(format!("double free of page {:#x}", self.inner.cfg.base.0 + (i * PAGE_SIZE) as u64));
                continue;
            }
            if st != PageState::Private {
                self.violation(format!("free of {st:?} page {:#x}", self.inner.cfg.base.0 + (i * PAGE_SIZE) as u64));
                continue;
            }
            al.set(i, false);
            al.allocated -= 1;
        }
    }

    fn set_decrypted(&self, addr: PhysAddr, pages: PageCount) -> Result<(), PlatformError> {
        self.convert(addr, pages, true)
    }

    fn set_encrypted(&self, addr: PhysAddr, pages: PageCount) -> Result<(), PlatformError> {
        self.convert(addr, pages, false)
    }

    fn max_conversion_pages(&self) -> usize {
        self.inner.cfg.max_conversion_pages
    }

    fn current_cpu(&self) -> usize {
        let cpus = self.inner.cfg.cpus;
        CPU.with(|c| {
            if let Some(v) = c.get() {
                // Pinned ids are below the CPU count: no division on the map path.
                if v < cpus {
                    v
                } else {
                    v % cpus
                }
            } else {
                let v = NEXT_CPU.fetch_add(1, Ordering::Relaxed);
                c.set(Some(v));
                v % cpus
            }
        })
    }

    fn cpu_count(&self) -> usize {
        self.inner.cfg.cpus
    }

    fn total_ram_bytes(&self) -> usize {
        self.inner.mem_len
    }

    fn is_confidential(&self) -> bool {
        self.inner.cfg.model.kind != PlatformKind::Plain
    }

    fn phys_to_dma(&self, addr: PhysAddr) -> DmaAddr {
        match self.inner.cfg.model.shared_bit {
            Some(bit) => DmaAddr(addr.0 | (1u64 << bit)),
            None => DmaAddr(addr.0),
        }
    }

    fn dma_to_phys(&self, addr: DmaAddr) -> PhysAddr {
        match self.inner.cfg.model.shared_bit {
            Some(bit) => PhysAddr(addr.0 & !(1u64 << bit)),
            None => PhysAddr(addr.0),
        }
    }

    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize) {
        if len == 0 {
            return;
        }
        let d = self.ptr(dst, len);
        let s = self.ptr(src, len);
        let (da, db) = self.range_pages(dst, len).unwrap_or((0, 0));
        let (sa, sb) = self.range_pages(src, len).unwrap_or((0, 0));
        let st = &self.inner.states;
        let unknown = |a: usize, b: usize| (a..b).any(|i| st[i].load(Ordering::Relaxed) == PageState::Unknown as u8);
        if unknown(da, db) || unknown(sa, sb) {
            self.violation(format!("copy {src} -> {dst} ({len} bytes) touches a quarantined page"));
        }
        if self.inner.cfg.track_copies {
            let shared = |a: usize, b: usize| (a..b).any(|i| st[i].load(Ordering::Relaxed) == PageState::Shared as u8);
            if shared(da, db) {
                self.inner.bytes_into_shared.fetch_add(len as u64, Ordering::Relaxed);
                self.inner.shared_copy_calls.fetch_add(1, Ordering::Relaxed);
            }
            if shared(sa, sb) {
                self.inner.bytes_out_of_shared.fetch_add(len as u64, Ordering::Relaxed);
                self.inner.shared_copy_calls.fetch_add(1, Ordering::Relaxed);
            }
        }
        if dst.0 < src.0 + len as u64 && src.0 < dst.0 + len as u64 {
            self.violation(format!("overlapping copy {src} -> {dst} ({len} bytes)"));
            return;
        }
        // SAFETY: both ranges were bounds-checked by `ptr` and do not overlap (checked
        // just above).
        unsafe { core::ptr::copy_nonoverlapping(s, d, len) }
    }

    fn fill(&self, dst: PhysAddr, byte: u8, len: usize) {
        let d = self.ptr(dst, len);
        // SAFETY: `ptr` bounds-checked the range.
        unsafe { core::ptr::write_bytes(d, byte, len) }
    }

    fn now_ns(&self) -> u64 {
        match self.inner.clock_ns.load(Ordering::SeqCst) {
            u64::MAX => self.inner.start.elapsed().as_nanos() as u64,
            ns => ns,
        }
    }

    fn wake_refill(&self) {
        self.inner.wakeups.fetch_add(1, Ordering::Relaxed);
        if !self.inner.wake_pending.swap(true, Ordering::SeqCst) {
            self.inner.wake_cv.notify_one();
        }
    }

    fn sleep(&self, ns: u64) -> bool {
        self.inner.sleeps.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_nanos(ns));
        true
    }

    fn log(&self, level: LogLevel, args: fmt::Arguments<'_>) {
        let mut l = self.inner.logs.lock();
        if l.len() < MAX_LOGS {
            l.push((level, args.to_string()));
        }
    }

    fn trace_bounced(&self, event: &BouncedEvent<'_>) {
        if let Some(t) = self.inner.trace.lock().as_mut() {
            t.push(event.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arena's ownership (regression for a finding of miri, `.ci/miri.sh`): the
    /// memory was a `Box<[u8]>` moved into the guest after its raw pointer was taken,
    /// which invalidates the pointer under Stacked and Tree Borrows, so the first write
    /// through it was undefined behaviour. Under plain `cargo test` this checks the data
    /// paths; under miri it fails on that bug.
    #[test]
    fn arena_is_written_read_copied_and_freed_through_any_handle() {
        let g = SimGuest::with(PlatformKind::Tdx, 4 * PAGE_SIZE, 2);
        let a = g.alloc_private(2 * PAGE_SIZE).unwrap();
        let b = g.alloc_private(PAGE_SIZE).unwrap();
        g.write(a + 10, b"bounce");
        let h = g.clone();
        assert_eq!(h.read_vec(a + 10, 6), b"bounce");
        h.copy(b, a + 10, 6);
        h.fill(b + 6, 0x5a, 2);
        assert_eq!(g.read_vec(b, 8), b"bounce\x5a\x5a");
        // Two threads writing disjoint pages through their own handles (the `Sync`
        // claim: miri reports a data race if the copies overlap in memory).
        let workers: Vec<_> = [(a, 1u8), (a + PAGE_SIZE as u64, 2u8)]
            .into_iter()
            .map(|(at, v)| {
                let t = g.clone();
                std::thread::spawn(move || t.write(at, &[v; 64]))
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(g.read_vec(a, 2), [1, 1]);
        assert_eq!(g.read_vec(a + PAGE_SIZE as u64, 2), [2, 2]);
        g.free_private(a, 2 * PAGE_SIZE);
        g.free_private(b, PAGE_SIZE);
        drop(h);
        assert_eq!(g.stats().allocated_pages, 0);
        g.assert_no_violations();
    }
}
