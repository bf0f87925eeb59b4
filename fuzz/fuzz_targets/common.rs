//! Shared by the decode targets: input = 3-byte little-endian raw length, then the payload.
//!
//! Decoders fence third-party code with `catch_unwind` and turn its panics into `Err`, which is
//! their contract. libfuzzer-sys aborts on any panic through its hook, even a caught one, so the
//! hook is silenced here unless IDCFS_FUZZ_STRICT is set (to hunt panics inside the fences);
//! a panic that escapes `decode` still aborts, because libfuzzer-sys catches the unwind.

use idcfs::codec::{CodecId, Registry};

#[allow(dead_code)] // each target uses one of the entry points
pub fn decode(id: CodecId, data: &[u8]) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("IDCFS_FUZZ_STRICT").is_none() {
            std::panic::set_hook(Box::new(|_| {}));
        }
    });
    if data.len() < 3 {
        return;
    }
    check(id, &data[3..], &data[..3], 0);
}

/// For codecs whose params matter: input = 3-byte raw length, 1 byte that `params` maps to
/// the codec's params (into their valid range, so the fuzzer spends its time in the decoder),
/// then the payload.
#[allow(dead_code)]
pub fn decode_with(id: CodecId, data: &[u8], params: fn(u8) -> u32) {
    if data.len() < 4 {
        return;
    }
    check(id, &data[4..], &data[..3], params(data[3]));
}

fn check(id: CodecId, payload: &[u8], len: &[u8], params: u32) {
    let raw_len = u32::from_le_bytes([len[0], len[1], len[2], 0]) as usize;
    let reg = Registry::default();
    if let Ok(out) = reg.decode(id, payload, params, raw_len) {
        assert_eq!(out.len(), raw_len);
    }
}
