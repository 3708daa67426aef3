//! # bounce-bench
//!
//! The `bounce` command line tool and its library: the tool users run to decide which
//! strategy to boot and to test new policies.
//!
//! - [`workload`]: the built-in workloads (`net`, `nvme`, `mixed`, `burst`) as seeded,
//!   pre-generated per-thread op streams, so every strategy sees the same operations.
//! - [`engine`]: runs one strategy over one plan on a fresh simulated guest (conversions
//!   spin for real), with a refill thread, memory sampling and sampled latencies.
//! - [`compare`], [`record`], [`report`], [`plot`]: `bounce compare` — tables, targets,
//!   JSON, `report.md` and SVG plots.
//! - [`ab`]: `bounce compare --ab A,B` — two strategy instances side by side in one
//!   guest, every device split between them, B/A per round.
//! - [`replay`]: `bounce replay` — `swiotlb_bounced` ftrace traces.
//! - [`mapbench`]: `bounce map-bench` — the kernel's `dma_map_benchmark`.
//! - [`stress`]: `bounce stress` — every strategy under full-rate concurrent load with
//!   every byte checked by the device model and a full audit at the end.
//! - [`registry`]: the name → strategy table; everything is generic over
//!   `S: Strategy` and monomorphised per strategy.
//! - [`cli`]: the clap command line.

// Rates, means and ratios turn event counters into f64 on purpose; counts stay far
// below 2^52.
#![allow(clippy::cast_precision_loss, reason = "statistics convert counters to f64")]

pub mod ab;
pub mod cli;
pub mod compare;
pub mod engine;
pub mod mapbench;
pub mod plot;
pub mod record;
pub mod registry;
pub mod replay;
pub mod report;
pub mod stress;
pub mod workload;

#[cfg(test)]
mod tests;
