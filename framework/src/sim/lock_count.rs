//! Counting the simulated guest's lock acquisitions, for tests that prove which locks a
//! path takes (e.g. that a warm map and unmap take only their own CPU's lock).
//!
//! [`count_locks`] arms a per-thread record; every [`SimLock`](super::SimLock) taken by
//! that thread meanwhile (`lock_irqsave` or a successful `try_lock_irqsave`) is counted
//! and its address remembered (up to [`MAX_DISTINCT_LOCKS`] distinct ones, in a fixed
//! array: counting allocates nothing, so it composes with
//! [`count_allocations`](super::count_allocations)).

use std::cell::{Cell, RefCell};

/// Distinct locks [`count_locks`] remembers; more are counted in
/// [`LockCount::overflowed`].
pub const MAX_DISTINCT_LOCKS: usize = 64;

std::thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static TAKEN: Cell<u64> = const { Cell::new(0) };
    static SEEN: RefCell<([usize; MAX_DISTINCT_LOCKS], usize, u64)> =
        const { RefCell::new(([0; MAX_DISTINCT_LOCKS], 0, 0)) };
}

/// What [`count_locks`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockCount {
    /// Acquisitions.
    pub acquisitions: u64,
    /// The distinct locks taken (their addresses), in first-taken order.
    pub locks: Vec<usize>,
    /// Distinct locks beyond [`MAX_DISTINCT_LOCKS`] (not in `locks`).
    pub overflowed: u64,
}

/// Notes an acquisition of the lock at `addr` by this thread, when armed.
#[inline]
pub(crate) fn note(addr: usize) {
    if !ARMED.with(Cell::get) {
        return;
    }
    TAKEN.with(|t| t.set(t.get() + 1));
    SEEN.with(|s| {
        let mut s = s.borrow_mut();
        let n = s.1;
        if s.0[..n].contains(&addr) {
            return;
        }
        if n < MAX_DISTINCT_LOCKS {
            s.0[n] = addr;
            s.1 += 1;
        } else {
            s.2 += 1;
        }
    });
}

/// Runs `f` and returns its result with the simulated-guest locks this thread took
/// during it.
pub fn count_locks<R>(f: impl FnOnce() -> R) -> (R, LockCount) {
    TAKEN.with(|t| t.set(0));
    SEEN.with(|s| *s.borrow_mut() = ([0; MAX_DISTINCT_LOCKS], 0, 0));
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    let acquisitions = TAKEN.with(Cell::get);
    let (locks, overflowed) = SEEN.with(|s| {
        let s = s.borrow();
        (s.0[..s.1].to_vec(), s.2)
    });
    (r, LockCount { acquisitions, locks, overflowed })
}
