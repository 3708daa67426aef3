//! The magazine strategy.
#![no_std]
#![forbid(unsafe_code)]
