//! The conformance suite over the framework's minimal test-only strategy.

mod common;

use bounce_framework::sim::SimGuest;
use common::FirstFit;

bounce_framework::conformance_suite!(|g: &SimGuest| FirstFit::new(g, 4 << 20));
