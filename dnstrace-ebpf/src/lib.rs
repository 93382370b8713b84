#![no_std]
//! Lets the userspace crate declare a build-dependency on this crate, so that
//! cargo rebuilds it when the kernel programs change. The programs are in main.rs.
