//! Measures the PNG pixel coder (`codec::pixels`) over a directory of PNG files (default
//! /var/tmp/corpus): per file, joins the IDAT chunks, inflates them to the filtered scanlines,
//! encodes them with the pixel coder, decodes, and checks the result bit for bit.
//!
//! Prints: files, supported count, the IDAT deflate bytes of the supported files, the encoded
//! payload bytes, the saving, and encode/decode speed in MB/s (of filtered bytes and of PNG
//! file bytes), all on one thread.
//!
//! Usage: `cargo run --release --example png_pixels -- [DIR] [--verbose]`

#[path = "common/mod.rs"]
mod common;
use common::{cpu_now, walk};

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use idcfs::codec::pixels_bench;

/// The concatenated IDAT data of a PNG file, or None when its chunks do not parse.
fn idat(png: &[u8]) -> Option<Vec<u8>> {
    let mut pos = 8;
    let mut data = Vec::new();
    while pos + 12 <= png.len() {
        let len = u32::from_be_bytes(png[pos..pos + 4].try_into().ok()?) as usize;
        let kind = &png[pos + 4..pos + 8];
        let body = png.get(pos + 8..pos + 8 + len)?;
        if kind == b"IDAT" {
            data.extend_from_slice(body);
        }
        if kind == b"IEND" {
            break;
        }
        pos += 12 + len;
    }
    Some(data)
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let verbose = args.iter().any(|a| a == "--verbose");
    let dir = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "/var/tmp/corpus".to_string());
    let mut files = Vec::new();
    if let Err(e) = walk(Path::new(&dir), &mut files) {
        eprintln!("{dir}: {e}");
        std::process::exit(1);
    }
    files.retain(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")));
    files.sort();
    let (mut supported, mut mismatches) = (0usize, 0usize);
    let (mut idat_bytes, mut payload_bytes, mut raw_bytes, mut png_bytes) =
        (0u64, 0u64, 0u64, 0u64);
    let (mut enc_t, mut dec_t) = (Duration::ZERO, Duration::ZERO);
    let (mut enc_cpu, mut dec_cpu) = (Duration::ZERO, Duration::ZERO);
    let mut unsupported: std::collections::BTreeMap<String, usize> = Default::default();
    for f in &files {
        let Ok(png) = std::fs::read(f) else { continue };
        let Some(hdr) = pixels_bench::parse_ihdr(&png) else {
            *unsupported.entry("no IHDR".into()).or_default() += 1;
            continue;
        };
        let Some(z) = idat(&png) else {
            *unsupported.entry("bad chunks".into()).or_default() += 1;
            continue;
        };
        let mut filtered = Vec::new();
        if flate2::read::ZlibDecoder::new(&z[..])
            .read_to_end(&mut filtered)
            .is_err()
        {
            *unsupported.entry("bad zlib".into()).or_default() += 1;
            continue;
        }
        let t = Instant::now();
        let c = cpu_now();
        let payload = match pixels_bench::encode(&filtered, &png) {
            Ok(p) => p,
            Err(e) => {
                let key = format!("depth {} type {} interlace {}", hdr.2, hdr.3, hdr.4);
                if verbose {
                    println!("skip {}: {e}", f.display());
                }
                *unsupported.entry(key).or_default() += 1;
                continue;
            }
        };
        enc_t += t.elapsed();
        enc_cpu += cpu_now().saturating_sub(c);
        let t = Instant::now();
        let c = cpu_now();
        let back = pixels_bench::decode(&payload, &png, filtered.len());
        dec_t += t.elapsed();
        dec_cpu += cpu_now().saturating_sub(c);
        if !matches!(&back, Ok(b) if *b == filtered) {
            mismatches += 1;
            println!("MISMATCH {}", f.display());
            continue;
        }
        supported += 1;
        idat_bytes += z.len() as u64;
        payload_bytes += payload.len() as u64;
        raw_bytes += filtered.len() as u64;
        png_bytes += png.len() as u64;
        if verbose {
            println!(
                "{:>9} {:>9} {:>6.1}%  {}x{} d{} t{}  {}",
                z.len(),
                payload.len(),
                100.0 * (1.0 - payload.len() as f64 / z.len().max(1) as f64),
                hdr.0,
                hdr.1,
                hdr.2,
                hdr.3,
                f.display()
            );
        }
    }
    println!("files                 {}", files.len());
    println!("supported             {supported}");
    for (k, n) in &unsupported {
        println!("  unsupported         {n:>4}  {k}");
    }
    println!("mismatches            {mismatches}");
    println!("IDAT deflate bytes    {idat_bytes}");
    println!("pixel payload bytes   {payload_bytes}");
    println!(
        "saved vs IDAT         {:.1}%",
        100.0 * (1.0 - payload_bytes as f64 / idat_bytes.max(1) as f64)
    );
    println!("filtered (raw) bytes  {raw_bytes}");
    println!("PNG file bytes        {png_bytes}");
    println!(
        "encode MB/s           {:.1} raw, {:.1} PNG (wall); {:.1} raw, {:.1} PNG (thread CPU)",
        mbps(raw_bytes, enc_t),
        mbps(png_bytes, enc_t),
        mbps(raw_bytes, enc_cpu),
        mbps(png_bytes, enc_cpu)
    );
    println!(
        "decode MB/s           {:.1} raw, {:.1} PNG (wall); {:.1} raw, {:.1} PNG (thread CPU)",
        mbps(raw_bytes, dec_t),
        mbps(png_bytes, dec_t),
        mbps(raw_bytes, dec_cpu),
        mbps(png_bytes, dec_cpu)
    );
    if mismatches > 0 {
        std::process::exit(1);
    }
}
