//! Differential test against Linux's own C code: the allocator functions are cut out of
//! a Linux 6.12 `kernel/dma/swiotlb.c` at test time (nothing of it is stored in this
//! repository), compiled with a small shim (types, no-op locks and warnings, the device's
//! `min_align_mask`, `raw_smp_processor_id()`), and driven with the same random
//! map/unmap sequences as the Rust port. After every operation both must return the same
//! address (or both fail) and hold identical slot metadata (`list`, `alloc_size`,
//! `orig_addr`, `pad_slots` of every slot) and area state (`used`, `index`).
//!
//! The C functions used, verbatim: `swiotlb_init_io_tlb_pool`, `swiotlb_align_offset`,
//! `io_tlb_offset`, `nr_slots`, `slot_addr`, `get_max_slots`, `wrap_area_index`,
//! `inc_used_and_hiwater`, `dec_used`, `mem_used` (the `CONFIG_DEBUG_FS` versions),
//! `swiotlb_search_pool_area`, `swiotlb_find_slots` (the `!CONFIG_SWIOTLB_DYNAMIC`
//! version), `swiotlb_tbl_map_single`, `swiotlb_release_slots`, and
//! `iommu_is_span_boundary` from `include/linux/iommu-helper.h`.
//!
//! Needs a C compiler (`cc`) and the Linux source: `$BOUNCE_LINUX_SRC`, else
//! `/work/ref/linux-source-6.12` (`tar -xJf /usr/src/linux-source-6.12.tar.xz
//! linux-source-6.12/kernel/dma/swiotlb.c linux-source-6.12/include/linux/iommu-helper.h`
//! from Debian's `linux-source-6.12`). It is `#[ignore]`d so the default test run does
//! not depend on them:
//!
//! ```sh
//! cargo test -p bounce-legacy --test linux_differential -- --ignored --nocapture
//! ```
//!
//! The sequences stay inside what both sides define the same way: original addresses
//! are never 0 (Linux skips the `min_align_mask` check for 0, bounce does not), masks are
//! `2^n - 1`, sizes are at most `swiotlb_max_mapping_size()`, unmaps name live mappings,
//! and pools are a power of two of slots as Linux sizes them.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bounce_framework::sim::{PlatformKind, SimGuest};
use bounce_framework::{PhysAddr, Request, Strategy};
use bounce_legacy::{max_mapping_size_for, Legacy, LegacyConfig, SlotIndex};

fn linux_src() -> PathBuf {
    std::env::var_os("BOUNCE_LINUX_SRC").map_or_else(|| PathBuf::from("/work/ref/linux-source-6.12"), PathBuf::from)
}

/// Cuts the definition that starts with `signature` (its `occurrence`-th appearance,
/// from 0) out of `src`: from the signature to the brace that closes its body, or to
/// `};` for a struct.
fn cut(src: &str, signature: &str, occurrence: usize) -> String {
    let mut at = 0;
    for _ in 0..=occurrence {
        let found = src[at..].find(signature).unwrap_or_else(|| panic!("`{signature}` not in the Linux source"));
        at += found + signature.len();
    }
    let start = at - signature.len();
    let open = start + src[start..].find('{').unwrap();
    let mut depth = 0;
    for (i, c) in src[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    let mut end = open + i + 1;
                    if src[end..].starts_with(';') {
                        end += 1;
                    }
                    return src[start..end].to_string();
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces after `{signature}`");
}

const PRELUDE: &str = r#"
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef uint64_t u64;
typedef uint64_t phys_addr_t;
typedef uint64_t dma_addr_t;
#define IO_TLB_SEGSIZE 128
#define IO_TLB_SHIFT 11
#define IO_TLB_SIZE (1 << IO_TLB_SHIFT)
#define PAGE_SHIFT 12
#define PAGE_SIZE (1UL << PAGE_SHIFT)
#define PAGE_MASK (~(PAGE_SIZE - 1))
#define INVALID_PHYS_ADDR (~(phys_addr_t)0)
#define DMA_MAPPING_ERROR (~(dma_addr_t)0)
#define DMA_ATTR_NO_WARN (1UL << 8)
#define ALIGN(x, a) ({ typeof(x) _m = (typeof(x))(a) - 1; ((x) + _m) & ~_m; })
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#define BUG_ON(c) do { if (c) { fprintf(stderr, "BUG_ON(%s) line %d\n", #c, __LINE__); abort(); } } while (0)
#define unlikely(x) (x)
#define max(a, b) ((a) > (b) ? (a) : (b))
#define min(a, b) ((a) < (b) ? (a) : (b))
#define is_power_of_2(n) ((n) != 0 && (((n) & ((n) - 1)) == 0))
#define __init
typedef int spinlock_t;
#define spin_lock_init(l) ((void)(l))
#define spin_lock_irqsave(l, f) ((void)(f = 0))
#define spin_unlock_irqrestore(l, f) ((void)(f))
typedef struct { long counter; } atomic_long_t;
static long atomic_long_add_return(long v, atomic_long_t *a) { return a->counter += v; }
static long atomic_long_read(atomic_long_t *a) { return a->counter; }
static void atomic_long_sub(long v, atomic_long_t *a) { a->counter -= v; }
static bool try_cmpxchg_long(atomic_long_t *a, long *old, long new_) {
    if (a->counter == *old) { a->counter = new_; return true; }
    *old = a->counter; return false;
}
#define atomic_long_try_cmpxchg(a, old, new_) try_cmpxchg_long((a), (long *)(old), (new_))
enum dma_data_direction { DMA_BIDIRECTIONAL = 0, DMA_TO_DEVICE = 1, DMA_FROM_DEVICE = 2, DMA_NONE = 3 };
struct io_tlb_area;
struct io_tlb_slot;
struct io_tlb_pool {
    phys_addr_t start; phys_addr_t end; void *vaddr; unsigned long nslabs; bool late_alloc;
    unsigned int nareas; unsigned int area_nslabs; struct io_tlb_area *areas; struct io_tlb_slot *slots;
};
struct io_tlb_mem { struct io_tlb_pool defpool; unsigned long nslabs; atomic_long_t total_used; atomic_long_t used_hiwater; };
struct device { struct io_tlb_mem *dma_io_tlb_mem; unsigned int min_align_mask; };
static unsigned int dma_get_min_align_mask(struct device *dev) { return dev->min_align_mask; }
static unsigned long dma_get_seg_boundary(struct device *dev) { (void)dev; return ~0UL; }
static dma_addr_t phys_to_dma_unencrypted(struct device *dev, phys_addr_t p) { (void)dev; return p | (1ULL << 47); }
static int cur_cpu;
#define raw_smp_processor_id() cur_cpu
#define dev_warn_ratelimited(dev, ...) do { (void)(dev); } while (0)
#define dev_WARN_ONCE(dev, cond, ...) ((void)(cond))
#define pr_warn_once(...) do { } while (0)
#define cc_platform_has(x) 0
static void dma_reset_need_sync(struct device *dev) { (void)dev; }
struct io_tlb_pool;
static void swiotlb_bounce(struct device *dev, phys_addr_t tlb_addr, size_t size, enum dma_data_direction dir,
                           struct io_tlb_pool *mem) { (void)dev; (void)tlb_addr; (void)size; (void)dir; (void)mem; }
"#;

const DRIVER: &str = r#"
static struct io_tlb_mem mem;
static struct device dev = { &mem, 0 };

static void state(void) {
    struct io_tlb_pool *p = &mem.defpool;
    uint64_t h = 1469598103934665603ULL;
#define MIX(v) do { h ^= (uint64_t)(v); h *= 1099511628211ULL; } while (0)
    for (unsigned long i = 0; i < p->nslabs; i++) {
        MIX(p->slots[i].list); MIX(p->slots[i].pad_slots);
        MIX((uint32_t)p->slots[i].alloc_size); MIX(p->slots[i].orig_addr);
    }
    for (unsigned int a = 0; a < p->nareas; a++) { MIX(p->areas[a].used); MIX(p->areas[a].index); }
    MIX(mem.total_used.counter);
    printf(" %016llx\n", (unsigned long long)h);
}

int main(void) {
    char op[8];
    while (scanf("%7s", op) == 1) {
        if (op[0] == 'i') {
            unsigned long long start; unsigned long nslabs; unsigned int nareas;
            if (scanf("%llx %lu %u", &start, &nslabs, &nareas) != 3) return 2;
            memset(&mem, 0, sizeof(mem));
            mem.defpool.slots = calloc(nslabs, sizeof(struct io_tlb_slot));
            mem.defpool.areas = calloc(nareas, sizeof(struct io_tlb_area));
            swiotlb_init_io_tlb_pool(&mem.defpool, start, malloc(nslabs << IO_TLB_SHIFT), nslabs, false, nareas);
            mem.nslabs = nslabs;
            printf("init");
        } else if (op[0] == 'm') {
            unsigned long long orig, aam, mam; unsigned long size; int cpu;
            if (scanf("%d %llx %lu %llx %llx", &cpu, &orig, &size, &aam, &mam) != 5) return 2;
            cur_cpu = cpu; dev.min_align_mask = mam;
            phys_addr_t t = swiotlb_tbl_map_single(&dev, orig, size, aam, DMA_BIDIRECTIONAL, 0);
            if (t == (phys_addr_t)DMA_MAPPING_ERROR) printf("fail"); else printf("%llx", (unsigned long long)t);
        } else if (op[0] == 'u') {
            unsigned long long tlb, mam;
            if (scanf("%llx %llx", &tlb, &mam) != 2) return 2;
            dev.min_align_mask = mam;
            swiotlb_release_slots(&dev, tlb, &mem.defpool);
            printf("ok");
        } else return 3;
        state();
    }
    return 0;
}
"#;

/// Builds the harness from the Linux source; returns the executable.
fn build_harness(dir: &Path) -> PathBuf {
    let root = linux_src();
    let swiotlb = std::fs::read_to_string(root.join("kernel/dma/swiotlb.c"))
        .unwrap_or_else(|e| panic!("{}/kernel/dma/swiotlb.c: {e} (set BOUNCE_LINUX_SRC)", root.display()));
    let helper = std::fs::read_to_string(root.join("include/linux/iommu-helper.h"))
        .unwrap_or_else(|e| panic!("{}/include/linux/iommu-helper.h: {e}", root.display()));
    let mut c = String::from(PRELUDE);
    let parts = [
        (helper.as_str(), "static inline int iommu_is_span_boundary(", 0),
        (&swiotlb, "struct io_tlb_slot {", 0),
        (&swiotlb, "struct io_tlb_area {", 0),
        (&swiotlb, "static inline unsigned long io_tlb_offset(", 0),
        (&swiotlb, "static inline unsigned long nr_slots(", 0),
        (&swiotlb, "static void swiotlb_init_io_tlb_pool(", 0),
        (&swiotlb, "static unsigned int swiotlb_align_offset(", 0),
        (&swiotlb, "static inline phys_addr_t slot_addr(", 0),
        (&swiotlb, "static inline unsigned long get_max_slots(", 0),
        (&swiotlb, "static unsigned int wrap_area_index(", 0),
        // CONFIG_DEBUG_FS versions come first in the file.
        (&swiotlb, "static void inc_used_and_hiwater(", 0),
        (&swiotlb, "static void dec_used(", 0),
        (&swiotlb, "static unsigned long mem_used(", 0),
        (&swiotlb, "static int swiotlb_search_pool_area(", 0),
        // The second definition is the !CONFIG_SWIOTLB_DYNAMIC one.
        (&swiotlb, "static int swiotlb_find_slots(", 1),
        (&swiotlb, "phys_addr_t swiotlb_tbl_map_single(", 0),
        (&swiotlb, "static void swiotlb_release_slots(", 0),
    ];
    for (src, sig, n) in parts {
        let _ = writeln!(c, "\n{}", cut(src, sig, n));
    }
    c.push_str(DRIVER);
    let file = dir.join("swiotlb_harness.c");
    std::fs::write(&file, c).unwrap();
    let exe = dir.join("swiotlb_harness");
    let out = Command::new("cc").args(["-O1", "-std=gnu11", "-o"]).arg(&exe).arg(&file).output().expect("run cc");
    assert!(out.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&out.stderr));
    exe
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

/// FNV-1a over the same fields, in the same order, as the harness's `state()`.
fn state_hash(l: &Legacy<SimGuest>) -> u64 {
    let mut h: u64 = 1_469_598_103_934_665_603;
    let mut mix = |v: u64| {
        h ^= v;
        h = h.wrapping_mul(1_099_511_628_211);
    };
    let g = l.geometry();
    for i in 0..g.nslabs {
        let s = l.slot(SlotIndex(i)).unwrap();
        mix(u64::from(s.list));
        mix(u64::from(s.pad_slots));
        mix(u64::from(s.alloc_size));
        mix(s.orig_addr.map_or(u64::MAX, |a| a.0));
    }
    for a in 0..g.nareas {
        let v = l.area(a).unwrap();
        mix(v.used as u64);
        mix(v.index as u64);
    }
    mix((l.stats().used_bytes >> 11) as u64);
    h
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
#[ignore = "needs cc and the Linux 6.12 source; run with --ignored"]
fn rust_port_matches_linux_c_code() {
    let dir = std::env::temp_dir().join(format!("bounce-legacy-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = build_harness(&dir);
    let cases: Vec<Case> = (0..24u64)
        .map(|i| Case {
            nslabs: [256, 512, 1024, 2048][(i % 4) as usize],
            nareas: [1, 2, 4][(i % 3) as usize].min([256, 512, 1024, 2048][(i % 4) as usize] / 128),
            skip_pages: [0, 1, 3, 16][(i / 4 % 4) as usize],
            seed: 0x9E37_79B9_7F4A_7C15 ^ (i + 1).wrapping_mul(0x1234_5678_9abc_def1),
            ops: 600,
        })
        .collect();
    let mut script = String::new();
    let mut expected: Vec<(String, u64)> = Vec::new();
    let (mut maps, mut fails, mut unmaps) = (0usize, 0usize, 0usize);
    for case in &cases {
        let g = SimGuest::with(PlatformKind::Tdx, (case.nslabs * 2048) + (1 << 20), 4);
        if case.skip_pages > 0 {
            g.alloc_private(case.skip_pages * 4096).unwrap();
        }
        let cfg = LegacyConfig { nslabs: Some(case.nslabs), nareas: Some(case.nareas), ..LegacyConfig::default() };
        let l = Legacy::new(g, cfg).unwrap();
        let _ = writeln!(script, "i {:x} {} {}", l.pool_start().0, case.nslabs, case.nareas);
        expected.push(("init".into(), state_hash(&l)));
        let mut rng = Rng(case.seed);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for _ in 0..case.ops {
            if !live.is_empty() && rng.below(5) < 2 {
                let (tlb, mam) = live.swap_remove(rng.below(live.len() as u64) as usize);
                l.release(PhysAddr(tlb)).unwrap();
                let _ = writeln!(script, "u {tlb:x} {mam:x}");
                expected.push(("ok".into(), state_hash(&l)));
                unmaps += 1;
                continue;
            }
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
            let _ = writeln!(script, "m {cpu} {orig:x} {size} {aam:x} {mam:x}");
            if let Ok(res) = l.reserve(&r) {
                live.push((res.addr.0, mam));
                expected.push((format!("{:x}", res.addr.0), state_hash(&l)));
                maps += 1;
            } else {
                expected.push(("fail".into(), state_hash(&l)));
                fails += 1;
            }
            if let Err(e) = l.audit() {
                panic!("{e}");
            }
        }
    }
    let mut child = Command::new(&exe).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    // Feed the script from another thread: the harness answers as it reads, and a full
    // stdout pipe would otherwise block both sides.
    let mut stdin = child.stdin.take().unwrap();
    let feed = script.clone();
    let writer = std::thread::spawn(move || stdin.write_all(feed.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "harness exited with {}", out.status);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let script_lines: Vec<&str> = script.lines().collect();
    assert_eq!(lines.len(), expected.len(), "the harness answered {} of {} commands", lines.len(), expected.len());
    for (i, (line, (want_result, want_hash))) in lines.iter().zip(&expected).enumerate() {
        let (result, hash) = line.split_once(' ').unwrap();
        assert_eq!(
            result, want_result,
            "command {i} `{}`: Linux returned {result}, bounce {want_result}",
            script_lines[i]
        );
        assert_eq!(
            u64::from_str_radix(hash.trim(), 16).unwrap(),
            *want_hash,
            "command {i} `{}`: slot metadata differs from Linux's",
            script_lines[i]
        );
    }
    println!(
        "{} sequences, {} commands: {maps} maps, {fails} failed maps, {unmaps} unmaps; every address, every slot's \
         list/alloc_size/orig_addr/pad_slots and every area's used/index identical to Linux 6.12's C code",
        cases.len(),
        expected.len()
    );
    assert!(maps > 1000 && fails > 100 && unmaps > 1000, "the sequences did not exercise enough");
    let _ = std::fs::remove_dir_all(&dir);
}
