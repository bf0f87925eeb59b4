//! Measures what the format-aware codecs buy over a directory of real files (default
//! /var/tmp/corpus, built by ../shared/corpus/make-dev-corpus.sh), per content class as
//! `classify_file` sees it (never by file name or directory):
//!
//! - `zstd3/128K`: every file cut into 128 KiB blocks, each zstd -3, kept raw when that does not
//!   shrink it (what btrfs compress-force=zstd:3 does, before its 4 KiB sector rounding);
//! - `best`: per file, the smallest of what idcfs tries at level max (`engine::choice`): the
//!   whole-file codec for its class (lepton for JPEG, preflate for gzip/zip/PNG, FLAC for PCM
//!   WAV, LZMA2+BCJ for executables), the trained dictionary for small text/source/JSON, and
//!   zstd -19 with a long window, or raw;
//! - encode MB/s over all candidates tried (what a recompression pass costs), decode MB/s of
//!   the chosen form, both on one thread of the caller (lepton uses its own small pool).
//!
//! Every chosen form is decoded and compared with the file; a mismatch is reported and fails.
//!
//! With `--deflate` it instead compares, on the gzip, zip and PNG files only, the two deflate
//! re-encoders (preflate, codec 3, left out with `--no-preflate`; deflate-tokens, codec 8)
//! with zstd -19 of the file: stored bytes (a file a codec refuses counts as its zstd -19 or
//! raw size), % saved, and encode / decode MB/s of the original bytes over the files the codec
//! took, every decode checked against the file. `--level=N` is the encode level handed to the
//! codecs (default 19, what recompression at level max uses).
//!
//! Usage: `cargo run --release --example codec_ratio -- [DIR] [--confusion] [--verbose] [--classify-only] [--dump-seeds=DIR] [--deflate [--no-preflate] [--level=N]]`

#[path = "common/mod.rs"]
mod common;
use common::walk;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use idcfs::classify::{classify_file, ContentClass, MAX_HEAD};
use idcfs::codec::{
    CodecId, EncodeParams, Registry, DEFLATE, EXEC, FLAC, JPEG, RAW, ZSTD, ZSTD_DICT, ZSTD_LONG,
};
use idcfs::engine::choice::{candidates, Stage, Tuning};
use idcfs::policy::Level;

const BLOCK: usize = 128 << 10;

#[derive(Default)]
struct Row {
    files: usize,
    bytes: u64,
    zstd3: u64,
    best: u64,
    enc: Duration,
    dec: Duration,
    /// How many files each codec won.
    wins: BTreeMap<&'static str, usize>,
}

fn zstd_blocks(data: &[u8], level: i32) -> std::io::Result<u64> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    let mut total = 0u64;
    for b in data.chunks(BLOCK) {
        let z = c.compress(b)?;
        total += z.len().min(b.len()) as u64;
    }
    Ok(total)
}

/// zstd -19 with the window sized to the file (up to 128 MiB) and long-distance matching for
/// big files: one frame any zstd decoder (and the ZSTD codec) reads.
fn zstd19_long(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(19)?;
    let wlog = (usize::BITS - data.len().max(1 << 10).leading_zeros()).clamp(10, 27);
    c.set_parameter(CParameter::WindowLog(wlog))?;
    if data.len() > 8 << 20 {
        c.set_parameter(CParameter::EnableLongDistanceMatching(true))?;
    }
    c.compress(data)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let confusion = args.iter().any(|a| a == "--confusion");
    let verbose = args.iter().any(|a| a == "--verbose");
    // Only classify (for checking the classifier against a labelled tree; implies --confusion).
    let classify_only = args.iter().any(|a| a == "--classify-only");
    let confusion = confusion || classify_only;
    // Write each chosen format-codec payload as a fuzz seed: 3-byte LE raw length + payload
    // (the input layout of the fuzz/ decode targets), in DIR/<codec name>/.
    let dump = args
        .iter()
        .find_map(|a| a.strip_prefix("--dump-seeds="))
        .map(PathBuf::from);
    let dir = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or_else(|| PathBuf::from("/var/tmp/corpus"), PathBuf::from);
    let mut files = Vec::new();
    walk(&dir, &mut files)?;
    files.sort();
    if args.iter().any(|a| a == "--deflate") {
        let preflate = !args.iter().any(|a| a == "--no-preflate");
        let level = args
            .iter()
            .find_map(|a| a.strip_prefix("--level="))
            .and_then(|l| l.parse().ok())
            .unwrap_or(19);
        return deflate_report(&files, preflate, verbose, level);
    }
    let reg = Registry::default();
    let mut rows: BTreeMap<ContentClass, Row> = BTreeMap::new();
    let mut matrix: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    let mut mismatches = 0;
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();

    for path in &files {
        let data = std::fs::read(path)?;
        let class = classify_file(&data[..data.len().min(MAX_HEAD)], data.len() as u64);
        if confusion {
            let top = path
                .strip_prefix(&dir)
                .ok()
                .and_then(|p| p.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            *matrix.entry((top, class.name())).or_default() += 1;
            if classify_only {
                continue;
            }
        }
        let row = rows.entry(class).or_default();
        row.files += 1;
        row.bytes += data.len() as u64;
        row.zstd3 += zstd_blocks(&data, 3)?;

        // Candidates: (codec, params, payload). Raw is always there. What the filesystem tries
        // at level max: zstd -19 (long window), the class's whole-file codec, the class's
        // dictionary for small files.
        let mut best: (CodecId, u32, Vec<u8>) = (RAW, 0, Vec::new());
        let mut best_len = data.len();
        let t = Instant::now();
        if !data.is_empty() {
            let z = zstd19_long(&data)?;
            if z.len() < best_len {
                best_len = z.len();
                best = (ZSTD, 0, z);
            }
        }
        let size = data.len() as u64;
        // What recompression at level max lists (`engine::choice`), less the zstd variants
        // measured above.
        let policy = idcfs::policy::Effective {
            level: Level::Max,
            ..Default::default()
        };
        let avail = |id| reg.available(id);
        let tries: Vec<(CodecId, u32, i32)> = candidates(
            Some(class),
            &policy,
            size,
            Stage::Recompress,
            &Tuning::default(),
            &avail,
        )
        .into_iter()
        .filter(|c| c.codec != ZSTD && c.codec != ZSTD_LONG)
        .map(|c| (c.codec, c.model, c.level))
        .collect();
        for (id, model, level) in tries {
            let mut out = Vec::new();
            let p = EncodeParams { level, model };
            match reg.get(id)?.encode(&data, &p, &mut out) {
                Ok(params) if out.len() < best_len => {
                    best_len = out.len();
                    best = (id, params, out);
                }
                Ok(_) | Err(idcfs::codec::CodecError::NotWorthIt) => {}
                Err(e) => {
                    if verbose {
                        eprintln!("{}: {}: {e}", reg.name(id), path.display());
                    }
                    let key = format!("{}: {e}", reg.name(id));
                    let key: String = key.chars().take(90).collect();
                    *refusals.entry(key).or_default() += 1;
                }
            }
        }
        row.enc += t.elapsed();
        let t = Instant::now();
        let back = if best.0 == RAW {
            data.clone()
        } else {
            reg.decode(best.0, &best.2, best.1, data.len())?
        };
        row.dec += t.elapsed();
        if back != data {
            mismatches += 1;
            eprintln!("MISMATCH {}: {}", reg.name(best.0), path.display());
        }
        if let (Some(d), true) = (&dump, best.0 > ZSTD && data.len() < 1 << 24) {
            let d = d.join(reg.name(best.0));
            std::fs::create_dir_all(&d)?;
            // The fuzz targets' input layout (fuzz/fuzz_targets/common.rs): 3-byte length,
            // for codecs with params one byte that the target maps back to them, payload.
            let mut seed = (data.len() as u32).to_le_bytes()[..3].to_vec();
            match best.0 {
                ZSTD_DICT => seed.push((best.1 & 0xffff).saturating_sub(1) as u8),
                EXEC => seed.push((best.1 & 0xff | ((best.1 >> 8).saturating_sub(11)) << 4) as u8),
                _ => {}
            }
            seed.extend_from_slice(&best.2);
            let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
            std::fs::write(d.join(name), seed)?;
        }
        row.best += best_len as u64;
        *row.wins.entry(codec_label(best.0)).or_default() += 1;
    }

    println!("corpus: {} ({} files)\n", dir.display(), files.len());
    println!(
        "{:<15} {:>6} {:>12} {:>12} {:>12} {:>7} {:>8} {:>8} {:>8}  chosen",
        "class",
        "files",
        "bytes",
        "zstd3/128K",
        "best",
        "vs orig",
        "vs zstd3",
        "enc MB/s",
        "dec MB/s"
    );
    let mut total = Row::default();
    for (class, r) in &rows {
        print_row(class.name(), r);
        total.files += r.files;
        total.bytes += r.bytes;
        total.zstd3 += r.zstd3;
        total.best += r.best;
        total.enc += r.enc;
        total.dec += r.dec;
        for (k, v) in &r.wins {
            *total.wins.entry(k).or_default() += v;
        }
    }
    print_row("TOTAL", &total);
    if !refusals.is_empty() {
        println!("\nformat codec refusals (file falls back to zstd -19 or raw):");
        for (k, v) in &refusals {
            println!("  {v:5}  {k}");
        }
    }
    if confusion {
        println!("\ncorpus dir -> class:");
        for ((dir, class), n) in &matrix {
            println!("  {dir:<12} {class:<15} {n}");
        }
    }
    if mismatches > 0 {
        return Err(format!("{mismatches} files did not round-trip").into());
    }
    Ok(())
}

fn codec_label(id: CodecId) -> &'static str {
    match id {
        RAW => "raw",
        ZSTD => "zstd19",
        JPEG => "lepton",
        DEFLATE => "preflate",
        FLAC => "flac",
        EXEC => "lzma2-bcj",
        ZSTD_DICT => "zstd-dict",
        _ => "other",
    }
}

fn print_row(name: &str, r: &Row) {
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            100.0 * (1.0 - a as f64 / b as f64)
        }
    };
    let mbs = |d: Duration| r.bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9);
    let wins: Vec<String> = r.wins.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "{:<15} {:>6} {:>12} {:>12} {:>12} {:>6.1}% {:>7.1}% {:>8.1} {:>8.1}  {}",
        name,
        r.files,
        r.bytes,
        r.zstd3,
        r.best,
        pct(r.best, r.bytes),
        pct(r.best, r.zstd3),
        mbs(r.enc),
        mbs(r.dec),
        wins.join(", ")
    );
}

#[derive(Default)]
struct DeflateCol {
    /// Files the codec took, their bytes, what it stored for them.
    took: usize,
    took_bytes: u64,
    took_stored: u64,
    /// Stored bytes over all files of the class (zstd -19 or raw where the codec refused).
    stored: u64,
    enc: Duration,
    dec: Duration,
}

/// Codec 3 vs codec 8 vs zstd -19 on the deflate containers (see the module doc).
fn deflate_report(
    files: &[PathBuf],
    preflate: bool,
    verbose: bool,
    level: i32,
) -> Result<(), Box<dyn std::error::Error>> {
    use idcfs::codec::DEFLATE_TOKENS;
    let reg = Registry::default();
    let mut codecs = vec![(DEFLATE_TOKENS, "deflate-tokens")];
    if preflate {
        codecs.push((DEFLATE, "preflate"));
    }
    // class -> (files, bytes, zstd19 bytes, zstd19 enc, zstd19 dec, per-codec columns)
    type ClassRow = (usize, u64, u64, Duration, Duration, Vec<DeflateCol>);
    let mut rows: BTreeMap<&'static str, ClassRow> = BTreeMap::new();
    let mut mismatches = 0;
    for path in files {
        let data = std::fs::read(path)?;
        let class = classify_file(&data[..data.len().min(MAX_HEAD)], data.len() as u64);
        if !matches!(
            class,
            ContentClass::Gzip | ContentClass::Zip | ContentClass::Png
        ) || data.is_empty()
        {
            continue;
        }
        let row = rows.entry(class.name()).or_insert_with(|| {
            (
                0,
                0,
                0,
                Duration::ZERO,
                Duration::ZERO,
                codecs.iter().map(|_| DeflateCol::default()).collect(),
            )
        });
        row.0 += 1;
        row.1 += data.len() as u64;
        let t = CpuTimer::now();
        let z = zstd19_long(&data)?;
        row.3 += t.elapsed();
        let t = CpuTimer::now();
        let zb = zstd::bulk::decompress(&z, data.len())?;
        row.4 += t.elapsed();
        if zb != data {
            return Err("zstd round trip".into());
        }
        let fallback = z.len().min(data.len()) as u64;
        row.2 += fallback;
        let mut line = format!("{} {} zstd19 {}", path.display(), data.len(), z.len());
        for (i, &(id, name)) in codecs.iter().enumerate() {
            let col = &mut row.5[i];
            let mut out = Vec::new();
            let t = CpuTimer::now();
            let r = reg
                .get(id)?
                .encode(&data, &EncodeParams::level(level), &mut out);
            let enc = t.elapsed();
            match r {
                Ok(params) => {
                    let t = CpuTimer::now();
                    let back = reg.decode(id, &out, params, data.len())?;
                    col.dec += t.elapsed();
                    if back != data {
                        mismatches += 1;
                        eprintln!("MISMATCH {name}: {}", path.display());
                    }
                    col.enc += enc;
                    col.took += 1;
                    col.took_bytes += data.len() as u64;
                    col.took_stored += out.len() as u64;
                    col.stored += (out.len() as u64).min(fallback);
                    line += &format!(" {name} {}", out.len());
                }
                Err(e) => {
                    col.stored += fallback;
                    line += &format!(" {name} ({e})");
                }
            }
        }
        if verbose {
            println!("{line}");
        }
    }
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            100.0 * (1.0 - a as f64 / b as f64)
        }
    };
    let mbs = |b: u64, d: Duration| b as f64 / 1e6 / d.as_secs_f64().max(1e-9);
    println!(
        "{:<6} {:>5} {:>11} | {:>11} {:>6} {:>7} {:>7} | codec: files took, stored (fallback zstd19), saved, saved on the files it took, enc/dec MB/s of original bytes per core (thread CPU time)",
        "class", "files", "bytes", "zstd19", "saved", "enc", "dec"
    );
    for (class, r) in &rows {
        println!(
            "{:<6} {:>5} {:>11} | {:>11} {:>5.1}% {:>7.1} {:>7.1}",
            class,
            r.0,
            r.1,
            r.2,
            pct(r.2, r.1),
            mbs(r.1, r.3),
            mbs(r.1, r.4)
        );
        for (i, &(_, name)) in codecs.iter().enumerate() {
            let c = &r.5[i];
            println!(
                "       {:<15} took {:>4}: {:>11} {:>5.1}%  (took {:>5.1}%)  enc {:>6.1}  dec {:>6.1}",
                name,
                c.took,
                c.stored,
                pct(c.stored, r.1),
                pct(c.took_stored, c.took_bytes),
                mbs(c.took_bytes, c.enc),
                mbs(c.took_bytes, c.dec)
            );
        }
    }
    if mismatches > 0 {
        return Err(format!("{mismatches} files did not round-trip").into());
    }
    Ok(())
}

/// This thread's CPU time: throughput per core even when other processes share the cores.
struct CpuTimer(Duration);

impl CpuTimer {
    fn now() -> CpuTimer {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        CpuTimer(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    fn elapsed(&self) -> Duration {
        CpuTimer::now().0.saturating_sub(self.0)
    }
}
