//! Decoding arbitrary bytes as an image_learned payload (learned lossy codec; payload versions 1
//! and 2: predicted channels, adapted tables, deblocking) must give Err or exactly raw_len
//! bytes, never a panic. Without ONNX Runtime the integer reference decodes.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::decode(idcfs::codec::IMAGE_LEARNED, data));
