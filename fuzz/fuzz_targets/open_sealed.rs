//! Sealed (encrypted) records: arbitrary bytes opened with a fixed key must give a record or
//! an error, never a panic; a valid sealed record built from the input must open exactly,
//! and any single byte changed in it (checksum recomputed, so it is no torn write) must be
//! refused, as must the record at any other location.
#![no_main]

use idcfs::crypto::StoreKey;
use idcfs::store::{encode, BlockHeader, RawHeader, HEADER_LEN};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = StoreKey::from_master(&[7; 32], [1; 16], 1);
    // Arbitrary bytes as a sealed record.
    if let Ok(h) = RawHeader::parse(data) {
        if data.len() as u64 >= h.total_len() {
            let _ = h.finish(
                &data[h.header_len()..h.total_len() as usize],
                Some(&key),
                1,
                0,
            );
        }
    }
    // A real sealed record of the input, then one flipped byte.
    if data.len() < 3 {
        return;
    }
    let split = (data[0] as usize).min(data.len() - 2) + 1;
    let (meta, payload) = data[2..].split_at((split - 1).min(data.len() - 2));
    let hdr = BlockHeader {
        codec: 1,
        params: 3,
        raw_len: payload.len() as u32,
        raw_hash: key.content_hash(payload),
    };
    let Ok(rec) = encode(9, meta, Some((&hdr, payload)), Some(&key), 2, 4096) else {
        return;
    };
    let h = RawHeader::parse(&rec).unwrap_or_else(|e| panic!("{e}"));
    let r = h
        .finish(&rec[HEADER_LEN..], Some(&key), 2, 4096)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.meta, meta);
    assert_eq!(r.block.as_ref().map(|(_, p)| &p[..]), Some(payload));
    assert!(h.finish(&rec[HEADER_LEN..], Some(&key), 2, 4097).is_err());
    let at = data[1] as usize * 7 % rec.len();
    if (64..80).contains(&at) {
        return;
    }
    let mut bad = rec.clone();
    bad[at] ^= 0x01;
    let mut hs = blake3::Hasher::new();
    hs.update(&bad[..64]);
    hs.update(&bad[HEADER_LEN..]);
    let sum = hs.finalize();
    bad[64..80].copy_from_slice(&sum.as_bytes()[..16]);
    let opened = RawHeader::parse(&bad).and_then(|h| {
        if h.total_len() as usize != bad.len() {
            return Err(idcfs::store::StoreError::Corrupt("length".into()));
        }
        h.finish(&bad[HEADER_LEN..], Some(&key), 2, 4096)
    });
    assert!(opened.is_err(), "a changed byte at {at} was not detected");
});
