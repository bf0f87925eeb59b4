//! Decoding arbitrary bytes as a zstd-dict payload with any of the dictionaries must give Err
//! or exactly raw_len bytes, never a panic.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::decode_with(idcfs::codec::ZSTD_DICT, data, |b| 1 + u32::from(b) % 4)
});
