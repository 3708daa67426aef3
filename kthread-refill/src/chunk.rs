//! Chunks: one conversion batch carved into the buffers of one class, and the per-buffer
//! in-flight records.
//!
//! A [`Chunk`] is a record in the address index ([`crate::ChunkIndex`]): built by the
//! engine outside every lock (its record arrays are allocated then), indexed by page
//! frame number, and published to its class pool in O(1). Records are never freed while
//! the index lives: a retired chunk's record waits, vacant, for the next chunk of the
//! same capacity, which gives it a new address range (`Chunk::recycle`). So a lock-free
//! lookup that found a record may always read it; the record's *generation* word (odd
//! while its geometry changes) tells the lookup whether what it read still holds. The
//! index holds the one `Arc` of each record; the pool's lists hold clones while the
//! chunk has free buffers; a [`FreeBuffer`] is two numbers (record slot, buffer index),
//! so taking and returning a buffer touches no reference count.
//!
//! # Per-buffer records
//! Each buffer has a [`BufMeta`]: a sequence word (even: not mapped, odd: in flight) and
//! the mapping's original address, size and in-buffer data offset. The owner of a free
//! buffer writes the fields and makes the word odd (`Chunk::commit`); lookups read it
//! seqlock-style without any lock ([`Chunk::find`]); release flips it
//! back to even with one compare-exchange on the word the lookup saw
//! (`Chunk::release_buffer`), so two racing unmaps of the same address cannot both
//! succeed, and a handle from an earlier mapping of the buffer never matches. None of
//! this allocates.
//!
//! # Free stacks
//! Each chunk keeps a LIFO stack of its free buffer indices. The stack is only touched
//! under the owning pool's lock (relaxed atomics are used as plain cells, so the type is
//! `Sync` without `unsafe`); the pool's per-chunk free count is its depth.

use alloc::boxed::Box;
use core::fmt;

use bounce_framework::sync::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

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
    /// The record's slot in the address index (fixed for the record's life).
    slot: u32,
    /// Even: the geometry below is stable; odd: it is being changed (reshape, blank,
    /// retire, recycle). Bumped twice around every change, seqlock-style.
    gen: AtomicU32,
    /// The class index, or [`BLANK`] for a shell that belongs to no class. The geometry
    /// fields (`class`, `first`, `shift`, `buffers`) change only while the chunk is a
    /// completely free shell out of every pool ([`Chunk::reshape`], [`Chunk::blank`]),
    /// so a lookup that races a change can only be a stale one (an unmap of an address
    /// that is not mapped), which finds no buffer in flight either way.
    class: AtomicUsize,
    base: AtomicU64,
    pages: AtomicUsize,
    first: AtomicU64,
    shift: AtomicU32,
    buffers: AtomicU32,
    /// Whether the chunk is a shell ([`Chunk::shell`]): reshaped between classes instead
    /// of being carved and retired.
    shell: AtomicBool,
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
            .field("base", &self.base())
            .field("pages", &self.pages().get())
            .field("first", &self.first())
            .field("buffer_size", &self.buffer_size())
            .field("buffers", &self.buffers())
            .field("free", &self.free_count())
            .finish_non_exhaustive()
    }
}

impl Chunk {
    /// A vacant record in index slot `slot` with room for `capacity` buffers (the
    /// record arrays are allocated here: background context only). Give it an address
    /// range with [`Chunk::recycle`].
    pub(crate) fn vacant(slot: u32, capacity: usize) -> Self {
        Self {
            partial_link: rbtree::AtomicLink::new(),
            empty_link: linked_list::AtomicLink::new(),
            slot,
            gen: AtomicU32::new(0),
            class: AtomicUsize::new(BLANK),
            base: AtomicU64::new(0),
            pages: AtomicUsize::new(0),
            first: AtomicU64::new(0),
            shift: AtomicU32::new(bounce_framework::PAGE_SHIFT),
            buffers: AtomicU32::new(0),
            shell: AtomicBool::new(false),
            free_top: AtomicU32::new(0),
            free_stack: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            meta: (0..capacity).map(|_| BufMeta::default()).collect(),
            empty_since: AtomicU64::new(0),
        }
    }

    /// Buffers the record has room for.
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// The record's slot in the address index.
    #[inline]
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Starts a change of the geometry: lookups that overlap it retry or miss.
    fn begin_change(&self) {
        let g = self.gen.load(Ordering::Relaxed);
        debug_assert!(g % 2 == 0, "nested geometry change");
        self.gen.store(g.wrapping_add(1), Ordering::Relaxed);
        // Orders the odd word before the geometry stores that follow (a reader that
        // sees a new field value then sees an odd or newer word); pairs with the
        // acquire fence in `geometry_stable`.
        fence(Ordering::Release);
    }

    /// Ends a change of the geometry.
    fn end_change(&self) {
        let g = self.gen.load(Ordering::Relaxed);
        // Publishes the geometry with the even word; pairs with the acquire load in
        // `generation`.
        self.gen.store(g.wrapping_add(1), Ordering::Release);
    }

    /// The generation word, for a lookup that starts reading the geometry (odd: being
    /// changed now).
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        self.gen.load(Ordering::Acquire)
    }

    /// Whether the geometry a lookup read after [`Chunk::generation`] returned `g` was
    /// stable all along.
    #[inline]
    pub(crate) fn geometry_stable(&self, g: u32) -> bool {
        // Pairs with the release fence in `begin_change`: if any field read came from a
        // change, the word has moved on.
        fence(Ordering::Acquire);
        g % 2 == 0 && self.gen.load(Ordering::Relaxed) == g
    }

    /// Gives a vacant record the shared block `[base, base + pages)`: carved into
    /// `class`'s buffers (`Some`), all free, first at the first address aligned to the
    /// class alignment; or as a blank shell (`None`). The caller owns the record
    /// exclusively (vacant, or just created). Never allocates; per-buffer sequence words
    /// keep counting, so a stale handle of the record's past life never matches.
    ///
    /// # Panics
    /// When the record is too small (a caller bug).
    pub(crate) fn recycle(&self, base: PhysAddr, pages: usize, carve: Option<(usize, &SizeClass)>) {
        self.begin_change();
        self.base.store(base.0, Ordering::Relaxed);
        self.pages.store(pages, Ordering::Relaxed);
        self.set_empty_since(0);
        if let Some((class_index, class)) = carve {
            let first = base.align_up(class.align as u64);
            let n = class.chunk_buffers;
            assert!(n <= self.meta.len(), "bounce-pools: a record of {} buffers carved for {n}", self.meta.len());
            debug_assert!(
                first.0 + ((n << class.shift) as u64) <= base.0 + (pages * bounce_framework::PAGE_SIZE) as u64,
                "chunk slack covers the alignment"
            );
            // Stack bottom holds the highest index, so buffers are handed out in
            // address order from a fresh chunk.
            for (slot, i) in self.free_stack[..n].iter().zip((0..n as u32).rev()) {
                slot.store(i, Ordering::Relaxed);
            }
            self.shell.store(false, Ordering::Relaxed);
            self.first.store(first.0, Ordering::Relaxed);
            self.shift.store(class.shift, Ordering::Relaxed);
            self.buffers.store(n as u32, Ordering::Relaxed);
            self.free_top.store(n as u32, Ordering::Relaxed);
            self.class.store(class_index, Ordering::Relaxed);
        } else {
            self.shell.store(true, Ordering::Relaxed);
            self.first.store(base.0, Ordering::Relaxed);
            self.shift.store(bounce_framework::PAGE_SHIFT, Ordering::Relaxed);
            self.buffers.store(0, Ordering::Relaxed);
            self.free_top.store(0, Ordering::Relaxed);
            self.class.store(BLANK, Ordering::Relaxed);
        }
        self.end_change();
    }

    /// Makes a retired chunk's record vacant: no address range, no buffers. The caller
    /// owns it exclusively (out of every pool, every buffer free, out of the index).
    pub(crate) fn vacate(&self) {
        debug_assert!(self.free_count() == self.buffers(), "vacating {self:?} with a buffer out");
        self.begin_change();
        self.base.store(0, Ordering::Relaxed);
        self.pages.store(0, Ordering::Relaxed);
        self.buffers.store(0, Ordering::Relaxed);
        self.free_top.store(0, Ordering::Relaxed);
        self.class.store(BLANK, Ordering::Relaxed);
        self.end_change();
    }

    /// Whether this chunk is a shell (reshaped between classes, never retired while it
    /// is kept).
    pub fn is_shell(&self) -> bool {
        self.shell.load(Ordering::Relaxed)
    }

    /// Whether a blank shell can take `class`'s geometry: the class's buffers fit its
    /// records and pages, and its base is aligned as the class needs.
    pub fn can_take(&self, class: &SizeClass) -> bool {
        self.is_shell()
            && class.size <= self.pages().bytes()
            && self.pages().bytes() / class.size <= self.meta.len()
            && self.base().is_aligned(class.align as u64)
    }

    /// Gives a blank shell `class`'s geometry: `pages × 4 KiB / size` buffers from the
    /// base, all free. The caller owns the shell exclusively (taken off the blank list,
    /// in no pool). Never allocates.
    ///
    /// # Panics
    /// When the chunk is not a blank shell or cannot take the class (a caller bug).
    pub(crate) fn reshape(&self, class_index: usize, class: &SizeClass) {
        assert!(self.class() == BLANK && self.can_take(class), "bounce-pools: reshaping {self:?} for {class:?}");
        let n = self.pages().bytes() / class.size;
        self.begin_change();
        for (slot, i) in self.free_stack[..n].iter().zip((0..n as u32).rev()) {
            slot.store(i, Ordering::Relaxed);
        }
        self.first.store(self.base().0, Ordering::Relaxed);
        self.shift.store(class.shift, Ordering::Relaxed);
        self.buffers.store(n as u32, Ordering::Relaxed);
        self.free_top.store(n as u32, Ordering::Relaxed);
        self.set_empty_since(0);
        self.class.store(class_index, Ordering::Relaxed);
        self.end_change();
    }

    /// Takes a completely free shell out of its class: blank again, no buffers. The
    /// caller owns it exclusively (detached from its pool). Never allocates.
    ///
    /// # Panics
    /// When the chunk is not a shell or has a buffer out (a caller bug).
    pub(crate) fn blank(&self) {
        assert!(self.is_shell() && self.free_count() == self.buffers(), "bounce-pools: blanking {self:?}");
        self.begin_change();
        self.class.store(BLANK, Ordering::Relaxed);
        self.buffers.store(0, Ordering::Relaxed);
        self.free_top.store(0, Ordering::Relaxed);
        self.end_change();
    }

    /// The class index ([`BLANK`] for a blank shell).
    #[inline]
    pub fn class(&self) -> usize {
        self.class.load(Ordering::Relaxed)
    }

    /// The first page of the block.
    #[inline]
    pub fn base(&self) -> PhysAddr {
        PhysAddr(self.base.load(Ordering::Relaxed))
    }

    /// Pages in the block (buffers and slack).
    #[inline]
    pub fn pages(&self) -> PageCount {
        PageCount(self.pages.load(Ordering::Relaxed))
    }

    /// The end of the block (exclusive).
    #[inline]
    pub fn end(&self) -> PhysAddr {
        self.base() + self.pages().bytes() as u64
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
        self.pages().bytes() - (self.buffers() << self.shift())
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
    #[inline]
    pub fn contains(&self, addr: PhysAddr) -> bool {
        addr >= self.base() && addr < self.end()
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

    /// The live mapping containing `addr` (partial syncs may point anywhere inside it),
    /// with its buffer index and the record's sequence word: what
    /// `Chunk::release_buffer` takes. `None` when the chunk's geometry or the buffer's
    /// record changed under the read (the caller retries: it found a record being
    /// recycled, reshaped, committed or released).
    ///
    /// # Errors
    /// [`ReleaseError::Foreign`] when `addr` is outside the chunk's block (a stale index
    /// entry: the record moved), [`ReleaseError::NotMapped`] when no mapping covers it.
    ///
    /// # Context
    /// Any context; lock-free, writes nothing, never allocates.
    #[inline]
    pub fn find(&self, addr: PhysAddr) -> Option<Result<(Located, u32, u32), ReleaseError>> {
        let g = self.generation();
        if g % 2 == 1 {
            // Being changed: every buffer is free (a chunk changes only then).
            return Some(Err(ReleaseError::NotMapped));
        }
        let r = if !self.contains(addr) {
            Err(ReleaseError::Foreign)
        } else if let Some(i) = self.buffer_index(addr) {
            let (seq, st) = self.read(i)?;
            let start = self.buffer_addr(i) + st.offset as u64;
            match addr.offset_from(start) {
                Some(into) if st.in_flight && (into as usize) < st.alloc_size => {
                    let into = into as usize;
                    Ok((Located { start, orig: st.orig + into as u64, remaining: st.alloc_size - into }, i as u32, seq))
                }
                _ => Err(ReleaseError::NotMapped),
            }
        } else {
            Err(ReleaseError::NotMapped)
        };
        self.geometry_stable(g).then_some(r)
    }

    /// Ends the mapping of buffer `i` that [`Chunk::find`] saw with sequence word `seq`:
    /// flips the record to not-mapped with one compare-exchange, so of two racing
    /// releases exactly one succeeds, and a handle from an earlier mapping of the buffer
    /// (whose word has moved on) never does. Returns what the mapping was.
    ///
    /// # Errors
    /// [`ReleaseError::NotMapped`] when the word is no longer `seq` (released already).
    ///
    /// # Context
    /// Any context; lock-free, never allocates.
    #[inline]
    pub(crate) fn release_buffer(&self, i: u32, seq: u32) -> Result<Released, ReleaseError> {
        let m = self.meta.get(i as usize).ok_or(ReleaseError::NotMapped)?;
        if seq % 2 == 0 {
            return Err(ReleaseError::NotMapped);
        }
        m.seq
            .compare_exchange(seq, seq.wrapping_add(1), Ordering::AcqRel, Ordering::Relaxed)
            .map_err(|_| ReleaseError::NotMapped)?;
        // The buffer is ours now: nobody writes its record until it is committed again.
        let so = m.size_off.load(Ordering::Relaxed);
        Ok(Released { orig: PhysAddr(m.orig.load(Ordering::Relaxed)), size: (so >> 32) as usize })
    }

    /// Pages of the block, for index insertion.
    pub(crate) fn pfns(&self) -> core::ops::Range<usize> {
        let first = self.base().pfn() as usize;
        first..first + self.pages().get()
    }
}

/// Exclusive ownership of one buffer that is out of its pool and not in flight: popped
/// by [`crate::PoolSet::pop`] or handed back by [`crate::PoolSet::release`].
///
/// Give it back with [`crate::PoolSet::push`] or map it with
/// [`crate::PoolSet::commit`]; dropping it leaks the buffer (the audit reports it as
/// held).
#[must_use = "a dropped FreeBuffer never returns to its pool"]
#[derive(Debug, PartialEq, Eq)]
pub struct FreeBuffer {
    /// The chunk record's slot in the address index.
    pub(crate) slot: u32,
    /// The buffer's index in its chunk.
    pub(crate) index: u32,
}

impl FreeBuffer {
    /// The chunk record's slot in the address index ([`crate::ChunkIndex::record`]).
    #[inline]
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The buffer's index in its chunk.
    #[inline]
    pub fn index(&self) -> u32 {
        self.index
    }
}
