//! Test-only access to the real sample files in `tests/data/<class>/` (see its README).

use std::path::PathBuf;

fn dir(class: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(class)
}

/// Every sample of a class as (file name, bytes), sorted by name; panics if there are none.
pub(crate) fn samples(class: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir(class))
        .unwrap_or_else(|e| panic!("tests/data/{class}: {e}"))
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no samples in tests/data/{class}");
    v
}

/// The largest sample of a class.
pub(crate) fn sample(class: &str) -> Vec<u8> {
    samples(class)
        .into_iter()
        .map(|(_, b)| b)
        .max_by_key(|b| b.len())
        .unwrap()
}
