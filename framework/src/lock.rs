//! IRQ-safe locking.
//!
//! Strategy state that the map path touches is protected by an [`IrqMutex`], built over
//! the platform's [`RawIrqLock`]. In the kernel that is a spinning lock taken with local
//! interrupts disabled (the semantics of `spin_lock_irqsave`), so the map path may run in
//! hard-IRQ context. In the simulated guest it is a `parking_lot` mutex.
//!
//! # Context
//! A lock may be taken with IRQs on or off. Code holding an [`IrqMutex`] must not sleep,
//! allocate, or convert pages.

use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

// Loom facade: under `--cfg loom` the lock word, the spin hint and the protected cell are
// loom's, so loom models (e.g. `bounce-magazine`'s tests/loom.rs) check this very code:
// `SpinIrqLock`'s acquire/release pairing and every access `IrqMutex` hands out.
#[cfg(loom)]
use loom::{
    cell::UnsafeCell,
    hint::spin_loop,
    sync::atomic::{AtomicBool, Ordering},
};
#[cfg(not(loom))]
use {
    core::cell::UnsafeCell,
    core::hint::spin_loop,
    core::sync::atomic::{AtomicBool, Ordering},
};

/// The interrupt state saved by [`RawIrqLock::lock_irqsave`] (the kernel's `flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IrqState(pub usize);

/// A raw lock that disables local interrupts while held.
///
/// # Safety
/// Implementors guarantee mutual exclusion: between a `lock_irqsave` (or a successful
/// `try_lock_irqsave`) and the matching `unlock_irqrestore`, no other caller's
/// `lock_irqsave` returns and no other `try_lock_irqsave` succeeds. [`IrqMutex`] relies on
/// it to hand out `&mut` access.
pub unsafe trait RawIrqLock: Send + Sync {
    /// A new, unlocked lock.
    fn new() -> Self
    where
        Self: Sized;

    /// Saves and disables local interrupts, then spins until the lock is taken.
    fn lock_irqsave(&self) -> IrqState;

    /// Takes the lock only if it is free, without spinning.
    fn try_lock_irqsave(&self) -> Option<IrqState>;

    /// Releases the lock and restores the saved interrupt state.
    ///
    /// # Safety
    /// The caller holds the lock, and `state` is what the matching lock call returned.
    unsafe fn unlock_irqrestore(&self, state: IrqState);
}

/// Disabling and restoring local interrupts, for [`SpinIrqLock`].
pub trait IrqControl: Send + Sync + 'static {
    /// Saves the interrupt state and disables interrupts (`local_irq_save`).
    fn save_disable() -> IrqState;
    /// Restores a saved state (`local_irq_restore`).
    fn restore(state: IrqState);
}

/// Interrupt control that does nothing, for hosts without interrupts (tests, bench).
#[derive(Debug)]
pub struct NoIrq;

impl IrqControl for NoIrq {
    #[inline]
    fn save_disable() -> IrqState {
        IrqState(0)
    }
    #[inline]
    fn restore(_state: IrqState) {}
}

/// A test-and-test-and-set spinlock that disables interrupts through `I` while held:
/// `spin_lock_irqsave` built from `local_irq_save` and an atomic flag, for platforms that
/// hand the framework interrupt control but no lock of their own (the kernel binding).
pub struct SpinIrqLock<I: IrqControl> {
    locked: AtomicBool,
    _irq: PhantomData<fn() -> I>,
}

// SAFETY: `locked` is only set by a successful compare-exchange from false to true and
// cleared by the holder in `unlock_irqrestore`, so at most one caller holds it at a time.
unsafe impl<I: IrqControl> RawIrqLock for SpinIrqLock<I> {
    fn new() -> Self {
        Self { locked: AtomicBool::new(false), _irq: PhantomData }
    }

    fn lock_irqsave(&self) -> IrqState {
        loop {
            let state = I::save_disable();
            if self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return state;
            }
            // Spin with interrupts restored, as the kernel's slow path does, so a waiter
            // does not hold off interrupts for the holder's whole critical section.
            I::restore(state);
            while self.locked.load(Ordering::Relaxed) {
                spin_loop();
            }
        }
    }

    fn try_lock_irqsave(&self) -> Option<IrqState> {
        let state = I::save_disable();
        if self.locked.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            Some(state)
        } else {
            I::restore(state);
            None
        }
    }

    unsafe fn unlock_irqrestore(&self, state: IrqState) {
        self.locked.store(false, Ordering::Release);
        I::restore(state);
    }
}

/// Data protected by a [`RawIrqLock`].
///
/// Lock order: strategies document their own; the framework itself never holds two.
pub struct IrqMutex<R: RawIrqLock, T> {
    raw: R,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialised by `raw` (see `RawIrqLock`'s contract), so the
// mutex can be shared between threads whenever `T` may be sent between them.
unsafe impl<R: RawIrqLock, T: Send> Sync for IrqMutex<R, T> {}
// SAFETY: moving the mutex moves `T`; `R: Send` by the trait bound.
unsafe impl<R: RawIrqLock, T: Send> Send for IrqMutex<R, T> {}

impl<R: RawIrqLock, T> IrqMutex<R, T> {
    /// A new unlocked mutex holding `value`.
    pub fn new(value: T) -> Self {
        Self { raw: R::new(), data: UnsafeCell::new(value) }
    }

    /// Takes the lock with interrupts disabled.
    ///
    /// # Context
    /// Any context; spins, never sleeps.
    #[inline]
    pub fn lock(&self) -> IrqMutexGuard<'_, R, T> {
        let state = self.raw.lock_irqsave();
        IrqMutexGuard { mutex: self, state }
    }

    /// Takes the lock only if it is free (used to measure contention).
    #[inline]
    pub fn try_lock(&self) -> Option<IrqMutexGuard<'_, R, T>> {
        self.raw.try_lock_irqsave().map(|state| IrqMutexGuard { mutex: self, state })
    }

    /// Mutable access without locking, through exclusive ownership.
    #[cfg(not(loom))]
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Mutable access without locking, through exclusive ownership.
    #[cfg(loom)]
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: `&mut self` excludes every other access to the data.
        unsafe { &mut *self.data_ptr() }
    }

    /// The protected data's address. Under loom every call is recorded as a mutable
    /// access, which loom checks against concurrent ones.
    #[inline]
    fn data_ptr(&self) -> *mut T {
        #[cfg(loom)]
        return self.data.with_mut(|p| p);
        #[cfg(not(loom))]
        return self.data.get();
    }

    /// The protected value, consuming the mutex.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<R: RawIrqLock, T: Default> Default for IrqMutex<R, T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

/// Proof that an [`IrqMutex`] is held; unlocks and restores interrupts on drop.
pub struct IrqMutexGuard<'a, R: RawIrqLock, T> {
    mutex: &'a IrqMutex<R, T>,
    state: IrqState,
}

impl<R: RawIrqLock, T> Deref for IrqMutexGuard<'_, R, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the lock is held, so no other reference
        // to the data is live.
        unsafe { &*self.mutex.data_ptr() }
    }
}

impl<R: RawIrqLock, T> DerefMut for IrqMutexGuard<'_, R, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only access through the guard.
        unsafe { &mut *self.mutex.data_ptr() }
    }
}

impl<R: RawIrqLock, T> Drop for IrqMutexGuard<'_, R, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the guard was created by a successful lock call that returned
        // `self.state`, and is dropped exactly once.
        unsafe { self.mutex.raw.unlock_irqrestore(self.state) }
    }
}

/// Several [`IrqMutex`] guards held at once, released in reverse order of acquisition.
///
/// Each guard restores the interrupt state its own `lock_irqsave` saved, so guards must
/// be dropped last-in first-out: releasing the first lock first would turn interrupts
/// back on while the others are still held (a deadlock as soon as an interrupt handler
/// maps on this CPU). A `Vec` of guards drops front to back; this type does it right.
/// Capacity is reserved before any lock is taken, so nothing allocates with interrupts
/// off.
///
/// # Context
/// Process context (allocates the guard array before locking).
pub struct IrqGuards<'a, R: RawIrqLock, T> {
    guards: alloc::vec::Vec<IrqMutexGuard<'a, R, T>>,
}

impl<'a, R: RawIrqLock, T> IrqGuards<'a, R, T> {
    /// Locks every mutex of `mutexes` in order.
    pub fn lock_all<I>(mutexes: I) -> Self
    where
        I: IntoIterator<Item = &'a IrqMutex<R, T>>,
        I::IntoIter: ExactSizeIterator,
    {
        let it = mutexes.into_iter();
        let mut guards = alloc::vec::Vec::with_capacity(it.len());
        for m in it {
            guards.push(m.lock());
        }
        Self { guards }
    }

    /// The guards, in acquisition order.
    pub fn iter(&self) -> impl Iterator<Item = &IrqMutexGuard<'a, R, T>> {
        self.guards.iter()
    }

    /// The guards, mutably, in acquisition order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut IrqMutexGuard<'a, R, T>> {
        self.guards.iter_mut()
    }

    /// Number of guards held.
    pub fn len(&self) -> usize {
        self.guards.len()
    }

    /// Whether no guard is held.
    pub fn is_empty(&self) -> bool {
        self.guards.is_empty()
    }
}

impl<R: RawIrqLock, T> core::ops::Index<usize> for IrqGuards<'_, R, T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.guards[i]
    }
}

impl<R: RawIrqLock, T> Drop for IrqGuards<'_, R, T> {
    fn drop(&mut self) {
        while let Some(g) = self.guards.pop() {
            drop(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    /// Records the interrupt "enabled" state like a CPU would.
    struct RecIrq;
    std::thread_local! {
        static IRQS_ON: core::cell::Cell<bool> = const { core::cell::Cell::new(true) };
    }
    impl IrqControl for RecIrq {
        fn save_disable() -> IrqState {
            let was = IRQS_ON.with(|c| c.replace(false));
            IrqState(usize::from(was))
        }
        fn restore(state: IrqState) {
            IRQS_ON.with(|c| c.set(state.0 == 1));
        }
    }

    #[test]
    fn irq_guards_release_lifo_and_keep_irqs_off_until_the_last() {
        let ms: std::vec::Vec<IrqMutex<SpinIrqLock<RecIrq>, u32>> = (0..4).map(IrqMutex::new).collect();
        {
            let g = IrqGuards::lock_all(&ms);
            assert_eq!(g.len(), 4);
            assert_eq!(g[2], 2);
            assert!(!IRQS_ON.with(core::cell::Cell::get));
        }
        assert!(IRQS_ON.with(core::cell::Cell::get), "interrupts must be back on after the last release");
        // A Vec of guards drops front to back: interrupts come back on while three locks
        // are still held. This is the bug IrqGuards exists to prevent.
        let v: std::vec::Vec<_> = ms.iter().map(IrqMutex::lock).collect();
        let mut v = v.into_iter();
        drop(v.next());
        assert!(IRQS_ON.with(core::cell::Cell::get), "front-to-back release re-enables interrupts too early");
        drop(v);
    }

    #[test]
    fn spin_irq_lock_excludes() {
        let m: Arc<IrqMutex<SpinIrqLock<NoIrq>, u64>> = Arc::new(IrqMutex::new(0));
        let hs: std::vec::Vec<_> = (0..2)
            .map(|_| {
                let m = Arc::clone(&m);
                thread::spawn(move || {
                    for _ in 0..20_000 {
                        *m.lock() += 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*m.lock(), 40_000);
        let g = m.lock();
        assert!(m.try_lock().is_none());
        drop(g);
        assert!(m.try_lock().is_some());
    }
}
