//! `cargo fuzz run ops`: random DMA-API operation sequences, valid and invalid, over the
//! strategy the first input byte selects (legacy, dynamic, magazine), each booted from a
//! command line on a 64 MiB simulated TDX guest. See `bounce_fuzz::ops` for the checks.
#![no_main]

use bounce_fuzz::ops::{run_input, OpsInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: OpsInput| {
    run_input(&input);
});
