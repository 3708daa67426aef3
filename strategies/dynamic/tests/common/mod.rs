//! Shared test configuration.
#![allow(dead_code)]

use bounce_dynamic::{Dynamic, DynamicConfig};
use bounce_framework::sim::SimGuest;
use bounce_pools::PoolConfig;

/// The conformance configuration: the default class sizes with small targets, so the
/// pool stays between 1 and 32 MiB on the suite's 128 MiB guest (targets ≈ 6.5 MiB of
/// buffers, a 24 MiB cap).
pub fn small_config() -> DynamicConfig {
    DynamicConfig { pools: PoolConfig::small_seed(), ..DynamicConfig::default() }
}

/// The strategy with [`small_config`] on `guest`.
pub fn small(guest: &SimGuest) -> Dynamic<SimGuest> {
    Dynamic::new(guest.clone(), small_config()).expect("dynamic strategy on the suite guest")
}

/// The mapping sizes the seed measured on a TDX guest at boot (SPEC §5), cumulative:
/// ≤512 B 3.5 %, ≤2 KiB 57.7 %, ≤4 KiB 91.3 %, ≤16 KiB 96.0 %, the rest up to 256 KiB;
/// uniform inside each bucket. A deterministic xorshift stream per seed.
pub struct SeedSizes {
    x: u64,
}

impl SeedSizes {
    /// A stream; different seeds give different streams.
    pub fn new(seed: u64) -> Self {
        Self { x: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        self.x
    }

    /// The next size.
    pub fn size(&mut self) -> usize {
        let bucket = self.next_u64() % 1000;
        let (lo, hi) = match bucket {
            0..35 => (1, 512),
            35..577 => (513, 2048),
            577..913 => (2049, 4096),
            913..960 => (4097, 16384),
            _ => (16385, 256 << 10),
        };
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}
