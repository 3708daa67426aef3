//! The legacy strategy.
#![no_std]
#![forbid(unsafe_code)]
