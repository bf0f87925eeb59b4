//! Lossy storage under policy and the ONNX Runtime behind the neural codecs, through a real
//! mount.

use crate::util::*;
use std::path::Path;

/// This mount's row of `idcfs status --json`.
fn status_of(m: &Mounted) -> serde_json::Value {
    let out = m.idcfs(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().cloned().unwrap_or_default();
    let store = m.store.display().to_string();
    rows.into_iter()
        .find(|r| r.to_string().contains(&store))
        .unwrap_or_else(|| panic!("no status row for {store}: {v}"))
}

/// The `onnx_runtime` line of this mount's status.
fn runtime_status(m: &Mounted) -> String {
    status_of(m)["status"]["onnx_runtime"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn write_and_check(m: &Mounted) {
    let p = m.path("f.bin");
    let d = data(7, 300_000);
    std::fs::write(&p, &d).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), d);
}

/// A runtime that cannot be loaded is reported (log and status) and nothing else breaks; the
/// machine's runtime (the venv `.ci/run` creates) is found and reported by default.
#[test]
fn onnx_runtime_absent_is_reported_and_harmless_present_is_found() {
    let mut m = Mounted::with_args(&["--ort-lib", "/nonexistent/libonnxruntime.so.1"]);
    write_and_check(&m);
    let st = runtime_status(&m);
    assert!(
        st.starts_with("unavailable") && st.contains("/nonexistent"),
        "{st}"
    );
    let log = m.log_text();
    assert_eq!(
        log.matches("ONNX Runtime unavailable").count(),
        1,
        "one warning in the log:\n{log}"
    );
    let out = m.idcfs(&["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ONNX Runtime: unavailable"));
    m.unmount();

    // The runtime the README's test command and `.ci/run` install must be found: a missing
    // one fails the test, it is never skipped.
    let m = Mounted::with_args(&["--device", "cpu"]);
    write_and_check(&m);
    let st = runtime_status(&m);
    assert!(
        !st.starts_with("unavailable"),
        "ONNX Runtime was not found: {st}"
    );
    assert!(
        st.contains("libonnxruntime") && st.contains("(cpu)"),
        "{st}"
    );
    assert!(Path::new(&m.log).exists());
}

fn fileinfo(m: &Mounted, p: &Path) -> serde_json::Value {
    let v = sh(
        m.dir.path(),
        &format!(
            "getfattr --only-values -n user.idcfs.fileinfo '{}'",
            p.display()
        ),
    );
    serde_json::from_str(&v).unwrap_or_else(|e| panic!("fileinfo of {}: {e}: {v}", p.display()))
}

fn photos() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/photo");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(v.len() >= 2, "tests/data/photo holds real photographs");
    v
}

/// Under `lossy=image:psnr=40`, real PNG photos are stored lossily: much smaller than the
/// same files stored losslessly next door, read back as valid PNGs meeting the target, with
/// `st_size` equal to the bytes read and stable across a remount; the sibling directory
/// without the key keeps every byte; a write into a lossy file makes an ordinary file that
/// is never lossily re-encoded again. The mount runs without ONNX Runtime: the classical
/// candidates do not need it.
#[test]
fn lossy_png_photos_under_policy() {
    // Small packs, so that compaction below has sealed packs to work on.
    let mut m = Mounted::with_args(&[
        "--ort-lib",
        "/nonexistent/libonnxruntime.so.1",
        "--pack-mib",
        "1",
    ]);
    let (lossy, plain) = (m.path("lossy"), m.path("plain"));
    std::fs::create_dir(&lossy).unwrap();
    std::fs::create_dir(&plain).unwrap();
    let out = m.idcfs(&[
        "policy",
        "set",
        lossy.to_str().unwrap(),
        "lossy=image:psnr=40",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let photos = photos();
    for (name, bytes) in &photos {
        std::fs::write(lossy.join(name), bytes).unwrap();
        std::fs::write(plain.join(name), bytes).unwrap();
    }
    let out = m.idcfs(&["recompress", m.mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The classical candidates race: the smaller of WebP and AV1 at the same target must be
    // the one stored (both encoders are deterministic on one thread, so the sizes computed
    // here are the daemon's).
    let winners: Vec<&str> = photos
        .iter()
        .map(|(name, bytes)| {
            use idcfs::codec::Codec;
            let p = idcfs::codec::EncodeParams::level(4000);
            let (mut w, mut a) = (Vec::new(), Vec::new());
            idcfs::codec::ImageWebp.encode(bytes, &p, &mut w).unwrap();
            idcfs::codec::ImageAvif.encode(bytes, &p, &mut a).unwrap();
            eprintln!("{name}: webp {} bytes, avif {} bytes", w.len(), a.len());
            if a.len() < w.len() {
                "image-avif"
            } else {
                "image-webp"
            }
        })
        .collect();
    assert!(
        winners.contains(&"image-avif"),
        "AV1 is smaller than WebP at 40 dB on real photos"
    );

    let check = |m: &Mounted, when: &str| -> Vec<(u64, String)> {
        let (mut lossy_stored, mut plain_stored) = (0u64, 0u64);
        let mut seen = Vec::new();
        for ((name, orig), winner) in photos.iter().zip(&winners) {
            let p = plain.join(name);
            assert_eq!(
                &std::fs::read(&p).unwrap(),
                orig,
                "{when}: plain {name} changed"
            );
            plain_stored += fileinfo(m, &p)["stored"].as_u64().unwrap();
            let p = lossy.join(name);
            let got = std::fs::read(&p).unwrap();
            let size = std::fs::metadata(&p).unwrap().len();
            assert_eq!(
                size,
                got.len() as u64,
                "{when}: st_size of {name} is the bytes read"
            );
            assert_ne!(&got, orig, "{when}: {name} was not stored lossily");
            let db = idcfs::codec::image_psnr(orig, &got)
                .unwrap_or_else(|| panic!("{when}: {name} does not read as a valid PNG"));
            assert!(db >= 40.0, "{when}: {name}: PSNR {db:.2} dB < 40");
            let fi = fileinfo(m, &p);
            assert!(
                fi["encodings"].to_string().contains(winner),
                "{when}: {name}: {winner} should have won: {fi}"
            );
            lossy_stored += fi["stored"].as_u64().unwrap();
            seen.push((size, sha(&p)));
        }
        assert!(
            lossy_stored * 10 <= plain_stored * 4,
            "{when}: lossy {lossy_stored} vs lossless {plain_stored}: not 60% smaller"
        );
        seen
    };
    let before = check(&m, "after recompression");
    assert!(
        runtime_status(&m).starts_with("unavailable"),
        "this mount has no ONNX Runtime"
    );
    let st = m.stats_json();
    assert_eq!(
        st["lossy_files"].as_u64(),
        Some(photos.len() as u64),
        "{st}"
    );
    for w in &winners {
        assert!(st["codecs"].to_string().contains(w), "{st}");
    }
    let log = m.log_text();
    assert!(
        log.contains("lossy recompression") && log.contains("PSNR"),
        "{log}"
    );
    m.remount();
    let after = check(&m, "after remount");
    assert_eq!(before, after, "st_size and bytes stable across remount");

    // Compaction moves the lossy objects (their records hold PutLossyObject): with the plain
    // copies deleted, every pack holding lossy records is mostly garbage and is compacted.
    for (name, _) in &photos {
        std::fs::remove_file(plain.join(name)).unwrap();
    }
    m.unmount();
    let out = m.idcfs(&["compact", m.store.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !said.contains("moved 0 block"),
        "compaction moved nothing: {said}"
    );
    m.mount();
    let moved: Vec<(u64, String)> = photos
        .iter()
        .map(|(name, _)| {
            let p = lossy.join(name);
            (std::fs::metadata(&p).unwrap().len(), sha(&p))
        })
        .collect();
    assert_eq!(before, moved, "after compaction");
    m.remount();
    for (i, (name, _)) in photos.iter().enumerate() {
        let p = lossy.join(name);
        assert_eq!(
            (std::fs::metadata(&p).unwrap().len(), sha(&p)),
            before[i],
            "{name} after compaction and remount"
        );
    }
    let log = m.log_text();
    assert!(
        log.is_empty() || !log.contains("panicked"),
        "daemon log:\n{log}"
    );

    // A write into a lossy file: an ordinary file from then on, never lossily re-encoded.
    let (name, _) = &photos[0];
    let p = lossy.join(name);
    let mut want = std::fs::read(&p).unwrap();
    want.extend_from_slice(b"appended");
    std::fs::write(&p, &want).unwrap();
    let out = m.idcfs(&["recompress", lossy.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&p).unwrap(), want);
    m.remount();
    assert_eq!(std::fs::read(&p).unwrap(), want);
    let enc = fileinfo(&m, &p)["encodings"].to_string();
    assert!(
        !enc.contains("image-webp") && !enc.contains("image-avif"),
        "{enc}"
    );
    // Every block, lossy objects included, decodes and matches its recorded hash.
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "fsck: {out}");
}

/// Under `lossy=audio:q=…`, real WAVs are stored as Opus: smaller than the same files stored
/// losslessly (FLAC) next door, read back with the original's length, header and sample
/// format, stable across a remount; the sibling directory keeps every byte.
#[test]
fn lossy_wav_under_policy() {
    let mut m = Mounted::new();
    let (lossy, plain) = (m.path("lossy"), m.path("plain"));
    std::fs::create_dir(&lossy).unwrap();
    std::fs::create_dir(&plain).unwrap();
    let out = m.idcfs(&["policy", "set", lossy.to_str().unwrap(), "lossy=audio:q=40"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/wav");
    let mut wavs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    wavs.sort();
    assert!(!wavs.is_empty());
    for (name, bytes) in &wavs {
        std::fs::write(lossy.join(name), bytes).unwrap();
        std::fs::write(plain.join(name), bytes).unwrap();
    }
    let out = m.idcfs(&["recompress", m.mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = |m: &Mounted, when: &str| -> Vec<String> {
        let (mut lossy_stored, mut flac_stored) = (0u64, 0u64);
        let mut seen = Vec::new();
        for (name, orig) in &wavs {
            let p = plain.join(name);
            assert_eq!(
                &std::fs::read(&p).unwrap(),
                orig,
                "{when}: plain {name} changed"
            );
            let fi = fileinfo(m, &p);
            assert!(
                fi["encodings"].to_string().contains("wav-flac"),
                "{when}: {fi}"
            );
            flac_stored += fi["stored"].as_u64().unwrap();
            let p = lossy.join(name);
            let got = std::fs::read(&p).unwrap();
            assert_eq!(got.len(), orig.len(), "{when}: {name}: length");
            assert_eq!(std::fs::metadata(&p).unwrap().len(), orig.len() as u64);
            assert_eq!(
                got[..44],
                orig[..44],
                "{when}: {name}: header and sample format"
            );
            assert_ne!(&got, orig, "{when}: {name} was not stored lossily");
            let fi = fileinfo(m, &p);
            assert!(
                fi["encodings"].to_string().contains("wav-opus"),
                "{when}: {fi}"
            );
            lossy_stored += fi["stored"].as_u64().unwrap();
            seen.push(sha(&p));
        }
        assert!(
            lossy_stored < flac_stored,
            "{when}: opus {lossy_stored} not below FLAC {flac_stored}"
        );
        seen
    };
    let before = check(&m, "after recompression");
    m.remount();
    assert_eq!(before, check(&m, "after remount"));

    // A crash right after a lossy swap: the file reads back whole as one encoding or the
    // other (the swap is one journal record), with st_size matching, and fsck is clean.
    let (name, orig) = &wavs[0];
    let p = lossy.join(format!("crash-{name}"));
    std::fs::write(&p, orig).unwrap();
    let out = m.idcfs(&["recompress", p.to_str().unwrap()]);
    assert!(out.status.success());
    let lossy_copy = std::fs::read(lossy.join(name)).unwrap();
    m.kill9();
    m.mount();
    let got = std::fs::read(&p).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), got.len() as u64);
    assert!(
        &got == orig || got == lossy_copy,
        "after kill -9: neither the original nor its lossy encoding"
    );
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "fsck: {out}");
}

/// PSNR target the learned models reach on the test photos (models/hp-int8-v1/, hp-dct-v2/).
const LEARNED_TARGET: f64 = 22.0;

/// With ONNX Runtime present and `image-webp` and `image-avif` disabled, `lossy=image:psnr=…` stores RGB PNG
/// photos with the learned codec (`image-learned`): read back as valid PNGs meeting the
/// target, `st_size` equal to the bytes read and stable across a remount, smaller than the
/// lossless sibling, whose bytes never change; fsck decodes every block.
#[test]
fn learned_codec_stores_photos_under_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("config.toml");
    std::fs::write(
        &conf,
        "[codecs]\ndisabled = [\"image-webp\", \"image-avif\"]\n",
    )
    .unwrap();
    let mut m = Mounted::with_args(&["--device", "cpu", "--config", conf.to_str().unwrap()]);
    assert!(
        !runtime_status(&m).starts_with("unavailable"),
        "ONNX Runtime is required: {}",
        runtime_status(&m)
    );
    let (lossy, plain) = (m.path("lossy"), m.path("plain"));
    std::fs::create_dir(&lossy).unwrap();
    std::fs::create_dir(&plain).unwrap();
    let policy = format!("lossy=image:psnr={LEARNED_TARGET}");
    let out = m.idcfs(&["policy", "set", lossy.to_str().unwrap(), &policy]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let photos = photos();
    for (name, bytes) in &photos {
        std::fs::write(lossy.join(name), bytes).unwrap();
        std::fs::write(plain.join(name), bytes).unwrap();
    }
    let out = m.idcfs(&["recompress", m.mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = |m: &Mounted, when: &str| -> Vec<(u64, String)> {
        let mut seen = Vec::new();
        for (name, orig) in &photos {
            assert_eq!(
                &std::fs::read(plain.join(name)).unwrap(),
                orig,
                "{when}: plain {name}"
            );
            let p = lossy.join(name);
            let got = std::fs::read(&p).unwrap();
            let size = std::fs::metadata(&p).unwrap().len();
            assert_eq!(size, got.len() as u64, "{when}: st_size of {name}");
            let db = idcfs::codec::image_psnr(orig, &got)
                .unwrap_or_else(|| panic!("{when}: {name} does not read as a valid PNG"));
            assert!(db >= LEARNED_TARGET, "{when}: {name}: PSNR {db:.2} dB");
            let fi = fileinfo(m, &p);
            assert!(
                fi["encodings"].to_string().contains("image-learned"),
                "{when}: {name}: {fi}"
            );
            let lossless = fileinfo(m, &plain.join(name))["stored"].as_u64().unwrap();
            assert!(
                fi["stored"].as_u64().unwrap() * 3 < lossless,
                "{when}: {name}: {fi}"
            );
            seen.push((size, sha(&p)));
        }
        seen
    };
    let before = check(&m, "after recompression");
    let log = m.log_text();
    assert!(log.contains("image-learned"), "{log}");
    m.remount();
    assert_eq!(
        before,
        check(&m, "after remount"),
        "st_size and bytes stable"
    );
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "fsck: {out}");
}

/// Photo-like RGB samples (smooth shading, texture, correlated channels), `w`×`h`.
fn photo_like(w: usize, h: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f64, y as f64);
            let base = 110.0
                + 70.0 * (fx * 0.031).sin() * (fy * 0.023).cos()
                + 8.0 * (fx * 0.9 + fy * 1.3).sin();
            for c in 0..3 {
                v.push((base + c as f64 * 15.0 - fy * 0.1).clamp(0.0, 255.0) as u8);
            }
        }
    }
    v
}

/// A 24-bit BI_RGB BMP, rows bottom-up, zero padding (as most writers make them).
fn bmp24(w: usize, h: usize, rgb: &[u8]) -> Vec<u8> {
    let stride = (w * 3).div_ceil(4) * 4;
    let mut d = b"BM".to_vec();
    d.extend_from_slice(&((54 + stride * h) as u32).to_le_bytes());
    d.extend_from_slice(&[0; 4]);
    d.extend_from_slice(&54u32.to_le_bytes());
    d.extend_from_slice(&40u32.to_le_bytes());
    d.extend_from_slice(&(w as i32).to_le_bytes());
    d.extend_from_slice(&(h as i32).to_le_bytes());
    d.extend_from_slice(&[1, 0, 24, 0]);
    d.extend_from_slice(&0u32.to_le_bytes());
    d.extend_from_slice(&((stride * h) as u32).to_le_bytes());
    d.extend_from_slice(&[0x13, 0x0b, 0, 0, 0x13, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    for y in (0..h).rev() {
        for p in rgb[y * w * 3..(y + 1) * w * 3].chunks(3) {
            d.extend_from_slice(&[p[2], p[1], p[0]]);
        }
        d.resize(d.len() + stride - w * 3, 0);
    }
    d
}

/// An uncompressed big-endian RGB TIFF: header, IFD (values inline or right after it), one
/// strip per 16 rows.
fn tiff_be(w: usize, h: usize, rgb: &[u8]) -> Vec<u8> {
    let strips = h.div_ceil(16);
    let n = 10usize;
    let ifd = 8usize;
    let extra = ifd + 2 + 12 * n + 4;
    let offs_at = extra + 6; // after the three BitsPerSample shorts
    let counts_at = offs_at + 4 * strips;
    let data_at = counts_at + 4 * strips;
    let mut d = b"MM\0*".to_vec();
    d.extend_from_slice(&(ifd as u32).to_be_bytes());
    d.extend_from_slice(&(n as u16).to_be_bytes());
    let entry = |tag: u16, ty: u16, count: u32, val: u32, d: &mut Vec<u8>| {
        d.extend_from_slice(&tag.to_be_bytes());
        d.extend_from_slice(&ty.to_be_bytes());
        d.extend_from_slice(&count.to_be_bytes());
        if ty == 3 && count == 1 {
            d.extend_from_slice(&(val as u16).to_be_bytes());
            d.extend_from_slice(&[0, 0]);
        } else {
            d.extend_from_slice(&val.to_be_bytes());
        }
    };
    entry(256, 4, 1, w as u32, &mut d);
    entry(257, 4, 1, h as u32, &mut d);
    entry(258, 3, 3, extra as u32, &mut d);
    entry(259, 3, 1, 1, &mut d);
    entry(262, 3, 1, 2, &mut d);
    entry(273, 4, strips as u32, offs_at as u32, &mut d);
    entry(277, 3, 1, 3, &mut d);
    entry(278, 4, 1, 16, &mut d);
    entry(279, 4, strips as u32, counts_at as u32, &mut d);
    entry(284, 3, 1, 1, &mut d);
    d.extend_from_slice(&[0; 4]);
    for _ in 0..3 {
        d.extend_from_slice(&8u16.to_be_bytes());
    }
    let row = w * 3;
    for i in 0..strips {
        d.extend_from_slice(&((data_at + i * 16 * row) as u32).to_be_bytes());
    }
    for i in 0..strips {
        let rows = 16.min(h - i * 16);
        d.extend_from_slice(&((rows * row) as u32).to_be_bytes());
    }
    assert_eq!(d.len(), data_at);
    d.extend_from_slice(rgb);
    d
}

/// Under `lossy=image:psnr=38`, uncompressed BMP and TIFF files are stored lossily and read
/// back in their own format: same size, the original header bytes verbatim, PSNR at least the
/// target, stable across a remount; a compressed (RLE) BMP keeps every byte.
#[test]
fn lossy_bmp_and_tiff_keep_their_format() {
    let mut m = Mounted::with_args(&["--ort-lib", "/nonexistent/libonnxruntime.so.1"]);
    let dir = m.path("photos");
    std::fs::create_dir(&dir).unwrap();
    let out = m.idcfs(&[
        "policy",
        "set",
        dir.to_str().unwrap(),
        "lossy=image:psnr=38",
    ]);
    assert!(out.status.success());
    let (w, h) = (301, 203);
    let rgb = photo_like(w, h);
    let bmp = bmp24(w, h, &rgb);
    let tiff = tiff_be(w, h, &rgb);
    let mut rle = bmp24(64, 64, &photo_like(64, 64));
    rle[30] = 1; // says BI_RLE8: not a layout the lossy codecs can serve back
    let files = [("a.bmp", &bmp, 54usize), ("b.tif", &tiff, 8 + 2 + 12 * 10)];
    for (name, bytes, _) in &files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    std::fs::write(dir.join("rle.bmp"), &rle).unwrap();
    let out = m.idcfs(&["recompress", m.mnt.to_str().unwrap()]);
    assert!(out.status.success());
    let check = |m: &Mounted, when: &str| -> Vec<String> {
        let mut seen = Vec::new();
        for (name, orig, head) in &files {
            let p = dir.join(name);
            let got = std::fs::read(&p).unwrap();
            assert_eq!(got.len(), orig.len(), "{when}: {name}: same size");
            assert_eq!(std::fs::metadata(&p).unwrap().len(), orig.len() as u64);
            assert_eq!(
                got[..*head],
                orig[..*head],
                "{when}: {name}: header verbatim"
            );
            assert_ne!(&got, *orig, "{when}: {name} was not stored lossily");
            let db = idcfs::codec::image_psnr(orig, &got)
                .unwrap_or_else(|| panic!("{when}: {name} does not read back as its format"));
            assert!(db >= 38.0, "{when}: {name}: {db:.2} dB");
            let enc = fileinfo(m, &p)["encodings"].to_string();
            assert!(
                enc.contains("image-avif") || enc.contains("image-webp"),
                "{when}: {name}: {enc}"
            );
            seen.push(sha(&p));
        }
        assert_eq!(std::fs::read(dir.join("rle.bmp")).unwrap(), rle, "{when}");
        seen
    };
    let before = check(&m, "after recompression");
    m.remount();
    assert_eq!(before, check(&m, "after remount"));
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "fsck: {out}");
}

/// The samples of a 16-bit WAV as a plain AIFF (big-endian), with a trailing chunk.
fn aiff_of_wav(wav: &[u8]) -> Vec<u8> {
    let le16 = |at: usize| u16::from_le_bytes([wav[at], wav[at + 1]]);
    let le32 = |at: usize| u32::from_le_bytes(wav[at..at + 4].try_into().unwrap());
    // The canonical 44-byte header the test samples have (checked).
    assert!(&wav[12..16] == b"fmt " && &wav[36..40] == b"data" && le16(34) == 16);
    let (channels, rate, len) = (le16(22), le32(24), le32(40) as usize);
    let samples = &wav[44..44 + len];
    let mut comm = Vec::new();
    comm.extend_from_slice(&channels.to_be_bytes());
    comm.extend_from_slice(&((len / 2 / channels as usize) as u32).to_be_bytes());
    comm.extend_from_slice(&16u16.to_be_bytes());
    let bits = 32 - rate.leading_zeros();
    comm.extend_from_slice(&((16383 + bits - 1) as u16).to_be_bytes());
    comm.extend_from_slice(&((rate as u64) << (64 - bits)).to_be_bytes());
    let mut ssnd = vec![0u8; 8];
    for c in samples.chunks_exact(2) {
        ssnd.extend_from_slice(&[c[1], c[0]]);
    }
    let mut body = b"AIFF".to_vec();
    for (id, d) in [
        (b"COMM", comm),
        (b"SSND", ssnd),
        (b"NAME", b"idcfs".to_vec()),
    ] {
        body.extend_from_slice(id);
        body.extend_from_slice(&(d.len() as u32).to_be_bytes());
        body.extend_from_slice(&d);
        if d.len() % 2 == 1 {
            body.push(0);
        }
    }
    let mut f = b"FORM".to_vec();
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&body);
    f
}

/// Under `lossy=audio:q=…`, an AIFF (recognised by content, under a name that says nothing)
/// is stored as Opus and read back as an AIFF of the same length with the original header
/// and trailing chunk, stable across a remount.
#[test]
fn lossy_aiff_under_policy() {
    let mut m = Mounted::new();
    let dir = m.path("sounds");
    std::fs::create_dir(&dir).unwrap();
    let out = m.idcfs(&["policy", "set", dir.to_str().unwrap(), "lossy=audio:q=40"]);
    assert!(out.status.success());
    let wav_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/wav");
    let wav = std::fs::read_dir(&wav_dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .find(|b| b.len() > 44 && &b[36..40] == b"data" && b[34] == 16 && b[22] <= 2)
        .expect("a canonical 16-bit WAV among the samples");
    let aiff = aiff_of_wav(&wav);
    let p = dir.join("take-1.dat");
    std::fs::write(&p, &aiff).unwrap();
    let class = sh(
        m.dir.path(),
        &format!(
            "getfattr --only-values -n user.idcfs.class '{}'",
            p.display()
        ),
    );
    assert_eq!(class.trim(), "aiff");
    let out = m.idcfs(&["recompress", m.mnt.to_str().unwrap()]);
    assert!(out.status.success());
    let head = 12 + 8 + 18 + 16;
    let check = |m: &Mounted, when: &str| -> String {
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), aiff.len(), "{when}: length");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), aiff.len() as u64);
        assert_eq!(got[..head], aiff[..head], "{when}: header");
        assert!(got.ends_with(b"NAME\0\0\0\x05idcfs\0"), "{when}: tail");
        assert_ne!(got, aiff, "{when}: not stored lossily");
        let enc = fileinfo(m, &p)["encodings"].to_string();
        assert!(enc.contains("wav-opus"), "{when}: {enc}");
        sha(&p)
    };
    let before = check(&m, "after recompression");
    m.remount();
    assert_eq!(before, check(&m, "after remount"));
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "fsck: {out}");
}
