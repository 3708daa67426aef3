//! The framework's conformance suite over the bitmap strategy: a 4 MiB pool (2048
//! slots) in the suite's 2-CPU TDX guest, so two areas of 1024 slots.

use bounce_bitmap::Bitmap;
use bounce_framework::sim::SimGuest;
use bounce_legacy::LegacyConfig;

bounce_framework::conformance_suite!(|g: &SimGuest| Bitmap::new(g.clone(), LegacyConfig::with_bytes(4 << 20)).unwrap());
