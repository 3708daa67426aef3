//! Formatting into fixed buffers (no allocation: messages are built on the map path and
//! in the panic handler) and copying text out to C buffers.

use core::ffi::c_char;
use core::fmt::{self, Write};

/// A NUL-terminated text buffer of `N` bytes (`N - 1` bytes of text). Writes past the
/// end are truncated on a UTF-8 character boundary.
pub struct FixedBuf<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> FixedBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self { bytes: [0; N], len: 0 }
    }

    /// Appends formatted text, truncating.
    pub fn write_args(&mut self, args: fmt::Arguments<'_>) {
        // `write_str` never fails; truncation is silent by design.
        let _ = self.write_fmt(args);
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only whole characters are ever copied in (see `write_str`).
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }

    /// The text as a C string: pointer to the NUL-terminated bytes and their length.
    pub fn as_c_str(&mut self) -> (*const c_char, usize) {
        if N > 0 {
            self.bytes[self.len] = 0;
        }
        (self.bytes.as_ptr().cast(), self.len)
    }

    /// Empties the buffer.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Bytes of text.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no text.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> Default for FixedBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Write for FixedBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N.saturating_sub(1).saturating_sub(self.len);
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// Copies `text` into `dst`, NUL-terminated and truncated on a character boundary
/// (nothing is written when `dst` is empty).
pub fn copy_into(text: &str, dst: &mut [c_char]) {
    let Some(room) = dst.len().checked_sub(1) else { return };
    let mut take = text.len().min(room);
    while !text.is_char_boundary(take) {
        take -= 1;
    }
    for (d, &b) in dst.iter_mut().zip(&text.as_bytes()[..take]) {
        *d = c_char::from_ne_bytes([b]);
    }
    dst[take] = 0;
}

/// Copies `text` into the C buffer `buf` of `len` bytes, NUL-terminated and truncated on
/// a character boundary (nothing is written when `buf` is NULL or `len` is 0).
///
/// # Safety
/// `buf` is NULL or valid for writes of `len` bytes.
pub unsafe fn copy_out(text: &str, buf: *mut c_char, len: usize) {
    if buf.is_null() || len == 0 {
        return;
    }
    // SAFETY: `buf` is non-NULL and valid for writes of `len` bytes (caller), and no
    // other reference to the caller's buffer exists while this slice lives.
    copy_into(text, unsafe { core::slice::from_raw_parts_mut(buf, len) });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_char_boundaries_and_terminates() {
        let mut b = FixedBuf::<6>::new();
        b.write_args(format_args!("ab{}", "é€x"));
        // 5 bytes of room: "ab" + "é" (2) = 4; "€" (3) does not fit.
        assert_eq!(b.as_str(), "abé");
        let (p, n) = b.as_c_str();
        assert_eq!(n, 4);
        // SAFETY: `p` points at `n + 1` initialised bytes inside `b`.
        assert_eq!(unsafe { *p.add(n) }, 0);
        b.clear();
        assert!(b.is_empty());
        let mut out = [0x55 as c_char; 4];
        // SAFETY: `out` has 4 writable bytes.
        unsafe { copy_out("hello", out.as_mut_ptr(), out.len()) };
        assert_eq!(out.map(|c| u8::try_from(c).unwrap()), *b"hel\0");
        // SAFETY: NULL is allowed.
        unsafe { copy_out("x", core::ptr::null_mut(), 8) };
    }
}
