//! Decoding arbitrary bytes as an xz_recode payload (xz streams rebuilt by liblzma's encoder, members by codecs 2 and 3) must give Err or exactly raw_len bytes, never a panic.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::decode(idcfs::codec::XZ_RECODE, data));
