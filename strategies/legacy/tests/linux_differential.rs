//! Differential test against Linux's own C code: `bounce-linux-ref` compiles the
//! allocator functions of a Linux 6.12 `kernel/dma/swiotlb.c` at build time (nothing of
//! it is stored in this repository; its `gen` module holds the list of functions cut and
//! the shim), and this test drives that C pool and the Rust port with the same random
//! map/unmap sequences. After every operation both must return the same address (or
//! both fail) and hold identical slot metadata (`list`, `alloc_size`, `orig_addr`,
//! `pad_slots` of every slot), area state (`used`, `index`) and `total_used`.
//!
//! The C functions used, verbatim: `swiotlb_init_io_tlb_pool`, `add_mem_pool`,
//! `swiotlb_align_offset`, `io_tlb_offset`, `nr_slots`, `slot_addr`, `get_max_slots`,
//! `wrap_area_index`, `inc_used_and_hiwater`, `dec_used`, `mem_used` (the
//! `CONFIG_DEBUG_FS` versions), `swiotlb_search_pool_area`, `swiotlb_find_slots` (the
//! `!CONFIG_SWIOTLB_DYNAMIC` version), `swiotlb_tbl_map_single`, `swiotlb_release_slots`,
//! and `iommu_is_span_boundary` from `include/linux/iommu-helper.h`
//! (`bounce_linux_ref::gen::PARTS`).
//!
//! Needs a C compiler and the Linux source when `bounce-linux-ref` is built:
//! `$BOUNCE_LINUX_SRC`, else `/work/ref/linux-source-6.12` or
//! `target/linux-ref/linux-source-6.12` (`tar -xJf /usr/src/linux-source-6.12.tar.xz
//! linux-source-6.12/kernel/dma/swiotlb.c linux-source-6.12/include/linux/iommu-helper.h`
//! from Debian's `linux-source-6.12`). It is `#[ignore]`d so the default test run does
//! not depend on them, and fails with the reason when run without them:
//!
//! ```sh
//! BOUNCE_LINUX_SRC=/path/to/linux-source-6.12 \
//!     cargo test -p bounce-legacy --test linux_differential -- --ignored --nocapture
//! ```
//!
//! The sequences stay inside what both sides define the same way: original addresses
//! are never 0 (Linux skips the `min_align_mask` check for 0, bounce does not), masks are
//! `2^n - 1`, sizes are at most `swiotlb_max_mapping_size()`, unmaps name live mappings,
//! and pools are a power of two of slots as Linux sizes them. Requests whose alignment
//! rounds them past one segment are refused before either search runs
//! (`bounce_legacy::map_size`, shared by both).

use bounce_framework::sim::{PlatformKind, SimGuest};
use bounce_framework::{PhysAddr, Request, Strategy};
use bounce_legacy::{max_mapping_size_for, Legacy, LegacyConfig, SlotIndex};
use bounce_linux_ref::{LinuxRef, INVALID_PHYS_ADDR};

/// Why the C pool and the port differ, if they do: the first slot or area that does.
fn differences(l: &Legacy<SimGuest>, c: &LinuxRef<SimGuest>) -> Option<String> {
    let g = l.geometry();
    for i in 0..g.nslabs {
        let (s, m) = (l.slot(SlotIndex(i)).unwrap(), c.slot(i).unwrap());
        let orig = s.orig_addr.map_or(INVALID_PHYS_ADDR, |a| a.0);
        if (s.list, s.pad_slots, s.alloc_size, orig) != (m.list, m.pad_slots, m.alloc_size as u32, m.orig_addr) {
            return Some(format!("slot {i}: bounce {s:?}, Linux {m:?}"));
        }
    }
    for a in 0..g.nareas {
        let (x, y) = (l.area(a).unwrap(), c.area(a).unwrap());
        if x != y {
            return Some(format!("area {a}: bounce {x:?}, Linux {y:?}"));
        }
    }
    let (x, y) = (l.stats().used_bytes, c.stats().used_bytes);
    (x != y).then(|| format!("used bytes: bounce {x}, Linux {y}"))
}

/// A guest of `nslabs` slots and a megabyte, with `skip_pages` taken first to vary the
/// pool's alignment.
fn guest(nslabs: usize, skip_pages: usize) -> SimGuest {
    let g = SimGuest::with(PlatformKind::Tdx, (nslabs * 2048) + (1 << 20), 4);
    if skip_pages > 0 {
        g.alloc_private(skip_pages * 4096).unwrap();
    }
    g
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Case {
    nslabs: usize,
    nareas: usize,
    /// Pages taken before the pool, to vary its alignment.
    skip_pages: usize,
    seed: u64,
    ops: usize,
}

#[test]
#[ignore = "needs the Linux 6.12 source when bounce-linux-ref is built; run with --ignored"]
fn rust_port_matches_linux_c_code() {
    if let Err(why) = bounce_linux_ref::available() {
        panic!("the Linux reference is unavailable: {why}");
    }
    let cases: Vec<Case> = (0..24u64)
        .map(|i| Case {
            nslabs: [256, 512, 1024, 2048][(i % 4) as usize],
            nareas: [1, 2, 4][(i % 3) as usize].min([256, 512, 1024, 2048][(i % 4) as usize] / 128),
            skip_pages: [0, 1, 3, 16][(i / 4 % 4) as usize],
            seed: 0x9E37_79B9_7F4A_7C15 ^ (i + 1).wrapping_mul(0x1234_5678_9abc_def1),
            ops: 600,
        })
        .collect();
    let (mut maps, mut fails, mut unmaps, mut commands) = (0usize, 0usize, 0usize, 0usize);
    for (n, case) in cases.iter().enumerate() {
        let cfg = LegacyConfig { nslabs: Some(case.nslabs), nareas: Some(case.nareas), ..LegacyConfig::default() };
        let l = Legacy::new(guest(case.nslabs, case.skip_pages), cfg).unwrap();
        let c = LinuxRef::new(guest(case.nslabs, case.skip_pages), cfg).unwrap();
        assert_eq!(l.pool_start(), c.pool_start(), "case {n}: both pools at the same address");
        if let Some(d) = differences(&l, &c) {
            panic!("case {n}, after init: {d}");
        }
        let mut rng = Rng(case.seed);
        let mut live: Vec<u64> = Vec::new();
        for op in 0..case.ops {
            commands += 1;
            let what = if !live.is_empty() && rng.below(5) < 2 {
                let tlb = live.swap_remove(rng.below(live.len() as u64) as usize);
                let (x, y) = (l.release(PhysAddr(tlb)).unwrap(), c.release(PhysAddr(tlb)).unwrap());
                assert_eq!(x, y, "case {n} op {op}: unmap {tlb:#x}");
                unmaps += 1;
                format!("unmap {tlb:#x}")
            } else {
                let mam = [0u64, 0, 0x7ff, 0xfff, 0xffff][rng.below(5) as usize];
                let aam = [0u64, 0, 0, 0xfff, 0x3fff, 0x7fff][rng.below(6) as usize];
                let max = max_mapping_size_for(mam) as u64;
                let size = match rng.below(4) {
                    0 => 1 + rng.below(2048),
                    1 => 1 + rng.below(8192),
                    2 => 1 + rng.below(65536),
                    _ => 1 + rng.below(max),
                } as usize;
                let orig = ((1 + rng.below(1 << 24)) << 12) | rng.below(4096);
                let cpu = rng.below(4) as usize;
                let r = Request {
                    orig: PhysAddr(orig),
                    size,
                    alloc_size: size,
                    alloc_align_mask: aam,
                    min_align_mask: mam,
                    dma_mask: u64::MAX,
                    cpu,
                    may_block: false,
                };
                let what = format!("map cpu {cpu} orig {orig:#x} size {size} aam {aam:#x} mam {mam:#x}");
                match (l.reserve(&r), c.reserve(&r)) {
                    (Ok(x), Ok(y)) => {
                        assert_eq!(x, y, "case {n} op {op}: {what}: bounce {x:?}, Linux {y:?}");
                        live.push(x.addr.0);
                        maps += 1;
                    }
                    (Err(x), Err(y)) => {
                        assert_eq!(x.reason(), y.reason(), "case {n} op {op}: {what}");
                        fails += 1;
                    }
                    (x, y) => panic!("case {n} op {op}: {what}: bounce {x:?}, Linux {y:?}"),
                }
                what
            };
            if let Some(d) = differences(&l, &c) {
                panic!("case {n} op {op} ({what}): {d}");
            }
            if let Err(e) = l.audit() {
                panic!("{e}");
            }
        }
        c.audit().unwrap();
    }
    println!(
        "{} sequences, {commands} commands: {maps} maps, {fails} failed maps, {unmaps} unmaps; every address, every \
         slot's list/alloc_size/orig_addr/pad_slots and every area's used/index identical to Linux 6.12's C code",
        cases.len(),
    );
    assert!(maps > 1000 && fails > 100 && unmaps > 1000, "the sequences did not exercise enough");
}
