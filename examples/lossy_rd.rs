//! Rate–distortion of the lossy image codec, and PSNR checks of files read back from a mount.
//!
//! `cargo run --release --example lossy_rd -- rd DIR [webp|avif]` — for every 8-bit PNG below
//! DIR and each PSNR target (30, 35, 40, 45 dB): payload bits per pixel, the PSNR reached, and
//! encode and decode CPU time per megapixel (one thread), of `image-webp` (default) or
//! `image-avif`. With `RD_OUT=DIR` it also writes what a reader gets, `DIR/NAME.TARGET.png`
//! (`benches/ms_ssim.py` measures MS-SSIM on them).
//! `cargo run --release --example lossy_rd -- psnr ORIG_DIR READ_DIR` — PSNR of every PNG of
//! READ_DIR (e.g. a lossy directory on a mount) against the file of the same name in ORIG_DIR;
//! prints the minimum and whether every file is a readable PNG.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;

use idcfs::codec::{image_psnr, Codec, EncodeParams, ImageAvif, ImageWebp};
use std::path::{Path, PathBuf};

fn pngs(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    common::walk(dir, &mut v).unwrap();
    v.retain(|p| p.extension().is_some_and(|e| e == "png"));
    v.sort();
    v
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("rd") => {
            let codec: &dyn Codec = match args.get(2).map(String::as_str) {
                Some("avif") => &ImageAvif,
                _ => &ImageWebp,
            };
            rd(Path::new(&args[1]), codec)
        }
        Some("psnr") => psnr(Path::new(&args[1]), Path::new(&args[2])),
        _ => eprintln!("usage: lossy_rd rd DIR [webp|avif] | psnr ORIG_DIR READ_DIR"),
    }
}

fn rd(dir: &Path, codec: &dyn Codec) {
    println!("# {}", codec.name());
    println!("target_db\tfiles\tpixels\tpng_bytes\tpayload_bytes\tbpp\tmin_psnr\tmean_psnr\tenc_s_per_mp\tdec_s_per_mp\trefused");
    for target in [30.0f64, 35.0, 40.0, 45.0] {
        let (mut files, mut pixels, mut png_bytes, mut payload_bytes, mut refused) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        let (mut min_db, mut sum_db) = (f64::INFINITY, 0.0);
        let (mut enc, mut dec) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        for p in pngs(dir) {
            let png = std::fs::read(&p).unwrap();
            let Some((w, h, depth, ct, il)) = idcfs::codec::pixels_bench::parse_ihdr(&png) else {
                continue;
            };
            if depth != 8 || il != 0 || ![0, 2, 4, 6].contains(&ct) {
                continue;
            }
            let mut out = Vec::new();
            let t = common::cpu_now();
            let r = codec.encode(
                &png,
                &EncodeParams::level((target * 100.0) as i32),
                &mut out,
            );
            let e = common::cpu_now() - t;
            let Ok(params) = r else {
                refused += 1;
                continue;
            };
            let n = codec.decoded_len(&out, params).unwrap().unwrap();
            let t = common::cpu_now();
            let mut back = Vec::new();
            codec.decode(&out, params, n, &mut back).unwrap();
            dec += common::cpu_now() - t;
            enc += e;
            let db = image_psnr(&png, &back).unwrap();
            // RD_OUT=DIR keeps what a reader gets, for other metrics (MS-SSIM).
            if let Some(d) = std::env::var_os("RD_OUT") {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                std::fs::write(Path::new(&d).join(format!("{name}.{target}.png")), &back).unwrap();
            }
            files += 1;
            pixels += w as u64 * h as u64;
            png_bytes += png.len() as u64;
            payload_bytes += out.len() as u64;
            min_db = min_db.min(db);
            sum_db += db;
        }
        let mp = pixels as f64 / 1e6;
        println!(
            "{target}\t{files}\t{pixels}\t{png_bytes}\t{payload_bytes}\t{:.3}\t{min_db:.2}\t{:.2}\t{:.3}\t{:.3}\t{refused}",
            payload_bytes as f64 * 8.0 / pixels.max(1) as f64,
            sum_db / files.max(1) as f64,
            enc.as_secs_f64() / mp,
            dec.as_secs_f64() / mp,
        );
    }
}

fn psnr(orig: &Path, read: &Path) {
    let (mut n, mut min_db, mut bad) = (0, f64::INFINITY, 0);
    for p in pngs(read) {
        let name = p.strip_prefix(read).unwrap();
        let a = std::fs::read(orig.join(name)).unwrap();
        let b = std::fs::read(&p).unwrap();
        match image_psnr(&a, &b) {
            Some(db) => {
                n += 1;
                min_db = min_db.min(db);
            }
            None => {
                bad += 1;
                println!("not a comparable PNG: {}", p.display());
            }
        }
    }
    println!("files {n}, unreadable {bad}, min PSNR {min_db:.2} dB");
}
