//! Decoding arbitrary bytes as a context-mix (codec 9) payload must give Err or exactly
//! raw_len bytes, never a panic (the decoder is this crate's own code: no fences). Input: 2
//! bytes of raw length (small, so the fuzzer runs many inputs), 1 byte choosing the prior,
//! then the payload.
#![no_main]

use idcfs::codec::{Registry, CM};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let raw_len = u16::from_le_bytes([data[0], data[1]]) as usize;
    let params = 1 << 8 | (data[2] % 4) as u32;
    if let Ok(out) = Registry::default().decode(CM, &data[3..], params, raw_len) {
        assert_eq!(out.len(), raw_len);
    }
});
