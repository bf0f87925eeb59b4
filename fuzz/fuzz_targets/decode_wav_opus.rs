//! Decoding arbitrary bytes as a wav_opus payload (lossy codec) must give Err or exactly raw_len bytes, never a panic.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::decode(idcfs::codec::WAV_OPUS, data));
