//! `cargo fuzz run cmdline`: the boot command line parser on arbitrary text.
//! See `bounce_fuzz::cmdline` for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bounce_fuzz::cmdline::check(bounce_fuzz::cmdline::text(data));
});
