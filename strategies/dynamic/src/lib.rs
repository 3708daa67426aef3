//! The dynamic strategy.
#![no_std]
#![forbid(unsafe_code)]
