//! Arbitrary bytes as a pack record: header parsing, checksum verification and metadata
//! decoding (both record versions) must give a record or an error, never a panic; metadata
//! that decodes must re-encode (version 2) to bytes that decode to the same ops.
#![no_main]

use idcfs::meta::{decode_ops, encode_ops};
use idcfs::store::RawHeader;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The metadata decoders on their own (the checksum would stop most inputs before them).
    if let Some((&v, meta)) = data.split_first() {
        if let Ok(ops) = decode_ops(v % 3, meta) {
            let again = decode_ops(2, &encode_ops(&ops));
            assert_eq!(again.ok().as_ref(), Some(&ops));
        }
    }
    if let Ok(h) = RawHeader::parse(data) {
        let hl = h.header_len();
        if data.len() as u64 >= h.total_len() {
            if let Ok(r) = h.finish(&data[hl..h.total_len() as usize], None, 1, 0) {
                let _ = decode_ops(r.version, &r.meta);
            }
        }
    }
});
