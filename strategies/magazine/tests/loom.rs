//! Loom models of the magazine layer's handoffs.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p bounce-magazine --release --test loom`.
//!
//! Under `--cfg loom` the framework's lock facade (`bounce_framework::lock`) builds
//! `SpinIrqLock` from loom's atomics and `IrqMutex` from loom's cell, so these models
//! explore every interleaving of the real layer code and the real lock, and loom flags
//! any access to protected data that is not ordered by the lock. Each model ends by
//! checking conservation: every buffer is in exactly one place (a CPU magazine, the
//! depot, the backing store, or a caller's hands).
#![cfg(loom)]

use bounce_framework::{IrqMutex, NoIrq, PhysAddr, SpinIrqLock};
use bounce_magazine::{Backing, ClassRounds, LayerConfig, MagazineLayer, Source};
use loom::sync::Arc;
use loom::thread;

type Lock = SpinIrqLock<NoIrq>;
type Layer = MagazineLayer<Lock, PhysAddr>;

/// One class of free buffers behind the framework's IRQ-safe lock.
struct Store {
    free: IrqMutex<Lock, Vec<PhysAddr>>,
}

impl Store {
    fn new(n: u64) -> Self {
        Self { free: IrqMutex::new((1..=n).map(|i| PhysAddr(i << 12)).collect()) }
    }
}

impl Backing for Store {
    type Buf = PhysAddr;
    fn take(&self, _class: usize, _urgent: bool) -> Option<PhysAddr> {
        self.free.lock().pop()
    }
    fn give(&self, _class: usize, buf: PhysAddr) {
        self.free.lock().push(buf);
    }
    fn free_count(&self, _class: usize) -> usize {
        self.free.lock().len()
    }
}

fn layer(cpus: usize, depot_magazines: usize) -> Layer {
    MagazineLayer::new(&LayerConfig {
        cpus,
        rounds: vec![ClassRounds { initial: 1, max: 1 }],
        depot_magazines,
        depot_target: depot_magazines,
        grow_contention: 1,
    })
    .expect("valid model config")
}

/// Every one of `total` buffers is in exactly one place.
fn conserved(layer: &Layer, store: &Store, out: &[PhysAddr], total: usize) {
    let mut all = Vec::new();
    layer.for_each_cached(0, |b| all.push(*b));
    all.extend_from_slice(&store.free.lock());
    all.extend_from_slice(out);
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "a buffer is in two places: {all:?}");
    assert_eq!(n, total, "a buffer was lost");
    layer.check().expect("layer invariants");
}

/// Runs `f` under loom with every interleaving up to the preemption bound, and checks
/// that loom really had several to explore (the model races).
fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut b = loom::model::Builder::new();
    // Small models: an unbounded search finishes in seconds (LOOM_MAX_PREEMPTIONS
    // overrides it for a quicker run).
    b.preemption_bound = std::env::var("LOOM_MAX_PREEMPTIONS").ok().and_then(|v| v.parse().ok());
    let r = std::sync::Arc::clone(&runs);
    b.check(move || {
        r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    let n = runs.load(std::sync::atomic::Ordering::Relaxed);
    println!("{name}: {n} interleavings explored");
    assert!(n > 1, "{name}: loom explored a single interleaving; the model does not race");
}

/// CPU 0 frees into two full magazines (exchanging its full loaded magazine for the
/// depot's only empty one) while CPU 1, with empty magazines, allocates (exchanging for
/// a full depot magazine if one is there yet, else taking from the store, else
/// stealing). Whatever the order, no buffer is lost or handed out twice.
#[test]
fn depot_exchange() {
    model("depot_exchange", || {
        let store = Arc::new(Store::new(3));
        let layer = Arc::new(layer(2, 1));
        // CPU 0: loaded and previous both full (M = 1), one buffer in hand.
        let a = layer.alloc(&*store, 0, 0).expect("cold alloc").0;
        let b = layer.alloc(&*store, 0, 0).expect("cold alloc").0;
        let c = layer.alloc(&*store, 0, 0).expect("cold alloc").0;
        layer.free(&*store, 0, 0, a);
        layer.free(&*store, 0, 0, b);
        let t = {
            let (layer, store) = (Arc::clone(&layer), Arc::clone(&store));
            thread::spawn(move || layer.free(&*store, 0, 0, c))
        };
        let got = layer.alloc(&*store, 1, 0);
        t.join().unwrap();
        let (buf, src) = got.expect("three buffers exist; CPU 1 must get one");
        assert!(matches!(src, Source::Depot | Source::Stolen), "{src:?}");
        conserved(&layer, &store, &[buf], 3);
        let s = layer.class_stats(0);
        if src == Source::Depot {
            assert_eq!(s.depot_frees, 1, "CPU 1 got a depot magazine only CPU 0 could have put there");
        }
        assert_eq!(s.steals, u64::from(src == Source::Stolen));
    });
}

/// A free that needs the depot's only empty magazine races the refill engine filling
/// that same magazine from the store. Either the free gets it (the fill finds none) or
/// the fill does (the free flushes its previous magazine to the store).
#[test]
fn free_racing_refill() {
    model("free_racing_refill", || {
        let store = Arc::new(Store::new(4));
        let layer = Arc::new(layer(1, 1));
        let a = layer.alloc(&*store, 0, 0).expect("cold alloc").0;
        let b = layer.alloc(&*store, 0, 0).expect("cold alloc").0;
        let c = layer.alloc(&*store, 0, 0).expect("cold alloc").0;
        layer.free(&*store, 0, 0, a);
        layer.free(&*store, 0, 0, b);
        let engine = {
            let (layer, store) = (Arc::clone(&layer), Arc::clone(&store));
            thread::spawn(move || layer.fill(&*store, 0))
        };
        layer.free(&*store, 0, 0, c);
        let filled = engine.join().unwrap();
        let s = layer.class_stats(0);
        // Either the engine filled the empty magazine with the store's last buffer and
        // the free found no empty magazine and flushed, or the free took the empty
        // magazine and the engine found the depot at target (one full magazine).
        let outcome = (filled, s.flushes, s.depot_frees);
        assert!(
            outcome == (1, 1, 0) || outcome == (0, 0, 1),
            "unexpected (filled, flushes, depot_frees) = {outcome:?}"
        );
        conserved(&layer, &store, &[], 4);
    });
}

/// The background reaper empties an idle-looking CPU cache while that CPU allocates
/// from it: the buffer goes to exactly one of them.
#[test]
fn reap_racing_alloc() {
    model("reap_racing_alloc", || {
        let store = Arc::new(Store::new(2));
        let layer = Arc::new(layer(1, 1));
        let a = layer.alloc(&*store, 0, 0).expect("cold alloc").0;
        layer.free(&*store, 0, 0, a);
        // Mark the cache idle.
        layer.reap(&*store);
        let background = {
            let (layer, store) = (Arc::clone(&layer), Arc::clone(&store));
            thread::spawn(move || layer.reap(&*store).total())
        };
        let got = layer.alloc(&*store, 0, 0).expect("two buffers exist").0;
        let reaped = background.join().unwrap();
        assert!(reaped <= 1);
        conserved(&layer, &store, &[got], 2);
    });
}
