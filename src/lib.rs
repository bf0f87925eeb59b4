//! idcfs — the intelligent data compression filesystem.
//!
//! Layers, each depending only on the ones below it:
//! ```text
//!   cli / daemon      command line, mounting, signals
//!   fuse              kernel requests -> engine calls (the only user of fuser)
//!   engine            POSIX semantics, write buffering, read cache, journal, compaction
//!   meta   classify   codec            store
//!   (redb index)      (pure functions) (pack files: ids and bytes only)
//! ```
//! Invariants: the pack files are the source of truth (the index can be rebuilt from them);
//! codecs and the store never import each other; only `error.rs` maps errors to errno.

pub mod classify;
pub mod cli;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod fuse;
pub mod meta;
pub mod neural;
pub mod policy;
pub mod store;
