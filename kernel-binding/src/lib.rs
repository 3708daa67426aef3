//! The C ABI and kernel binding.
#![no_std]
