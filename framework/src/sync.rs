//! The atomics that lock-free map-path code uses, behind one facade: under
//! `--cfg loom` they are loom's, so loom models check the very code the map path runs
//! (the [`PfnMap`](crate::PfnMap) entries here, the per-buffer records of
//! `bounce-pools`). Everywhere else they are `core`'s.

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
