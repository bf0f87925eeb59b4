//! classify_file must accept any head and length without panicking, and be deterministic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64 + u64::from(data.first().copied().unwrap_or(0));
    let a = idcfs::classify::classify_file(data, len);
    assert_eq!(a, idcfs::classify::classify_file(data, len));
});
