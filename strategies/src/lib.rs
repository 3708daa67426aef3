//! The allocation strategies: legacy, dynamic, magazine.
#![no_std]
