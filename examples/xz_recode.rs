//! Per file: what `xz-recode` (codec 15) makes of it, with encode and decode wall time on the
//! calling thread (the rebuild of a multi-block stream uses two liblzma threads), and whether
//! the decoded bytes equal the file. Files the codec refuses are listed with the reason.
//!
//! Usage: cargo run --release --example xz_recode -- FILE...

use idcfs::codec::{Codec, EncodeParams, XzRecode};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut total_in, mut total_out) = (0usize, 0usize);
    for p in std::env::args().skip(1) {
        let raw = std::fs::read(&p)?;
        let t = Instant::now();
        let mut out = Vec::new();
        let r = XzRecode.encode(&raw, &EncodeParams::level(19), &mut out);
        let enc = t.elapsed().as_secs_f64();
        if let Err(e) = r {
            println!("{p}: {} bytes, refused: {e}", raw.len());
            total_in += raw.len();
            total_out += raw.len();
            continue;
        }
        let t = Instant::now();
        let mut back = Vec::new();
        XzRecode.decode(&out, 0, raw.len(), &mut back)?;
        let dec = t.elapsed().as_secs_f64();
        if back != raw {
            return Err(format!("{p}: decoded bytes differ").into());
        }
        println!(
            "{p}: {} -> {} bytes ({:.1}% saved), encode {enc:.1} s, decode {dec:.1} s ({:.2} MB/s), verified",
            raw.len(),
            out.len(),
            100.0 * (1.0 - out.len() as f64 / raw.len() as f64),
            raw.len() as f64 / dec / 1e6
        );
        total_in += raw.len();
        total_out += out.len();
    }
    println!(
        "total: {total_in} -> {total_out} bytes ({:.1}% saved)",
        100.0 * (1.0 - total_out as f64 / total_in.max(1) as f64)
    );
    Ok(())
}
