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

    let check = |m: &Mounted, when: &str| -> Vec<(u64, String)> {
        let (mut lossy_stored, mut plain_stored) = (0u64, 0u64);
        let mut seen = Vec::new();
        for (name, orig) in &photos {
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
                fi["encodings"].to_string().contains("image-webp"),
                "{when}: {name}: {fi}"
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
    assert!(st["codecs"].to_string().contains("image-webp"), "{st}");
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
    assert!(!fileinfo(&m, &p)["encodings"]
        .to_string()
        .contains("image-webp"));
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

/// PSNR target the learned model reaches on the test photos (see models/hp-int8-v1/README.md).
const LEARNED_TARGET: f64 = 22.0;

/// With ONNX Runtime present and `image-webp` disabled, `lossy=image:psnr=…` stores RGB PNG
/// photos with the learned codec (`image-learned`): read back as valid PNGs meeting the
/// target, `st_size` equal to the bytes read and stable across a remount, smaller than the
/// lossless sibling, whose bytes never change; fsck decodes every block.
#[test]
fn learned_codec_stores_photos_under_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("config.toml");
    std::fs::write(&conf, "[codecs]\ndisabled = [\"image-webp\"]\n").unwrap();
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
