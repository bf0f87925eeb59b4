//! Decoding arbitrary bytes as a DEFLATE_TOKENS (codec 8) payload must give Err or exactly
//! raw_len bytes, never a panic (its decoder is this crate's own code: no fences).
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::decode(idcfs::codec::DEFLATE_TOKENS, data));
