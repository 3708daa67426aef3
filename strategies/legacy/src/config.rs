//! Sizing: Linux's boot-time rules for the pool and its areas, the typed configuration,
//! and its validation.
//!
//! Linux decides the size of the default swiotlb pool in three places, in this order
//! (Linux 6.12):
//!
//! 1. `setup_io_tlb_npages()` (the `swiotlb=` early parameter, parsed in `setup_arch()`
//!    by `parse_early_param()`): `default_nslabs = ALIGN(slots, IO_TLB_SEGSIZE)`, and for
//!    `,<areas>` `swiotlb_adjust_nareas(areas)`, which rounds the areas up to a power of
//!    two and calls `round_up_default_nslabs()`.
//! 2. `mem_encrypt_setup_arch()` (`arch/x86/mm/mem_encrypt.c`, later in `setup_arch()`), in
//!    a guest with memory encryption only:
//!    ```c
//!    size = total_mem * 6 / 100;
//!    size = clamp_val(size, IO_TLB_DEFAULT_SIZE, SZ_1G);
//!    swiotlb_adjust_size(size);
//!    ```
//!    and `swiotlb_adjust_size()` only acts while `default_nslabs` still equals
//!    `IO_TLB_DEFAULT_SIZE >> IO_TLB_SHIFT` (so it also acts for an explicit
//!    `swiotlb=32768`, a quirk kept here).
//! 3. `swiotlb_init_remap()` (from `pci_iommu_alloc()`): `if (!default_nareas)
//!    swiotlb_adjust_nareas(num_possible_cpus());` then `nareas =
//!    limit_nareas(default_nareas, nslabs)`, and on allocation failure
//!    `nslabs = ALIGN(nslabs >> 1, IO_TLB_SEGSIZE)` until `nslabs <= IO_TLB_MIN_SLABS`.
//!
//! Because `round_up_default_nslabs()` runs whenever the area count is set, every pool
//! Linux boots with has a power-of-two number of slots, at least 128 per area. The
//! typed [`LegacyConfig`] is exact instead: explicit numbers are used as given (and
//! refused with a clear error when they cannot work); only the fields left `None` follow
//! Linux's rules. [`LinuxSizing::replay`] reproduces the boot sequence, and
//! [`Legacy::from_boot`](crate::Legacy::from_boot) uses it.

use alloc::format;

use bounce_framework::{
    BootConfig, ForceMode, InitError, LogLevel, PhysAddr, Platform, SwiotlbParam, IO_TLB_SEGSIZE, IO_TLB_SHIFT,
    IO_TLB_SIZE,
};

/// Linux's default pool size (`IO_TLB_DEFAULT_SIZE`): 64 MiB.
pub const IO_TLB_DEFAULT_SIZE: usize = 64 << 20;

/// Linux's floor for shrinking the pool after a failed allocation
/// (`IO_TLB_MIN_SLABS`): 1 MiB of slots.
pub const IO_TLB_MIN_SLABS: usize = (1 << 20) >> IO_TLB_SHIFT;

/// The most slots a pool may have: Linux indexes slots with `int`.
pub const MAX_SLOTS: usize = i32::MAX as usize;

/// The most areas a pool may have (Linux: `unsigned int`; the framework's command line
/// parser accepts at most 2^20).
pub const MAX_AREAS: usize = 1 << 20;

/// The end of the memory 32-bit devices can reach: x86's `ARCH_LOW_ADDRESS_LIMIT`
/// (+1), where `memblock_alloc_low()` places the pool.
pub const LOW_MEMORY_LIMIT: PhysAddr = PhysAddr(1 << 32);

/// The share of RAM a confidential guest reserves for the pool (x86
/// `mem_encrypt_setup_arch()`: `total_mem * 6 / 100`).
pub const COCO_PERCENT: usize = 6;

/// The upper clamp of the confidential-guest size (`SZ_1G`).
pub const COCO_MAX_SIZE: usize = 1 << 30;

/// Where the pool's pages come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// Below 4 GiB only: Linux x86's `memblock_alloc_low()` (no `SWIOTLB_ANY`).
    Low,
    /// Below 4 GiB when the page allocator can, else anywhere, tried at each size
    /// before shrinking (the default).
    #[default]
    LowThenAnywhere,
    /// Anywhere (`SWIOTLB_ANY`, as Xen and arm64 CCA use).
    Anywhere,
}

/// The legacy strategy's configuration.
///
/// `Default` is Linux's default: the pool size and area count Linux 6.12 would pick on
/// this platform with no `swiotlb=` parameter (64 MiB, or in a confidential guest 6 % of
/// RAM clamped to 64 MiB..1 GiB and rounded up to a power of two of slots; one area per
/// possible CPU, rounded up to a power of two and limited so every area holds whole
/// 128-slot segments), placed below 4 GiB when possible, shrunk by halves like Linux if
/// the page allocator cannot provide it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegacyConfig {
    /// Slots of 2 KiB in the pool, used exactly as given (any number from 1 up; more than
    /// one area needs a multiple of `128 × areas`). `None`: Linux's default size.
    pub nslabs: Option<usize>,
    /// Areas (independent locks), a power of two. `None`: the CPU count rounded up to a
    /// power of two, halved until the areas split the pool into whole 128-slot
    /// segments (Linux's `limit_nareas()` for every size Linux produces).
    pub nareas: Option<usize>,
    /// Where the pool's pages come from.
    pub placement: Placement,
    /// When the page allocator cannot provide the pool, retry with half the slots
    /// (`ALIGN(nslabs >> 1, IO_TLB_SEGSIZE)`) while more than [`IO_TLB_MIN_SLABS`]
    /// remain, as `swiotlb_init_remap()` does. Off: fail instead.
    pub shrink_on_failure: bool,
}

impl Default for LegacyConfig {
    fn default() -> Self {
        Self { nslabs: None, nareas: None, placement: Placement::LowThenAnywhere, shrink_on_failure: true }
    }
}

impl LegacyConfig {
    /// A pool of exactly `nslabs` slots with the default area count.
    pub fn with_slots(nslabs: usize) -> Self {
        Self { nslabs: Some(nslabs), ..Self::default() }
    }

    /// A pool of `bytes` (rounded up to whole 2 KiB slots) with the default area count.
    pub fn with_bytes(bytes: usize) -> Self {
        Self::with_slots(bytes.div_ceil(IO_TLB_SIZE))
    }

    /// The configuration Linux would boot with for `param` (the parsed `swiotlb=`) on
    /// `platform`: [`LinuxSizing::replay`] with the platform's CPUs, RAM and
    /// confidentiality, as exact numbers.
    pub fn from_swiotlb_param<P: Platform>(param: &SwiotlbParam, platform: &P) -> Self {
        let s = LinuxSizing::for_platform(param, platform);
        Self { nslabs: Some(s.nslabs), nareas: Some(s.nareas), ..Self::default() }
    }

    /// The pool Linux 6.12 would boot with for `boot.swiotlb` on `platform`
    /// ([`LinuxSizing::replay`]: `swiotlb=<slots>,<areas>`, the confidential-guest 6 %
    /// rule, one area per CPU, power-of-two rounding), for the strategy `name`, which is
    /// nothing but that pool. Logs Linux's sizing messages.
    ///
    /// # Errors
    /// [`InitError::Config`] for `swiotlb=noforce`, which turns swiotlb off.
    pub fn for_boot<P: Platform>(platform: &P, boot: &BootConfig, name: &str) -> Result<Self, InitError> {
        if boot.swiotlb.force == Some(ForceMode::NoForce) {
            return Err(InitError::Config(format!(
                "swiotlb=noforce turns swiotlb off, but the {name} strategy is its pool; drop `noforce` or select no \
                 bounce strategy"
            )));
        }
        let sizing = LinuxSizing::for_platform(&boot.swiotlb, platform);
        if let Some(size) = sizing.coco_size {
            platform.log(
                LogLevel::Info,
                format_args!("software IO TLB: SWIOTLB bounce buffer size adjusted to {}MB", size >> 20),
            );
        }
        if sizing.rounded_up {
            platform.log(
                LogLevel::Info,
                format_args!(
                    "software IO TLB: SWIOTLB bounce buffer size roundup to {}MB",
                    (sizing.nslabs << IO_TLB_SHIFT) >> 20
                ),
            );
        }
        Ok(Self { nslabs: Some(sizing.nslabs), nareas: Some(sizing.nareas), ..Self::default() })
    }

    /// Resolves the `None` fields for `platform` and validates the result.
    ///
    /// # Errors
    /// [`InitError::Config`] explaining why the numbers cannot work.
    pub fn resolve<P: Platform>(&self, platform: &P) -> Result<Geometry, InitError> {
        let nslabs = self.nslabs.unwrap_or_else(|| {
            let param = SwiotlbParam { nslabs: None, nareas: self.nareas, force: None };
            LinuxSizing::for_platform(&param, platform).nslabs
        });
        let nareas = match self.nareas {
            Some(a) => a,
            None => fit_nareas(platform.cpu_count().max(1).next_power_of_two(), nslabs),
        };
        Geometry::new(nslabs, nareas)
    }
}

/// A validated pool shape: `nslabs` slots in `nareas` areas of `area_nslabs` slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Slots in the pool (`io_tlb_pool.nslabs`).
    pub nslabs: usize,
    /// Areas (`io_tlb_pool.nareas`), a power of two.
    pub nareas: usize,
    /// Slots per area (`io_tlb_pool.area_nslabs = nslabs / nareas`).
    pub area_nslabs: usize,
}

impl Geometry {
    /// Checks that `nslabs` slots can be split into `nareas` areas the way the
    /// allocator needs.
    ///
    /// # Errors
    /// [`InitError::Config`] naming the rule that is broken and what would work.
    pub fn new(nslabs: usize, nareas: usize) -> Result<Self, InitError> {
        let bad = |s: alloc::string::String| Err(InitError::Config(s));
        if nslabs == 0 {
            return bad("the legacy pool needs at least one 2 KiB slot (swiotlb=<slots> with slots >= 1), got 0".into());
        }
        if nslabs > MAX_SLOTS {
            return bad(format!(
                "{nslabs} slots is more than the {MAX_SLOTS} slots swiotlb can index (Linux indexes slots with int)"
            ));
        }
        if nareas == 0 {
            return bad("the legacy pool needs at least one area, got 0".into());
        }
        if nareas > MAX_AREAS {
            return bad(format!("{nareas} areas is more than the {MAX_AREAS} the legacy pool supports"));
        }
        if !nareas.is_power_of_two() {
            return bad(format!(
                "{nareas} areas: the area count must be a power of two (a CPU searches area cpu & (nareas - 1) \
                 first); Linux rounds swiotlb=<slots>,{nareas} up to {}",
                nareas.next_power_of_two()
            ));
        }
        if nareas > 1 {
            let need = nareas * IO_TLB_SEGSIZE;
            if nslabs < need {
                let fit = fit_nareas(nareas, nslabs);
                return bad(format!(
                    "{nareas} areas need at least {need} slots (one 128-slot segment each) but the pool has \
                     {nslabs}: use at most {fit} area{} or at least {need} slots",
                    if fit == 1 { "" } else { "s" }
                ));
            }
            if nslabs % need != 0 {
                return bad(format!(
                    "{nslabs} slots do not split into {nareas} areas of whole 128-slot segments ({} slots each \
                     would let a segment span two areas): use a multiple of {need} slots, or {} areas",
                    nslabs / nareas,
                    fit_nareas(nareas, nslabs)
                ));
            }
        }
        Ok(Self { nslabs, nareas, area_nslabs: nslabs / nareas })
    }
}

/// `limit_nareas()`: the most areas a pool of `nslots` slots can have.
///
/// ```c
/// if (nslots < nareas * IO_TLB_SEGSIZE)
///         return nslots / IO_TLB_SEGSIZE;
/// return nareas;
/// ```
pub fn limit_nareas(nareas: usize, nslots: usize) -> usize {
    if nslots < nareas.saturating_mul(IO_TLB_SEGSIZE) {
        return nslots / IO_TLB_SEGSIZE;
    }
    nareas
}

/// The largest power of two at most `nareas` (itself a power of two) whose areas split
/// `nslabs` slots into whole 128-slot segments; 1 when none does.
///
/// For the sizes Linux produces (a power of two of at least 128 slots) this equals
/// [`limit_nareas`]; for other sizes it also keeps segments from spanning areas (which
/// would break the free-count tracking, see `round_up_default_nslabs()`'s comment) and
/// never returns 0, where `limit_nareas()` would for pools under one segment.
pub fn fit_nareas(nareas: usize, nslabs: usize) -> usize {
    let mut n = nareas.max(1);
    while n > 1 && (nslabs < n * IO_TLB_SEGSIZE || nslabs % (n * IO_TLB_SEGSIZE) != 0) {
        n /= 2;
    }
    n
}

/// The outcome of Linux's boot-time sizing (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxSizing {
    /// `default_nslabs` after every adjustment: the slots `swiotlb_init_remap()` tries
    /// to allocate first.
    pub nslabs: usize,
    /// `limit_nareas(default_nareas, nslabs)`.
    pub nareas: usize,
    /// The size handed to `swiotlb_adjust_size()` when it took effect (confidential
    /// guests): 6 % of RAM clamped to 64 MiB..1 GiB.
    pub coco_size: Option<usize>,
    /// Whether `round_up_default_nslabs()` changed the slot count ("SWIOTLB bounce
    /// buffer size roundup to %luMB").
    pub rounded_up: bool,
}

/// Linux's `default_nslabs` / `default_nareas` pair while it is being adjusted.
struct BootState {
    default_nslabs: usize,
    default_nareas: usize,
    rounded_up: bool,
}

impl BootState {
    /// `round_up_default_nslabs()`.
    ///
    /// ```c
    /// if (!default_nareas)
    ///         return false;
    /// if (default_nslabs < IO_TLB_SEGSIZE * default_nareas)
    ///         default_nslabs = IO_TLB_SEGSIZE * default_nareas;
    /// else if (is_power_of_2(default_nslabs))
    ///         return false;
    /// default_nslabs = roundup_pow_of_two(default_nslabs);
    /// return true;
    /// ```
    fn round_up_default_nslabs(&mut self) -> bool {
        if self.default_nareas == 0 {
            return false;
        }
        if self.default_nslabs < IO_TLB_SEGSIZE * self.default_nareas {
            self.default_nslabs = IO_TLB_SEGSIZE * self.default_nareas;
        } else if self.default_nslabs.is_power_of_two() {
            return false;
        }
        self.default_nslabs = self.default_nslabs.next_power_of_two();
        self.rounded_up = true;
        true
    }

    /// `swiotlb_adjust_nareas()`: zero is treated as one, others round up to a power of
    /// two; then `round_up_default_nslabs()`.
    fn adjust_nareas(&mut self, nareas: usize) {
        let nareas = nareas.clamp(1, MAX_AREAS).next_power_of_two();
        self.default_nareas = nareas;
        self.round_up_default_nslabs();
    }

    /// `swiotlb_adjust_size()`: only while the slot count is still the default.
    fn adjust_size(&mut self, size: usize) -> bool {
        if self.default_nslabs != IO_TLB_DEFAULT_SIZE >> IO_TLB_SHIFT {
            return false;
        }
        let size = size.next_multiple_of(IO_TLB_SIZE);
        self.default_nslabs = (size >> IO_TLB_SHIFT).next_multiple_of(IO_TLB_SEGSIZE);
        self.round_up_default_nslabs();
        true
    }
}

impl LinuxSizing {
    /// Replays Linux 6.12's boot-time sizing for the parsed `swiotlb=` parameter on a
    /// machine with `cpus` possible CPUs and `ram_bytes` of memory, confidential or not.
    ///
    /// The parser ([`bounce_framework::cmdline`]) has already aligned the slots to
    /// `IO_TLB_SEGSIZE` and rounded the areas to a power of two, as
    /// `setup_io_tlb_npages()` does; the alignment is repeated here so that any
    /// `SwiotlbParam` gives Linux's numbers.
    pub fn replay(param: &SwiotlbParam, cpus: usize, ram_bytes: usize, confidential: bool) -> Self {
        let mut st =
            BootState { default_nslabs: IO_TLB_DEFAULT_SIZE >> IO_TLB_SHIFT, default_nareas: 0, rounded_up: false };
        // setup_io_tlb_npages(): default_nslabs = ALIGN(simple_strtoul(..), IO_TLB_SEGSIZE);
        if let Some(n) = param.nslabs {
            st.default_nslabs = n.min(MAX_SLOTS).next_multiple_of(IO_TLB_SEGSIZE);
        }
        // ... if (isdigit(*str)) swiotlb_adjust_nareas(simple_strtoul(str, &str, 0));
        if let Some(a) = param.nareas {
            st.adjust_nareas(a);
        }
        // mem_encrypt_setup_arch(): size = total_mem * 6 / 100, clamped, swiotlb_adjust_size().
        let mut coco_size = None;
        if confidential {
            let six = (ram_bytes as u128 * COCO_PERCENT as u128 / 100) as usize;
            let size = six.clamp(IO_TLB_DEFAULT_SIZE, COCO_MAX_SIZE);
            if st.adjust_size(size) {
                coco_size = Some(size);
            }
        }
        // swiotlb_init_remap(): if (!default_nareas) swiotlb_adjust_nareas(num_possible_cpus());
        if st.default_nareas == 0 {
            st.adjust_nareas(cpus);
        }
        // nareas = limit_nareas(default_nareas, nslabs);
        let nareas = limit_nareas(st.default_nareas, st.default_nslabs).max(1);
        Self { nslabs: st.default_nslabs, nareas, coco_size, rounded_up: st.rounded_up }
    }

    /// [`LinuxSizing::replay`] with the platform's CPU count, RAM and confidentiality.
    pub fn for_platform<P: Platform>(param: &SwiotlbParam, platform: &P) -> Self {
        Self::replay(param, platform.cpu_count(), platform.total_ram_bytes(), platform.is_confidential())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(nslabs: Option<usize>, nareas: Option<usize>, cpus: usize, ram: usize, coco: bool) -> LinuxSizing {
        LinuxSizing::replay(&SwiotlbParam { nslabs, nareas, force: None }, cpus, ram, coco)
    }

    #[test]
    fn plain_guest_default_is_64_mib() {
        let s = replay(None, None, 2, 8 << 30, false);
        assert_eq!((s.nslabs, s.nareas, s.coco_size, s.rounded_up), (32768, 2, None, false));
        // 3 CPUs: swiotlb_adjust_nareas(3) -> 4 areas.
        assert_eq!(replay(None, None, 3, 8 << 30, false).nareas, 4);
    }

    #[test]
    fn confidential_guest_takes_six_percent_rounded_to_a_power_of_two() {
        // 1 GiB: 6 % = 64424509 bytes < 64 MiB -> clamped to 64 MiB = 32768 slots.
        let s = replay(None, None, 2, 1 << 30, true);
        assert_eq!((s.nslabs, s.coco_size), (32768, Some(64 << 20)));
        // 4 GiB: 257698037 -> ALIGN(.., 2048) = 257699840 -> 125830 slots -> ALIGN(.., 128)
        // = 125952 -> swiotlb_adjust_nareas(2) -> roundup_pow_of_two = 131072 (256 MiB).
        let s = replay(None, None, 2, 4 << 30, true);
        assert_eq!((s.nslabs, s.coco_size, s.rounded_up), (131_072, Some(257_698_037), true));
        // 16 GiB: 1030792151 (< 1 GiB, not clamped) -> 503424 slots -> 524288 (1 GiB).
        let s = replay(None, None, 8, 16 << 30, true);
        assert_eq!((s.nslabs, s.nareas, s.coco_size), (524_288, 8, Some(1_030_792_151)));
        // 64 GiB: 6 % is clamped to 1 GiB.
        let s = replay(None, None, 8, 64 << 30, true);
        assert_eq!((s.nslabs, s.coco_size, s.rounded_up), (524_288, Some(1 << 30), false));
    }

    #[test]
    fn explicit_slots_skip_the_coco_rule_but_still_round_up() {
        // swiotlb=3000 on 2 CPUs: ALIGN -> 3072, swiotlb_adjust_nareas(2) -> 4096.
        let s = replay(Some(3000), None, 2, 4 << 30, true);
        assert_eq!((s.nslabs, s.nareas, s.coco_size, s.rounded_up), (4096, 2, None, true));
        // swiotlb=32768 looks like the default to swiotlb_adjust_size() (Linux quirk).
        let s = replay(Some(32768), None, 2, 4 << 30, true);
        assert_eq!((s.nslabs, s.coco_size), (131_072, Some(257_698_037)));
        // swiotlb=512,8: 512 < 8 * 128 -> 1024 slots.
        let s = replay(Some(512), Some(8), 2, 1 << 30, false);
        assert_eq!((s.nslabs, s.nareas, s.rounded_up), (1024, 8, true));
        // swiotlb=,4 then the CoCo size: 4 GiB -> 131072 slots, 4 areas.
        let s = replay(None, Some(4), 2, 4 << 30, true);
        assert_eq!((s.nslabs, s.nareas), (131_072, 4));
        // 64 possible CPUs and a 1 MiB pool: 64 areas need 8192 slots -> rounded up.
        let s = replay(Some(512), None, 64, 1 << 30, false);
        assert_eq!((s.nslabs, s.nareas), (8192, 64));
    }

    #[test]
    fn limit_and_fit_nareas() {
        assert_eq!(limit_nareas(8, 512), 4);
        assert_eq!(limit_nareas(8, 4096), 8);
        assert_eq!(limit_nareas(2, 100), 0);
        assert_eq!(fit_nareas(2, 100), 1);
        assert_eq!(fit_nareas(8, 512), 4);
        assert_eq!(fit_nareas(4, 384), 1);
        assert_eq!(fit_nareas(4, 768), 2);
        for shift in 7..20 {
            for areas in [1usize, 2, 4, 8, 64] {
                assert_eq!(fit_nareas(areas, 1 << shift), limit_nareas(areas, 1 << shift));
            }
        }
    }

    #[test]
    fn geometry_errors_explain_themselves() {
        let msg = |n, a| match Geometry::new(n, a) {
            Err(InitError::Config(s)) => s,
            other => panic!("{n} slots / {a} areas: expected a config error, got {other:?}"),
        };
        assert!(msg(0, 1).contains("at least one 2 KiB slot"));
        assert!(msg(128, 0).contains("at least one area"));
        assert!(msg(1024, 3).contains("power of two"));
        assert!(msg(1024, 3).contains("up to 4"));
        let m = msg(512, 8);
        assert!(m.contains("8 areas need at least 1024 slots") && m.contains("at most 4 areas"), "{m}");
        assert!(msg(100, 2).contains("at most 1 area "), "{}", msg(100, 2));
        let m = msg(384, 2);
        assert!(m.contains("192 slots each") && m.contains("multiple of 256"), "{m}");
        assert!(msg(MAX_SLOTS + 1, 1).contains("int"));
        assert!(msg(1 << 30, MAX_AREAS * 2).contains("areas"));
        assert_eq!(Geometry::new(3, 1).unwrap(), Geometry { nslabs: 3, nareas: 1, area_nslabs: 3 });
        assert_eq!(Geometry::new(768, 2).unwrap().area_nslabs, 384);
    }
}
