//! Configuration of the magazine strategy and its `swiotlb.magazine.*` boot parameters.
//!
//! | parameter | meaning | default | why |
//! |---|---|---|---|
//! | `preset=demand\|seed`, `chunk=`, `stock=`, `headroom=` | the refill engine's policy, as `swiotlb.dynamic.*` (one implementation: `bounce_pools::PoolConfig`) | `demand` | see the dynamic strategy |
//! | `classes=<size>:<target>[:<low>[:<high>]],...` | size classes and refill watermarks (the refill engine's, as `swiotlb.dynamic.classes`; the largest at least 8 KiB) | `demand`: powers of two from 512 B to 512 KiB (`bounce_pools::DEFAULT_CLASSES`); `seed`: `512:256,2K:16384,4K:8192,16K:1024,512K:32` | the 17–256 KiB range NVMe and virtio-blk use needs classes of its own; the seed's classes cover 96 % of boot mappings (SPEC §5) |
//! | `cap=<size>` | cap on committed shared memory | `swiotlb=<slots>` × 2 KiB when given, else min(RAM / 4, 1 GiB) | as the dynamic strategy |
//! | `batch=<pages>` | pages per conversion batch | 1024 | `MAX_ORDER_NR_PAGES`: one conversion call per batch |
//! | `idle_ms=<ms>` | idle time before pool memory above the high watermark is converted back | 1000 | as the dynamic strategy |
//! | `reserve=<percent>` | emergency reserve per class (% of its target), never stocked into magazines | `demand`: 0, `seed`: 10 | as the dynamic strategy |
//! | `limit=<size>` | pool pages must lie below this address | none | 32-bit devices |
//! | `fallback=on\|off` | a request whose class is exhausted everywhere may use a larger class | on | as the dynamic strategy |
//! | `rounds=<n>` or `<n>,<n>,...` | magazine size at boot, for every class or per class | per class: ¼ of `max_rounds` (32, 32, 16, 4, 1 with the seed's classes) | ≈ 64 KiB of buffers per magazine: Bonwick's miss rate is ≤ 1/M, and 16–32 rounds already amortise the depot lock over that many maps; more would park shared memory per CPU |
//! | `max_rounds=<n>` or list | the largest size contention may grow a class's magazines to (the arrays' size) | per class: 256 KiB of buffers, at most 128 (128, 128, 64, 16, 1) | IOVA's rcache uses 127 entries; bytes bound the shared memory a CPU can park (2 × M × size) |
//! | `depot=<n>` | magazines per class in the depot besides the two per CPU | 2 × CPUs | room for the trimmed working set (`depot_target` full) plus as many empty ones for frees |
//! | `depot_target=<n>` | full magazines per class the engine stocks and trimming keeps | CPUs | IOVA trims its depot towards `num_online_cpus()` |
//! | `trim_ms=<ms>` | period of depot trimming (one magazine per class per period) | 100 | IOVA's `IOVA_DEPOT_DELAY` |
//! | `reap_ms=<ms>` | period of reaping idle CPU caches and unused depot magazines, and of the contention check | 1000 | the refill engine's idle time: reaped buffers become shrinkable one `idle_ms` later |
//! | `contention=<n>` | depot-lock `try_lock` failures per reap period that double a class's magazine size | 3 | Solaris' `kmem_depot_contention` |
//! | `cache_max=<size>` | the largest class the magazines cache; larger classes map and unmap straight through the pools, as the dynamic strategy does | 16 KiB (`preset=demand`), every class (`preset=seed`) | a buffer above 16 KiB takes over a microsecond to copy, so a pool lock (≈ 50 ns) adds a few percent to its map, while the large classes' magazines parked ≈ 3 MiB of shared memory on `mixed` (2 threads). `bounce compare -s magazine -w mixed --threads 2`, three runs each: every class cached 37.8–40.3 MiB peak shared, up to 64 KiB 36.6–38.0 MiB, up to 16 KiB 35.7–36.4 MiB, for 22 MiB in flight, maps/s unchanged within the noise |

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use bounce_framework::cmdline::parse_ulong;
use bounce_framework::{BootConfig, CmdlineError, InitError};
use bounce_pools::{PoolConfig, SizeClass};

use crate::layer::{ClassRounds, LayerConfig, MAX_ROUNDS};

/// Default magazine size bound, in bytes of buffers per magazine.
pub const DEFAULT_MAX_MAGAZINE_BYTES: usize = 256 << 10;
/// Default cap on rounds per magazine (IOVA uses 127).
pub const DEFAULT_MAX_ROUNDS: usize = 128;
/// Default depot trimming period (IOVA's `IOVA_DEPOT_DELAY`).
pub const DEFAULT_TRIM_MS: u64 = 100;
/// Default reaping period.
pub const DEFAULT_REAP_MS: u64 = 1000;
/// Default contention threshold (Solaris' `kmem_depot_contention`).
pub const DEFAULT_CONTENTION: u64 = 3;
/// Default largest cached class under the demand preset (see the module table).
pub const DEFAULT_CACHE_MAX: usize = 16 << 10;

/// Magazine sizes: `Vec` forms of `rounds=` / `max_rounds=`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RoundsSetting {
    /// The per-class default (see the module table).
    #[default]
    Default,
    /// The same for every class.
    Uniform(usize),
    /// One value per class, smallest class first.
    PerClass(Vec<usize>),
}

impl RoundsSetting {
    fn get(&self, class: usize, default: usize) -> usize {
        match self {
            Self::Default => default,
            Self::Uniform(n) => *n,
            Self::PerClass(v) => v.get(class).copied().unwrap_or(default),
        }
    }
}

/// Configuration of [`Magazine`](crate::Magazine). `Default` is the documented default
/// (the module table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MagazineConfig {
    /// The refill engine's pools: classes, batching, cap, idle time, reserve, limit.
    pub pools: PoolConfig,
    /// Whether a request whose class is exhausted everywhere may use a larger class.
    pub fallback: bool,
    /// Magazine size at boot.
    pub rounds: RoundsSetting,
    /// Largest magazine size.
    pub max_rounds: RoundsSetting,
    /// Depot magazines per class besides the two per CPU; `None`: 2 × CPUs.
    pub depot: Option<usize>,
    /// Full magazines per class stocked and kept by trimming; `None`: CPUs.
    pub depot_target: Option<usize>,
    /// Depot trimming period.
    pub trim_ms: u64,
    /// Reaping (and contention check) period.
    pub reap_ms: u64,
    /// `try_lock` failures per reap period that double a class's magazine size.
    pub contention: u64,
    /// The largest class the magazines cache; `None`: [`DEFAULT_CACHE_MAX`] under the
    /// demand preset, every class under the seed's.
    pub cache_max: Option<usize>,
}

impl Default for MagazineConfig {
    fn default() -> Self {
        Self {
            pools: PoolConfig::default(),
            fallback: true,
            rounds: RoundsSetting::Default,
            max_rounds: RoundsSetting::Default,
            depot: None,
            depot_target: None,
            trim_ms: DEFAULT_TRIM_MS,
            reap_ms: DEFAULT_REAP_MS,
            contention: DEFAULT_CONTENTION,
            cache_max: None,
        }
    }
}

/// The default largest magazine size of a class: 256 KiB of buffers, 1..=128 rounds.
pub fn default_max_rounds(class_size: usize) -> usize {
    (DEFAULT_MAX_MAGAZINE_BYTES / class_size.max(1)).clamp(1, DEFAULT_MAX_ROUNDS)
}

/// The default boot magazine size of a class: a quarter of its largest size.
pub fn default_rounds(class_size: usize) -> usize {
    (default_max_rounds(class_size) / 4).max(1)
}

impl MagazineConfig {
    /// The largest class size the magazines cache (see [`MagazineConfig::cache_max`]).
    pub fn cache_max_bytes(&self) -> usize {
        self.cache_max.unwrap_or(if self.pools.demand { DEFAULT_CACHE_MAX } else { usize::MAX })
    }

    /// The layer shape for `cpus` CPUs and the resolved `classes`.
    ///
    /// # Errors
    /// [`InitError::Config`] for magazine sizes out of range or inconsistent, or a
    /// per-class list of the wrong length.
    pub fn layer_config(&self, cpus: usize, classes: &[SizeClass]) -> Result<LayerConfig, InitError> {
        for (name, s) in [("rounds", &self.rounds), ("max_rounds", &self.max_rounds)] {
            if let RoundsSetting::PerClass(v) = s {
                if v.len() != classes.len() {
                    return Err(InitError::Config(format!(
                        "swiotlb.magazine.{name} lists {} values for {} size classes",
                        v.len(),
                        classes.len()
                    )));
                }
            }
        }
        let mut rounds = Vec::with_capacity(classes.len());
        for (i, c) in classes.iter().enumerate() {
            let initial = self.rounds.get(i, default_rounds(c.size));
            // An explicit boot size above the default maximum raises the maximum.
            let max_default = default_max_rounds(c.size).max(initial);
            let max = self.max_rounds.get(i, max_default);
            if initial == 0 || initial > max || max > MAX_ROUNDS {
                return Err(InitError::Config(format!(
                    "the {}-byte class: {initial} rounds with at most {max}: need 1 <= rounds <= max_rounds <= {MAX_ROUNDS}",
                    c.size
                )));
            }
            rounds.push(ClassRounds { initial, max });
        }
        let cfg = LayerConfig {
            cpus,
            rounds,
            depot_magazines: self.depot.unwrap_or(2 * cpus),
            depot_target: self.depot_target.unwrap_or(cpus),
            grow_contention: self.contention,
        };
        cfg.validate().map_err(InitError::Config)?;
        Ok(cfg)
    }

    /// Parses `swiotlb.magazine.*` (and `swiotlb=<slots>` as the default cap).
    ///
    /// # Errors
    /// [`InitError::Cmdline`] naming the offending token.
    pub fn from_boot(name: &str, known: &[&str], boot: &BootConfig) -> Result<Self, InitError> {
        let params = boot.params_for(name);
        params.check_known(known)?;
        let mut cfg = Self::default();
        cfg.pools.apply_boot(boot, &params)?;
        if let Some(f) = params.boolean("fallback")? {
            cfg.fallback = f;
        }
        for (key, slot) in [("rounds", &mut cfg.rounds), ("max_rounds", &mut cfg.max_rounds)] {
            if let Some(p) = params.get(key) {
                *slot = parse_rounds(&p.token, &p.value)?;
            }
        }
        if let Some(n) = params.number("depot", 0, 1 << 16)? {
            cfg.depot = Some(n as usize);
        }
        if let Some(n) = params.number("depot_target", 0, 1 << 16)? {
            cfg.depot_target = Some(n as usize);
        }
        if let Some(ms) = params.number("trim_ms", 1, 3600 * 1000)? {
            cfg.trim_ms = ms;
        }
        if let Some(ms) = params.number("reap_ms", 1, 24 * 3600 * 1000)? {
            cfg.reap_ms = ms;
        }
        if let Some(n) = params.number("contention", 1, 1 << 20)? {
            cfg.contention = n;
        }
        if let Some(n) = params.size("cache_max", 0, 1 << 40)? {
            cfg.cache_max = Some(n as usize);
        }
        Ok(cfg)
    }
}

/// Parses `<n>` or `<n>,<n>,...` (C notation numbers, each 1..=[`MAX_ROUNDS`]).
///
/// # Errors
/// [`CmdlineError`] naming `token`.
pub fn parse_rounds(token: &str, value: &str) -> Result<RoundsSetting, CmdlineError> {
    let mut v = Vec::new();
    for part in value.split(',') {
        let n = parse_ulong(part)
            .ok_or_else(|| CmdlineError::BadNumber { token: token.to_string(), value: part.to_string() })?;
        if n == 0 || n > MAX_ROUNDS as u64 {
            return Err(CmdlineError::OutOfRange {
                token: token.to_string(),
                reason: format!("magazine sizes must be between 1 and {MAX_ROUNDS} rounds, not {n}"),
            });
        }
        v.push(n as usize);
    }
    Ok(if v.len() == 1 { RoundsSetting::Uniform(v[0]) } else { RoundsSetting::PerClass(v) })
}

/// A short description of a layer configuration for the boot log.
pub fn describe(cfg: &LayerConfig) -> String {
    let rounds: Vec<String> = cfg.rounds.iter().map(|r| format!("{}/{}", r.initial, r.max)).collect();
    format!(
        "{} CPUs, rounds/max per class {}, depot {} magazines (target {} full)",
        cfg.cpus,
        rounds.join(","),
        cfg.depot_magazines,
        cfg.depot_target
    )
}
