//! Loom models of the lock-free lookup and release (`ChunkIndex::find`,
//! `Chunk::release_buffer`) against maps, double unmaps and the recycling of a chunk
//! record.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p bounce-pools --release --lib loom_models`.
//!
//! Under `--cfg loom` the per-buffer records, the chunk geometry and generation words
//! (`bounce_framework::sync`), the index entries (`PfnMap`) and the index's lock are
//! loom's, so loom explores every interleaving of the real code. (The radix tree's node
//! pointers are published with `once_cell`; the models create them before the threads
//! start.)

use alloc::sync::Arc;

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::thread;

use bounce_framework::{NoIrq, PhysAddr, ReleaseError, SpinIrqLock};

use crate::chunk::Chunk;
use crate::class::SizeClass;
use crate::index::ChunkIndex;

type Index = ChunkIndex<SpinIrqLock<NoIrq>>;

const A: PhysAddr = PhysAddr(0x10_0000);
const B: PhysAddr = PhysAddr(0x20_0000);

/// Four 4 KiB buffers per chunk.
fn class() -> SizeClass {
    SizeClass {
        size: 4096,
        shift: 12,
        align: 4096,
        target: 4,
        low: 1,
        high: 8,
        reserve: 0,
        chunk_buffers: 4,
        chunk_pages: 4,
    }
}

/// Loom's exhaustive search with at most three preemptions per execution (loom's own
/// advice for models of this size: bugs need few preemptions to show).
fn model(f: impl Fn() + Send + Sync + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

fn index_with_chunk(base: PhysAddr) -> (Arc<Index>, Arc<Chunk>) {
    let index = Arc::new(Index::new(4));
    let c = class();
    // Index B once first, so its tree nodes exist (the models check the entries and
    // records, not `once_cell`); its record is vacant again for the chunk at `base`.
    index.insert(B, c.chunk_pages, Some((0, &c)), 0).map(|x| index.remove(&x)).expect("a record");
    let chunk = index.insert(base, c.chunk_pages, Some((0, &c)), 0).expect("a record");
    assert_eq!(chunk.slot(), 0, "the one record, recycled");
    (index, chunk)
}

/// Takes buffer 0 off the chunk's free stack and maps it: what `PoolSet::pop` +
/// `commit` do for the owner of a free buffer.
fn map_first(chunk: &Chunk, orig: u64) -> PhysAddr {
    let i = chunk.pop_free().expect("a free buffer");
    chunk.commit(i as usize, PhysAddr(orig), 0, 1000)
}

#[test]
fn two_unmaps_of_one_mapping_release_it_exactly_once() {
    model(|| {
        let (index, chunk) = index_with_chunk(A);
        let tlb = map_first(&chunk, 0x5000);
        let unmap = |index: Arc<Index>| {
            move || -> Result<u64, ReleaseError> {
                let found = index.find(tlb)?;
                let (rec, i, seq) = index.resolve(&found);
                rec.release_buffer(i, seq).map(|r| r.orig.0)
            }
        };
        let t = thread::spawn(unmap(Arc::clone(&index)));
        let mine = unmap(Arc::clone(&index))();
        let theirs = t.join().unwrap();
        let ok: Vec<_> = [mine, theirs].into_iter().filter_map(Result::ok).collect();
        assert_eq!(ok, [0x5000], "exactly one unmap wins, with the mapping's original");
        assert!(!chunk.state(0).in_flight);
    });
}

#[test]
fn a_map_on_one_cpu_is_found_and_released_on_another() {
    model(|| {
        let (index, chunk) = index_with_chunk(A);
        // The "device completion": the bus address travels to the other CPU through
        // memory with release/acquire, as a driver's descriptor ring does.
        let mailbox = Arc::new(AtomicU64::new(0));
        let (ix, mb) = (Arc::clone(&index), Arc::clone(&mailbox));
        let t = thread::spawn(move || loop {
            let addr = mb.load(Ordering::Acquire);
            if addr != 0 {
                let found = ix.find(PhysAddr(addr)).expect("a published mapping is found");
                assert_eq!((found.loc.start.0, found.loc.orig.0, found.loc.remaining), (addr, 0x7000, 1000));
                let (rec, i, seq) = ix.resolve(&found);
                return rec.release_buffer(i, seq).expect("released once").size;
            }
            loom::thread::yield_now();
        });
        let tlb = map_first(&chunk, 0x7000);
        mailbox.store(tlb.0, Ordering::Release);
        assert_eq!(t.join().unwrap(), 1000);
    });
}

#[test]
fn a_lookup_racing_a_recycle_never_resolves_a_stale_address() {
    model(|| {
        let (index, chunk) = index_with_chunk(A);
        let slot = chunk.slot();
        let c = class();
        // The engine retires the idle chunk at A and the same record becomes the chunk
        // at B, whose first buffer is mapped at once.
        let ix = Arc::clone(&index);
        let engine = thread::spawn(move || {
            let old = Arc::clone(ix.record(slot));
            ix.remove(&old);
            let new = ix.insert(B, c.chunk_pages, Some((0, &c)), 0).expect("the vacant record");
            assert_eq!(new.slot(), slot, "recycled, not a new record");
            map_first(&new, 0x9000)
        });
        // A stale unmap of an address in the old chunk: never finds a mapping, whatever
        // it overlaps (the record's new life at B has a buffer in flight at index 0).
        match index.find(A) {
            Err(ReleaseError::Foreign | ReleaseError::NotMapped) => {}
            other => panic!("a stale address resolved: {other:?}"),
        }
        // `is_swiotlb_buffer` on either address answers without waiting for the engine
        // (whatever it answers mid-recycle, no live mapping depends on it).
        let _ = (index.contains(A), index.contains(B));
        let tlb = engine.join().unwrap();
        assert!(index.contains(B) && !index.contains(A));
        let found = index.find(tlb).expect("the new mapping");
        assert_eq!(found.loc.orig, PhysAddr(0x9000));
        assert_eq!(index.find(A), Err(ReleaseError::Foreign));
    });
}
