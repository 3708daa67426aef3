//! The framework's conformance suite over the dynamic strategy.

mod common;

use bounce_framework::sim::SimGuest;

bounce_framework::conformance_suite!(|g: &SimGuest| common::small(g));
