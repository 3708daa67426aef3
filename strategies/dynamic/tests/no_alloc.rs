//! Once the pools are warm, map, sync and unmap through the Bouncer make no call to the
//! global allocator and no conversion (the framework's shared check): the default
//! classes under a 64 MiB cap.

use bounce_dynamic::{Dynamic, DynamicConfig};
use bounce_framework::sim::SimGuest;
use bounce_pools::PoolConfig;

bounce_framework::zero_alloc_test!(|g: &SimGuest| {
    let pools = PoolConfig { cap_bytes: Some(64 << 20), ..PoolConfig::default() };
    Dynamic::new(g.clone(), DynamicConfig { pools, ..Default::default() }).unwrap()
});
