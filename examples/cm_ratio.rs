//! Context-mixing codec (`level=archive`) against `xz -9e` and zstd -19 with a long window,
//! per file, summed per directory, with encode and decode speed on one core (thread CPU
//! time). Every file is decoded and compared.
//!
//! Usage: cargo run --release --example cm_ratio -- PRIOR=DIR... (PRIOR: none, text, source,
//! json; e.g. `text=/var/tmp/corpus/text json=/var/tmp/corpus/json`)

#[path = "common/mod.rs"]
mod common;

use idcfs::codec::{Codec, ContextMix, EncodeParams, DICT_JSON, DICT_SOURCE, DICT_TEXT};
use std::io::Write;
use std::process::{Command, Stdio};

fn xz_len(data: &[u8]) -> usize {
    let mut child = match Command::new("xz")
        .args(["-9e", "-c", "-T1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("xz: {e}"),
    };
    let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("xz stdin"));
    let data2 = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data2));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("xz: {e}"));
    let _ = w.join();
    out.stdout.len()
}

fn zstd_long_len(data: &[u8]) -> usize {
    let mut c = zstd::bulk::Compressor::new(19).unwrap_or_else(|e| panic!("{e}"));
    let wlog = (usize::BITS - data.len().max(1).leading_zeros()).clamp(10, 27);
    let _ = c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(wlog));
    c.compress(data).map(|v| v.len()).unwrap_or(data.len())
}

fn main() {
    for arg in std::env::args().skip(1) {
        let (prior, dir) = arg.split_once('=').unwrap_or(("none", arg.as_str()));
        let model = match prior {
            "text" => DICT_TEXT,
            "source" => DICT_SOURCE,
            "json" => DICT_JSON,
            _ => 0,
        };
        let mut files = Vec::new();
        common::walk(std::path::Path::new(dir), &mut files).unwrap_or_else(|e| panic!("{e}"));
        files.sort();
        let (mut raw, mut cm, mut xz, mut zl) = (0usize, 0usize, 0usize, 0usize);
        let (mut enc_t, mut dec_t) = (0f64, 0f64);
        for f in &files {
            let data = std::fs::read(f).unwrap_or_else(|e| panic!("{e}"));
            if data.is_empty() || data.len() > idcfs::codec::CM_MAX_LEN {
                continue;
            }
            raw += data.len();
            let mut out = Vec::new();
            let t0 = common::cpu_now();
            let params = ContextMix.encode(&data, &EncodeParams { level: 19, model }, &mut out);
            enc_t += (common::cpu_now() - t0).as_secs_f64();
            let n = match params {
                Ok(p) => {
                    let mut back = Vec::new();
                    let t0 = common::cpu_now();
                    ContextMix
                        .decode(&out, p, data.len(), &mut back)
                        .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                    dec_t += (common::cpu_now() - t0).as_secs_f64();
                    assert!(back == data, "{}: round trip mismatch", f.display());
                    out.len()
                }
                Err(_) => data.len(),
            };
            cm += n;
            // CM_ONLY=1 skips the reference tools (quicker model experiments).
            if std::env::var_os("CM_ONLY").is_none() {
                xz += xz_len(&data);
                zl += zstd_long_len(&data);
            }
        }
        println!(
            "{dir} (prior {prior}): {} files, raw {raw}, cm {cm} ({:.1}% smaller than xz -9e {xz}), zstd-19-long {zl}; encode {:.0} KB/s, decode {:.0} KB/s",
            files.len(),
            100.0 * (1.0 - cm as f64 / xz as f64),
            raw as f64 / enc_t / 1e3,
            raw as f64 / dec_t / 1e3,
        );
    }
}
