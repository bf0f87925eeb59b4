//! Rate-distortion of the learned image codec (`image-learned`) at each of its steps.
//!
//! Usage: `cargo run --release --example learned_rd -- PNG_DIR OUT_DIR`. For every RGB PNG
//! and step m (y's quantization step m/4, m = 1..=8) it encodes with the built-in model
//! (ONNX Runtime, one intra-op thread), decodes, writes the served PNG to
//! `OUT_DIR/<name>.m<m>.png`, and prints `name m payload_bytes pixels encode_s decode_s`
//! (tab-separated); `models/hp-int8-v1/rd.py` turns these into the table of BENCHMARKS.md.
//! A third argument K sets the encoder's rate-distortion weight (0: plain rounding); with
//! `NO_PREDICT=1` the encoder uses neither spatial prediction nor adapted tables (payload
//! version 1, as before 2026-12-01); with `NO_ACP=1`, no AC prediction from the block DCs.
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, out, rdo) = match args.as_slice() {
        [_, d, o] => (d.clone(), o.clone(), None),
        [_, d, o, k] if k.parse::<f32>().is_ok() => (d.clone(), o.clone(), k.parse().ok()),
        _ => {
            eprintln!("usage: learned_rd PNG_DIR OUT_DIR [K]");
            std::process::exit(2);
        }
    };
    if let Err(e) = idcfs::codec::learned_bench::init() {
        eprintln!("ONNX Runtime: {e}");
        std::process::exit(1);
    }
    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(d) => d.flatten().map(|e| e.path()).collect(),
        Err(e) => {
            eprintln!("{dir}: {e}");
            std::process::exit(1);
        }
    };
    files.sort();
    for f in files {
        let Ok(raw) = std::fs::read(&f) else { continue };
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((w, h, _, 2, _)) = idcfs::codec::pixels_bench::parse_ihdr(&raw) else {
            continue;
        };
        for m in 1..=8u8 {
            let t = Instant::now();
            let payload = match idcfs::codec::learned_bench::encode_step(
                &raw,
                m,
                rdo,
                std::env::var_os("NO_PREDICT").is_none(),
                std::env::var_os("NO_ACP").is_none(),
            ) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{name} m={m}: {e}");
                    continue;
                }
            };
            let te = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let png = match idcfs::codec::learned_bench::decode(&payload) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{name} m={m}: decode: {e}");
                    continue;
                }
            };
            let td = t.elapsed().as_secs_f64();
            if let Err(e) = std::fs::write(format!("{out}/{name}.m{m}.png"), &png) {
                eprintln!("{out}: {e}");
                std::process::exit(1);
            }
            println!(
                "{name}\t{m}\t{}\t{}\t{te:.3}\t{td:.3}",
                payload.len(),
                w as u64 * h as u64
            );
        }
    }
}
