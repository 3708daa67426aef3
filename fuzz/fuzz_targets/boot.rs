//! `cargo fuzz run boot`: any command line through `BootConfig::parse` →
//! `AnyStrategy::from_boot` on a 64 MiB simulated guest and a short DMA workload. See
//! `bounce_fuzz::boot`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bounce_fuzz::boot::check(bounce_fuzz::cmdline::text(data));
});
