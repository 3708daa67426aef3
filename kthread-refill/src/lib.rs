//! The kccd refill engine.
#![no_std]
