//! `cargo fuzz run trace`: the `bounce replay` trace parser (`swiotlb_bounced` ftrace
//! lines) and the replay plan on arbitrary text. See `bounce_fuzz::trace`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bounce_fuzz::trace::check(bounce_fuzz::cmdline::text(data));
});
