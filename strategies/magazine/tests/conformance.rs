//! The framework's conformance suite over the magazine strategy (128 MiB TDX guest,
//! 2 CPUs; pools between 1 and 32 MiB).

mod common;

bounce_framework::conformance_suite!(common::suite);
