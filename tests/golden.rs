//! Golden stores: every store format idcfs ever wrote stays readable, exactly.
//!
//! `tests/data/golden/vN/` holds a small store written by the build that introduced format N
//! (`tests/golden/make-golden.sh`), with the SHA256SUMS and TREE that build saw through its
//! mount. Each later build must mount it (after `idcfs upgrade` when it is older than the
//! current format; mounting before that must be refused with a message naming the command),
//! read every file and attribute the same, pass fsck, and rebuild its index from the journal
//! alone to the same tree. When the format changes, a new golden store is added and the old
//! ones stay: upgrades are tested forever.

use crate::util::{sh, Mounted, BIN};
use idcfs::meta::{decode_ops, wire};
use idcfs::store::{LocalDir, PackBackend, PackLog};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden")
}

fn lists_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/lists.py")
}

/// The golden stores, oldest first: `vN` holds store format N as first written, `vN.R` the
/// same format at revision R (what later builds added without a new format: op tags, codecs).
fn stores() -> Vec<(u32, PathBuf)> {
    let mut v: Vec<((u32, u32), PathBuf)> = std::fs::read_dir(golden_dir())
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            let ver = name.strip_prefix('v')?;
            let (f, r) = ver.split_once('.').unwrap_or((ver, "0"));
            Some(((f.parse().ok()?, r.parse().ok()?), e.path()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|((f, _), p)| (f, p)).collect()
}

/// The key file of an encrypted golden store (format 3), as `--key-file` arguments.
fn key_args(golden: &Path) -> Vec<String> {
    let k = golden.join("key");
    if k.is_file() {
        vec!["--key-file".into(), k.to_string_lossy().into_owned()]
    } else {
        Vec::new()
    }
}

/// Op tags and codec ids a golden store must hold: everything its revision could write.
fn expected_coverage(golden: &Path) -> (BTreeSet<u8>, BTreeSet<u16>) {
    // v2.1 and later (v3 is v2.1 encrypted) hold the tags and codecs of revision 1; v2.2
    // adds codec 9 (context mixing at level=archive); v2.3 (revision 3, lossy storage) adds
    // op tag 21 (PutLossyObject) and codecs 11 (image-webp) and 12 (wav-opus); v2.4
    // (revision 4) adds op tag 22 (PACKED: checkpoints written as zstd frames of ops); v2.5
    // (no new op tag) adds the lossy codecs added after revision 4: 13 (image-learned) and 14
    // (image-avif), with image kinds PNM, BMP and TIFF and wav-opus payload version 2 (AIFF);
    // v2.6 (no new op tag) adds codec 15 (xz-recode: a Debian package and a bare xz stream);
    // v2.7 (no new op tag or codec) holds image-learned payload version 2 (predicted channels,
    // adapted tables, deblocking); v2.8 (likewise) one with AC prediction (flag bit 3).
    let name = golden.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.as_deref().unwrap_or_default();
    let xz6 = matches!(name, "v2.6" | "v2.7" | "v2.8");
    let lossy5 = xz6 || name == "v2.5";
    let revision4 = lossy5 || name == "v2.4";
    let revision3 = revision4 || name == "v2.3";
    let revision1 = revision3 || matches!(name, "v2.1" | "v3" | "v2.2");
    let last_tag = if revision4 {
        wire::tag::PACKED
    } else if revision3 {
        wire::tag::PUT_LOSSY_OBJECT
    } else if revision1 {
        wire::tag::REF_OBJECT
    } else {
        wire::tag::CHECKPOINT_END
    };
    // v2.2 was written on a disk more than 7/8 full, where deletes trigger compaction at once
    // and folded much of the script's second round into a checkpoint: its live journal need
    // not hold every op tag (v2.1, v2.3 and v3 do); it must hold every codec up to context
    // mixing.
    let tags = if name == "v2.2" {
        BTreeSet::from([
            wire::tag::PUT_INODE,
            wire::tag::PUT_DIRENT,
            wire::tag::CHECKPOINT_END,
        ])
    } else {
        (wire::tag::PUT_INODE..=last_tag).collect()
    };
    let codecs = match name {
        "v2.2" => (idcfs::codec::RAW..=idcfs::codec::CM).collect(),
        // Context mixing per block needs a text file above 8 MiB, which the script does not
        // write.
        "v2.3" | "v2.4" => (idcfs::codec::RAW..=idcfs::codec::WAV_OPUS)
            .filter(|&c| c != idcfs::codec::CM_BLOCK)
            .collect(),
        "v2.5" => (idcfs::codec::RAW..=idcfs::codec::IMAGE_AVIF)
            .filter(|&c| c != idcfs::codec::CM_BLOCK)
            .collect(),
        "v2.6" | "v2.7" | "v2.8" => (idcfs::codec::RAW..=idcfs::codec::XZ_RECODE)
            .filter(|&c| c != idcfs::codec::CM_BLOCK)
            .collect(),
        _ if revision1 => (idcfs::codec::RAW..=idcfs::codec::DEFLATE_TOKENS).collect(),
        _ => (idcfs::codec::RAW..=idcfs::codec::EXEC).collect(),
    };
    (tags, codecs)
}

/// Compare what the mount shows with the lists the writing build saw.
fn check_lists(m: &Mounted, golden: &Path, what: &str) {
    let out = m.dir.path().join(format!("lists-{what}"));
    std::fs::create_dir_all(&out).unwrap();
    sh(
        m.dir.path(),
        &format!(
            "python3 {} {} {}",
            lists_py().display(),
            m.mnt.display(),
            out.display()
        ),
    );
    for f in ["SHA256SUMS", "TREE"] {
        let want = std::fs::read_to_string(golden.join(f)).unwrap();
        let got = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(
            !want.trim().is_empty(),
            "{f} of {} is empty",
            golden.display()
        );
        assert_eq!(got, want, "{what}: {f} differs for {}", golden.display());
    }
}

#[test]
fn every_golden_store_reads_back_exactly() {
    let all = stores();
    assert!(
        all.len() >= 2,
        "expected the golden stores of formats 1 and 2, found {all:?}"
    );
    for (ver, golden) in all {
        let keys = key_args(&golden);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut m = Mounted::from_store_copy(&golden.join("store")).with_extra(&keys);
        if ver < idcfs::store::manifest::FORMAT {
            // Mounting as is must be refused, naming the upgrade command; nothing changes.
            let out = m.idcfs(&[
                "mount",
                "--store",
                m.store.to_str().unwrap(),
                m.mnt.to_str().unwrap(),
            ]);
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(
                !out.status.success(),
                "format {ver} store mounted without upgrade"
            );
            assert!(
                err.contains("idcfs upgrade") && err.contains(&format!("format {ver}")),
                "{err}"
            );
            let out = m.idcfs(&["fsck", m.store.to_str().unwrap()]);
            assert!(!out.status.success(), "fsck opened a format {ver} store");
            let out = m.idcfs(&["upgrade", m.store.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "upgrade failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        m.mount();
        check_lists(&m, &golden, "mounted");
        m.unmount();
        let store = m.store.to_str().unwrap().to_string();
        let out = m.idcfs(&[&["fsck", store.as_str()][..], &keys].concat());
        assert!(
            out.status.success(),
            "fsck of golden v{ver}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // The index is a cache: rebuilt from the journal alone, the tree must be the same.
        let out = m.idcfs(&[&["fsck", "--rebuild", store.as_str()][..], &keys].concat());
        assert!(
            out.status.success(),
            "fsck --rebuild of golden v{ver}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        m.mount();
        check_lists(&m, &golden, "rebuilt");
        // And it stays writable.
        std::fs::write(m.path("written-by-this-build"), b"hello").unwrap();
        m.remount();
        assert_eq!(
            std::fs::read(m.path("written-by-this-build")).unwrap(),
            b"hello"
        );
        m.unmount();
    }
}

/// Op tags and codec ids found in a store's journal.
fn coverage(golden: &Path) -> (BTreeSet<u8>, BTreeSet<u16>, BTreeSet<u8>) {
    let store = golden.join("store");
    let key = golden.join("key");
    let key = key.is_file().then(|| {
        let s = idcfs::crypto::Secret::from_key_file(&key).unwrap();
        Arc::new(idcfs::crypto::unlock(&store, &s).unwrap())
    });
    let packs = if store.join("journal").is_dir() {
        store.join("journal")
    } else {
        store.join("packs")
    };
    let backend: Arc<dyn PackBackend> = Arc::new(LocalDir::open(&packs).unwrap());
    let log = PackLog::open(backend.clone(), u64::MAX, key).unwrap();
    let (mut tags, mut codecs, mut versions) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for p in backend.list().unwrap() {
        let end = log
            .scan(p, 0, |_, r| {
                versions.insert(r.version);
                for op in decode_ops(r.version, &r.meta)? {
                    tags.insert(wire::op_tag(&op));
                }
                if r.version == 2 {
                    // Containers of ops (PACKED) are not ops: count them from the raw bytes.
                    tags.extend(wire::top_tags(&r.meta)?);
                }
                if let Some((h, _)) = &r.block {
                    codecs.insert(h.codec);
                }
                Ok(())
            })
            .unwrap();
        assert!(
            matches!(end, idcfs::store::ScanEnd::Clean { .. }),
            "golden pack {p} is not clean: {end:?}"
        );
    }
    (tags, codecs, versions)
}

#[test]
fn golden_stores_cover_every_op_and_codec() {
    let all = stores();
    // Some golden store holds everything this build writes (v3, the encrypted format, is
    // at revision 1; v2.2 holds revision 2's tags).
    let newest = all
        .iter()
        .filter_map(|(_, p)| expected_coverage(p).0.last().copied())
        .max();
    assert_eq!(
        newest,
        Some(wire::tag::LAST),
        "a golden store holds the newest op tags"
    );
    let newest_codec = all
        .iter()
        .filter_map(|(_, p)| expected_coverage(p).1.last().copied())
        .max();
    assert_eq!(
        newest_codec,
        Some(idcfs::codec::XZ_RECODE),
        "a golden store holds the newest codec"
    );
    for (ver, golden) in all {
        let (every_tag, every_codec) = expected_coverage(&golden);
        let name = golden
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (tags, codecs, versions) = coverage(&golden);
        let want_version = if ver == 1 { 1 } else { 2 };
        let ver = name;
        assert_eq!(
            versions,
            BTreeSet::from([want_version]),
            "golden {ver} record versions"
        );
        let missing: Vec<_> = every_tag.difference(&tags).collect();
        assert!(missing.is_empty(), "golden {ver} lacks op tags {missing:?}");
        let missing: Vec<_> = every_codec.difference(&codecs).collect();
        assert!(missing.is_empty(), "golden {ver} lacks codecs {missing:?}");
    }
    // The binary under test writes the newest format.
    let _ = BIN;
}
