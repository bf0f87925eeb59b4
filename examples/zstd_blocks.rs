//! What btrfs `compress-force=zstd:3` would store for a tree of files, per top-level directory:
//! every 128 KiB block of every file compressed on its own with zstd -3, kept only when it saves
//! (else stored raw), as btrfs does. The baseline of `benches/corpus.sh`.
//! Usage: cargo run --release --example zstd_blocks -- DIR

#[path = "common/mod.rs"]
mod common;
use common::walk;
use std::collections::BTreeMap;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: zstd_blocks DIR")?);
    let mut files = Vec::new();
    walk(&root, &mut files)?;
    let mut by: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&root)?;
        let top = rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        if top == "MANIFEST.sha256" {
            continue;
        }
        let data = std::fs::read(&f)?;
        let e = by.entry(top).or_default();
        e.0 += 1;
        e.1 += data.len() as u64;
        for block in data.chunks(128 << 10) {
            let z = zstd::bulk::compress(block, 3)?;
            e.2 += z.len().min(block.len()) as u64;
        }
    }
    let (mut n, mut l, mut s) = (0, 0, 0);
    println!("| dir | files | bytes | zstd -3 per 128 KiB block |");
    println!("|---|---:|---:|---:|");
    for (d, (c, a, b)) in &by {
        println!("| {d} | {c} | {a} | {b} |");
        n += c;
        l += a;
        s += b;
    }
    println!("| all | {n} | {l} | {s} |");
    Ok(())
}
