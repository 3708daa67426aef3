//! Chunks: one conversion batch carved into the buffers of one class, and the per-buffer
//! in-flight records.
//!
//! A [`Chunk`] is built by the engine outside every lock (its record arrays are
//! allocated then), indexed by page frame number, and published to its class pool in
//! O(1). It is shared through `Arc`: the address index holds one reference per page, the
//! pool's lists hold one while the chunk has free buffers, and a [`FreeBuffer`] holds one
//! while a buffer is out of the pool.
//!
//! # Per-buffer records
//! Each buffer has a [`BufMeta`]: a sequence word (even: not mapped, odd: in flight) and
//! the mapping's original address, size and in-buffer data offset. The owner of a free
//! buffer writes the fields and makes the word odd ([`Chunk::commit`]); lookups read it
//! seqlock-style without any lock ([`Chunk::locate`]); release flips it back to even with
//! one compare-exchange ([`Chunk::release`]), so two racing unmaps of the same address
//! cannot both succeed. None of this allocates.
//!
//! # Free stacks
//! Each chunk keeps a LIFO stack of its free buffer indices. The stack is only touched
//! under the owning pool's lock (relaxed atomics are used as plain cells, so the type is
//! `Sync` without `unsafe`); the pool's per-chunk free count is its depth.

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use intrusive_collections::{linked_list, rbtree};

use bounce_framework::{Located, PageCount, PhysAddr, ReleaseError, Released};

use crate::class::SizeClass;

/// The class index of a blank shell (one that belongs to no class).
pub const BLANK: usize = usize::MAX;

/// The in-flight record of one buffer.
#[derive(Default)]
pub struct BufMeta {
    /// Even: not mapped; odd: in flight. Bumped on every commit and release.
    seq: AtomicU32,
    /// The original address of the mapping's first byte.
    orig: AtomicU64,
    /// `alloc_size << 32 | data offset`.
    size_off: AtomicU64,
}

/// A snapshot of one buffer's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufState {
    /// Whether the buffer is in flight.
    pub in_flight: bool,
    /// The original address (meaningful when in flight).
    pub orig: PhysAddr,
    /// Bytes reserved (meaningful when in flight).
    pub alloc_size: usize,
    /// Data offset inside the buffer (meaningful when in flight).
    pub offset: usize,
}

/// One batch of pages converted to shared with a single call, carved into buffers of one
/// class.
pub struct Chunk {
    pub(crate) partial_link: rbtree::AtomicLink,
    pub(crate) empty_link: linked_list::AtomicLink,
    /// The class index, or [`BLANK`] for a shell that belongs to no class. The geometry
    /// fields (`class`, `first`, `shift`, `buffers`) change only while the chunk is a
    /// completely free shell out of every pool ([`Chunk::reshape`], [`Chunk::blank`]),
    /// so a lookup that races a change can only be a stale one (an unmap of an address
    /// that is not mapped), which finds no buffer in flight either way.
    class: AtomicUsize,
    base: PhysAddr,
    pages: PageCount,
    first: AtomicU64,
    shift: AtomicU32,
    buffers: AtomicU32,
    /// Whether the chunk is a shell ([`Chunk::shell`]): reshaped between classes instead
    /// of being carved and dropped.
    shell: bool,
    free_top: AtomicU32,
    free_stack: Box<[AtomicU32]>,
    meta: Box<[BufMeta]>,
    /// When the engine first saw the chunk completely free (0: not yet / not free).
    empty_since: AtomicU64,
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("class", &self.class())
            .field("base", &self.base)
            .field("pages", &self.pages.get())
            .field("first", &self.first())
            .field("buffer_size", &self.buffer_size())
            .field("buffers", &self.buffers())
            .field("free", &self.free_count())
            .finish_non_exhaustive()
    }
}

impl Chunk {
    /// Carves the shared block `[base, base + class.chunk_pages pages)` into
    /// `class.chunk_buffers` buffers starting at the first address aligned to
    /// `class.align`. All buffers start free. Allocates the record arrays (background
    /// context only).
    pub fn carve(class_index: usize, class: &SizeClass, base: PhysAddr) -> Self {
        let first = base.align_up(class.align as u64);
        debug_assert!(
            first.0 + ((class.chunk_buffers << class.shift) as u64) <= base.0 + class.chunk_bytes() as u64,
            "chunk slack covers the alignment"
        );
        let n = class.chunk_buffers;
        // Stack bottom holds the highest index, so buffers are handed out in address
        // order from a fresh chunk.
        let free_stack: Box<[AtomicU32]> = (0..n).rev().map(|i| AtomicU32::new(i as u32)).collect();
        let meta: Box<[BufMeta]> = (0..n).map(|_| BufMeta::default()).collect();
        Self {
            partial_link: rbtree::AtomicLink::new(),
            empty_link: linked_list::AtomicLink::new(),
            class: AtomicUsize::new(class_index),
            base,
            pages: PageCount(class.chunk_pages),
            first: AtomicU64::new(first.0),
            shift: AtomicU32::new(class.shift),
            buffers: AtomicU32::new(n as u32),
            shell: false,
            free_top: AtomicU32::new(n as u32),
            free_stack,
            meta,
            empty_since: AtomicU64::new(0),
        }
    }

    /// A blank shell over the shared block `[base, base + pages)` with records for up
    /// to `capacity` buffers, belonging to no class: [`Chunk::reshape`] gives it a
    /// class's geometry without allocating (on the map path), [`Chunk::blank`] takes it
    /// back. `base` must be aligned to every class alignment the shell will take.
    /// Allocates the record arrays (background context only).
    pub fn shell(base: PhysAddr, pages: usize, capacity: usize) -> Self {
        Self {
            partial_link: rbtree::AtomicLink::new(),
            empty_link: linked_list::AtomicLink::new(),
            class: AtomicUsize::new(BLANK),
            base,
            pages: PageCount(pages),
            first: AtomicU64::new(base.0),
            shift: AtomicU32::new(bounce_framework::PAGE_SHIFT),
            buffers: AtomicU32::new(0),
            shell: true,
            free_top: AtomicU32::new(0),
            free_stack: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            meta: (0..capacity).map(|_| BufMeta::default()).collect(),
            empty_since: AtomicU64::new(0),
        }
    }

    /// Whether this chunk is a shell (reshaped between classes, never dropped while
    /// indexed).
    pub fn is_shell(&self) -> bool {
        self.shell
    }

    /// Whether a blank shell can take `class`'s geometry: the class's buffers fit its
    /// records and pages, and its base is aligned as the class needs.
    pub fn can_take(&self, class: &SizeClass) -> bool {
        self.shell
            && class.size <= self.pages.bytes()
            && self.pages.bytes() / class.size <= self.meta.len()
            && self.base.is_aligned(class.align as u64)
    }

    /// Gives a blank shell `class`'s geometry: `pages × 4 KiB / size` buffers from the
    /// base, all free. The caller owns the shell exclusively (taken off the blank list,
    /// in no pool). Never allocates.
    ///
    /// # Panics
    /// When the chunk is not a blank shell or cannot take the class (a caller bug).
    pub(crate) fn reshape(&self, class_index: usize, class: &SizeClass) {
        assert!(self.class() == BLANK && self.can_take(class), "bounce-pools: reshaping {self:?} for {class:?}");
        let n = self.pages.bytes() / class.size;
        for (slot, i) in self.free_stack[..n].iter().zip((0..n as u32).rev()) {
            slot.store(i, Ordering::Relaxed);
        }
        self.first.store(self.base.0, Ordering::Relaxed);
        self.shift.store(class.shift, Ordering::Relaxed);
        self.buffers.store(n as u32, Ordering::Relaxed);
        self.free_top.store(n as u32, Ordering::Relaxed);
        self.set_empty_since(0);
        // Publishes the geometry to lookups that find the chunk through the index
        // afterwards (they only reach a buffer once a commit published it anyway).
        self.class.store(class_index, Ordering::Release);
    }

    /// Takes a completely free shell out of its class: blank again, no buffers. The
    /// caller owns it exclusively (detached from its pool). Never allocates.
    ///
    /// # Panics
    /// When the chunk is not a shell or has a buffer out (a caller bug).
    pub(crate) fn blank(&self) {
        assert!(self.shell && self.free_count() == self.buffers(), "bounce-pools: blanking {self:?}");
        self.class.store(BLANK, Ordering::Release);
        self.buffers.store(0, Ordering::Relaxed);
        self.free_top.store(0, Ordering::Relaxed);
    }

    /// The class index ([`BLANK`] for a blank shell).
    #[inline]
    pub fn class(&self) -> usize {
        self.class.load(Ordering::Relaxed)
    }

    /// The first page of the block.
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// Pages in the block (buffers and slack).
    pub fn pages(&self) -> PageCount {
        self.pages
    }

    /// The end of the block (exclusive).
    pub fn end(&self) -> PhysAddr {
        self.base + self.pages.bytes() as u64
    }

    /// The first buffer's address.
    #[inline]
    pub fn first(&self) -> PhysAddr {
        PhysAddr(self.first.load(Ordering::Relaxed))
    }

    #[inline]
    fn shift(&self) -> u32 {
        self.shift.load(Ordering::Relaxed)
    }

    /// Bytes per buffer.
    #[inline]
    pub fn buffer_size(&self) -> usize {
        1 << self.shift()
    }

    /// Number of buffers (0 for a blank shell).
    #[inline]
    pub fn buffers(&self) -> usize {
        self.buffers.load(Ordering::Relaxed) as usize
    }

    /// Bytes of the block outside every buffer (alignment slack; a blank shell's whole
    /// block).
    pub fn slack_bytes(&self) -> usize {
        self.pages.bytes() - (self.buffers() << self.shift())
    }

    /// The address of buffer `i`.
    #[inline]
    pub fn buffer_addr(&self, i: usize) -> PhysAddr {
        self.first() + ((i as u64) << self.shift())
    }

    /// The buffer holding `addr`, if `addr` lies inside one (not in the slack).
    #[inline]
    pub fn buffer_index(&self, addr: PhysAddr) -> Option<usize> {
        let off = addr.offset_from(self.first())?;
        let i = (off >> self.shift()) as usize;
        (i < self.buffers().min(self.meta.len())).then_some(i)
    }

    /// Whether `addr` lies in the block (slack included).
    pub fn contains(&self, addr: PhysAddr) -> bool {
        addr >= self.base && addr < self.end()
    }

    /// Free buffers on the chunk's stack. Exact under the pool lock; a hint otherwise.
    pub fn free_count(&self) -> usize {
        self.free_top.load(Ordering::Relaxed) as usize
    }

    /// Pops a free buffer index. Caller holds the pool lock.
    pub(crate) fn pop_free(&self) -> Option<u32> {
        let top = self.free_top.load(Ordering::Relaxed);
        if top == 0 {
            return None;
        }
        let i = self.free_stack[top as usize - 1].load(Ordering::Relaxed);
        self.free_top.store(top - 1, Ordering::Relaxed);
        Some(i)
    }

    /// Pushes a free buffer index. Caller holds the pool lock and owns the buffer.
    pub(crate) fn push_free(&self, i: u32) {
        let top = self.free_top.load(Ordering::Relaxed);
        assert!((top as usize) < self.buffers(), "bounce-pools: more buffers pushed than a chunk holds (double free)");
        self.free_stack[top as usize].store(i, Ordering::Relaxed);
        self.free_top.store(top + 1, Ordering::Relaxed);
    }

    /// The free stack's entries (audit). Caller holds the pool lock.
    pub(crate) fn free_entries(&self) -> impl Iterator<Item = u32> + '_ {
        self.free_stack[..self.free_count()].iter().map(|a| a.load(Ordering::Relaxed))
    }

    pub(crate) fn empty_since(&self) -> u64 {
        self.empty_since.load(Ordering::Relaxed)
    }

    pub(crate) fn set_empty_since(&self, t: u64) {
        self.empty_since.store(t, Ordering::Relaxed);
    }

    /// Marks buffer `i` in flight for a mapping of `alloc_size` bytes from `orig`, with
    /// the data at `offset` in the buffer; returns where the data starts.
    ///
    /// # Context
    /// Any context; never allocates. The caller must own the free buffer (a
    /// [`FreeBuffer`]), which [`crate::PoolSet::commit`] guarantees.
    pub(crate) fn commit(&self, i: usize, orig: PhysAddr, offset: usize, alloc_size: usize) -> PhysAddr {
        debug_assert!(offset + alloc_size <= self.buffer_size());
        let m = &self.meta[i];
        let seq = m.seq.load(Ordering::Relaxed);
        debug_assert!(seq % 2 == 0, "committing a buffer that is in flight");
        // Release stores: a reader that sees these values also sees the release that
        // freed the buffer before (and so a changed sequence word); pairs with the
        // acquire fence in `read`.
        m.orig.store(orig.0, Ordering::Release);
        m.size_off.store(((alloc_size as u64) << 32) | offset as u64, Ordering::Release);
        // Publishes the fields to `locate`/`release`; pairs with their acquire loads.
        m.seq.store(seq.wrapping_add(1), Ordering::Release);
        self.buffer_addr(i) + offset as u64
    }

    /// A consistent snapshot of buffer `i`'s record with its sequence word, or `None`
    /// when it changed under the read (a racing commit or release).
    fn read(&self, i: usize) -> Option<(u32, BufState)> {
        let m = &self.meta[i];
        let s1 = m.seq.load(Ordering::Acquire);
        if s1 % 2 == 0 {
            return Some((s1, BufState { in_flight: false, orig: PhysAddr(0), alloc_size: 0, offset: 0 }));
        }
        let orig = m.orig.load(Ordering::Relaxed);
        let so = m.size_off.load(Ordering::Relaxed);
        // Pairs with the release stores in `commit`: if a field came from a newer
        // commit, the sequence word below has moved on too.
        fence(Ordering::Acquire);
        let s2 = m.seq.load(Ordering::Relaxed);
        (s1 == s2).then_some((
            s1,
            BufState {
                in_flight: true,
                orig: PhysAddr(orig),
                alloc_size: (so >> 32) as usize,
                offset: (so & 0xffff_ffff) as usize,
            },
        ))
    }

    /// A snapshot of buffer `i`'s record (audit, diagnostics).
    pub fn state(&self, i: usize) -> BufState {
        loop {
            if let Some((_, s)) = self.read(i) {
                return s;
            }
            core::hint::spin_loop();
        }
    }

    /// The live mapping containing `addr` (partial syncs may point anywhere inside it).
    ///
    /// # Context
    /// Any context; lock-free, never allocates.
    pub fn locate(&self, addr: PhysAddr) -> Option<Located> {
        let i = self.buffer_index(addr)?;
        let (_, st) = self.read(i)?;
        if !st.in_flight {
            return None;
        }
        let start = self.buffer_addr(i) + st.offset as u64;
        let into = addr.offset_from(start)? as usize;
        (into < st.alloc_size).then(|| Located { start, orig: st.orig + into as u64, remaining: st.alloc_size - into })
    }

    /// Ends the mapping that starts at `addr`: flips the record to not-mapped with one
    /// compare-exchange and returns the buffer index and what the mapping was.
    ///
    /// # Errors
    /// [`ReleaseError::NotMapped`] when no mapping covers `addr` (or a racing release
    /// won), [`ReleaseError::NotStart`] when `addr` is inside a mapping that starts
    /// elsewhere. The record is unchanged on error.
    pub(crate) fn release(&self, addr: PhysAddr) -> Result<(usize, Released), ReleaseError> {
        let i = self.buffer_index(addr).ok_or(ReleaseError::NotMapped)?;
        let (seq, st) = self.read(i).ok_or(ReleaseError::NotMapped)?;
        if !st.in_flight {
            return Err(ReleaseError::NotMapped);
        }
        let start = self.buffer_addr(i) + st.offset as u64;
        if addr != start {
            let inside = addr.offset_from(start).is_some_and(|o| (o as usize) < st.alloc_size);
            return Err(if inside { ReleaseError::NotStart { start } } else { ReleaseError::NotMapped });
        }
        self.meta[i]
            .seq
            .compare_exchange(seq, seq.wrapping_add(1), Ordering::AcqRel, Ordering::Relaxed)
            .map_err(|_| ReleaseError::NotMapped)?;
        Ok((i, Released { orig: st.orig, size: st.alloc_size }))
    }

    /// Pages of the block, for index insertion.
    pub(crate) fn pfns(&self) -> core::ops::Range<usize> {
        let first = self.base.pfn() as usize;
        first..first + self.pages.get()
    }
}

/// Exclusive ownership of one buffer that is out of its pool and not in flight: popped
/// by [`crate::PoolSet::pop`] or handed back by [`crate::PoolSet::release`].
///
/// Give it back with [`crate::PoolSet::push`] or map it with
/// [`crate::PoolSet::commit`]; dropping it leaks the buffer (the audit reports it as
/// held).
#[must_use = "a dropped FreeBuffer never returns to its pool"]
pub struct FreeBuffer {
    pub(crate) chunk: Arc<Chunk>,
    pub(crate) index: u32,
}

impl fmt::Debug for FreeBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FreeBuffer").field("addr", &self.addr()).field("size", &self.size()).finish()
    }
}

impl FreeBuffer {
    /// The buffer's first byte.
    pub fn addr(&self) -> PhysAddr {
        self.chunk.buffer_addr(self.index as usize)
    }

    /// The buffer's size (its class size).
    pub fn size(&self) -> usize {
        self.chunk.buffer_size()
    }

    /// The buffer's class index.
    pub fn class(&self) -> usize {
        self.chunk.class()
    }

    /// The chunk the buffer belongs to.
    pub fn chunk(&self) -> &Arc<Chunk> {
        &self.chunk
    }
}
