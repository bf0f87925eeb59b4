//! Space and accounting through a real mount: deduplication of every block (single-block
//! files and tails included, concurrent writers), per-path stats, garbage reclaimed without
//! `idcfs compact`, and whole-file objects compacted any number of times.

use crate::util::{data, random, sh, Mounted, BIN};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

fn pack_bytes(m: &Mounted) -> u64 {
    m.stats_json()["pack_bytes"].as_u64().unwrap()
}

fn packs(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pack"))
        .collect();
    v.sort();
    v
}

/// Random (incompressible) files of many sizes: only deduplication can save their space.
fn tree(root: &Path, seed: u64) -> u64 {
    let mut total = 0;
    fs::create_dir_all(root.join("sub")).unwrap();
    for i in 0..60u64 {
        // single-block files, exact blocks, and multi-block files with a tail
        let len = match i % 4 {
            0 => 1 + (i * 977) as usize % 4000,
            1 => 5000 + (i * 7919) as usize % 120_000,
            2 => 131_072,
            _ => 300_000 + (i * 3331) as usize % 100_000,
        };
        let dir = if i % 2 == 0 { "" } else { "sub/" };
        fs::write(root.join(format!("{dir}f{i}")), random(len, seed + i)).unwrap();
        total += len as u64;
    }
    total
}

#[test]
fn dedup_covers_single_block_files_and_tails_and_concurrent_writers() {
    let m = Mounted::new();
    idcfs_policy(&m, "", "dedup=on");
    let src = tempfile::tempdir_in("/var/tmp").unwrap();
    let total = tree(src.path(), 1);
    sh(
        m.dir.path(),
        &format!("cp -r {} {}", src.path().display(), m.path("a").display()),
    );
    sh(m.dir.path(), "sync");
    let s1 = pack_bytes(&m);
    assert!(s1 > total, "incompressible data stored: {s1} < {total}");
    sh(
        m.dir.path(),
        &format!("cp -r {} {}", m.path("a").display(), m.path("b").display()),
    );
    sh(m.dir.path(), "sync");
    let s2 = pack_bytes(&m);
    // Only metadata (inodes, names, references) may be added: well under 2% of the data.
    assert!(
        s2 - s1 < total / 50,
        "a second copy of {total} bytes grew the packs by {} bytes",
        s2 - s1
    );
    // Several writers copying the same files at once: one stored copy, exact references.
    let src2 = tempfile::tempdir_in("/var/tmp").unwrap();
    let total2 = tree(src2.path(), 1000);
    let mut kids = Vec::new();
    for w in 0..4 {
        kids.push(
            std::process::Command::new("cp")
                .arg("-r")
                .arg(src2.path())
                .arg(m.path(&format!("w{w}")))
                .spawn()
                .unwrap(),
        );
    }
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    sh(m.dir.path(), "sync");
    let s3 = pack_bytes(&m);
    assert!(
        s3 - s2 < total2 + total2 / 20,
        "four concurrent copies of {total2} bytes grew the packs by {}",
        s3 - s2
    );
    for w in 0..4 {
        sh(
            m.dir.path(),
            &format!(
                "diff -r {} {}",
                src2.path().display(),
                m.path(&format!("w{w}")).display()
            ),
        );
    }
    sh(
        m.dir.path(),
        &format!("diff -r {} {}", src.path().display(), m.path("b").display()),
    );
    let mut m = m;
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "{out}");
}

fn idcfs_policy(m: &Mounted, rel: &str, pol: &str) {
    sh(
        m.dir.path(),
        &format!("{BIN} policy set '{}' {pol}", m.path(rel).display()),
    );
}

fn stats_of(m: &Mounted, rel: &str) -> serde_json::Value {
    let out = m.idcfs(&["stats", "--json", m.path(rel).to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn per_path_stats_of_siblings_add_up_to_their_parent() {
    let m = Mounted::new();
    fs::create_dir_all(m.path("p/a/deep")).unwrap();
    fs::create_dir_all(m.path("p/b")).unwrap();
    fs::create_dir_all(m.path("q")).unwrap();
    let text: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("line {i} of some text\n").into_bytes())
        .collect();
    fs::write(m.path("p/a/t1"), &text[..1_000_000]).unwrap();
    fs::write(m.path("p/a/deep/t2"), &text[..300_000]).unwrap();
    fs::write(m.path("p/b/r"), random(200_000, 5)).unwrap();
    fs::write(m.path("p/own"), &text[..5000]).unwrap();
    fs::write(m.path("q/elsewhere"), data(6, 500_000)).unwrap();
    // A hard link inside the tree counts once.
    fs::hard_link(m.path("p/b/r"), m.path("p/b/r2")).unwrap();
    sh(m.dir.path(), "sync");
    let p = stats_of(&m, "p");
    let a = stats_of(&m, "p/a");
    let b = stats_of(&m, "p/b");
    let own = stats_of(&m, "p/own");
    let whole = stats_of(&m, "");
    assert!(p["subtree"].as_str().unwrap().ends_with("/p"), "{p}");
    assert!(
        whole["subtree"].is_null(),
        "the mount root gives the whole store"
    );
    for key in ["logical_bytes", "stored_bytes", "files"] {
        let sum = a[key].as_u64().unwrap() + b[key].as_u64().unwrap() + own[key].as_u64().unwrap();
        assert_eq!(p[key].as_u64().unwrap(), sum, "{key}: {p} vs {a} {b} {own}");
    }
    assert_eq!(a["logical_bytes"].as_u64().unwrap(), 1_300_000);
    assert_eq!(b["logical_bytes"].as_u64().unwrap(), 200_000);
    assert_eq!(b["files"].as_u64().unwrap(), 1);
    assert_eq!(p["files"].as_u64().unwrap(), 4);
    // Text compresses, random data does not: the subtree says so.
    assert!(a["stored_bytes"].as_u64().unwrap() < 300_000, "{a}");
    assert!(b["stored_bytes"].as_u64().unwrap() >= 200_000, "{b}");
    // Rows per entry directly below, per codec and per class add up too.
    for rows in ["top_dirs", "codecs", "classes"] {
        let sum: u64 = p[rows]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["logical_bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(sum, 1_505_000, "{rows}: {p}");
    }
    let names: Vec<&str> = p["top_dirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"a") && names.contains(&"b") && names.contains(&"own"),
        "{names:?}"
    );
    assert!(whole["logical_bytes"].as_u64().unwrap() >= 2_005_000);
    // A directory with more entries than an answer carries rows for: the smallest are
    // folded into one row, and the rows still add up.
    fs::create_dir(m.path("many")).unwrap();
    for i in 0..250 {
        fs::write(
            m.path(&format!("many/file-with-a-longish-name-{i:04}")),
            vec![b'x'; 100 + i],
        )
        .unwrap();
    }
    let many = stats_of(&m, "many");
    let rows = many["top_dirs"].as_array().unwrap();
    assert!(
        rows.len() <= 100 && rows.iter().any(|r| r["name"] == "(151 more)"),
        "{many}"
    );
    let sum: u64 = rows
        .iter()
        .map(|r| r["logical_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, many["logical_bytes"].as_u64().unwrap());
    assert_eq!(many["files"].as_u64().unwrap(), 250);
    // Human output names the path.
    let out = m.idcfs(&["stats", m.path("p/a").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/p/a") && text.contains("2 files"), "{text}");
}

/// Waits until the packs hold at most 10% garbage, returning (garbage, pack bytes).
fn settles(m: &Mounted, what: &str) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = m.stats_json();
        let packs = s["pack_bytes"].as_u64().unwrap();
        let garbage = s["unreferenced_bytes"].as_u64().unwrap();
        if garbage * 10 <= packs {
            return (garbage, packs);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {garbage} of {packs} pack bytes still garbage after 120 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn space_comes_back_without_compact() {
    let conf = tempfile::NamedTempFile::new().unwrap();
    fs::write(conf.path(), "[background]\nidle_secs = 1\n").unwrap();
    let m = Mounted::with_args(&["--config", conf.path().to_str().unwrap()]);
    // Deletes: a quarter of 24 MiB of files removed, nothing else happens.
    for i in 0..24 {
        fs::write(m.path(&format!("f{i}")), data(100 + i, 1 << 20)).unwrap();
    }
    sh(m.dir.path(), "sync");
    for i in 0..8 {
        fs::remove_file(m.path(&format!("f{i}"))).unwrap();
    }
    let (g, p) = settles(&m, "after deletes");
    assert!(
        p < 20 << 20,
        "deleted data still held: {p} pack bytes ({g} garbage)"
    );
    // Recompression: compressible files rewritten in the background leave their first
    // encoding behind, which must go too.
    let text: Vec<u8> = (0..1_500_000u32)
        .flat_map(|i| format!("{} {}\n", i % 977, i % 13).into_bytes())
        .collect();
    for i in 0..4 {
        fs::write(m.path(&format!("t{i}")), &text[i * 1000..]).unwrap();
    }
    sh(m.dir.path(), "sync");
    settles(&m, "after recompression");
    let s = m.stats_json();
    assert!(s["saved_bytes"].as_i64().unwrap() > 0, "{s}");
    for i in 0..4 {
        assert!(fs::read(m.path(&format!("t{i}"))).unwrap() == text[i * 1000..]);
    }
    for i in 8..24 {
        assert!(fs::read(m.path(&format!("f{i}"))).unwrap() == data(100 + i as u64, 1 << 20));
    }
    let mut m = m;
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "{out}");
}

/// Polls until `ok(pack bytes, garbage)` holds, for at most `secs`; returns the last figures.
fn until(m: &Mounted, secs: u64, ok: impl Fn(u64, u64) -> bool) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = m.stats_json();
        let (p, g) = (
            s["pack_bytes"].as_u64().unwrap(),
            s["unreferenced_bytes"].as_u64().unwrap(),
        );
        if ok(p, g) || Instant::now() >= deadline {
            return (p, g);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_second_copy_leaves_no_garbage_once_idle() {
    // The metadata records of a copy that deduplicates entirely (new inodes, names, block
    // references) are garbage once a checkpoint restates them; the mount must reclaim them
    // by itself even when they are a small share of a store whose data sits in one pack.
    let conf = tempfile::NamedTempFile::new().unwrap();
    fs::write(
        conf.path(),
        "[policy]\ndedup = true\n[background]\nidle_secs = 1\n",
    )
    .unwrap();
    let m = Mounted::with_args(&["--config", conf.path().to_str().unwrap()]);
    let src = m.path("a");
    fs::create_dir_all(src.join("small")).unwrap();
    for i in 0..48u64 {
        fs::write(src.join(format!("big{i}")), random(1 << 20, 500 + i)).unwrap();
    }
    for i in 0..2000u64 {
        let text = format!(
            "file {i}: {}\n",
            "some words that repeat ".repeat(20 + i as usize % 7)
        );
        fs::write(src.join("small").join(format!("s{i}.txt")), text).unwrap();
    }
    sh(m.dir.path(), "sync");
    // The first copy settles: nothing left to reclaim but the newest checkpoint, and once
    // idle the pack holding it is sealed, so what comes next goes to a pack of its own.
    let (s1, g1) = until(&m, 120, |p, g| g * 100 <= p && packs(&m.store).len() >= 2);
    assert!(
        packs(&m.store).len() >= 2,
        "the full active pack was not sealed once idle: {:?}",
        packs(&m.store)
    );
    assert!(
        g1 * 100 <= s1,
        "first copy: {g1} of {s1} pack bytes garbage"
    );
    sh(
        m.dir.path(),
        &format!("cp -a {} {}", src.display(), m.path("b").display()),
    );
    sh(m.dir.path(), "sync");
    let (s2, g2) = until(&m, 120, |p, _| p > s1 && p - s1 < s1 / 100);
    assert!(
        s2 > s1 && s2 - s1 < s1 / 100,
        "a second copy grew the packs from {s1} to {s2} bytes ({g2} garbage): more than 1%"
    );
    eprintln!("second copy: packs {s1} -> {s2} bytes ({g2} unreferenced)");
    assert!(
        fs::read(m.path("b/big7")).unwrap() == random(1 << 20, 507),
        "the copy reads back"
    );
    let mut m = m;
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "{out}");
}

#[test]
fn compaction_moves_whole_file_objects_any_number_of_times() {
    let mut m = Mounted::new();
    let jpeg = fs::read(
        fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    fs::write(m.path("photo.jpg"), &jpeg).unwrap();
    fs::write(m.path("filler"), data(7, 4 << 20)).unwrap();
    sh(
        m.dir.path(),
        &format!(
            "setfattr -n user.idcfs.recompress_now '{}'",
            m.path("photo.jpg").display()
        ),
    );
    let info = sh(
        m.dir.path(),
        &format!(
            "getfattr --only-values -n user.idcfs.fileinfo '{}'",
            m.path("photo.jpg").display()
        ),
    );
    assert!(
        info.contains("jpeg"),
        "the photo is one lepton object: {info}"
    );
    let mut seen_before: Vec<String> = Vec::new();
    for round in 0..3 {
        fs::remove_file(m.path("filler")).unwrap();
        sh(m.dir.path(), "sync");
        let before = packs(&m.store);
        let out = m.idcfs(&["compact", m.mnt.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after = packs(&m.store);
        // Every pack that held the object before this round is gone.
        for p in &before {
            assert!(
                !after.contains(p),
                "round {round}: {p} survived compaction ({after:?})"
            );
        }
        for p in &seen_before {
            assert!(!after.contains(p));
        }
        seen_before.extend(before);
        assert!(
            fs::read(m.path("photo.jpg")).unwrap() == jpeg,
            "round {round}"
        );
        fs::write(m.path("filler"), data(8 + round, 4 << 20)).unwrap();
    }
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "{out}");
    m.mount();
    assert!(fs::read(m.path("photo.jpg")).unwrap() == jpeg);
}

#[test]
fn identical_files_share_one_whole_file_object() {
    let mut m = Mounted::new();
    fs::create_dir(m.path("d")).unwrap();
    idcfs_policy(&m, "d", "dedup=on");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg");
    let mut jpeg = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let d = fs::read(e.unwrap().path()).unwrap();
        if d.len() > jpeg.len() {
            jpeg = d;
        }
    }
    let recompress = |m: &Mounted, rel: &str| {
        sh(
            m.dir.path(),
            &format!(
                "setfattr -n user.idcfs.recompress_now '{}'",
                m.path(rel).display()
            ),
        );
    };
    let info = |m: &Mounted, rel: &str| {
        sh(
            m.dir.path(),
            &format!(
                "getfattr --only-values -n user.idcfs.fileinfo '{}'",
                m.path(rel).display()
            ),
        )
    };
    fs::write(m.path("d/a.jpg"), &jpeg).unwrap();
    recompress(&m, "d/a.jpg");
    assert!(
        info(&m, "d/a.jpg").contains("jpeg"),
        "{}",
        info(&m, "d/a.jpg")
    );
    m.idcfs(&["compact", m.mnt.to_str().unwrap()]);
    let before = pack_bytes(&m);
    // Copies in the same tree, then recompressed: they reference the first object.
    for c in ["d/b.jpg", "d/c.jpg"] {
        fs::write(m.path(c), &jpeg).unwrap();
        recompress(&m, c);
        assert!(info(&m, c).contains("jpeg"), "{c}: {}", info(&m, c));
    }
    // The copies' first blocks are garbage now, and idle reclaim sees it and takes it back
    // without `idcfs compact`: the shared object counts once in its pack, not once per file.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut after = pack_bytes(&m);
    while after >= before + jpeg.len() as u64 / 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        after = pack_bytes(&m);
    }
    assert!(
        after < before + jpeg.len() as u64 / 10,
        "two copies of a {}-byte JPEG grew the packs from {before} to {after}",
        jpeg.len()
    );
    // The original goes; the copies keep the object, through compaction, a remount and an
    // index rebuilt from the packs alone.
    fs::remove_file(m.path("d/a.jpg")).unwrap();
    m.idcfs(&["compact", m.mnt.to_str().unwrap()]);
    assert!(fs::read(m.path("d/b.jpg")).unwrap() == jpeg);
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "{out}");
    fs::remove_file(m.store.join("index.redb")).unwrap();
    m.mount();
    for c in ["d/b.jpg", "d/c.jpg"] {
        assert!(fs::read(m.path(c)).unwrap() == jpeg, "{c}");
    }
    fs::remove_file(m.path("d/b.jpg")).unwrap();
    m.idcfs(&["compact", m.mnt.to_str().unwrap()]);
    assert!(fs::read(m.path("d/c.jpg")).unwrap() == jpeg);
    fs::remove_file(m.path("d/c.jpg")).unwrap();
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "after deleting every copy: {out}");
}
