//! Per-directory policies, recompression and the operator's commands, through a real mount.

use crate::util::{data, sh, Mounted};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn fileinfo(m: &Mounted, rel: &str) -> serde_json::Value {
    let out = sh(
        m.dir.path(),
        &format!(
            "getfattr --only-values -n user.idcfs.fileinfo {}",
            m.path(rel).display()
        ),
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("fileinfo {rel}: {e}: {out}"))
}

fn encodings(m: &Mounted, rel: &str) -> Vec<String> {
    fileinfo(m, rel)["encodings"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn idcfs_ok(m: &Mounted, args: &[&str]) -> String {
    let out = m.idcfs(args);
    assert!(
        out.status.success(),
        "idcfs {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Real text: this crate's sources, concatenated.
fn text(min: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut stack = vec![std::path::PathBuf::from(root)];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                v.extend(fs::read(&p).unwrap());
            }
        }
    }
    let mut i = 0u32;
    while v.len() < min {
        // Vary the copies so they are not trivially repetitive.
        let chunk: Vec<u8> = v[..v.len().min(200_000)]
            .iter()
            .map(|b| {
                if b.is_ascii_digit() {
                    b'0' + ((b - b'0' + (i % 10) as u8) % 10)
                } else {
                    *b
                }
            })
            .collect();
        v.extend(chunk);
        i += 1;
    }
    v
}

#[test]
fn inheritance_override_xattr_and_refusals() {
    let m = Mounted::new();
    let a = m.path("a");
    fs::create_dir_all(a.join("b/c")).unwrap();
    let (a_s, b_s, c_s) = (
        a.to_str().unwrap(),
        a.join("b").display().to_string(),
        a.join("b/c").display().to_string(),
    );
    idcfs_ok(&m, &["policy", "set", a_s, "level=max", "dedup=on"]);
    idcfs_ok(
        &m,
        &["policy", "set", &b_s, "level=fast", "lossy=image:q=90"],
    );
    let show = idcfs_ok(&m, &["policy", "show", &c_s]);
    assert!(show.contains("level=fast\t(from /a/b)"), "{show}");
    assert!(show.contains("dedup=on\t(from /a)"), "{show}");
    assert!(show.contains("lossy=image:q=90\t(from /a/b)"), "{show}");
    // A file's policy is its directory's.
    fs::write(a.join("b/c/f"), b"x").unwrap();
    assert!(
        idcfs_ok(&m, &["policy", "show", a.join("b/c/f").to_str().unwrap()]).contains("level=fast")
    );
    // The same policy as an extended attribute.
    let x = sh(
        m.dir.path(),
        &format!("getfattr --only-values -n user.idcfs.policy {a_s}"),
    );
    assert_eq!(x, "level=max dedup=on");
    sh(
        m.dir.path(),
        &format!("setfattr -n user.idcfs.policy -v 'level=archive' {c_s}"),
    );
    assert!(idcfs_ok(&m, &["policy", "show", &c_s]).contains("level=archive\t(from /a/b/c)"));
    // Unset: inherits again.
    idcfs_ok(&m, &["policy", "unset", &b_s, "level"]);
    assert!(idcfs_ok(&m, &["policy", "show", &b_s]).contains("level=max\t(from /a)"));
    // Refusals: CLI message, EINVAL through xattrs with the reason in the daemon log.
    for (bad, why) in [
        ("level=ultra", "level 'ultra'"),
        ("colour=red", "unknown policy key"),
        ("lossy=image:q=300", "outside 1..100"),
    ] {
        let out = m.idcfs(&["policy", "set", a_s, bad]);
        assert!(!out.status.success(), "{bad} accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = std::process::Command::new("setfattr")
            .args(["-n", "user.idcfs.policy", "-v", bad, a_s])
            .output()
            .unwrap();
        assert!(!r.status.success());
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("Invalid argument"),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        m.log_text().contains("policy refused: level 'ultra'"),
        "daemon logs the reason"
    );
    assert_eq!(
        sh(
            m.dir.path(),
            &format!("getfattr --only-values -n user.idcfs.policy {a_s}")
        ),
        "level=max dedup=on",
        "refused policy left the old one"
    );
    let r = std::process::Command::new("setfattr")
        .args(["-n", "user.idcfs.policy", "-v", "level=max"])
        .arg(a.join("b/c/f"))
        .output()
        .unwrap();
    assert!(!r.status.success(), "policies live on directories only");
}

#[test]
fn levels_apply_to_new_writes_and_recompress_applies_to_old() {
    let mut m = Mounted::new();
    for d in ["off", "fast", "max"] {
        fs::create_dir(m.path(d)).unwrap();
    }
    idcfs_ok(
        &m,
        &[
            "policy",
            "set",
            m.path("off").to_str().unwrap(),
            "level=off",
        ],
    );
    idcfs_ok(
        &m,
        &[
            "policy",
            "set",
            m.path("fast").to_str().unwrap(),
            "level=fast",
        ],
    );
    let t = text(1 << 20);
    for d in ["off", "fast", "max", "."] {
        fs::write(m.path(&format!("{d}/t")), &t).unwrap();
    }
    assert_eq!(encodings(&m, "off/t"), vec!["raw"]);
    assert_eq!(encodings(&m, "fast/t"), vec!["zstd:1"]);
    assert_eq!(encodings(&m, "t"), vec!["zstd:3"]);
    // A policy change applies to new writes; `recompress` applies it to existing files.
    idcfs_ok(
        &m,
        &[
            "policy",
            "set",
            m.path("max").to_str().unwrap(),
            "level=max",
        ],
    );
    let before = fileinfo(&m, "max/t")["stored"].as_u64().unwrap();
    let out = idcfs_ok(&m, &["recompress", m.path("max").to_str().unwrap()]);
    assert!(out.contains("recompressed 1 files"), "{out}");
    // Text at level=max: one long-window zstd frame over the whole file.
    assert_eq!(encodings(&m, "max/t"), vec!["zstd-long"]);
    let after = fileinfo(&m, "max/t")["stored"].as_u64().unwrap();
    assert!(
        after < before,
        "zstd -19 must store less: {before} -> {after}"
    );
    assert_eq!(
        encodings(&m, "fast/t"),
        vec!["zstd:1"],
        "untouched outside PATH"
    );
    m.remount();
    for d in ["off", "fast", "max", "."] {
        assert!(fs::read(m.path(&format!("{d}/t"))).unwrap() == t, "{d}/t");
    }
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "{out}");
}

#[test]
fn recompression_under_concurrent_reader_and_writer() {
    let conf = tempfile::NamedTempFile::new().unwrap();
    fs::write(
        conf.path(),
        "[policy]\nlevel = \"max\"\n[background]\nidle_secs = 1\n",
    )
    .unwrap();
    let mut m = Mounted::with_args(&["--config", conf.path().to_str().unwrap()]);
    const PAGES: usize = 32 * 32; // 32 blocks of 32 pages
                                  // Every 4 KiB page names its block, version and page, so a reader can check any page.
    let page = |blk: usize, ver: u32, pg: usize| -> Vec<u8> {
        let mut v = format!("block {blk:04} version {ver:06} page {pg:02} ").into_bytes();
        v.extend(
            text(0)
                .iter()
                .cycle()
                .skip((blk * 7 + pg) * 131)
                .take(4096 - v.len()),
        );
        v
    };
    let block =
        |blk: usize, ver: u32| -> Vec<u8> { (0..32).flat_map(|pg| page(blk, ver, pg)).collect() };
    let p = m.path("shared");
    {
        let f = File::create(&p).unwrap();
        for b in 0..32 {
            f.write_all_at(&block(b, 0), (b * 131072) as u64).unwrap();
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (p, stop) = (p.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = File::open(&p).unwrap();
            let mut buf = vec![0u8; 4096];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let pg = (n as usize * 7919) % PAGES;
                f.read_exact_at(&mut buf, (pg * 4096) as u64).unwrap();
                let head = String::from_utf8_lossy(&buf[..40]).into_owned();
                assert!(
                    head.starts_with(&format!("block {:04} version", pg / 32)),
                    "page {pg} reads {head:?}"
                );
                n += 1;
            }
            n
        })
    };
    let mut last = [0u32; 32];
    let t0 = Instant::now();
    let mut recompressed = false;
    let mut v = 0;
    while t0.elapsed() < Duration::from_secs(20) {
        // Bursts of writes with pauses longer than idle_secs let the background recompressor in.
        v += 1;
        {
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            for b in (v as usize % 3..32).step_by(3) {
                f.write_all_at(&block(b, v), (b * 131072) as u64).unwrap();
                last[b] = v;
            }
        }
        // Meanwhile an explicit recompression too.
        if v % 2 == 0 {
            idcfs_ok(&m, &["recompress", p.to_str().unwrap()]);
        }
        std::thread::sleep(Duration::from_millis(1500));
        let strong = |e: &String| e == "zstd:19" || e == "zstd-long";
        let enc = encodings(&m, "shared");
        if !enc.is_empty() && enc.iter().all(strong) && v >= 4 {
            recompressed = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 100, "reader made progress ({reads} reads)");
    assert!(
        recompressed,
        "file never fully recompressed: {:?}",
        fileinfo(&m, "shared")
    );
    let got = fs::read(&p).unwrap();
    for b in 0..32 {
        assert!(
            got[b * 131072..(b + 1) * 131072] == block(b, last[b])[..],
            "block {b} lost the writer's version {}",
            last[b]
        );
    }
    m.remount();
    let got2 = fs::read(&p).unwrap();
    assert!(got == got2);
}

#[test]
fn kill9_during_recompression() {
    let mut m = Mounted::new();
    let t = text(24 << 20);
    for d in ["big", "calib"] {
        fs::create_dir(m.path(d)).unwrap();
        fs::write(m.path(&format!("{d}/t")), &t).unwrap();
        idcfs_ok(
            &m,
            &["policy", "set", m.path(d).to_str().unwrap(), "level=max"],
        );
    }
    // How long recompressing this file takes on this machine now: the kills land at fixed
    // fractions of it, so they interrupt the work however fast or loaded the machine is.
    let t0 = std::time::Instant::now();
    idcfs_ok(&m, &["recompress", m.path("calib").to_str().unwrap()]);
    let full = t0.elapsed().as_millis() as u64;
    assert_eq!(encodings(&m, "calib/t"), vec!["zstd-long"]);
    // Early, middle and late, with margin for the load changing between runs.
    for delay in [full / 6, full / 3, full / 2] {
        let child = std::process::Command::new(crate::util::BIN)
            .args(["recompress", m.path("big").to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let mut child = child;
        // The kill must land while the recompression runs: the command has not returned...
        assert!(
            child.try_wait().unwrap().is_none(),
            "recompression finished within {delay} ms (a full one took {full} ms): the kill would not interrupt it"
        );
        m.kill9();
        // ...and it fails because the daemon died under it.
        let st = child.wait().unwrap();
        assert!(
            !st.success(),
            "recompress reported success although the daemon was killed at {delay} ms"
        );
        let (code, out) = m.fsck();
        assert_eq!(code, 0, "fsck after kill -9 at {delay} ms: {out}");
        m.mount();
        assert!(
            fs::read(m.path("big/t")).unwrap() == t,
            "contents after kill -9 at {delay} ms"
        );
    }
    idcfs_ok(&m, &["recompress", m.path("big").to_str().unwrap()]);
    assert_eq!(encodings(&m, "big/t"), vec!["zstd-long"]);
    assert!(fs::read(m.path("big/t")).unwrap() == t);
}

#[test]
fn status_and_compact_report() {
    let m = Mounted::new();
    fs::write(m.path("f"), data(1, 500_000)).unwrap();
    let out = idcfs_ok(&m, &["status"]);
    assert!(
        out.contains(m.mnt.to_str().unwrap()) && out.contains("recompress queue"),
        "{out}"
    );
    let out = idcfs_ok(&m, &["compact", m.mnt.to_str().unwrap()]);
    assert!(
        out.contains("recompressed 1 files") && out.contains("store now"),
        "{out}"
    );
}

#[test]
fn dedup_stores_copies_once() {
    let mut m = Mounted::new();
    fs::create_dir_all(m.path("d/sub")).unwrap();
    fs::create_dir(m.path("nodedup")).unwrap();
    idcfs_ok(
        &m,
        &["policy", "set", m.path("d").to_str().unwrap(), "dedup=on"],
    );
    // Incompressible data: only deduplication can save space.
    let mut x = vec![0u8; 8 << 20];
    File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut x)
        .unwrap();
    fs::write(m.path("d/a"), &x).unwrap();
    sh(m.dir.path(), "sync");
    let s1 = m.stats_json()["stored_bytes"].as_u64().unwrap();
    fs::write(m.path("d/sub/b"), &x).unwrap();
    fs::write(m.path("d/c"), &x).unwrap();
    sh(m.dir.path(), "sync");
    let s2 = m.stats_json()["stored_bytes"].as_u64().unwrap();
    assert!(
        s2 - s1 < (1 << 20),
        "two more copies of 8 MiB grew the store by {} bytes",
        s2 - s1
    );
    // Without dedup the copy costs its size.
    fs::write(m.path("nodedup/e"), &x).unwrap();
    sh(m.dir.path(), "sync");
    let s3 = m.stats_json()["stored_bytes"].as_u64().unwrap();
    assert!(
        s3 - s2 > (7 << 20),
        "dedup=off must store the copy: {}",
        s3 - s2
    );
    // Modifying one copy leaves the others intact; deleting leaves the rest readable.
    OpenOptions::new()
        .write(true)
        .open(m.path("d/c"))
        .unwrap()
        .write_all_at(b"changed", 4_000_000)
        .unwrap();
    fs::remove_file(m.path("d/a")).unwrap();
    let mut y = x.clone();
    y[4_000_000..4_000_007].copy_from_slice(b"changed");
    assert!(fs::read(m.path("d/sub/b")).unwrap() == x);
    assert!(fs::read(m.path("d/c")).unwrap() == y);
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "{out}");
    // Compaction and a rebuild from the packs keep the shared records consistent.
    let out = m.idcfs(&["compact", m.store.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_file(m.store.join("index.redb")).unwrap();
    m.mount();
    assert!(fs::read(m.path("d/sub/b")).unwrap() == x);
    assert!(fs::read(m.path("d/c")).unwrap() == y);
    assert!(fs::read(m.path("nodedup/e")).unwrap() == x);
    fs::remove_file(m.path("d/sub/b")).unwrap();
    fs::remove_file(m.path("d/c")).unwrap();
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "after deleting every copy: {out}");
}
