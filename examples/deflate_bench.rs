//! Decode speed of the deflate recoder (codec 8, `deflate-tokens`) on real files, for profiling
//! and tuning its decoder: every gzip, zip and PNG file under DIR is encoded once (payloads are
//! cached in CACHE, keyed by file name and size, so that decoder changes that keep the format
//! can be re-measured without re-encoding), then decoded `--rounds=N` times and checked.
//! Reports per class: files taken, bytes, payload bytes, decode MB/s of the original file per
//! core (thread CPU time, because the machine is shared).
//!
//! Usage: `cargo run --release --example deflate_bench -- DIR [--cache=DIR] [--level=N] [--rounds=N]`

#[path = "common/mod.rs"]
mod common;
use common::{cpu_now, walk};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use idcfs::classify::{classify_file, ContentClass, MAX_HEAD};
use idcfs::codec::{EncodeParams, Registry, DEFLATE_TOKENS};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or_else(|| PathBuf::from("/var/tmp/corpus"), PathBuf::from);
    let opt = |k: &str| args.iter().find_map(|a| a.strip_prefix(k));
    let cache = opt("--cache=").map(PathBuf::from);
    let level: i32 = opt("--level=").and_then(|l| l.parse().ok()).unwrap_or(9);
    let rounds: usize = opt("--rounds=").and_then(|l| l.parse().ok()).unwrap_or(1);
    let mut files = Vec::new();
    walk(&dir, &mut files)?;
    files.sort();
    let reg = Registry::default();
    let codec = reg.get(DEFLATE_TOKENS)?;
    // class -> (files, taken, bytes taken, payload bytes, encode time, decode time)
    let mut rows: BTreeMap<&str, (usize, usize, u64, u64, Duration, Duration)> = BTreeMap::new();
    let mut bad = 0;
    for path in &files {
        let data = std::fs::read(path)?;
        let class = classify_file(&data[..data.len().min(MAX_HEAD)], data.len() as u64);
        if !matches!(
            class,
            ContentClass::Gzip | ContentClass::Zip | ContentClass::Png
        ) || data.is_empty()
        {
            continue;
        }
        let row = rows.entry(class.name()).or_default();
        row.0 += 1;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let key = cache
            .as_ref()
            .zip(name)
            .map(|(c, n)| c.join(format!("{n}.{}.{level}", data.len())));
        let payload = match key.as_ref().and_then(|k| std::fs::read(k).ok()) {
            Some(p) if p.is_empty() => continue,
            Some(p) => p,
            None => {
                let mut out = Vec::new();
                let t = cpu_now();
                let r = codec.encode(&data, &EncodeParams::level(level), &mut out);
                row.4 += cpu_now() - t;
                if r.is_err() {
                    out.clear();
                }
                if let Some(k) = &key {
                    if let Some(d) = k.parent() {
                        std::fs::create_dir_all(d)?;
                    }
                    std::fs::write(k, &out)?;
                }
                if out.is_empty() {
                    continue;
                }
                out
            }
        };
        let mut back = Vec::new();
        let t = cpu_now();
        for _ in 0..rounds {
            codec.decode(&payload, 0, data.len(), &mut back)?;
        }
        row.5 += cpu_now() - t;
        if back != data {
            bad += 1;
            eprintln!("MISMATCH {}", path.display());
        }
        row.1 += 1;
        row.2 += data.len() as u64;
        row.3 += payload.len() as u64;
    }
    println!("class   files  taken        bytes      payload  saved  enc MB/s  dec MB/s");
    for (class, r) in &rows {
        let mbs = |d: Duration, n: usize| r.2 as f64 * n as f64 / 1e6 / d.as_secs_f64().max(1e-9);
        println!(
            "{class:<6} {:>6} {:>6} {:>12} {:>12} {:>5.1}% {:>9.2} {:>9.2}",
            r.0,
            r.1,
            r.2,
            r.3,
            100.0 * (1.0 - r.3 as f64 / r.2.max(1) as f64),
            if r.4.is_zero() { 0.0 } else { mbs(r.4, 1) },
            mbs(r.5, rounds),
        );
    }
    if bad > 0 {
        return Err(format!("{bad} files did not round-trip").into());
    }
    Ok(())
}
