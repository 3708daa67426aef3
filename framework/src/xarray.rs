//! An index of sparse integer keys with the Rust-for-Linux `XArray` API shape.
//!
//! [`XArray`] maps `usize` indices to owned values. It mirrors `rust/kernel/xarray.rs`:
//! [`XArray::new`] takes an [`AllocKind`], [`XArray::lock`] / [`XArray::try_lock`]
//! return a [`Guard`] with [`Guard::get`], [`Guard::get_mut`],
//! [`Guard::store`]`(index, value, gfp)`, [`Guard::remove`], and (as the C API has)
//! [`Guard::find`] (`xa_find`), [`Guard::alloc`] (`xa_alloc`) and [`XArray::load`]
//! (`xa_load`).
//!
//! # Implementation
//! A radix tree of 64-slot nodes, as Linux's (`XA_CHUNK_SHIFT = 6`): a tree of height
//! `h` covers indices `0..64^h`; each node keeps a bitmap of occupied slots (so `find`
//! skips holes) and a bitmap of full sub-trees (so `alloc` finds the lowest free index
//! without scanning). The tree grows a level when a larger index is stored, and empty
//! nodes are pruned (and the height shrunk) on removal.
//!
//! # Allocation
//! Only [`Guard::store`] and [`Guard::alloc`] allocate (tree nodes), and never more than
//! one node per level. Allocation is fallible: an out-of-memory condition returns a
//! [`StoreError`] carrying the value back instead of aborting. Lookups
//! ([`Guard::get`], [`Guard::get_mut`], [`Guard::find`]), in-place updates through
//! `get_mut` and [`Guard::remove`] never allocate.
//!
//! As in Linux, [`Guard::store`] with [`AllocContext::MaySleep`] (`GFP_KERNEL`) drops
//! the lock to allocate the nodes it needs and takes it again; with
//! [`AllocContext::Atomic`] (`GFP_NOWAIT`) it allocates under the lock.
//!
//! # Context
//! The lock is the platform's IRQ-safe spin lock: [`XArray::lock`] and lookups may run in
//! any context. Linux's `xa_load` is lock-free under RCU; this one takes the spin lock
//! for the duration of the walk (at most 11 levels, usually 2–3), because `no_std` safe
//! Rust has no RCU to defer freeing removed nodes.
//!
//! Lock order: the array's lock is a leaf lock for its users unless they document
//! otherwise; nothing in this module takes another lock while holding it.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use crate::lock::{IrqMutex, IrqMutexGuard, RawIrqLock};
use crate::platform::AllocContext;

/// log2 of the slots per node (`XA_CHUNK_SHIFT`).
pub const XA_CHUNK_SHIFT: u32 = 6;
/// Slots per node (`XA_CHUNK_SIZE`).
pub const XA_CHUNK_SIZE: usize = 1 << XA_CHUNK_SHIFT;
/// The most levels a tree over `usize` indices needs.
const MAX_HEIGHT: u32 = usize::BITS.div_ceil(XA_CHUNK_SHIFT);
/// The highest index [`Guard::alloc`] hands out (`xa_limit_32b`).
pub const XA_LIMIT_32B: usize = u32::MAX as usize;
/// Spare nodes kept after a removal, so a store that follows needs no allocation.
const SPARE_KEEP: usize = MAX_HEIGHT as usize;

/// How [`Guard::alloc`] picks indices (`XA_FLAGS_ALLOC` / `XA_FLAGS_ALLOC1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocKind {
    /// Consider the first element to be at index 0.
    Alloc,
    /// Consider the first element to be at index 1 (index 0 is never allocated).
    Alloc1,
}

/// Why an [`XArray`] operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XaError {
    /// A tree node could not be allocated (`-ENOMEM`); nothing was stored.
    #[error("xarray: no memory for a tree node; the value was not stored")]
    NoMemory,
    /// [`Guard::alloc`] found no free index up to its limit (`-EBUSY`).
    #[error("xarray: no free index below the allocation limit")]
    Busy,
}

/// The error returned by [`Guard::store`] and [`Guard::alloc`]: the error and the value
/// that was not stored.
pub struct StoreError<T> {
    /// What went wrong.
    pub error: XaError,
    /// The value, handed back.
    pub value: T,
}

impl<T> fmt::Debug for StoreError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError").field("error", &self.error).finish_non_exhaustive()
    }
}

impl<T> fmt::Display for StoreError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl<T> From<StoreError<T>> for XaError {
    fn from(e: StoreError<T>) -> Self {
        e.error
    }
}

// Both variants are 64 pointer-sized slots for the pointer-like values an index holds.
#[expect(clippy::large_enum_variant, reason = "leaf and inner nodes have the same size for pointer-sized T")]
enum Slots<T> {
    Leaf([Option<T>; XA_CHUNK_SIZE]),
    Inner([Option<Box<Node<T>>>; XA_CHUNK_SIZE]),
}

struct Node<T> {
    /// Bit `i`: slot `i` is occupied (a value in a leaf, a child in an inner node).
    present: u64,
    /// Bit `i`: slot `i` holds a value (leaf) or a completely full sub-tree (inner).
    full: u64,
    slots: Slots<T>,
}

impl<T> Node<T> {
    const fn blank_leaf() -> Self {
        Self { present: 0, full: 0, slots: Slots::Leaf([const { None }; XA_CHUNK_SIZE]) }
    }

    fn make_inner(&mut self) {
        self.present = 0;
        self.full = 0;
        self.slots = Slots::Inner([const { None }; XA_CHUNK_SIZE]);
    }

    fn make_leaf(&mut self) {
        self.present = 0;
        self.full = 0;
        self.slots = Slots::Leaf([const { None }; XA_CHUNK_SIZE]);
    }
}

/// Allocates a node without aborting on failure.
fn try_new_node<T>() -> Option<Box<Node<T>>> {
    let mut v: Vec<Node<T>> = Vec::new();
    v.try_reserve_exact(1).ok()?;
    v.push(Node::blank_leaf());
    // `into_boxed_slice` does not reallocate: the capacity is exactly one element.
    let b: Box<[Node<T>]> = v.into_boxed_slice();
    let b: Box<[Node<T>; 1]> = b.try_into().ok()?;
    // SAFETY: `[Node<T>; 1]` has the size, alignment and layout of `Node<T>`, so the
    // allocation is valid for a `Box<Node<T>>` and is freed with the same layout.
    Some(unsafe { Box::from_raw(Box::into_raw(b).cast::<Node<T>>()) })
}

/// Bits `from..64` set.
#[inline]
const fn bits_from(from: u32) -> u64 {
    if from >= 64 {
        0
    } else {
        u64::MAX << from
    }
}

/// Indices a tree of `height` levels covers, as a `u128` so 64^11 fits.
#[inline]
const fn span(height: u32) -> u128 {
    1u128 << (height * XA_CHUNK_SHIFT)
}

/// Levels needed to hold `index`.
#[inline]
const fn height_for(index: usize) -> u32 {
    let bits = usize::BITS - index.leading_zeros();
    if bits == 0 {
        1
    } else {
        bits.div_ceil(XA_CHUNK_SHIFT)
    }
}

#[inline]
const fn slot_of(index: usize, level: u32) -> usize {
    let shift = level * XA_CHUNK_SHIFT;
    if shift >= usize::BITS {
        0
    } else {
        (index >> shift) & (XA_CHUNK_SIZE - 1)
    }
}

struct Tree<T> {
    root: Option<Box<Node<T>>>,
    /// Levels below and including the root (0 when empty).
    height: u32,
    len: usize,
    /// Spare nodes chained through inner slot 0.
    spare: Option<Box<Node<T>>>,
    spare_count: usize,
}

impl<T> Tree<T> {
    const fn new() -> Self {
        Self { root: None, height: 0, len: 0, spare: None, spare_count: 0 }
    }

    fn push_spare(&mut self, mut node: Box<Node<T>>) {
        node.make_inner();
        if let Slots::Inner(s) = &mut node.slots {
            s[0] = self.spare.take();
        }
        self.spare = Some(node);
        self.spare_count += 1;
    }

    fn pop_spare(&mut self) -> Box<Node<T>> {
        let mut node = self.spare.take().expect("xarray: spare nodes were counted before use");
        if let Slots::Inner(s) = &mut node.slots {
            self.spare = s[0].take();
        }
        self.spare_count -= 1;
        node
    }

    fn trim_spare(&mut self) {
        while self.spare_count > SPARE_KEEP {
            drop(self.pop_spare());
        }
    }

    /// Nodes a store at `index` would have to create.
    fn nodes_needed(&self, index: usize) -> usize {
        let want = height_for(index);
        let Some(root) = &self.root else { return want as usize };
        let height = self.height.max(want);
        // Growing adds one inner node per level, and the path below the old root at
        // slot 0 exists only if the index lives under the old root.
        let grow = (height - self.height) as usize;
        if grow > 0 {
            // The index lies beyond the old root's span, so its slot in the new root is
            // not slot 0 (where the old root goes): one new node per added level, plus
            // the whole path below the new root.
            return grow + (height as usize - 1);
        }
        let mut missing = 0;
        let mut node = root;
        let mut level = self.height - 1;
        while level > 0 {
            let Slots::Inner(s) = &node.slots else { unreachable!("inner level holds a leaf") };
            let Some(child) = &s[slot_of(index, level)] else {
                missing = level as usize;
                break;
            };
            node = child;
            level -= 1;
        }
        missing
    }

    fn get(&self, index: usize) -> Option<&T> {
        let root = self.root.as_deref()?;
        if (index as u128) >= span(self.height) {
            return None;
        }
        let mut node = root;
        let mut level = self.height - 1;
        loop {
            match &node.slots {
                Slots::Leaf(s) => return s[slot_of(index, 0)].as_ref(),
                Slots::Inner(s) => {
                    node = s[slot_of(index, level)].as_deref()?;
                    level -= 1;
                }
            }
        }
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        if (index as u128) >= span(self.height) {
            return None;
        }
        let mut level = self.height.checked_sub(1)?;
        let mut node = self.root.as_deref_mut()?;
        loop {
            match &mut node.slots {
                Slots::Leaf(s) => return s[slot_of(index, 0)].as_mut(),
                Slots::Inner(s) => {
                    node = s[slot_of(index, level)].as_deref_mut()?;
                    level -= 1;
                }
            }
        }
    }

    /// Stores with enough spare nodes available (checked by the caller).
    fn store_prepared(&mut self, index: usize, value: T) -> Option<T> {
        let want = height_for(index);
        if self.root.is_none() {
            // Start at the height the index needs: the path below is built by
            // `store_rec`, one node per level (what `nodes_needed` counted).
            let mut root = self.pop_spare();
            if want == 1 {
                root.make_leaf();
            } else {
                root.make_inner();
            }
            self.root = Some(root);
            self.height = want;
        }
        while self.height < want {
            let old = self.root.take().expect("non-empty tree has a root");
            let mut top = self.pop_spare();
            top.make_inner();
            let old_full = old.full == u64::MAX;
            if let Slots::Inner(s) = &mut top.slots {
                s[0] = Some(old);
            }
            top.present = 1;
            top.full = u64::from(old_full);
            self.root = Some(top);
            self.height += 1;
        }
        let level = self.height - 1;
        let mut root = self.root.take().expect("non-empty tree has a root");
        let old = Self::store_rec(&mut root, level, index, value, self);
        self.root = Some(root);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn store_rec(node: &mut Node<T>, level: u32, index: usize, value: T, tree: &mut Self) -> Option<T> {
        let slot = slot_of(index, level);
        let bit = 1u64 << slot;
        match &mut node.slots {
            Slots::Leaf(s) => {
                let old = s[slot].replace(value);
                node.present |= bit;
                node.full |= bit;
                old
            }
            Slots::Inner(s) => {
                if s[slot].is_none() {
                    let mut child = tree.pop_spare();
                    if level == 1 {
                        child.make_leaf();
                    } else {
                        child.make_inner();
                    }
                    s[slot] = Some(child);
                }
                let child = s[slot].as_deref_mut().expect("child just ensured");
                let old = Self::store_rec(child, level - 1, index, value, tree);
                let child_full = child.full == u64::MAX;
                node.present |= bit;
                if child_full {
                    node.full |= bit;
                } else {
                    node.full &= !bit;
                }
                old
            }
        }
    }

    fn remove(&mut self, index: usize) -> Option<T> {
        if (index as u128) >= span(self.height) {
            return None;
        }
        let level = self.height.checked_sub(1)?;
        let mut root = self.root.take()?;
        let old = Self::remove_rec(&mut root, level, index, self);
        if old.is_some() {
            self.len -= 1;
        }
        if root.present == 0 {
            self.push_spare(root);
            self.height = 0;
        } else {
            self.root = Some(root);
            self.shrink_height();
        }
        self.trim_spare();
        old
    }

    fn remove_rec(node: &mut Node<T>, level: u32, index: usize, tree: &mut Self) -> Option<T> {
        let slot = slot_of(index, level);
        let bit = 1u64 << slot;
        match &mut node.slots {
            Slots::Leaf(s) => {
                let old = s[slot].take();
                node.present &= !bit;
                node.full &= !bit;
                old
            }
            Slots::Inner(s) => {
                let child = s[slot].as_deref_mut()?;
                let old = Self::remove_rec(child, level - 1, index, tree);
                node.full &= !bit;
                if child.present == 0 {
                    let empty = s[slot].take().expect("child present");
                    node.present &= !bit;
                    tree.push_spare(empty);
                }
                old
            }
        }
    }

    /// Collapses roots whose only child sits in slot 0 (`xas_shrink`).
    fn shrink_height(&mut self) {
        while self.height > 1 {
            let root = self.root.as_mut().expect("non-empty tree has a root");
            if root.present != 1 {
                break;
            }
            let Slots::Inner(s) = &mut root.slots else { break };
            let child = s[0].take().expect("slot 0 present");
            let old = self.root.replace(child).expect("root");
            self.push_spare(old);
            self.height -= 1;
        }
    }

    fn find(&self, start: usize) -> Option<(usize, &T)> {
        let root = self.root.as_deref()?;
        if (start as u128) >= span(self.height) {
            return None;
        }
        Self::find_rec(root, self.height - 1, 0, start)
    }

    fn find_rec(node: &Node<T>, level: u32, base: usize, start: usize) -> Option<(usize, &T)> {
        let shift = level * XA_CHUNK_SHIFT;
        let first = if start > base { ((start - base) as u128 >> shift) as u32 } else { 0 };
        let mut bits = node.present & bits_from(first);
        while bits != 0 {
            let i = bits.trailing_zeros();
            bits &= bits - 1;
            let slot_base = (base as u128) + (u128::from(i) << shift);
            if slot_base > usize::MAX as u128 {
                return None;
            }
            let slot_base = slot_base as usize;
            match &node.slots {
                Slots::Leaf(s) => {
                    if let Some(v) = s[i as usize].as_ref() {
                        return Some((slot_base, v));
                    }
                }
                Slots::Inner(s) => {
                    if let Some(child) = s[i as usize].as_deref() {
                        if let Some(hit) = Self::find_rec(child, level - 1, slot_base, start) {
                            return Some(hit);
                        }
                    }
                }
            }
        }
        None
    }

    /// The lowest free index at or above `min`, not above `max`.
    fn first_free(&self, min: usize, max: usize) -> Option<usize> {
        let found = match self.root.as_deref() {
            None => Some(min),
            Some(root) => {
                let inside = if (min as u128) < span(self.height) {
                    Self::free_rec(root, self.height - 1, 0, min)
                } else {
                    None
                };
                inside.or_else(|| {
                    let beyond = span(self.height).max(min as u128);
                    (beyond <= usize::MAX as u128).then_some(beyond as usize)
                })
            }
        };
        found.filter(|&i| i <= max)
    }

    fn free_rec(node: &Node<T>, level: u32, base: usize, min: usize) -> Option<usize> {
        let shift = level * XA_CHUNK_SHIFT;
        let first = if min > base { ((min - base) as u128 >> shift) as u32 } else { 0 };
        let mut bits = !node.full & bits_from(first);
        while bits != 0 {
            let i = bits.trailing_zeros();
            bits &= bits - 1;
            let slot_base = (base as u128) + (u128::from(i) << shift);
            if slot_base > usize::MAX as u128 {
                return None;
            }
            let slot_base = slot_base as usize;
            match &node.slots {
                Slots::Leaf(_) => return Some(slot_base),
                Slots::Inner(s) => match s[i as usize].as_deref() {
                    None => return Some(slot_base.max(min)),
                    Some(child) => {
                        if let Some(hit) = Self::free_rec(child, level - 1, slot_base, min) {
                            return Some(hit);
                        }
                    }
                },
            }
        }
        None
    }
}

/// An array which maps sparse `usize` indices to owned values (see the module
/// documentation).
///
/// # Examples
/// ```
/// use bounce_framework::xarray::{AllocKind, XArray};
/// use bounce_framework::{AllocContext, NoIrq, SpinIrqLock};
///
/// let xa: XArray<SpinIrqLock<NoIrq>, u32> = XArray::new(AllocKind::Alloc);
/// let mut guard = xa.lock();
/// assert_eq!(guard.get(0), None);
/// assert_eq!(guard.store(0, 0xdead, AllocContext::MaySleep).unwrap(), None);
/// assert_eq!(guard.get(0).copied(), Some(0xdead));
/// *guard.get_mut(0).unwrap() = 0xffff;
/// assert_eq!(guard.store(0, 0xbeef, AllocContext::MaySleep).unwrap(), Some(0xffff));
/// assert_eq!(guard.remove(0), Some(0xbeef));
/// assert_eq!(guard.get(0), None);
/// ```
pub struct XArray<R: RawIrqLock, T> {
    tree: IrqMutex<R, Tree<T>>,
    kind: AllocKind,
}

impl<R: RawIrqLock, T> XArray<R, T> {
    /// An empty array (`xa_init_flags`). Allocates nothing.
    pub fn new(kind: AllocKind) -> Self {
        Self { tree: IrqMutex::new(Tree::new()), kind }
    }

    /// Locks the array for exclusive access.
    ///
    /// # Context
    /// Any context; spins with interrupts disabled.
    pub fn lock(&self) -> Guard<'_, R, T> {
        Guard { xa: self, tree: Some(self.tree.lock()) }
    }

    /// Attempts to lock the array; `None` when it is held.
    pub fn try_lock(&self) -> Option<Guard<'_, R, T>> {
        self.tree.try_lock().map(|g| Guard { xa: self, tree: Some(g) })
    }

    /// A clone of the element at `index` (`xa_load`): takes and drops the lock.
    ///
    /// # Context
    /// Any context; never allocates (unless `T::clone` does).
    pub fn load(&self, index: usize) -> Option<T>
    where
        T: Clone,
    {
        self.tree.lock().get(index).cloned()
    }

    /// The allocation kind given to [`XArray::new`].
    pub fn kind(&self) -> AllocKind {
        self.kind
    }
}

impl<R: RawIrqLock, T> fmt::Debug for XArray<R, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XArray").field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// A lock guard; the lock is released when it goes out of scope.
#[must_use = "the lock unlocks immediately when the guard is unused"]
pub struct Guard<'a, R: RawIrqLock, T> {
    xa: &'a XArray<R, T>,
    /// Always `Some` outside `store`'s unlocked allocation window.
    tree: Option<IrqMutexGuard<'a, R, Tree<T>>>,
}

impl<R: RawIrqLock, T> Guard<'_, R, T> {
    #[inline]
    fn tree(&self) -> &Tree<T> {
        self.tree.as_ref().expect("xarray guard holds the lock")
    }

    #[inline]
    fn tree_mut(&mut self) -> &mut Tree<T> {
        self.tree.as_mut().expect("xarray guard holds the lock")
    }

    /// A reference to the element at `index`. Never allocates.
    #[inline]
    pub fn get(&self, index: usize) -> Option<&T> {
        self.tree().get(index)
    }

    /// A mutable reference to the element at `index`. Never allocates.
    #[inline]
    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.tree_mut().get_mut(index)
    }

    /// The first element at an index at or above `start`, with its index (`xa_find`).
    /// Never allocates.
    pub fn find(&self, start: usize) -> Option<(usize, &T)> {
        self.tree().find(start)
    }

    /// The number of elements stored.
    pub fn len(&self) -> usize {
        self.tree().len
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.tree().len == 0
    }

    /// Removes and returns the element at `index` (`__xa_erase`). Never allocates;
    /// nodes left empty are pruned.
    pub fn remove(&mut self, index: usize) -> Option<T> {
        self.tree_mut().remove(index)
    }

    /// Makes sure the nodes a store at `index` needs exist, allocating per `gfp`.
    fn prepare(&mut self, index: usize, gfp: AllocContext) -> Result<(), XaError> {
        loop {
            let tree = self.tree_mut();
            let need = tree.nodes_needed(index);
            if tree.spare_count >= need {
                return Ok(());
            }
            let want = need - tree.spare_count;
            match gfp {
                AllocContext::Atomic => {
                    for _ in 0..want {
                        let node = try_new_node().ok_or(XaError::NoMemory)?;
                        self.tree_mut().push_spare(node);
                    }
                }
                AllocContext::MaySleep => {
                    // Drop the lock while allocating (`xas_nomem`), then take it again
                    // and re-check: the tree may have changed meanwhile.
                    drop(self.tree.take());
                    let mut chain: Vec<Box<Node<T>>> = Vec::new();
                    let ok = chain.try_reserve_exact(want).is_ok()
                        && (0..want).all(|_| try_new_node().map(|n| chain.push(n)).is_some());
                    self.tree = Some(self.xa.tree.lock());
                    let tree = self.tree_mut();
                    for n in chain {
                        tree.push_spare(n);
                    }
                    if !ok {
                        return Err(XaError::NoMemory);
                    }
                }
            }
        }
    }

    /// Stores `value` at `index`, returning the element that was there.
    ///
    /// May drop the lock to allocate tree nodes when `gfp` is
    /// [`AllocContext::MaySleep`], and takes it again afterwards.
    ///
    /// # Errors
    /// [`XaError::NoMemory`] with the value handed back when a node cannot be
    /// allocated; the array is unchanged.
    pub fn store(&mut self, index: usize, value: T, gfp: AllocContext) -> Result<Option<T>, StoreError<T>> {
        if let Err(error) = self.prepare(index, gfp) {
            return Err(StoreError { error, value });
        }
        Ok(self.tree_mut().store_prepared(index, value))
    }

    /// Stores `value` at the lowest free index (from 0 or 1 per the array's
    /// [`AllocKind`], up to [`XA_LIMIT_32B`]) and returns that index (`xa_alloc`).
    ///
    /// # Errors
    /// [`XaError::Busy`] when every index up to the limit is taken,
    /// [`XaError::NoMemory`] when a node cannot be allocated; the value is handed back.
    pub fn alloc(&mut self, value: T, gfp: AllocContext) -> Result<usize, StoreError<T>> {
        let min = match self.xa.kind {
            AllocKind::Alloc => 0,
            AllocKind::Alloc1 => 1,
        };
        loop {
            let Some(index) = self.tree().first_free(min, XA_LIMIT_32B) else {
                return Err(StoreError { error: XaError::Busy, value });
            };
            if let Err(error) = self.prepare(index, gfp) {
                return Err(StoreError { error, value });
            }
            // `prepare` may have dropped the lock: only use the index if still free.
            if self.tree().get(index).is_none() && self.tree().first_free(min, XA_LIMIT_32B) == Some(index) {
                let old = self.tree_mut().store_prepared(index, value);
                debug_assert!(old.is_none());
                return Ok(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{NoIrq, SpinIrqLock};
    use std::collections::BTreeMap;
    use std::vec;

    type Xa<T> = XArray<SpinIrqLock<NoIrq>, T>;
    const SLEEP: AllocContext = AllocContext::MaySleep;

    #[test]
    fn rust_for_linux_example() {
        let xa: Xa<Box<u32>> = XArray::new(AllocKind::Alloc1);
        let mut guard = xa.lock();
        assert!(guard.get(0).is_none());
        assert!(guard.store(0, Box::new(0xdead), SLEEP).unwrap().is_none());
        assert_eq!(guard.get(0).map(|b| **b), Some(0xdead));
        **guard.get_mut(0).unwrap() = 0xffff;
        assert_eq!(guard.get(0).map(|b| **b), Some(0xffff));
        assert_eq!(guard.store(0, Box::new(0xbeef), SLEEP).unwrap().map(|b| *b), Some(0xffff));
        assert_eq!(guard.get(0).map(|b| **b), Some(0xbeef));
        assert_eq!(guard.remove(0).map(|b| *b), Some(0xbeef));
        assert!(guard.get(0).is_none());
        assert!(guard.is_empty());
    }

    #[test]
    fn sparse_indices_across_levels() {
        let xa: Xa<usize> = XArray::new(AllocKind::Alloc);
        let keys = [0usize, 1, 63, 64, 4095, 4096, 1 << 20, (1 << 30) + 7, usize::MAX, usize::MAX - 1, 1 << 63];
        {
            let mut g = xa.lock();
            for &k in &keys {
                assert_eq!(g.store(k, k ^ 0x5a, SLEEP).unwrap(), None, "{k:#x}");
            }
            assert_eq!(g.len(), keys.len());
            for &k in &keys {
                assert_eq!(g.get(k).copied(), Some(k ^ 0x5a), "{k:#x}");
            }
            assert_eq!(g.get(2), None);
            assert_eq!(g.get(1 << 21), None);
            // find walks in index order
            let mut sorted = keys.to_vec();
            sorted.sort_unstable();
            let mut seen = vec![];
            let mut at = 0;
            while let Some((i, v)) = g.find(at) {
                assert_eq!(*v, i ^ 0x5a);
                seen.push(i);
                if i == usize::MAX {
                    break;
                }
                at = i + 1;
            }
            assert_eq!(seen, sorted);
        }
        assert_eq!(xa.load(4096), Some(4096 ^ 0x5a));
        let mut g = xa.lock();
        for &k in &keys {
            assert_eq!(g.remove(k), Some(k ^ 0x5a));
            assert_eq!(g.remove(k), None);
        }
        assert!(g.is_empty());
        assert_eq!(g.tree().height, 0);
        assert!(g.tree().root.is_none());
    }

    #[test]
    fn height_shrinks_and_nodes_are_pruned() {
        let xa: Xa<u8> = XArray::new(AllocKind::Alloc);
        let mut g = xa.lock();
        g.store(5, 1, SLEEP).unwrap();
        assert_eq!(g.tree().height, 1);
        g.store(1 << 18, 2, SLEEP).unwrap();
        assert_eq!(g.tree().height, 4);
        g.remove(1 << 18);
        assert_eq!(g.tree().height, 1, "a root with only slot 0 collapses");
        assert_eq!(g.get(5), Some(&1));
        assert!(g.tree().spare_count <= SPARE_KEEP);
    }

    #[test]
    fn lookups_and_removal_allocate_nothing_once_stored() {
        // After a store, removing and re-storing the same index reuses spare nodes.
        let xa: Xa<u64> = XArray::new(AllocKind::Alloc);
        let mut g = xa.lock();
        g.store(1 << 40, 1, SLEEP).unwrap();
        g.remove(1 << 40);
        let spare = g.tree().spare_count;
        assert!(spare >= g.tree().nodes_needed(1 << 40), "spare {spare}");
        // Atomic store succeeds from the spare nodes alone.
        g.store(1 << 40, 2, AllocContext::Atomic).unwrap();
        assert_eq!(g.get(1 << 40), Some(&2));
    }

    #[test]
    fn alloc_finds_lowest_free_index() {
        let xa: Xa<u32> = XArray::new(AllocKind::Alloc1);
        let mut g = xa.lock();
        for want in 1..200usize {
            assert_eq!(g.alloc(want as u32, SLEEP).unwrap(), want);
        }
        g.remove(70);
        g.remove(3);
        assert_eq!(g.alloc(0, SLEEP).unwrap(), 3);
        assert_eq!(g.alloc(0, SLEEP).unwrap(), 70);
        assert_eq!(g.alloc(0, SLEEP).unwrap(), 200);
        let xa0: Xa<u32> = XArray::new(AllocKind::Alloc);
        let mut g0 = xa0.lock();
        assert_eq!(g0.alloc(9, SLEEP).unwrap(), 0);
        // A full leaf is skipped through the `full` bitmap.
        for i in 1..64 {
            g0.store(i, 0, SLEEP).unwrap();
        }
        assert_eq!(g0.alloc(9, SLEEP).unwrap(), 64);
        g0.store(XA_LIMIT_32B, 1, SLEEP).unwrap();
        assert_eq!(g0.alloc(9, SLEEP).unwrap(), 65);
    }

    #[test]
    fn matches_a_btreemap_model() {
        // A deterministic pseudo-random sequence of stores and removes.
        let xa: Xa<u64> = XArray::new(AllocKind::Alloc);
        let mut model = BTreeMap::new();
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut g = xa.lock();
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = match x % 4 {
                0 => (x >> 8) as usize % 300,
                1 => (x >> 8) as usize % 70_000,
                2 => (x >> 8) as usize,
                _ => (x >> 20) as usize % 5000 + (1 << 24),
            };
            if x & 0x300 == 0 {
                assert_eq!(g.remove(key), model.remove(&key), "step {step}");
            } else {
                assert_eq!(g.store(key, step, SLEEP).unwrap(), model.insert(key, step), "step {step}");
            }
            if step % 997 == 0 {
                let mut at = 0usize;
                let mut got = vec![];
                while let Some((i, v)) = g.find(at) {
                    got.push((i, *v));
                    match i.checked_add(1) {
                        Some(n) => at = n,
                        None => break,
                    }
                }
                let want: Vec<_> = model.iter().map(|(k, v)| (*k, *v)).collect();
                assert_eq!(got, want, "step {step}");
                assert_eq!(g.len(), model.len());
            }
        }
        for (k, v) in &model {
            assert_eq!(g.get(*k), Some(v));
        }
    }
}
