//! The framework's conformance suite over Linux's own allocator: a 4 MiB pool (2048
//! slots) in the suite's 2-CPU TDX guest, so two areas of 1024 slots, as legacy's.
//! Compiled only when the reference was built with the Linux source; `tests/linux.rs`
//! says so when it was not.
#![cfg(linux_ref)]

use bounce_framework::sim::SimGuest;
use bounce_legacy::LegacyConfig;
use bounce_linux_ref::LinuxRef;

bounce_framework::conformance_suite!(
    |g: &SimGuest| LinuxRef::new(g.clone(), LegacyConfig::with_bytes(4 << 20)).unwrap()
);
