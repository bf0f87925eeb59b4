//! Decoding arbitrary bytes as an LZMA2+BCJ payload (any filter, any dictionary size the
//! decoder accepts, and some it refuses) must give Err or exactly raw_len bytes, never a panic.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::decode_with(idcfs::codec::EXEC, data, |b| {
        u32::from(b % 4) | (11 + u32::from(b >> 4)) << 8
    })
});
