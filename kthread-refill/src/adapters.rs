//! The intrusive-collections adapters that link [`Chunk`]s into a pool's lists.
//!
//! `intrusive_adapter!` expands to `unsafe impl`s (the crate's pointer arithmetic from a
//! link to its containing chunk); that generated code is the only `unsafe` in this crate.
#![allow(unsafe_code)]
#![allow(clippy::expl_impl_clone_on_copy)]

use alloc::sync::Arc;

use intrusive_collections::{intrusive_adapter, linked_list, rbtree, KeyAdapter};

use crate::chunk::Chunk;

intrusive_adapter!(
    /// Links a chunk into its pool's address-ordered tree of partial chunks.
    pub PartialAdapter = Arc<Chunk>: Chunk { partial_link: rbtree::AtomicLink }
);

impl KeyAdapter<'_> for PartialAdapter {
    type Key = u64;
    fn get_key(&self, chunk: &Chunk) -> u64 {
        chunk.first().0
    }
}

intrusive_adapter!(
    /// Links a chunk into its pool's list of completely free chunks.
    pub EmptyAdapter = Arc<Chunk>: Chunk { empty_link: linked_list::AtomicLink }
);
