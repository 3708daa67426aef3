//! Random sequences of C ABI calls, made from Rust through the `extern "C"` entry points
//! with a hook table backed by the framework's simulated TDX guest.
//!
//! Each case boots one strategy through `bounce_create`, runs a random list of valid
//! and invalid calls (maps of any size, direction and device, unmaps, partial and
//! oversize syncs, scatter-gather lists, device writes, background steps, NULL
//! pointers, `DMA_NONE`, double and mid-mapping unmaps, foreign addresses) against a
//! model that knows every live mapping's original and bounce contents, and after every
//! call checks: the errno is the documented one, failures leave state untouched, the
//! data is exactly what the copy rules say, the statistics add up (maps, unmaps,
//! in-flight bytes, failures by reason, conversions as the simulated hardware counted
//! them), the strategy's audit passes, the hooks were never misused (sleeping with
//! interrupts off, touching quarantined pages) and interrupts end up enabled.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_ulong, c_void, CStr, CString};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use bounce_framework::sim::{PlatformKind, SimConfig, SimDevice, SimGuest};
use bounce_framework::{AllocContext, Device, DmaAddr, LogLevel, PageCount, PageRequest, PhysAddr, Platform};
use bounce_kernel::errno::{E2BIG, EBUSY, EDQUOT, EFAULT, EINVAL, ENOENT, ENOSPC, ERANGE};
use bounce_kernel::*;
use proptest::prelude::*;

// ------------------------------------------------------------------ the host

/// What the hooks' `ctx` points to.
struct Host {
    guest: SimGuest,
    traces: AtomicU64,
}

thread_local! {
    /// The simulated interrupt state of this thread (1: disabled).
    static IRQS_OFF: Cell<c_ulong> = const { Cell::new(0) };
    /// IRQ-safe locks held by this thread.
    static IRQ_DEPTH: Cell<u64> = const { Cell::new(0) };
    /// Interrupts were re-enabled while a lock was still held (releases not LIFO).
    static IRQ_ORDER_BROKEN: Cell<bool> = const { Cell::new(false) };
}

fn irqs_off() -> bool {
    IRQS_OFF.with(Cell::get) != 0
}

/// # Safety
/// `ctx` is the `Host` a test passed in its hook table, alive for the instance.
unsafe fn host<'a>(ctx: *mut c_void) -> &'a Host {
    // SAFETY: the caller's contract.
    unsafe { &*ctx.cast::<Host>() }
}

unsafe extern "C" fn h_alloc(ctx: *mut c_void, pages: usize, may_sleep: bool, limit: u64, out: *mut u64) -> c_int {
    // SAFETY: ctx is our Host.
    let h = unsafe { host(ctx) };
    if may_sleep && irqs_off() {
        h.guest.violation(format!("sleeping allocation of {pages} pages with interrupts disabled"));
    }
    let context = if may_sleep { AllocContext::MaySleep } else { AllocContext::Atomic };
    match h.guest.alloc_pages(PageRequest { pages: PageCount(pages), context, limit: PhysAddr(limit) }) {
        Ok(a) => {
            // SAFETY: bounce passes a valid out-pointer.
            unsafe { *out = a.0 };
            0
        }
        Err(_) => -12,
    }
}

unsafe extern "C" fn h_free(ctx: *mut c_void, phys: u64, pages: usize) {
    // SAFETY: ctx is our Host.
    unsafe { host(ctx) }.guest.free_pages(PhysAddr(phys), PageCount(pages));
}

unsafe fn convert(ctx: *mut c_void, phys: u64, pages: usize, to_shared: bool) -> c_int {
    // SAFETY: ctx is our Host.
    let h = unsafe { host(ctx) };
    if irqs_off() {
        h.guest.violation("page conversion (may sleep) with interrupts disabled");
    }
    let r = if to_shared {
        h.guest.set_decrypted(PhysAddr(phys), PageCount(pages))
    } else {
        h.guest.set_encrypted(PhysAddr(phys), PageCount(pages))
    };
    if r.is_ok() {
        0
    } else {
        -5
    }
}

unsafe extern "C" fn h_decrypt(ctx: *mut c_void, phys: u64, pages: usize) -> c_int {
    // SAFETY: forwarded.
    unsafe { convert(ctx, phys, pages, true) }
}

unsafe extern "C" fn h_encrypt(ctx: *mut c_void, phys: u64, pages: usize) -> c_int {
    // SAFETY: forwarded.
    unsafe { convert(ctx, phys, pages, false) }
}

unsafe extern "C" fn h_cpu(ctx: *mut c_void) -> u32 {
    // SAFETY: ctx is our Host.
    unsafe { host(ctx) }.guest.current_cpu() as u32
}

unsafe extern "C" fn h_cpus(ctx: *mut c_void) -> u32 {
    // SAFETY: ctx is our Host.
    unsafe { host(ctx) }.guest.cpu_count() as u32
}

unsafe extern "C" fn h_ram(ctx: *mut c_void) -> u64 {
    // SAFETY: ctx is our Host.
    unsafe { host(ctx) }.guest.total_ram_bytes() as u64
}

unsafe extern "C" fn h_p2d(ctx: *mut c_void, phys: u64) -> u64 {
    // SAFETY: ctx is our Host.
    unsafe { host(ctx) }.guest.phys_to_dma(PhysAddr(phys)).0
}

unsafe extern "C" fn h_d2p(ctx: *mut c_void, dma: u64) -> u64 {
    // SAFETY: ctx is our Host.
    unsafe { host(ctx) }.guest.dma_to_phys(DmaAddr(dma)).0
}

/// Whether the CPU may touch the range: inside guest memory (a panic here would abort
/// the test through the `extern "C"` boundary instead of reporting).
fn in_memory(g: &SimGuest, a: u64, len: usize) -> bool {
    len == 0
        || a.checked_add(len as u64 - 1)
            .is_some_and(|end| g.page_state(PhysAddr(a)).is_some() && g.page_state(PhysAddr(end)).is_some())
}

unsafe extern "C" fn h_copy(ctx: *mut c_void, dst: u64, src: u64, len: usize) {
    // SAFETY: ctx is our Host.
    let g = &unsafe { host(ctx) }.guest;
    if in_memory(g, dst, len) && in_memory(g, src, len) {
        g.copy(PhysAddr(dst), PhysAddr(src), len);
    } else {
        g.violation(format!("copy {src:#x} -> {dst:#x} ({len} bytes) outside guest memory"));
    }
}

unsafe extern "C" fn h_fill(ctx: *mut c_void, dst: u64, byte: u8, len: usize) {
    // SAFETY: ctx is our Host.
    let g = &unsafe { host(ctx) }.guest;
    if in_memory(g, dst, len) {
        g.fill(PhysAddr(dst), byte, len);
    } else {
        g.violation(format!("fill {dst:#x} ({len} bytes) outside guest memory"));
    }
}

unsafe extern "C" fn h_now(ctx: *mut c_void) -> u64 {
    // SAFETY: ctx is our Host.
    unsafe { host(ctx) }.guest.now_ns()
}

unsafe extern "C" fn h_wake(ctx: *mut c_void) {
    // SAFETY: ctx is our Host.
    unsafe { host(ctx) }.guest.wake_refill();
}

unsafe extern "C" fn h_log(ctx: *mut c_void, level: c_int, msg: *const c_char, len: usize) {
    // SAFETY: ctx is our Host; bounce passes `len` bytes plus a NUL.
    let (h, text) = unsafe { (host(ctx), CStr::from_ptr(msg)) };
    let text = text.to_string_lossy();
    if text.len() != len {
        h.guest.violation(format!("log message length {len} but {} bytes before the NUL", text.len()));
    }
    let level = match level {
        BOUNCE_LOG_ERR => LogLevel::Error,
        BOUNCE_LOG_WARNING => LogLevel::Warn,
        _ => LogLevel::Info,
    };
    h.guest.log(level, format_args!("{text}"));
}

unsafe extern "C" fn h_trace(ctx: *mut c_void, ev: *const BounceTraceEvent) {
    // SAFETY: ctx is our Host; the event is valid during the call.
    let (h, ev) = unsafe { (host(ctx), &*ev) };
    if ev.size == 0 || ev.dev_name.is_null() {
        h.guest.violation("malformed trace event");
    }
    h.traces.fetch_add(1, Ordering::Relaxed);
}

unsafe extern "C" fn irq_save() -> c_ulong {
    IRQ_DEPTH.with(|d| d.set(d.get() + 1));
    IRQS_OFF.with(|c| c.replace(1))
}

unsafe extern "C" fn irq_restore(flags: c_ulong) {
    let depth = IRQ_DEPTH.with(|d| {
        d.set(d.get().saturating_sub(1));
        d.get()
    });
    if flags == 0 && depth > 0 {
        IRQ_ORDER_BROKEN.with(|b| b.set(true));
    }
    IRQS_OFF.with(|c| c.set(flags));
}

fn hooks(host: &Host) -> BounceHooks {
    BounceHooks {
        abi_version: BOUNCE_ABI_VERSION,
        ctx: ptr::from_ref(host).cast_mut().cast(),
        alloc_pages: Some(h_alloc),
        free_pages: Some(h_free),
        set_decrypted: Some(h_decrypt),
        set_encrypted: Some(h_encrypt),
        max_conversion_pages: 0,
        current_cpu: Some(h_cpu),
        cpu_count: Some(h_cpus),
        total_ram_bytes: Some(h_ram),
        is_confidential: None,
        phys_to_dma: Some(h_p2d),
        dma_to_phys: Some(h_d2p),
        copy: Some(h_copy),
        fill: Some(h_fill),
        now_ns: Some(h_now),
        wake_refill: Some(h_wake),
        log: Some(h_log),
        trace_bounced: Some(h_trace),
        irq_save: Some(irq_save),
        irq_restore: Some(irq_restore),
        sleep: None,
    }
}

// ------------------------------------------------------------------ the model

const NET: usize = 0;
const NVME: usize = 1;
const DEV32: usize = 2;

#[derive(Clone, Debug)]
struct Live {
    dma: u64,
    orig: u64,
    size: usize,
    dev: usize,
    /// The original buffer's expected contents.
    orig_data: Vec<u8>,
    /// The bounce buffer's expected contents.
    bounce_data: Vec<u8>,
    /// Part of a scatter-gather list (unmapped with it).
    sg: Option<usize>,
}

/// One ABI call of a sequence.
#[derive(Clone, Debug)]
enum Op {
    Map { size: usize, dir: u32, dev: usize, offset: usize, align: u8, attrs: u64 },
    Unmap { pick: usize, dir: u32, skip_sync: bool },
    DoubleUnmap,
    MidUnmap { pick: usize, delta: usize },
    Foreign { private: bool },
    Sync { pick: usize, off: usize, len: usize, dir: u32, for_device: bool },
    DeviceWrite { pick: usize, seed: u64 },
    CpuWrite { pick: usize, seed: u64 },
    MapSg { sizes: Vec<usize>, dir: u32, bad_entry: Option<usize> },
    UnmapSg { pick: usize },
    NullArgument { which: u8 },
    Background,
    ResetHiwater,
    Destroy,
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        6 => 1usize..=4096,
        3 => 4097usize..=70_000,
        1 => Just(0usize),
        1 => 200_000usize..=600_000,
    ];
    prop_oneof![
        8 => (size, 0u32..=4, prop_oneof![6 => Just(NET), 3 => Just(NVME), 1 => Just(DEV32)], 0usize..4096, 0u8..4,
              prop_oneof![Just(0u64), Just(BOUNCE_DMA_ATTR_NO_WARN), Just(1u64 << 1)])
            .prop_map(|(size, dir, dev, offset, align, attrs)| Op::Map { size, dir, dev, offset, align, attrs }),
        5 => (any::<usize>(), 0u32..=3, any::<bool>()).prop_map(|(pick, dir, skip_sync)| Op::Unmap { pick, dir, skip_sync }),
        1 => Just(Op::DoubleUnmap),
        1 => (any::<usize>(), 1usize..70_000).prop_map(|(pick, delta)| Op::MidUnmap { pick, delta }),
        1 => any::<bool>().prop_map(|private| Op::Foreign { private }),
        4 => (any::<usize>(), 0usize..70_000, 0usize..80_000, 0u32..=3, any::<bool>())
            .prop_map(|(pick, off, len, dir, for_device)| Op::Sync { pick, off, len, dir, for_device }),
        3 => (any::<usize>(), any::<u64>()).prop_map(|(pick, seed)| Op::DeviceWrite { pick, seed }),
        2 => (any::<usize>(), any::<u64>()).prop_map(|(pick, seed)| Op::CpuWrite { pick, seed }),
        2 => (prop::collection::vec(1usize..20_000, 1..6), 0u32..=2, prop::option::weighted(0.2, 0usize..6))
            .prop_map(|(sizes, dir, bad_entry)| Op::MapSg { sizes, dir, bad_entry }),
        1 => any::<usize>().prop_map(|pick| Op::UnmapSg { pick }),
        1 => (0u8..8).prop_map(|which| Op::NullArgument { which }),
        2 => Just(Op::Background),
        1 => Just(Op::ResetHiwater),
        1 => Just(Op::Destroy),
    ]
}

/// Deterministic bytes for a seed (the conformance suite's pattern).
use bounce_framework::conformance::pattern as bytes;

struct World {
    host: Box<Host>,
    b: *mut Bounce,
    devs: [BounceDevice; 3],
    _names: [CString; 3],
    device: SimDevice,
    live: Vec<Live>,
    /// Addresses unmapped earlier (for double unmaps).
    stale: Vec<u64>,
    /// Private buffers to free at the end.
    buffers: Vec<(u64, usize)>,
    fails: [u64; BOUNCE_FAILURE_COUNT],
    maps: u64,
    unmaps: u64,
    next_sg: usize,
    max: usize,
    strategy: &'static str,
}

fn last_error(b: *const Bounce) -> String {
    let mut buf = [0 as c_char; 512];
    // SAFETY: `b` is live; `buf` has 512 writable bytes.
    unsafe { bounce_last_error(b, buf.as_mut_ptr(), buf.len()) };
    // SAFETY: bounce_last_error NUL-terminates.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

impl World {
    fn new(strategy: &'static str, cmdline: &str) -> Self {
        // A previous failing case may have left this thread's simulated IRQs off.
        IRQS_OFF.with(|c| c.set(0));
        IRQ_DEPTH.with(|d| d.set(0));
        IRQ_ORDER_BROKEN.with(|b| b.set(false));
        let mut cfg = SimConfig::new(PlatformKind::Tdx, 96 << 20, 2);
        // Model devices that see the TDX shared alias (GPA bit 47) in bus addresses, so
        // the 32-bit device below can never reach bounce memory (the simulator's default
        // follows Linux: no bit).
        cfg.model.shared_bit = Some(47);
        cfg.track_copies = true;
        let host = Box::new(Host { guest: SimGuest::new(cfg), traces: AtomicU64::new(0) });
        let table = hooks(&host);
        let line = CString::new(cmdline).unwrap();
        let mut b = ptr::null_mut();
        let mut err = [0 as c_char; 256];
        // SAFETY: valid string, table, out-pointer and error buffer.
        let rc = unsafe { bounce_create(line.as_ptr(), &raw const table, 0, &raw mut b, err.as_mut_ptr(), err.len()) };
        // SAFETY: NUL-terminated by bounce_create.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        assert_eq!(rc, 0, "bounce_create({cmdline}): {msg}");
        let names = [c"virtio-net".to_owned(), c"nvme0".to_owned(), c"dev32".to_owned()];
        let dev = |i: usize, mask: u64, align: u64| BounceDevice {
            name: names[i].as_ptr(),
            dma_mask: mask,
            min_align_mask: align,
            max_segment_size: 65536,
            attachment: 0,
        };
        let mut devs = [dev(NET, u64::MAX, 0), dev(NVME, u64::MAX, 4095), dev(DEV32, 0xffff_ffff, 0)];
        // Two devices attached (as the kernel does), one looked up by name on every call:
        // the model below is the same for both.
        for i in [NET, NVME] {
            let mut a = 0;
            // SAFETY: live instance, valid device, writable out.
            assert_eq!(unsafe { bounce_attach_device(b, &raw const devs[i], &raw mut a) }, 0);
            assert_ne!(a, 0);
            devs[i].attachment = a;
        }
        let device = SimDevice::new(&host.guest, Device::new("host"));
        // SAFETY: live instance, valid device.
        let max = unsafe { bounce_max_mapping_size(b, &raw const devs[NET]) };
        let mut w = Self {
            host,
            b,
            devs,
            _names: names,
            device,
            live: Vec::new(),
            stale: Vec::new(),
            buffers: Vec::new(),
            fails: [0; BOUNCE_FAILURE_COUNT],
            maps: 0,
            unmaps: 0,
            next_sg: 0,
            max: usize::try_from(max).expect("max_mapping_size"),
            strategy,
        };
        // SAFETY: live instance.
        assert_eq!(unsafe { CStr::from_ptr(bounce_strategy_name(w.b)) }.to_str().unwrap(), strategy);
        w.settle();
        w
    }

    fn guest(&self) -> &SimGuest {
        &self.host.guest
    }

    fn settle(&mut self) {
        for _ in 0..100_000 {
            // SAFETY: live instance; NULL report allowed.
            match unsafe { bounce_run_background(self.b, ptr::null_mut()) } {
                0 => return,
                1 => {}
                rc => panic!("run_background -> {rc}"),
            }
        }
        panic!("background work never finished");
    }

    fn private(&mut self, len: usize, offset: usize) -> u64 {
        let base = self.guest().alloc_private(len + offset).expect("guest memory for buffers").0;
        self.buffers.push((base, len + offset));
        base + offset as u64
    }

    fn stats(&self) -> BounceStats {
        let mut s = BounceStats::default();
        // SAFETY: live instance; `s` is writable.
        assert_eq!(unsafe { bounce_stats(self.b, &raw mut s) }, 0);
        s
    }

    fn expect_fail(&mut self, rc: c_int, want: &[c_int], reason: usize, what: &str) -> Result<(), TestCaseError> {
        prop_assert!(
            want.contains(&-rc),
            "{}: {what} returned {rc}, want one of {want:?} ({})",
            self.strategy,
            last_error(self.b)
        );
        prop_assert!(!last_error(self.b).is_empty(), "{what}: no message");
        self.fails[reason] += 1;
        Ok(())
    }

    fn read_bounce(&self, dma: u64, len: usize) -> Result<Vec<u8>, TestCaseError> {
        let mut v = vec![0; len];
        let r = self.device.host_read(DmaAddr(dma), &mut v);
        prop_assert!(r.is_ok(), "device read of a live mapping refused: {r:?}");
        Ok(v)
    }

    /// Everything the model knows must be true now.
    fn check(&self) -> Result<(), TestCaseError> {
        let s = self.stats();
        let live_bytes: usize = self.live.iter().map(|l| l.size).sum();
        prop_assert_eq!(s.inflight_bytes, live_bytes as u64, "in-flight bytes");
        prop_assert_eq!(s.maps, self.maps, "maps");
        prop_assert_eq!(s.unmaps, self.unmaps, "unmaps");
        prop_assert_eq!(s.failures, self.fails, "failures by reason");
        prop_assert_eq!(
            s.used_bytes == 0,
            self.live.is_empty(),
            "used bytes {} with {} live",
            s.used_bytes,
            self.live.len()
        );
        prop_assert!(s.io_tlb_used <= s.io_tlb_used_hiwater);
        let hw = self.guest().stats();
        prop_assert_eq!(s.pages_decrypted, hw.pages_decrypted, "pages made shared, bounce vs hardware");
        prop_assert_eq!(s.pages_encrypted, hw.pages_encrypted, "pages made private, bounce vs hardware");
        prop_assert_eq!(s.shared_bytes, hw.shared_pages * 4096, "shared bytes, bounce vs hardware");
        prop_assert_eq!(self.host.traces.load(Ordering::Relaxed), s.maps, "one trace event per map");
        let mut a = BounceAudit::default();
        // SAFETY: live instance; `a` is writable.
        let rc = unsafe { bounce_audit(self.b, &raw mut a) };
        prop_assert_eq!(rc, 0, "audit: {}", last_error(self.b));
        prop_assert_eq!(a.live_mappings, self.live.len() as u64);
        for l in &self.live {
            prop_assert_eq!(&self.read_bounce(l.dma, l.size)?, &l.bounce_data, "bounce contents of {:#x}", l.dma);
            prop_assert_eq!(&self.guest().read_vec(PhysAddr(l.orig), l.size), &l.orig_data, "original of {:#x}", l.dma);
            // SAFETY: live instance.
            prop_assert_eq!(unsafe { bounce_is_bounce_buffer(self.b, l.dma) }, 1);
        }
        prop_assert!(self.guest().violations().is_empty(), "violations: {:?}", self.guest().violations());
        prop_assert!(!IRQ_ORDER_BROKEN.with(Cell::get), "interrupts re-enabled while an IRQ-safe lock was held");
        prop_assert!(!irqs_off(), "interrupts left disabled");
        Ok(())
    }

    fn pick(&self, pick: usize) -> Option<usize> {
        let singles: Vec<usize> = (0..self.live.len()).filter(|&i| self.live[i].sg.is_none()).collect();
        (!singles.is_empty()).then(|| singles[pick % singles.len()])
    }

    #[expect(clippy::too_many_lines, reason = "one arm per operation, each with its own oracle")]
    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let b = self.b;
        match *op {
            Op::Map { size, dir, dev, offset, align, attrs } => {
                let len = size.max(1);
                let orig = self.private(len, offset);
                let data = bytes(orig ^ size as u64, len);
                self.guest().write(PhysAddr(orig), &data);
                let mask = [0u64, 0xfff, 0x1fff, 0x3fff][usize::from(align)];
                let mut dma = 0u64;
                let before = self.stats();
                // SAFETY: live instance, valid device.
                let dev_max = unsafe { bounce_max_mapping_size(b, &raw const self.devs[dev]) };
                let max = usize::try_from(dev_max).expect("max_mapping_size");
                // SAFETY: live instance, valid device and out-pointer; `orig` is guest memory.
                let rc = unsafe {
                    bounce_map_single(b, &raw const self.devs[dev], orig, size, mask, dir, attrs, &raw mut dma)
                };
                if size == 0 || dir > 2 {
                    self.expect_fail(rc, &[EINVAL], BOUNCE_FAILURE_BAD_ARGUMENT, "map (bad argument)")?;
                } else if size > max {
                    self.expect_fail(rc, &[E2BIG], BOUNCE_FAILURE_TOO_LARGE, "map (too large)")?;
                } else if rc != 0 || dev == DEV32 {
                    // A 32-bit device cannot reach shared memory (TDX shared bit 47).
                    let reason = match -rc {
                        ERANGE => BOUNCE_FAILURE_UNREACHABLE,
                        ENOSPC => BOUNCE_FAILURE_EXHAUSTED,
                        EDQUOT => BOUNCE_FAILURE_CAP,
                        _ => BOUNCE_FAILURE_ALIGNMENT,
                    };
                    let allowed: &[c_int] = match (dev == DEV32, mask != 0) {
                        (true, _) => &[ERANGE, ENOSPC, EDQUOT],
                        (false, true) => &[ENOSPC, EDQUOT, EINVAL],
                        (false, false) => &[ENOSPC, EDQUOT],
                    };
                    self.expect_fail(rc, allowed, reason, "valid map")?;
                }
                if rc != 0 {
                    prop_assert_eq!(dma, u64::MAX, "failed map left dma");
                    let after = self.stats();
                    prop_assert_eq!(after.used_bytes, before.used_bytes, "failed map changed the pool");
                    return Ok(());
                }
                prop_assert_eq!(dma & self.devs[dev].min_align_mask, orig & self.devs[dev].min_align_mask);
                // The buffer starts on the alloc_align_mask boundary; the data sits at the
                // min_align_mask offset inside it (swiotlb_align_offset()).
                prop_assert_eq!(dma & mask, orig & self.devs[dev].min_align_mask & mask, "alloc_align_mask");
                self.maps += 1;
                let bounce = self.read_bounce(dma, size)?;
                prop_assert_eq!(&bounce, &data, "map must copy in for every direction");
                self.live.push(Live { dma, orig, size, dev, orig_data: data, bounce_data: bounce, sg: None });
            }
            Op::Unmap { pick, dir, skip_sync } => {
                let Some(i) = self.pick(pick) else { return Ok(()) };
                let l = self.live[i].clone();
                let attrs = if skip_sync { BOUNCE_DMA_ATTR_SKIP_CPU_SYNC } else { 0 };
                // SAFETY: live instance and device.
                let rc = unsafe { bounce_unmap_single(b, &raw const self.devs[l.dev], l.dma, l.size, dir, attrs) };
                if dir > 2 {
                    return self.expect_fail(rc, &[EINVAL], BOUNCE_FAILURE_BAD_ARGUMENT, "unmap DMA_NONE");
                }
                prop_assert_eq!(rc, 0, "unmap: {}", last_error(b));
                self.unmaps += 1;
                let mut l = self.live.remove(i);
                if dir != BOUNCE_DMA_TO_DEVICE && !skip_sync {
                    l.orig_data.clone_from(&l.bounce_data);
                }
                prop_assert_eq!(&self.guest().read_vec(PhysAddr(l.orig), l.size), &l.orig_data, "unmap copy rule");
                self.stale.push(l.dma);
            }
            Op::DoubleUnmap => {
                let Some(&dma) = self.stale.last() else { return Ok(()) };
                // Only addresses no live mapping covers: a reused address is a valid mapping.
                if self.live.iter().any(|l| dma >= l.dma.saturating_sub(65536) && dma < l.dma + l.size as u64 + 65536) {
                    return Ok(());
                }
                // SAFETY: live instance and device.
                let rc = unsafe { bounce_unmap_single(b, &raw const self.devs[NET], dma, 16, 0, 0) };
                self.expect_fail(rc, &[ENOENT], BOUNCE_FAILURE_UNKNOWN_ADDRESS, "double unmap")?;
            }
            Op::MidUnmap { pick, delta } => {
                let Some(i) = self.pick(pick) else { return Ok(()) };
                let l = &self.live[i];
                if l.size < 2 {
                    return Ok(());
                }
                let at = l.dma + (1 + delta % (l.size - 1)) as u64;
                // SAFETY: live instance and device.
                let rc = unsafe { bounce_unmap_single(b, &raw const self.devs[l.dev], at, 1, 0, 0) };
                self.expect_fail(rc, &[EINVAL], BOUNCE_FAILURE_UNKNOWN_ADDRESS, "unmap inside a mapping")?;
            }
            Op::Foreign { private } => {
                let at = if private { self.private(64, 0) | (1 << 47) } else { 0x42 };
                // SAFETY: live instance and device.
                let rc = unsafe { bounce_unmap_single(b, &raw const self.devs[NET], at, 64, 0, 0) };
                self.expect_fail(rc, &[EFAULT], BOUNCE_FAILURE_UNKNOWN_ADDRESS, "unmap of a foreign address")?;
                // SAFETY: live instance and device.
                let rc = unsafe { bounce_sync_single_for_cpu(b, &raw const self.devs[NET], at, 64, 0) };
                self.expect_fail(rc, &[EFAULT], BOUNCE_FAILURE_UNKNOWN_ADDRESS, "sync of a foreign address")?;
                // SAFETY: live instance.
                prop_assert_eq!(unsafe { bounce_is_bounce_buffer(b, at) }, 0);
            }
            Op::Sync { pick, off, len, dir, for_device } => {
                let Some(i) = self.pick(pick) else { return Ok(()) };
                let l = &self.live[i];
                let off = off % l.size;
                let (dma, dev) = (l.dma + off as u64, l.dev);
                let before = self.stats();
                // SAFETY: live instance and device.
                let rc = unsafe {
                    if for_device {
                        bounce_sync_single_for_device(b, &raw const self.devs[dev], dma, len, dir)
                    } else {
                        bounce_sync_single_for_cpu(b, &raw const self.devs[dev], dma, len, dir)
                    }
                };
                if dir > 2 {
                    return self.expect_fail(rc, &[EINVAL], BOUNCE_FAILURE_BAD_ARGUMENT, "sync DMA_NONE");
                }
                prop_assert_eq!(rc, 0, "sync: {}", last_error(b));
                let n = len.min(self.live[i].size - off);
                let copies = if for_device { dir != BOUNCE_DMA_FROM_DEVICE } else { dir != BOUNCE_DMA_TO_DEVICE };
                let after = self.stats();
                // Only a sync that copies clamps (and counts) an oversize length.
                prop_assert_eq!(
                    after.overflows_clamped - before.overflows_clamped,
                    u64::from(copies && len > n),
                    "clamp count"
                );
                let l = &mut self.live[i];
                if copies && for_device {
                    l.bounce_data[off..off + n].copy_from_slice(&l.orig_data[off..off + n]);
                } else if copies {
                    l.orig_data[off..off + n].copy_from_slice(&l.bounce_data[off..off + n]);
                }
            }
            Op::DeviceWrite { pick, seed } => {
                let Some(i) = self.pick(pick).or_else(|| (!self.live.is_empty()).then(|| pick % self.live.len()))
                else {
                    return Ok(());
                };
                let l = &mut self.live[i];
                let data = bytes(seed, l.size);
                let r = self.device.host_write(DmaAddr(l.dma), &data);
                prop_assert!(r.is_ok(), "device write to a live mapping refused: {r:?}");
                l.bounce_data = data;
            }
            Op::CpuWrite { pick, seed } => {
                let Some(i) = self.pick(pick) else { return Ok(()) };
                let l = &mut self.live[i];
                let data = bytes(seed, l.size);
                self.host.guest.write(PhysAddr(l.orig), &data);
                l.orig_data = data;
            }
            Op::MapSg { ref sizes, dir, bad_entry } => {
                let mut sg: Vec<BounceSg> = Vec::new();
                let mut datas = Vec::new();
                for (k, &s) in sizes.iter().enumerate() {
                    let len = if bad_entry == Some(k) { self.max + 1 } else { s };
                    let phys = self.private(len, k * 3);
                    let data = bytes(phys, len);
                    self.guest().write(PhysAddr(phys), &data);
                    sg.push(BounceSg { phys, length: len, ..BounceSg::default() });
                    datas.push(data);
                }
                // SAFETY: live instance and device; `sg` holds `sizes.len()` entries.
                let rc = unsafe { bounce_map_sg(b, &raw const self.devs[NET], sg.as_mut_ptr(), sg.len(), dir, 0) };
                if let Some(k) = bad_entry.filter(|&k| k < sizes.len()) {
                    self.expect_fail(rc, &[E2BIG], BOUNCE_FAILURE_TOO_LARGE, "map_sg with an oversize entry")?;
                    prop_assert!(last_error(b).contains(&format!("entry {k}")), "message names the entry");
                    // entries before the bad one were mapped and rolled back
                    self.maps += k as u64;
                    self.unmaps += k as u64;
                    prop_assert!(sg.iter().all(|e| e.dma_length == 0), "rollback left entries mapped");
                    return Ok(());
                }
                if rc < 0 {
                    let s = self.stats();
                    // exhaustion part-way: rolled back; count what the library did
                    let mapped = s.maps - self.maps;
                    self.maps = s.maps;
                    self.unmaps += mapped;
                    let reason = if -rc == EDQUOT { BOUNCE_FAILURE_CAP } else { BOUNCE_FAILURE_EXHAUSTED };
                    return self.expect_fail(rc, &[ENOSPC, EDQUOT], reason, "map_sg");
                }
                prop_assert_eq!(usize::try_from(rc).ok(), Some(sizes.len()));
                self.maps += sizes.len() as u64;
                let id = self.next_sg;
                self.next_sg += 1;
                for (e, data) in sg.iter().zip(datas) {
                    prop_assert_eq!(e.dma_length, e.length);
                    let bounce = self.read_bounce(e.dma_address, e.length)?;
                    prop_assert_eq!(&bounce, &data);
                    self.live.push(Live {
                        dma: e.dma_address,
                        orig: e.phys,
                        size: e.length,
                        dev: NET,
                        orig_data: data,
                        bounce_data: bounce,
                        sg: Some(id),
                    });
                }
            }
            Op::UnmapSg { pick } => {
                let ids: Vec<usize> = self.live.iter().filter_map(|l| l.sg).collect();
                let Some(&id) = ids.get(pick % ids.len().max(1)) else { return Ok(()) };
                let mut sg: Vec<BounceSg> = self
                    .live
                    .iter()
                    .filter(|l| l.sg == Some(id))
                    .map(|l| BounceSg { phys: l.orig, length: l.size, dma_address: l.dma, dma_length: l.size })
                    .collect();
                // SAFETY: live instance and device; `sg` is valid.
                let rc = unsafe {
                    bounce_unmap_sg(
                        b,
                        &raw const self.devs[NET],
                        sg.as_mut_ptr(),
                        sg.len(),
                        BOUNCE_DMA_BIDIRECTIONAL,
                        0,
                    )
                };
                prop_assert_eq!(rc, 0, "unmap_sg: {}", last_error(b));
                self.unmaps += sg.len() as u64;
                let (gone, keep): (Vec<Live>, Vec<Live>) = self.live.drain(..).partition(|l| l.sg == Some(id));
                self.live = keep;
                for mut l in gone {
                    l.orig_data.clone_from(&l.bounce_data);
                    prop_assert_eq!(&self.guest().read_vec(PhysAddr(l.orig), l.size), &l.orig_data, "unmap_sg copy");
                    self.stale.push(l.dma);
                }
            }
            Op::NullArgument { which } => {
                let mut dma = 0;
                let mut s = BounceStats::default();
                let net = &raw const self.devs[NET];
                let some = self.live.first().map_or(0x42, |l| l.dma);
                // SAFETY: NULL pointers are what is tested; everything else is valid.
                let (rc, counted) = unsafe {
                    match which {
                        0 => (bounce_map_single(b, ptr::null(), 0x1000, 64, 0, 0, 0, &raw mut dma), true),
                        1 => (bounce_map_single(b, net, 0x1000, 64, 0, 0, 0, ptr::null_mut()), true),
                        2 => (bounce_unmap_single(b, ptr::null(), some, 64, 0, 0), true),
                        3 => (bounce_map_sg(b, net, ptr::null_mut(), 3, 0, 0), true),
                        4 => (bounce_stats(b, ptr::null_mut()), true),
                        5 => (bounce_map_single(ptr::null(), net, 0x1000, 64, 0, 0, 0, &raw mut dma), false),
                        6 => (bounce_stats(ptr::null(), &raw mut s), false),
                        _ => (bounce_sync_sg_for_cpu(b, net, ptr::null_mut(), 1, 0), true),
                    }
                };
                prop_assert_eq!(rc, -EINVAL, "NULL argument {}", which);
                if counted {
                    self.fails[BOUNCE_FAILURE_BAD_ARGUMENT] += 1;
                }
            }
            Op::Background => {
                let mut r = BounceBackgroundReport::default();
                // SAFETY: live instance; `r` is writable.
                let rc = unsafe { bounce_run_background(b, &raw mut r) };
                prop_assert!(rc == 0 || rc == 1, "run_background -> {}", rc);
                // SAFETY: live instance.
                let pending = unsafe { bounce_background_pending(b) };
                prop_assert!(pending == 0 || pending == 1);
                prop_assert!(rc == 1 || pending == 0, "idle step but work pending");
            }
            Op::ResetHiwater => {
                // SAFETY: live instance.
                prop_assert_eq!(unsafe { bounce_reset_hiwater(b) }, 0);
                let s = self.stats();
                prop_assert_eq!(s.io_tlb_used_hiwater, s.io_tlb_used);
                prop_assert_eq!(s.inflight_bytes_peak, s.inflight_bytes);
            }
            Op::Destroy => {
                if self.live.is_empty() {
                    return Ok(());
                }
                // SAFETY: live instance; refused, so it stays live.
                let rc = unsafe { bounce_destroy(b) };
                prop_assert_eq!(rc, -EBUSY, "destroy with live mappings");
                prop_assert!(last_error(b).contains("still live"));
            }
        }
        Ok(())
    }

    /// Unmaps everything, destroys the instance and checks the guest got its memory back.
    fn finish(mut self) -> Result<(), TestCaseError> {
        while let Some(l) = self.live.pop() {
            // SAFETY: live instance and device.
            let rc = unsafe { bounce_unmap_single(self.b, &raw const self.devs[l.dev], l.dma, l.size, 0, 0) };
            prop_assert_eq!(rc, 0, "final unmap: {}", last_error(self.b));
            self.unmaps += 1;
        }
        self.settle();
        self.check()?;
        // SAFETY: live instance, no mapping left, no concurrent call.
        let rc = unsafe { bounce_destroy(self.b) };
        prop_assert_eq!(rc, 0, "destroy");
        for &(a, len) in &self.buffers {
            self.host.guest.free_private(PhysAddr(a), len);
        }
        let hw = self.guest().stats();
        prop_assert_eq!(hw.shared_pages, 0, "shared pages left after destroy");
        prop_assert_eq!(hw.allocated_pages, 0, "pages left allocated after destroy");
        prop_assert!(self.guest().violations().is_empty(), "violations: {:?}", self.guest().violations());
        Ok(())
    }
}

fn run(strategy: &'static str, cmdline: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut w = World::new(strategy, cmdline);
    w.check()?;
    for op in ops {
        w.apply(op)?;
        w.check().map_err(|e| TestCaseError::fail(format!("after {op:?}: {e}")))?;
    }
    w.finish()
}

const CASES: u32 = 32;

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn legacy_random_abi_sequences(ops in prop::collection::vec(op(), 1..60)) {
        run("legacy", "swiotlb=4096 swiotlb.strategy=legacy", &ops)?;
    }

    #[test]
    fn dynamic_random_abi_sequences(ops in prop::collection::vec(op(), 1..60)) {
        run("dynamic", "swiotlb.strategy=dynamic swiotlb.dynamic.classes=512:64,2K:256,4K:256,16K:64,512K:8 swiotlb.dynamic.cap=24M", &ops)?;
    }

    #[test]
    fn magazine_random_abi_sequences(ops in prop::collection::vec(op(), 1..60)) {
        run("magazine", "swiotlb.strategy=magazine swiotlb.magazine.classes=512:64,2K:256,4K:256,16K:64,512K:8 swiotlb.magazine.cap=24M", &ops)?;
    }
}
