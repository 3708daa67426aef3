//! # bounce-pools: size-classed pools of shared buffers and their kccd engine
//!
//! Everything a strategy built from size-classed pools of shared buffers needs, and no
//! strategy logic:
//!
//! - [`class`]: size classes with low/high watermarks, a reserve and a chunk geometry;
//!   the class choice that honours size, `alloc_align_mask` and the device's
//!   `min_align_mask` offset; the `size:target[:low[:high]]` list parser.
//! - [`chunk`]: one conversion batch carved into buffers, with lock-free per-buffer
//!   in-flight records ([`Chunk::find`] works for any address inside a mapping).
//! - [`index`]: page frame number → chunk record, on the framework's lock-free
//!   [`PfnMap`], with records that are recycled, never freed, so a lookup takes no lock
//!   and no reference; filled when a chunk is carved, so the map path never inserts.
//! - [`pool`]: a class's free buffers, per-chunk free stacks in intrusive lists.
//! - [`pools`]: [`PoolSet`], the size-classed pools and their index: the configuration
//!   and presets, the map-path operations ([`PoolSet::pop`], [`PoolSet::commit`],
//!   [`PoolSet::find`], [`PoolSet::release_found`], [`PoolSet::push`], [`PoolSet::locate`], [`PoolSet::refuse`]),
//!   statistics and an audit; and in `pools/engine.rs` the kccd engine, the background
//!   run ([`PoolSet::run`]): batched growth with one conversion per batch, blank shells,
//!   the demand window, idle shrinking, the shared-memory cap, quarantine.
//! - [`runner`]: [`StepRunner`] (deterministic, virtual clock) and, with feature `std`,
//!   `ThreadRunner`.
//!
//! `no_std` + `alloc`. The only `unsafe` is what `intrusive_adapter!` generates.
//!
//! [`PfnMap`]: bounce_framework::PfnMap
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

mod adapters;
pub mod chunk;
pub mod class;
pub mod index;
#[cfg(all(test, loom))]
mod loom_models;
pub mod pool;
pub mod pools;
pub mod runner;
pub mod stock;

pub use chunk::{BufState, Chunk, FreeBuffer};
pub use class::{
    default_floor_bytes, parse_classes, ChunkShape, ClassChoice, ClassSpec, ClassTable, SizeClass, DEFAULT_CLASSES,
    MAX_BUFFER_ALIGN, MIN_LARGEST_CLASS, SEED_CLASSES,
};
pub use index::ChunkIndex;
pub use pool::{ClassPool, PoolAudit, PoolCounters};
pub use pools::{
    default_cap, no_buffer, EngineCounters, Need, PoolConfig, PoolSet, Preset, RequestCounters, SetAudit,
    BLANK_MIN_DIVISOR, CHUNK_IDLE_DIVISOR, DEFAULT_BATCH_PAGES, DEFAULT_CHUNK_BYTES, DEFAULT_HEADROOM_PERCENT,
    DEFAULT_IDLE_MS, DEFAULT_RESERVE_PERCENT, DEFAULT_STOCK_BYTES,
};
pub use runner::StepRunner;
#[cfg(feature = "std")]
pub use runner::{RunnerOptions, RunnerTotals, ThreadRunner};
pub use stock::{Stock, StockSnapshot};

/// The `Strategy` methods a strategy built on a [`PoolSet`] answers from the set alone:
/// `locate`, `find`, `owns`, `max_mapping_size`, `addressing_limit`, `stats` and
/// `reset_hiwater`. Expand it inside `impl Strategy for ...`, naming the field that
/// holds the set: `bounce_pools::pool_queries!(pools);`.
#[macro_export]
macro_rules! pool_queries {
    ($pools:ident) => {
        fn locate(&self, addr: ::bounce_framework::PhysAddr) -> ::core::option::Option<::bounce_framework::Located> {
            self.$pools.locate(addr)
        }

        #[inline]
        fn find(
            &self,
            addr: ::bounce_framework::PhysAddr,
        ) -> ::core::result::Result<::bounce_framework::Found, ::bounce_framework::ReleaseError> {
            self.$pools.find(addr)
        }

        fn owns(&self, addr: ::bounce_framework::PhysAddr) -> bool {
            self.$pools.owns(addr)
        }

        fn max_mapping_size(&self, dev: &::bounce_framework::Device) -> usize {
            self.$pools.table().max_mapping_size(dev.min_align_mask)
        }

        fn addressing_limit(&self) -> ::bounce_framework::PhysAddr {
            self.$pools.limit()
        }

        fn stats(&self) -> ::bounce_framework::PoolStats {
            self.$pools.pool_stats()
        }

        fn reset_hiwater(&self) {
            self.$pools.usage().reset_hiwater();
        }
    };
}
