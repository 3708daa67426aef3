//! One magazine: a fixed-capacity stack of free shared buffers (Bonwick's "rounds").

use alloc::boxed::Box;

/// A magazine: an array of free shared buffers of one size class, allocated once at init
/// with its largest capacity and never resized.
///
/// The *active* capacity is a separate limit chosen by the layer's adaptive policy
/// (Bonwick's magazine size), so growing the magazine size never allocates: push and pop
/// only move the fill level inside the preallocated array. Slots are `Option<T>`, so a
/// buffer handle (`bounce_pools::FreeBuffer`: an `Arc` and an index) moves in and out
/// without any reference-count traffic.
pub struct Rounds<T> {
    slots: Box<[Option<T>]>,
    len: usize,
}

impl<T> Rounds<T> {
    /// An empty magazine able to hold up to `capacity` buffers.
    ///
    /// # Context
    /// Allocates: init only.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { slots: (0..capacity).map(|_| None).collect(), len: 0 }
    }

    /// Buffers held.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no buffer.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The array's size: the most buffers it can ever hold.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Whether it holds `limit` buffers or more (or is at its array capacity).
    #[inline]
    pub fn is_full_at(&self, limit: usize) -> bool {
        self.len >= limit.min(self.slots.len())
    }

    /// Takes the most recently pushed buffer (LIFO: the cache-warmest one).
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        self.len = self.len.checked_sub(1)?;
        self.slots[self.len].take()
    }

    /// Pushes a buffer if fewer than `limit` are held.
    ///
    /// # Errors
    /// Gives `buf` back when the magazine is full at `limit`.
    #[inline]
    pub fn push(&mut self, buf: T, limit: usize) -> Result<(), T> {
        if self.is_full_at(limit) {
            return Err(buf);
        }
        self.slots[self.len] = Some(buf);
        self.len += 1;
        Ok(())
    }

    /// The buffers held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.slots[..self.len].iter().flatten()
    }
}

impl<T> core::fmt::Debug for Rounds<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rounds").field("len", &self.len).field("capacity", &self.slots.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn push_pop_respects_limit_and_is_lifo() {
        let mut m = Rounds::with_capacity(4);
        assert!(m.is_empty());
        assert_eq!(m.push(1, 2), Ok(()));
        assert_eq!(m.push(2, 2), Ok(()));
        assert_eq!(m.push(3, 2), Err(3));
        assert!(m.is_full_at(2));
        assert!(!m.is_full_at(3));
        assert_eq!(m.push(3, 100), Ok(()));
        assert_eq!(m.push(4, 100), Ok(()));
        assert_eq!(m.push(5, 100), Err(5), "array capacity bounds any limit");
        assert_eq!(m.pop(), Some(4));
        assert_eq!(m.iter().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!((m.len(), m.capacity()), (3, 4));
        while m.pop().is_some() {}
        assert_eq!(m.pop(), None);
        assert!(m.is_empty());
    }
}
