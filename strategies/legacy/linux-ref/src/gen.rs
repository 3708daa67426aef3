//! The C file of the reference, generated from a Linux 6.12 source tree: the allocator's
//! functions cut out of `kernel/dma/swiotlb.c` and `include/linux/iommu-helper.h`
//! verbatim ([`PARTS`], [`cut`]), after a shim that gives them what the kernel would
//! ([`SHIM`]) and before bounce's entry points ([`API`]).
//!
//! This file is the one place the cutting is written down. The build script includes it
//! (`#[path = "src/gen.rs"]`) to generate and compile the C; the library exports it as
//! `bounce_linux_ref::gen` so tests can check what was cut. It uses `std` only.
//!
//! Choices the shim makes, and why:
//!
//! - **Real locks.** `spinlock_t` is a test-and-test-and-set spin lock on the `__atomic`
//!   builtins (acquire on lock, release on unlock), `atomic_long_t` a `long` changed
//!   with `__atomic` read-modify-writes (`atomic_long_add_return` and
//!   `atomic_long_try_cmpxchg` fully ordered, reads, sets and `atomic_long_sub` relaxed,
//!   as in Linux). A waiter yields its CPU after every 1024 spins: a userspace thread
//!   can be preempted while it holds a lock, where the kernel disables preemption.
//! - **`raw_smp_processor_id()`** is a thread-local set by every entry point from the
//!   CPU of the request (bounce's `Request::cpu`): the bench pins each worker thread to
//!   a simulated CPU.
//! - **`!CONFIG_SWIOTLB_DYNAMIC`**: the second definition of `swiotlb_find_slots()`
//!   (one pool, its areas searched from the CPU's own), as the legacy port models. The
//!   dynamic version adds transient and late-grown pools, which no strategy of the
//!   comparison has at boot. `CONFIG_DEBUG_FS` versions of the usage counters (the
//!   first definitions), so `total_used` and `used_hiwater` are kept as a kernel with
//!   debugfs keeps them.
//! - **No copies.** `swiotlb_bounce()` is a no-op: the framework's `Bouncer` copies, for
//!   every strategy alike. `memset()` of a `NULL` pointer is skipped: the pool's bytes
//!   belong to the simulated guest, which clears them when the pool is allocated
//!   (`bounce_legacy::alloc_pool`), so `swiotlb_init_io_tlb_pool()` gets no `vaddr`.
//! - **Devices** carry only `min_align_mask`; `dma_get_seg_boundary()` is Linux's
//!   default `ULONG_MAX`; `phys_to_dma_unencrypted()` adds the platform's bus offset of
//!   the pool. Warnings are dropped (`dev_warn_ratelimited`, `dev_WARN_ONCE`,
//!   `pr_warn_once`); `BUG_ON()` prints and aborts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The environment variable naming the Linux source tree (read at build time).
pub const SRC_ENV: &str = "BOUNCE_LINUX_SRC";

/// Where the Linux source is looked for when [`SRC_ENV`] is unset.
pub const DEFAULT_SRC: &str = "/work/ref/linux-source-6.12";

/// Where CI extracts the Linux source, relative to the workspace root; looked for too
/// when [`SRC_ENV`] is unset.
pub const WORKSPACE_SRC: &str = "target/linux-ref/linux-source-6.12";

/// How to get the source, for messages.
pub const HOW_TO_GET: &str = "Debian: apt-get install linux-source-6.12, then tar -xJf \
     /usr/src/linux-source-6.12.tar.xz linux-source-6.12/kernel/dma/swiotlb.c \
     linux-source-6.12/include/linux/iommu-helper.h";

/// A file of the Linux tree the functions are cut from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum File {
    /// `kernel/dma/swiotlb.c`.
    Swiotlb,
    /// `include/linux/iommu-helper.h`.
    IommuHelper,
}

impl File {
    /// Both files.
    pub const ALL: [Self; 2] = [Self::Swiotlb, Self::IommuHelper];

    /// The path inside the Linux tree.
    pub const fn path(self) -> &'static str {
        match self {
            Self::Swiotlb => "kernel/dma/swiotlb.c",
            Self::IommuHelper => "include/linux/iommu-helper.h",
        }
    }
}

/// The definitions taken verbatim, in the order they are emitted: the file, the text
/// the definition starts with, and which occurrence of that text (from 0).
pub const PARTS: &[(File, &str, usize)] = &[
    (File::IommuHelper, "static inline int iommu_is_span_boundary(", 0),
    (File::Swiotlb, "struct io_tlb_slot {", 0),
    (File::Swiotlb, "struct io_tlb_area {", 0),
    (File::Swiotlb, "static inline unsigned long io_tlb_offset(", 0),
    (File::Swiotlb, "static inline unsigned long nr_slots(", 0),
    (File::Swiotlb, "static void swiotlb_init_io_tlb_pool(", 0),
    (File::Swiotlb, "static void add_mem_pool(", 0),
    (File::Swiotlb, "static unsigned int swiotlb_align_offset(", 0),
    (File::Swiotlb, "static inline phys_addr_t slot_addr(", 0),
    (File::Swiotlb, "static inline unsigned long get_max_slots(", 0),
    (File::Swiotlb, "static unsigned int wrap_area_index(", 0),
    // The CONFIG_DEBUG_FS versions come first in the file.
    (File::Swiotlb, "static void inc_used_and_hiwater(", 0),
    (File::Swiotlb, "static void dec_used(", 0),
    (File::Swiotlb, "static unsigned long mem_used(", 0),
    (File::Swiotlb, "static int swiotlb_search_pool_area(", 0),
    // The second definition is the !CONFIG_SWIOTLB_DYNAMIC one.
    (File::Swiotlb, "static int swiotlb_find_slots(", 1),
    (File::Swiotlb, "phys_addr_t swiotlb_tbl_map_single(", 0),
    (File::Swiotlb, "static void swiotlb_release_slots(", 0),
    (File::Swiotlb, "size_t swiotlb_max_mapping_size(", 0),
    // debugfs: io_tlb_used and io_tlb_used_hiwater.
    (File::Swiotlb, "static int io_tlb_used_get(", 0),
    (File::Swiotlb, "static int io_tlb_hiwater_get(", 0),
    (File::Swiotlb, "static int io_tlb_hiwater_set(", 0),
];

/// Where to look for the source: `$BOUNCE_LINUX_SRC` alone when it is set (`env`),
/// else [`DEFAULT_SRC`] and [`WORKSPACE_SRC`] under `workspace_root`.
pub fn candidates(env: Option<PathBuf>, workspace_root: &Path) -> Vec<PathBuf> {
    match env {
        Some(p) => vec![p],
        None => vec![PathBuf::from(DEFAULT_SRC), workspace_root.join(WORKSPACE_SRC)],
    }
}

/// The first of `candidates` that holds both [`File`]s.
///
/// # Errors
/// One line saying where it looked and how to get the source.
pub fn find_source(candidates: &[PathBuf], from_env: bool) -> Result<PathBuf, String> {
    if let Some(found) = candidates.iter().find(|c| File::ALL.iter().all(|f| c.join(f.path()).is_file())) {
        return Ok(found.clone());
    }
    let places: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    let set = if from_env { " (from BOUNCE_LINUX_SRC)" } else { "" };
    Err(format!(
        "Linux 6.12 source not found at {}{set}; set BOUNCE_LINUX_SRC to a tree holding {} and {} ({HOW_TO_GET})",
        places.join(" or "),
        File::Swiotlb.path(),
        File::IommuHelper.path()
    ))
}

/// Cuts the definition that starts with `signature` (its `occurrence`-th appearance,
/// from 0) out of `src`: from the signature to the brace that closes its body, or to
/// `};` for a struct.
///
/// # Errors
/// When the signature is missing or the braces after it do not balance.
pub fn cut(src: &str, signature: &str, occurrence: usize) -> Result<String, String> {
    let mut at = 0;
    for _ in 0..=occurrence {
        let found = src[at..]
            .find(signature)
            .ok_or_else(|| format!("`{signature}` (occurrence {occurrence}) is not in the Linux source"))?;
        at += found + signature.len();
    }
    let start = at - signature.len();
    let open = start + src[start..].find('{').ok_or_else(|| format!("no body after `{signature}`"))?;
    let mut depth = 0usize;
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
                    return Ok(src[start..end].to_string());
                }
            }
            _ => {}
        }
    }
    Err(format!("unbalanced braces after `{signature}`"))
}

/// The whole C file from the two files' text.
///
/// # Errors
/// The first definition [`cut`] cannot find.
pub fn generate(swiotlb: &str, iommu_helper: &str) -> Result<String, String> {
    let mut c = String::from(SHIM);
    for &(file, signature, occurrence) in PARTS {
        let src = match file {
            File::Swiotlb => swiotlb,
            File::IommuHelper => iommu_helper,
        };
        let body = cut(src, signature, occurrence).map_err(|e| format!("{}: {e}", file.path()))?;
        let _ = write!(c, "\n/* {}: {signature}... */\n{body}\n", file.path());
    }
    c.push_str(API);
    Ok(c)
}

/// [`generate`] from the files under `root`.
///
/// # Errors
/// A file that cannot be read, or what [`generate`] returns.
pub fn generate_from(root: &Path) -> Result<String, String> {
    let read = |f: File| {
        let p = root.join(f.path());
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    generate(&read(File::Swiotlb)?, &read(File::IommuHelper)?)
}

/// What the cut functions need from the kernel (see the module documentation).
pub const SHIM: &str = r#"/* Generated by bounce-linux-ref (strategies/legacy/linux-ref/src/gen.rs) from a
 * Linux 6.12 source tree: the functions below the shim are Linux's, cut verbatim. */
#include <errno.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
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
#define roundup(x, y) ((((x) + ((y) - 1)) / (y)) * (y))
#define BUG_ON(c) do { if (c) { fprintf(stderr, "swiotlb.c: BUG_ON(%s) at line %d\n", #c, __LINE__); abort(); } } while (0)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define max(a, b) ((a) > (b) ? (a) : (b))
#define min(a, b) ((a) < (b) ? (a) : (b))
#define is_power_of_2(n) ((n) != 0 && (((n) & ((n) - 1)) == 0))
#define __init

/* Spin locks: test-and-test-and-set; a waiter yields after every 1024 spins. */
static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}
typedef struct { int locked; } spinlock_t;
static inline void spin_lock_init(spinlock_t *l) { __atomic_store_n(&l->locked, 0, __ATOMIC_RELAXED); }
static inline void spin_lock(spinlock_t *l)
{
	unsigned int spins = 0;
	while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE)) {
		while (__atomic_load_n(&l->locked, __ATOMIC_RELAXED)) {
			cpu_relax();
			if (++spins % 1024 == 0)
				sched_yield();
		}
	}
}
static inline void spin_unlock(spinlock_t *l) { __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE); }
#define spin_lock_irqsave(l, flags) do { (flags) = 0; spin_lock(l); } while (0)
#define spin_unlock_irqrestore(l, flags) do { (void)(flags); spin_unlock(l); } while (0)

/* atomic_long_t with Linux's ordering: value-returning RMWs fully ordered. */
typedef struct { long counter; } atomic_long_t;
static inline long atomic_long_read(const atomic_long_t *v) { return __atomic_load_n(&v->counter, __ATOMIC_RELAXED); }
static inline void atomic_long_set(atomic_long_t *v, long i) { __atomic_store_n(&v->counter, i, __ATOMIC_RELAXED); }
static inline long atomic_long_add_return(long i, atomic_long_t *v)
{
	return __atomic_add_fetch(&v->counter, i, __ATOMIC_SEQ_CST);
}
static inline void atomic_long_sub(long i, atomic_long_t *v) { __atomic_sub_fetch(&v->counter, i, __ATOMIC_RELAXED); }
static inline bool bounce_ref_try_cmpxchg(atomic_long_t *v, long *old, long new_)
{
	return __atomic_compare_exchange_n(&v->counter, old, new_, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
}
#define atomic_long_try_cmpxchg(v, old, new_) bounce_ref_try_cmpxchg((v), (long *)(old), (new_))

/* raw_smp_processor_id(): the calling thread's simulated CPU, set by each entry point. */
static __thread unsigned int bounce_ref_cpu;
#define raw_smp_processor_id() bounce_ref_cpu

enum dma_data_direction { DMA_BIDIRECTIONAL = 0, DMA_TO_DEVICE = 1, DMA_FROM_DEVICE = 2, DMA_NONE = 3 };
struct io_tlb_area;
struct io_tlb_slot;
struct io_tlb_pool {
	phys_addr_t start;
	phys_addr_t end;
	void *vaddr;
	unsigned long nslabs;
	bool late_alloc;
	unsigned int nareas;
	unsigned int area_nslabs;
	struct io_tlb_area *areas;
	struct io_tlb_slot *slots;
};
/* struct io_tlb_mem without CONFIG_SWIOTLB_DYNAMIC (no pool list, no lock), plus the
 * platform's bus offset of the pool for phys_to_dma_unencrypted(). */
struct io_tlb_mem {
	struct io_tlb_pool defpool;
	unsigned long nslabs;
	atomic_long_t total_used;
	atomic_long_t used_hiwater;
	u64 dma_offset;
};
struct device { struct io_tlb_mem *dma_io_tlb_mem; unsigned int min_align_mask; };
static inline unsigned int dma_get_min_align_mask(struct device *dev) { return dev->min_align_mask; }
static inline unsigned long dma_get_seg_boundary(struct device *dev) { (void)dev; return ~0UL; }
static inline dma_addr_t phys_to_dma_unencrypted(struct device *dev, phys_addr_t paddr)
{
	return paddr + dev->dma_io_tlb_mem->dma_offset;
}
#define dev_warn_ratelimited(dev, ...) do { (void)(dev); } while (0)
#define dev_WARN_ONCE(dev, cond, ...) ((void)(cond))
#define pr_warn_once(...) do { } while (0)
#define cc_platform_has(attr) 0
static inline void dma_reset_need_sync(struct device *dev) { (void)dev; }
/* The copies are the framework's Bouncer's. */
static void swiotlb_bounce(struct device *dev, phys_addr_t tlb_addr, size_t size, enum dma_data_direction dir,
			   struct io_tlb_pool *mem)
{
	(void)dev; (void)tlb_addr; (void)size; (void)dir; (void)mem;
}
/* The pool's bytes belong to the simulated guest, which clears them itself. */
static inline void *bounce_ref_memset(void *s, int c, size_t n) { return s ? memset(s, c, n) : s; }
#define memset(s, c, n) bounce_ref_memset((s), (c), (n))
"#;

/// bounce's entry points, called through `bounce_linux_ref`'s FFI (not Linux code).
pub const API: &str = r"
/* ---- bounce's entry points (bounce-linux-ref src/ffi.rs), not Linux code ---- */
struct bounce_ref_slot { uint64_t orig_addr; uint64_t alloc_size; uint16_t list; uint16_t pad_slots; };

/* swiotlb_init_remap() after the memory is allocated: the metadata, then add_mem_pool(). */
struct io_tlb_mem *bounce_ref_create(uint64_t start, uint64_t dma_offset, unsigned long nslabs, unsigned int nareas)
{
	struct io_tlb_mem *mem = calloc(1, sizeof(*mem));
	if (!mem)
		return NULL;
	mem->defpool.slots = calloc(nslabs, sizeof(struct io_tlb_slot));
	mem->defpool.areas = calloc(nareas, sizeof(struct io_tlb_area));
	if (!mem->defpool.slots || !mem->defpool.areas) {
		free(mem->defpool.slots);
		free(mem->defpool.areas);
		free(mem);
		return NULL;
	}
	mem->dma_offset = dma_offset;
	swiotlb_init_io_tlb_pool(&mem->defpool, start, NULL, nslabs, false, nareas);
	add_mem_pool(mem, &mem->defpool);
	return mem;
}

void bounce_ref_destroy(struct io_tlb_mem *mem)
{
	free(mem->defpool.slots);
	free(mem->defpool.areas);
	free(mem);
}

uint64_t bounce_ref_map(struct io_tlb_mem *mem, unsigned int cpu, uint64_t orig, size_t mapping_size,
			unsigned int alloc_align_mask, unsigned int min_align_mask)
{
	struct device dev = { mem, min_align_mask };
	bounce_ref_cpu = cpu;
	return swiotlb_tbl_map_single(&dev, orig, mapping_size, alloc_align_mask, DMA_BIDIRECTIONAL, 0);
}

void bounce_ref_release(struct io_tlb_mem *mem, uint64_t tlb_addr, unsigned int min_align_mask)
{
	struct device dev = { mem, min_align_mask };
	swiotlb_release_slots(&dev, tlb_addr, &mem->defpool);
}

size_t bounce_ref_max_mapping_size(unsigned int min_align_mask)
{
	struct device dev = { NULL, min_align_mask };
	return swiotlb_max_mapping_size(&dev);
}

/* One slot's fields, read as swiotlb_bounce() reads them: without a lock. */
void bounce_ref_slot(const struct io_tlb_mem *mem, unsigned long index, struct bounce_ref_slot *out)
{
	const struct io_tlb_slot *s = &mem->defpool.slots[index];
	out->orig_addr = __atomic_load_n(&s->orig_addr, __ATOMIC_RELAXED);
	out->alloc_size = __atomic_load_n(&s->alloc_size, __ATOMIC_RELAXED);
	out->list = __atomic_load_n(&s->list, __ATOMIC_RELAXED);
	out->pad_slots = __atomic_load_n(&s->pad_slots, __ATOMIC_RELAXED);
}

/* An area's counters; consistent while the caller holds the area locks. */
void bounce_ref_area(const struct io_tlb_mem *mem, unsigned int index, unsigned long *used, unsigned int *next)
{
	const struct io_tlb_area *a = &mem->defpool.areas[index];
	*used = __atomic_load_n(&a->used, __ATOMIC_RELAXED);
	*next = __atomic_load_n(&a->index, __ATOMIC_RELAXED);
}

void bounce_ref_lock_areas(struct io_tlb_mem *mem)
{
	for (unsigned int i = 0; i < mem->defpool.nareas; i++)
		spin_lock(&mem->defpool.areas[i].lock);
}

void bounce_ref_unlock_areas(struct io_tlb_mem *mem)
{
	for (unsigned int i = mem->defpool.nareas; i-- > 0;)
		spin_unlock(&mem->defpool.areas[i].lock);
}

uint64_t bounce_ref_used(struct io_tlb_mem *mem)
{
	u64 val = 0;
	io_tlb_used_get(mem, &val);
	return val;
}

uint64_t bounce_ref_hiwater(struct io_tlb_mem *mem)
{
	u64 val = 0;
	io_tlb_hiwater_get(mem, &val);
	return val;
}

void bounce_ref_reset_hiwater(struct io_tlb_mem *mem)
{
	io_tlb_hiwater_set(mem, 0);
}
";
