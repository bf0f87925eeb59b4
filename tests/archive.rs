//! The archive tier through a real mount: text-like files under `level=archive` are recoded
//! with context mixing, read back bit-exact after recompression, remount and index rebuild,
//! and are stored smaller than under `level=max`.

use crate::util::{sh, Mounted};
use std::fs;
use std::path::{Path, PathBuf};

/// Real text-like files: the samples of tests/data, and one larger than the codec's
/// small-chunk limit (this project's own Rust source, concatenated).
fn inputs(scratch: &Path) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = Vec::new();
    for class in ["text", "source", "json"] {
        for f in fs::read_dir(root.join("tests/data").join(class)).unwrap() {
            v.push(f.unwrap().path());
        }
    }
    let mut big = Vec::new();
    let mut stack = vec![root.join("src")];
    let mut srcs = Vec::new();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                srcs.push(p);
            }
        }
    }
    srcs.sort();
    for p in srcs {
        big.extend(fs::read(p).unwrap());
        if big.len() > 400_000 {
            break;
        }
    }
    let p = scratch.join("big.rs");
    fs::write(&p, &big).unwrap();
    v.push(p);
    v.sort();
    v
}

fn fileinfo(m: &Mounted, p: &Path) -> serde_json::Value {
    let s = sh(
        m.dir.path(),
        &format!(
            "getfattr --only-values -n user.idcfs.fileinfo '{}'",
            p.display()
        ),
    );
    serde_json::from_str(&s).unwrap()
}

#[test]
fn archive_level_recodes_text_with_context_mixing_and_reads_back_exactly() {
    // With ONNX Runtime absent (a library path that does not exist): the archive tier does
    // not need it.
    let mut m = Mounted::with_args(&["--ort-lib", "/nonexistent/libonnxruntime.so"]);
    let files = inputs(m.dir.path());
    for (dir, level) in [("arch", "archive"), ("max", "max")] {
        fs::create_dir(m.path(dir)).unwrap();
        let out = m.idcfs(&[
            "policy",
            "set",
            m.path(dir).to_str().unwrap(),
            &format!("level={level}"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for f in &files {
            fs::copy(f, m.path(dir).join(f.file_name().unwrap())).unwrap();
        }
    }
    let check = |m: &Mounted, when: &str| {
        for dir in ["arch", "max"] {
            for f in &files {
                let p = m.path(dir).join(f.file_name().unwrap());
                assert!(
                    fs::read(&p).unwrap() == fs::read(f).unwrap(),
                    "{when}: {} differs",
                    p.display()
                );
            }
        }
    };
    check(&m, "after writing");
    // Recompression only takes closed files that have been quiet for a moment.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for dir in ["arch", "max"] {
        let out = m.idcfs(&["recompress", m.path(dir).to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    check(&m, "after recompression");
    let (mut arch, mut max) = (0u64, 0u64);
    for f in &files {
        let name = f.file_name().unwrap();
        let a = fileinfo(&m, &m.path("arch").join(name));
        let enc = a["encodings"].as_object().unwrap();
        assert!(
            enc.keys().all(|k| k == "context-mix"),
            "{}: {enc:?}\n{}",
            f.display(),
            m.log_text()
        );
        arch += a["stored"].as_u64().unwrap();
        let x = fileinfo(&m, &m.path("max").join(name));
        assert!(
            !x["encodings"]
                .as_object()
                .unwrap()
                .contains_key("context-mix"),
            "level=max must not use the archive codec"
        );
        max += x["stored"].as_u64().unwrap();
    }
    assert!(
        arch * 100 < max * 85,
        "archive {arch} bytes vs max {max}: less than 15% saved"
    );
    let status = m.idcfs(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let ours = status
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mountpoint"].as_str() == m.mnt.to_str())
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        ours["status"]["onnx_runtime"]
            .as_str()
            .unwrap()
            .starts_with("unavailable"),
        "{ours}"
    );
    let stats = m.stats_json();
    assert!(
        stats["codecs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["codec"] == "context-mix"),
        "{stats}"
    );
    // Cold reads after a remount, then after the index is rebuilt from the packs.
    m.remount();
    check(&m, "after remount");
    m.unmount();
    fs::remove_file(m.store.join("index.redb")).unwrap();
    let out = m.idcfs(&["fsck", "--rebuild", m.store.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "fsck --rebuild: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.mount();
    check(&m, "after the index was rebuilt");
    let info = fileinfo(&m, &m.path("arch/big.rs"));
    assert!(
        info["encodings"]
            .as_object()
            .unwrap()
            .contains_key("context-mix"),
        "{info}"
    );
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "{out}");
}
