//! Decoding arbitrary bytes as an image_avif payload (lossy AV1 codec) must give Err or exactly raw_len bytes, never a panic.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::decode(idcfs::codec::IMAGE_AVIF, data));
