//! Content classes and format-aware codecs through a real mount: every class round-trips
//! bit-exact, before and after recompression and across remounts.

use crate::util::{sh, Mounted};
use std::fs;

fn samples() -> Vec<(String, std::path::PathBuf)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut out = Vec::new();
    for class in fs::read_dir(&root).unwrap() {
        let class = class.unwrap().path();
        // golden/ holds whole stores, not samples.
        if !class.is_dir() || class.ends_with("golden") {
            continue;
        }
        for f in fs::read_dir(&class).unwrap() {
            let f = f.unwrap().path();
            out.push((class.file_name().unwrap().to_string_lossy().into_owned(), f));
        }
    }
    out.sort();
    assert!(out.len() >= 8, "tests/data holds samples of every class");
    out
}

fn xattr(m: &Mounted, p: &std::path::Path, name: &str) -> String {
    sh(
        m.dir.path(),
        &format!("getfattr --only-values -n {name} '{}'", p.display()),
    )
}

#[test]
fn every_class_round_trips_and_recompresses() {
    let mut m = Mounted::new();
    // level=max: every format-aware codec applies (deflate rebuilding is for cold data).
    sh(
        m.dir.path(),
        &format!(
            "{} policy set {} level=max",
            crate::util::BIN,
            m.mnt.display()
        ),
    );
    let files = samples();
    for (class, src) in &files {
        let dir = m.path(class);
        fs::create_dir_all(&dir).unwrap();
        fs::copy(src, dir.join(src.file_name().unwrap())).unwrap();
    }
    let on_mount = |m: &Mounted, class: &str, src: &std::path::Path| {
        m.path(class).join(src.file_name().unwrap())
    };
    let check = |m: &Mounted, when: &str| {
        for (class, src) in &files {
            let p = on_mount(m, class, src);
            assert!(
                fs::read(&p).unwrap() == fs::read(src).unwrap(),
                "{when}: {} differs",
                p.display()
            );
        }
    };
    check(&m, "after writing");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The class is decided from content.
    let expect = [
        ("jpeg", "jpeg"),
        ("png", "png"),
        ("gzip", "gzip"),
        ("zip", "zip"),
        ("wav", "wav"),
        ("elf", "elf"),
        ("json", "json"),
        ("source", "source"),
        ("deb", "ar"),
    ];
    for (dir, want) in expect {
        for (class, src) in files.iter().filter(|(c, _)| c == dir) {
            let got = xattr(&m, &on_mount(&m, class, src), "user.idcfs.class");
            assert_eq!(got, want, "{}", src.display());
        }
    }
    let out = m.idcfs(&["recompress", m.mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(&m, "after recompression");
    // Format-aware codecs took over where they pay.
    let mut used = std::collections::BTreeSet::new();
    for (class, src) in &files {
        let info: serde_json::Value =
            serde_json::from_str(&xattr(&m, &on_mount(&m, class, src), "user.idcfs.fileinfo"))
                .unwrap();
        for k in info["encodings"].as_object().unwrap().keys() {
            used.insert(k.clone());
        }
    }
    for codec in [
        "jpeg-lepton",
        // deflate-tokens or deflate-preflate, whichever is smaller per file
        "deflate-",
        "wav-flac",
        "lzma2-bcj",
        "zstd-dict:",
        // the Debian package's xz streams rebuilt from their tar
        "xz-recode",
    ] {
        assert!(
            used.iter().any(|u| u.starts_with(codec)),
            "no file stored with {codec}: {used:?}\n{}",
            m.log_text()
        );
    }
    // A second pass (recompress again, then compact the packs) must leave objects intact.
    let out = m.idcfs(&["compact", m.mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(&m, "after compaction");
    m.remount();
    check(&m, "after remount");
    // A recoded file modified in place: the touched block falls back to a block codec.
    let (class, src) = files.iter().find(|(c, _)| c == "jpeg").unwrap();
    let p = on_mount(&m, class, src);
    let mut want = fs::read(src).unwrap();
    want[100] ^= 0xff;
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&want[100..101], 100).unwrap();
    }
    assert!(fs::read(&p).unwrap() == want);
    m.remount();
    assert!(fs::read(&p).unwrap() == want);
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "{out}");
    // And the index rebuilt from the packs still knows the objects.
    fs::remove_file(m.store.join("index.redb")).unwrap();
    m.mount();
    assert!(fs::read(&p).unwrap() == want);
    for (class, src) in files.iter().filter(|(c, _)| c != "jpeg") {
        assert!(fs::read(on_mount(&m, class, src)).unwrap() == fs::read(src).unwrap());
    }
}

/// At the default level (balanced) every class round-trips bit-exact through recompression and
/// a remount, and the codecs whose cold decoding is fast take over: lepton for JPEG, FLAC for
/// WAV, LZMA2+BCJ for executables, long-window zstd for larger text; deflate rebuilding (below
/// 20 MB/s) is left to level max.
#[test]
fn every_class_round_trips_at_the_default_level() {
    let mut m = Mounted::new();
    let files = samples();
    let on_mount = |m: &Mounted, class: &str, src: &std::path::Path| {
        m.path(class).join(src.file_name().unwrap())
    };
    for (class, src) in &files {
        fs::create_dir_all(m.path(class)).unwrap();
        fs::copy(src, on_mount(&m, class, src)).unwrap();
    }
    // A text file larger than one block (the samples are small: they get dictionaries).
    let log: Vec<u8> = (0..20_000u32)
        .flat_map(|i| {
            format!(
                "2026-11-30T12:{:02}:00Z host app[{i}]: served in {} ms\n",
                i % 60,
                i % 97
            )
            .into_bytes()
        })
        .collect();
    fs::write(m.path("big.log"), &log).unwrap();
    let out = m.idcfs(&["recompress", m.mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::read(m.path("big.log")).unwrap() == log);
    let mut used: std::collections::BTreeSet<String> = serde_json::from_str::<serde_json::Value>(
        &xattr(&m, &m.path("big.log"), "user.idcfs.fileinfo"),
    )
    .unwrap()["encodings"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for (class, src) in &files {
        let p = on_mount(&m, class, src);
        assert!(
            fs::read(&p).unwrap() == fs::read(src).unwrap(),
            "{}",
            p.display()
        );
        let info: serde_json::Value =
            serde_json::from_str(&xattr(&m, &p, "user.idcfs.fileinfo")).unwrap();
        for k in info["encodings"].as_object().unwrap().keys() {
            used.insert(k.clone());
        }
    }
    for codec in ["jpeg-lepton", "wav-flac", "lzma2-bcj", "zstd-long"] {
        assert!(
            used.iter().any(|u| u.starts_with(codec)),
            "no file stored with {codec} at the default level: {used:?}"
        );
    }
    assert!(
        !used.iter().any(|u| u.starts_with("deflate-")),
        "deflate rebuilding is for level max: {used:?}"
    );
    m.remount();
    for (class, src) in &files {
        let p = on_mount(&m, class, src);
        assert!(
            fs::read(&p).unwrap() == fs::read(src).unwrap(),
            "after remount: {}",
            p.display()
        );
    }
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "{out}");
}

/// Small text-like files are written with their class's trained dictionary from the start (at
/// every compressing level), and recompression upgrades them in place; other content keeps
/// plain zstd.
#[test]
fn small_text_files_are_written_with_dictionaries() {
    let mut m = Mounted::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let small_json = samples()
        .into_iter()
        .filter(|(c, _)| c == "json")
        .map(|(_, p)| p)
        .min_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let source = root.join("source/measure_profile.py");
    // Binary content has no dictionary.
    let elf = root.join("elf/users");
    let encodings = |m: &Mounted, p: &std::path::Path| -> Vec<String> {
        let info: serde_json::Value =
            serde_json::from_str(&xattr(m, p, "user.idcfs.fileinfo")).unwrap();
        info["encodings"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    for level in ["fast", "balanced"] {
        let dir = m.path(level);
        fs::create_dir_all(&dir).unwrap();
        sh(
            m.dir.path(),
            &format!(
                "{} policy set {} level={level}",
                crate::util::BIN,
                dir.display()
            ),
        );
        for src in [&small_json, &source, &elf] {
            fs::copy(src, dir.join(src.file_name().unwrap())).unwrap();
        }
        sh(m.dir.path(), "sync");
        let lvl = if level == "fast" { 1 } else { 3 };
        for (src, dict) in [(&small_json, "json"), (&source, "source")] {
            let p = dir.join(src.file_name().unwrap());
            let want = format!("zstd-dict:{dict}:{lvl}");
            assert_eq!(encodings(&m, &p), [want], "{level}: {}", p.display());
        }
        let p = dir.join(elf.file_name().unwrap());
        let e = encodings(&m, &p);
        assert!(
            e.len() == 1 && e[0].starts_with("zstd:"),
            "{level}: {}: {e:?}",
            p.display()
        );
    }
    // Recompression (balanced: zstd -9) keeps the dictionary and raises the level; content
    // is unchanged across it and a remount.
    let dir = m.path("balanced");
    let p = dir.join(small_json.file_name().unwrap());
    let before: u64 =
        serde_json::from_str::<serde_json::Value>(&xattr(&m, &p, "user.idcfs.fileinfo")).unwrap()
            ["stored"]
            .as_u64()
            .unwrap();
    let out = m.idcfs(&["recompress", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let info: serde_json::Value =
        serde_json::from_str(&xattr(&m, &p, "user.idcfs.fileinfo")).unwrap();
    assert_eq!(encodings(&m, &p), ["zstd-dict:json:9"]);
    assert!(
        info["stored"].as_u64().unwrap() <= before,
        "{info} vs {before}"
    );
    m.remount();
    for level in ["fast", "balanced"] {
        for src in [&small_json, &source, &elf] {
            let p = m.path(level).join(src.file_name().unwrap());
            assert!(
                fs::read(&p).unwrap() == fs::read(src).unwrap(),
                "{}",
                p.display()
            );
        }
    }
}
