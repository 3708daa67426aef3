//! The map path (legacy's pool with the bitmap's probes, takes and gives) makes no call
//! to the global allocator and no conversion: the framework's shared check, on a
//! 16 MiB pool.

use bounce_bitmap::Bitmap;
use bounce_framework::sim::SimGuest;
use bounce_legacy::LegacyConfig;

bounce_framework::zero_alloc_test!(|g: &SimGuest| Bitmap::new(g.clone(), LegacyConfig::with_bytes(16 << 20)).unwrap());
