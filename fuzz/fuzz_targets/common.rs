//! Shared by the decode targets: input = 3-byte little-endian raw length, then the payload.
//!
//! Decoders fence third-party code with `catch_unwind` and turn its panics into `Err`, which is
//! their contract. libfuzzer-sys aborts on any panic through its hook, even a caught one, so the
//! hook is silenced here unless IDCFS_FUZZ_STRICT is set (to hunt panics inside the fences);
//! a panic that escapes `decode` still aborts, because libfuzzer-sys catches the unwind.

use idcfs::codec::{CodecId, Registry};

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
    let raw_len = u32::from_le_bytes([data[0], data[1], data[2], 0]) as usize;
    let reg = Registry::default();
    if let Ok(out) = reg.decode(id, &data[3..], 0, raw_len) {
        assert_eq!(out.len(), raw_len);
    }
}
