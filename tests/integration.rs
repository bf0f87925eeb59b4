//! The integration test binary: real FUSE mounts driven by std::fs, libc and ordinary tools.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

mod archive;
mod crash;
mod crypt;
mod disk;
mod formats;
mod golden;
mod lossy;
mod model;
mod objstore;
mod policy;
mod posix;
mod sim;
mod smallfiles;
mod space;
mod tools;
