//! Encryption at rest through a real mount: nothing readable in the store, tampering of any
//! kind reads as EIO for the files it touches only (and fsck names it), wrong secrets are
//! refused without writing, passphrase changes, rebuild, compaction and dedup on encrypted
//! stores, and two stores with the same content sharing nothing.

use crate::util::{idcfs, random, Mounted, BIN};
use idcfs::crypto::{unlock, Secret, StoreKey};
use idcfs::store::{Loc, LocalDir, PackBackend, PackLog};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// A fresh encrypted store protected by a key file, mounted.
fn encrypted() -> (Mounted, PathBuf) {
    let m = Mounted::unmounted(&[]);
    let key = m.dir.path().join("key");
    fs::write(&key, random(32, 77)).unwrap();
    ok(&[
        "init",
        "--encrypt",
        m.store.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    let mut m = m.with_extra(&["--key-file", key.to_str().unwrap()]);
    m.mount();
    (m, key)
}

fn key_of(store: &Path, key: &Path) -> Arc<StoreKey> {
    let s = Secret::from_key_file(key).unwrap();
    Arc::new(unlock(store, &s).unwrap())
}

/// Every record of the store with its location (opened with the key).
fn records(store: &Path, key: &Arc<StoreKey>) -> Vec<(Loc, idcfs::store::Record)> {
    let b: Arc<dyn PackBackend> = Arc::new(LocalDir::open(&store.join("journal")).unwrap());
    let log = PackLog::open(b.clone(), u64::MAX, Some(key.clone())).unwrap();
    let mut out = Vec::new();
    for p in b.list().unwrap() {
        log.scan(p, 0, |loc, r| {
            out.push((loc, r));
            Ok(())
        })
        .unwrap();
    }
    out
}

fn all_store_bytes(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_store_bytes(&p, out);
        } else {
            out.push((p.clone(), fs::read(&p).unwrap()));
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `idcfs ARGS`, which must succeed; what it printed.
fn ok(args: &[&str]) -> String {
    let (code, out) = idcfs(args);
    assert_eq!(code, 0, "idcfs {args:?} failed:\n{out}");
    out
}

/// `idcfs ARGS`, which must fail; what it printed.
fn fails(args: &[&str]) -> String {
    let (code, out) = idcfs(args);
    assert_ne!(code, 0, "idcfs {args:?} should have failed:\n{out}");
    out
}

fn fsck(store: &Path, key: &Path) -> (i32, String) {
    idcfs(&[
        "fsck",
        store.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ])
}

/// Rewrite the record checksum after changing its bytes, so the change looks like a
/// deliberate edit rather than a torn write.
fn fix_checksum(rec: &mut [u8]) {
    let mut h = blake3::Hasher::new();
    h.update(&rec[..64]);
    h.update(&rec[80..]);
    let sum = h.finalize();
    rec[64..80].copy_from_slice(&sum.as_bytes()[..16]);
}

fn pack_path(store: &Path, pack: u32) -> PathBuf {
    store.join("journal").join(format!("{pack:08x}.pack"))
}

#[test]
fn nothing_readable_in_an_encrypted_store() {
    let (mut m, key) = encrypted();
    let secret_name = "QuarterlyResultsConfidential";
    let secret_text = b"The merger with Initech closes on Friday; tell nobody.";
    let dir = m.path("ProjectBlueHarvest");
    fs::create_dir(&dir).unwrap();
    let mut body = Vec::new();
    for i in 0..2000 {
        body.extend_from_slice(secret_text);
        body.extend_from_slice(format!(" line {i}\n").as_bytes());
    }
    fs::write(dir.join(format!("{secret_name}.txt")), &body).unwrap();
    fs::write(dir.join("small.txt"), secret_text).unwrap();
    std::os::unix::fs::symlink("SymlinkTargetNameHidden", dir.join("link")).unwrap();
    let st = Command::new("setfattr")
        .args(["-n", "user.XattrNameHidden", "-v", "XattrValueHidden"])
        .arg(dir.join("small.txt"))
        .status()
        .unwrap();
    assert!(st.success());
    let v: serde_json::Value = serde_json::from_str(&ok(&["status", "--json"])).unwrap();
    let mine = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mountpoint"].as_str() == m.mnt.to_str())
        .cloned()
        .unwrap();
    assert_eq!(mine["status"]["encrypted"], true, "{mine}");
    m.unmount();
    let mut files = Vec::new();
    all_store_bytes(&m.store, &mut files);
    assert!(files.iter().any(|(p, _)| p.ends_with("index.redb")));
    for needle in [
        secret_name.as_bytes(),
        b"ProjectBlueHarvest",
        &secret_text[..30],
        b"Initech",
        b"SymlinkTargetNameHidden",
        b"XattrNameHidden",
        b"XattrValueHidden",
        b"small.txt",
    ] {
        for (p, bytes) in &files {
            assert!(
                !contains(bytes, needle),
                "{} found in {}",
                String::from_utf8_lossy(needle),
                p.display()
            );
        }
    }
    // The plain content hash of the data appears nowhere either (keyed hashes only).
    let plain_hash = idcfs::store::raw_hash(secret_text);
    for (p, bytes) in &files {
        assert!(
            !contains(bytes, &plain_hash),
            "plain hash in {}",
            p.display()
        );
    }
    m.mount();
    assert_eq!(
        fs::read(dir.join(format!("{secret_name}.txt"))).unwrap(),
        body
    );
    assert_eq!(
        fs::read_link(dir.join("link")).unwrap(),
        Path::new("SymlinkTargetNameHidden")
    );
    m.unmount();
    let (code, out) = fsck(&m.store, &key);
    assert_eq!(code, 0, "{out}");
    // Without the key: a locked check, which says what it could not check.
    let text = ok(&["fsck", "--locked", m.store.to_str().unwrap()]);
    assert!(text.contains("not checked without the key"), "{text}");
    // fsck with no way to get the key (no terminal) falls back to the locked check.
    let out = Command::new(BIN)
        .args(["fsck", m.store.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("locked check"),
        "{text}"
    );
    // A mount without any secret is refused, saying how to unlock.
    let out = Command::new(BIN)
        .args([
            "mount",
            "--store",
            m.store.to_str().unwrap(),
            m.mnt.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--passphrase-file"), "{err}");
    // A systemd credential unlocks it (LoadCredential=idcfs-key:… in the unit).
    let creds = m.dir.path().join("creds");
    fs::create_dir(&creds).unwrap();
    fs::copy(&key, creds.join("idcfs-key")).unwrap();
    let out = Command::new(BIN)
        .args(["fsck", m.store.to_str().unwrap()])
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("clean"));
}

#[test]
fn mount_encrypt_creates_an_encrypted_store() {
    let m = Mounted::unmounted(&[]);
    let pass = m.dir.path().join("pass");
    fs::write(&pass, "correct horse battery staple\n").unwrap();
    ok(&[
        "mount",
        "--encrypt",
        "--store",
        m.store.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
        m.mnt.to_str().unwrap(),
    ]);
    fs::write(m.path("hello.txt"), b"hello encrypted world").unwrap();
    ok(&["umount", m.mnt.to_str().unwrap()]);
    let manifest = fs::read_to_string(m.store.join("MANIFEST")).unwrap();
    assert!(manifest.starts_with("idcfs-store-format 3\n"), "{manifest}");
    let mut files = Vec::new();
    all_store_bytes(&m.store, &mut files);
    for (p, b) in &files {
        assert!(!contains(b, b"hello encrypted"), "{}", p.display());
        assert!(!contains(b, b"hello.txt"), "{}", p.display());
    }
    let mut m = m.with_extra(&["--passphrase-file", pass.to_str().unwrap()]);
    m.mount();
    assert_eq!(
        fs::read(m.path("hello.txt")).unwrap(),
        b"hello encrypted world"
    );
    m.unmount();
}

#[test]
fn wrong_secret_is_refused_and_nothing_is_written() {
    let (mut m, key) = encrypted();
    fs::write(m.path("a"), b"alpha").unwrap();
    m.unmount();
    let mut before = Vec::new();
    all_store_bytes(&m.store, &mut before);
    let wrong = m.dir.path().join("wrong");
    fs::write(&wrong, random(32, 78)).unwrap();
    let err = fails(&[
        "mount",
        "--store",
        m.store.to_str().unwrap(),
        "--key-file",
        wrong.to_str().unwrap(),
        m.mnt.to_str().unwrap(),
    ]);
    assert!(err.contains("wrong passphrase or key file"), "{err}");
    let pass = m.dir.path().join("pass");
    fs::write(&pass, "a passphrase\n").unwrap();
    fails(&[
        "fsck",
        m.store.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    let mut after = Vec::new();
    all_store_bytes(&m.store, &mut after);
    assert_eq!(before, after, "a refused unlock changed the store");
    // Change the secret to a passphrase: the old key file stops working, data stays.
    ok(&[
        "passwd",
        m.store.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
        "--new-passphrase-file",
        pass.to_str().unwrap(),
    ]);
    fails(&[
        "fsck",
        m.store.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    ok(&[
        "fsck",
        m.store.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    // A plain store refuses a key; an existing plain store cannot be turned encrypted.
    let mut plain = Mounted::new();
    plain.unmount();
    fails(&[
        "fsck",
        plain.store.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    let err = fails(&[
        "init",
        "--encrypt",
        plain.store.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert!(err.contains("not encrypted"), "{err}");
}

/// Files of equal size and random content: each is one record whose payload is the file.
fn write_set(m: &Mounted, n: u64, seed: u64, len: usize) -> Vec<(PathBuf, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let p = m.path(&format!("f{i}"));
            let d = random(len, seed + i);
            fs::write(&p, &d).unwrap();
            (p, d)
        })
        .collect()
}

/// The location of the record holding `data` as its (raw) payload, newest first.
fn record_of(recs: &[(Loc, idcfs::store::Record)], data: &[u8]) -> Vec<Loc> {
    let mut v: Vec<Loc> = recs
        .iter()
        .filter(|(_, r)| r.block.as_ref().is_some_and(|(_, p)| p == data))
        .map(|(l, _)| *l)
        .collect();
    v.reverse();
    v
}

fn read_all(files: &[(PathBuf, Vec<u8>)]) -> Vec<Result<bool, i32>> {
    files
        .iter()
        .map(|(p, d)| match fs::read(p) {
            Ok(got) => Ok(&got == d),
            Err(e) => Err(e.raw_os_error().unwrap_or(0)),
        })
        .collect()
}

#[test]
fn tampering_reads_as_eio_for_the_affected_files_only() {
    let (mut m, key) = encrypted();
    // Old versions first (still in the pack until compaction: material for a replay), then
    // the current ones.
    // Older versions are half the size, so any of their records fits in the span of a
    // current one (record lengths vary by a few bytes with their timestamps' varints).
    let old = write_set(&m, 12, 900, 10_000);
    m.unmount();
    m.mount();
    for (p, _) in &old {
        fs::remove_file(p).unwrap();
    }
    let files = write_set(&m, 12, 500, 20_000);
    m.unmount();
    let k = key_of(&m.store, &key);
    let recs = records(&m.store, &k);
    let locs: Vec<Loc> = files.iter().map(|(_, d)| record_of(&recs, d)[0]).collect();
    let old_locs: Vec<Loc> = old.iter().map(|(_, d)| record_of(&recs, d)[0]).collect();
    // Record lengths vary with the varint sizes of their timestamps: pick equal-length pairs
    // so a swap or replay moves no other record.
    let (s1, s2) = (0..12)
        .flat_map(|i| (i + 1..12).map(move |j| (i, j)))
        .find(|&(i, j)| locs[i].len == locs[j].len)
        .unwrap();
    // The replay puts f4's older record where f4's current one is (the rest of that span
    // zeroed).
    let (ro, r) = (4, 4);
    assert!(old_locs[ro].len < locs[r].len);
    let pristine = m.dir.path().join("pristine");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&m.store)
        .arg(&pristine)
        .status()
        .unwrap()
        .success());
    let restore = |m: &Mounted| {
        fs::remove_dir_all(&m.store).unwrap();
        assert!(Command::new("cp")
            .arg("-a")
            .arg(&pristine)
            .arg(&m.store)
            .status()
            .unwrap()
            .success());
    };
    let edit = |m: &Mounted, loc: Loc, f: &dyn Fn(&mut Vec<u8>)| {
        let p = pack_path(&m.store, loc.pack);
        let mut pack = fs::read(&p).unwrap();
        let mut rec = pack[loc.off as usize..(loc.off + loc.len as u64) as usize].to_vec();
        f(&mut rec);
        pack.splice(loc.off as usize..(loc.off + loc.len as u64) as usize, rec);
        fs::write(&p, pack).unwrap();
    };
    let check = |m: &mut Mounted, bad: &[usize], what: &str| {
        m.mount();
        let got = read_all(&files);
        for (i, g) in got.iter().enumerate() {
            if bad.contains(&i) {
                assert_eq!(*g, Err(libc::EIO), "{what}: f{i} should read as EIO");
            } else {
                assert_eq!(*g, Ok(true), "{what}: f{i} should be intact");
            }
        }
        m.unmount();
        let (code, out) = fsck(&m.store, &key);
        assert_eq!(code, 1, "{what}: fsck should report it:\n{out}");
        for &i in bad {
            assert!(
                out.contains(&format!("/f{i}")),
                "{what}: fsck does not name f{i}:\n{out}"
            );
        }
    };

    // 1. A flipped ciphertext byte (checksum recomputed: a deliberate edit).
    edit(&m, locs[1], &|r| {
        r[100] ^= 0x20;
        fix_checksum(r);
    });
    check(&mut m, &[1], "flip");
    restore(&m);

    let bytes_at = |m: &Mounted, l: Loc| {
        let pack = fs::read(pack_path(&m.store, l.pack)).unwrap();
        pack[l.off as usize..(l.off + l.len as u64) as usize].to_vec()
    };

    // 2. Two records swapped.
    let (a, b) = (bytes_at(&m, locs[s1]), bytes_at(&m, locs[s2]));
    edit(&m, locs[s1], &|r| r.copy_from_slice(&b));
    edit(&m, locs[s2], &|r| r.copy_from_slice(&a));
    check(&mut m, &[s1, s2], "swap");
    restore(&m);

    // 3. Replay: an older (authentic) record copied over a current one.
    let older = bytes_at(&m, old_locs[ro]);
    edit(&m, locs[r], &|rec| {
        rec.fill(0);
        rec[..older.len()].copy_from_slice(&older);
    });
    check(&mut m, &[r], "replay");
    restore(&m);

    // 4. Truncation: the newest pack cut inside f5's record (the last data written).
    let last = *locs.iter().max_by_key(|l| (l.pack, l.off)).unwrap();
    let victim = locs.iter().position(|l| *l == last).unwrap();
    let p = pack_path(&m.store, last.pack);
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(last.off + 100).unwrap();
    drop(f);
    m.mount();
    let got = read_all(&files);
    for (i, g) in got.iter().enumerate() {
        if i == victim {
            assert_eq!(*g, Err(libc::EIO), "truncate: f{i}");
        } else {
            assert_eq!(*g, Ok(true), "truncate: f{i}");
        }
    }
    // New writes after the cut land elsewhere and do not disturb anything.
    fs::write(m.path("new"), b"written after the cut").unwrap();
    m.unmount();
    m.mount();
    assert_eq!(fs::read(m.path("new")).unwrap(), b"written after the cut");
    assert_eq!(read_all(&files)[victim], Err(libc::EIO));
    m.unmount();
    let (code, out) = fsck(&m.store, &key);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("/f{victim}")), "{out}");
}

#[test]
fn rebuild_compaction_dedup_on_an_encrypted_store() {
    let (mut m, key) = encrypted();
    fs::create_dir(m.path("dedup")).unwrap();
    assert!(m
        .idcfs(&[
            "policy",
            "set",
            m.path("dedup").to_str().unwrap(),
            "dedup=on"
        ])
        .status
        .success());
    let data = random(3 << 20, 4242);
    fs::write(m.path("dedup/one"), &data).unwrap();
    m.unmount();
    m.mount();
    let before = m.stats_json()["pack_bytes"].as_u64().unwrap();
    fs::write(m.path("dedup/two"), &data).unwrap();
    m.unmount();
    m.mount();
    let after = m.stats_json()["pack_bytes"].as_u64().unwrap();
    assert!(
        after - before < data.len() as u64 / 20,
        "dedup did not work in an encrypted store: {before} -> {after}"
    );
    // Churn, then compact, then rebuild the index from the journal with the key.
    for i in 0..5 {
        fs::write(m.path("churn"), random(1 << 20, i)).unwrap();
    }
    assert!(m
        .idcfs(&["compact", m.mnt.to_str().unwrap()])
        .status
        .success());
    m.unmount();
    ok(&[
        "fsck",
        "--rebuild",
        m.store.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    m.mount();
    assert_eq!(fs::read(m.path("dedup/one")).unwrap(), data);
    assert_eq!(fs::read(m.path("dedup/two")).unwrap(), data);
    assert_eq!(fs::read(m.path("churn")).unwrap(), random(1 << 20, 4));
    m.unmount();
    let (code, out) = fsck(&m.store, &key);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn two_encrypted_stores_with_the_same_content_share_nothing() {
    let data = random(200_000, 31);
    let text = b"same text in both stores\n".repeat(4000);
    let mut stores = Vec::new();
    for _ in 0..2 {
        let (mut m, _key) = encrypted();
        fs::write(m.path("r"), &data).unwrap();
        fs::write(m.path("t"), &text).unwrap();
        m.unmount();
        stores.push(m);
    }
    // The sealed parts of every record (nonce and ciphertext; the header's framing fields,
    // lengths and sequence numbers, are visible by design).
    let sealed = |m: &Mounted| {
        let pack = fs::read(pack_path(&m.store, 1)).unwrap();
        let mut out = Vec::new();
        let mut off = 0usize;
        while off < pack.len() {
            let h = idcfs::store::RawHeader::parse(&pack[off..]).unwrap();
            let end = off + h.total_len() as usize;
            out.extend_from_slice(&pack[off + 52..off + 64]);
            out.extend_from_slice(&pack[off + 80..end]);
            off = end;
        }
        out
    };
    let (a, b) = (sealed(&stores[0]), sealed(&stores[1]));
    assert!(a.len() > 200_000 && b.len() > 200_000);
    // No 16-byte window of one store's sealed bytes appears in the other's.
    let set: std::collections::HashSet<&[u8]> = a.windows(16).collect();
    let shared = b.windows(16).filter(|c| set.contains(c)).count();
    assert_eq!(shared, 0, "the two stores share {shared} 16-byte windows");
}

#[test]
fn encrypted_store_survives_kill9_and_a_damaged_index() {
    let (mut m, key) = encrypted();
    let mut kept = Vec::new();
    for i in 0..20u64 {
        let d = random(50_000 + i as usize * 1000, 70 + i);
        let p = m.path(&format!("k{i}"));
        let mut f = fs::File::create(&p).unwrap();
        std::io::Write::write_all(&mut f, &d).unwrap();
        f.sync_all().unwrap();
        kept.push((p, d));
    }
    m.kill9();
    m.mount();
    for (p, d) in &kept {
        assert_eq!(&fs::read(p).unwrap(), d, "{} after kill -9", p.display());
    }
    m.unmount();
    // A torn or altered index unit: the index fails authentication, is set aside and
    // rebuilt from the journal; nothing is lost.
    let ix = m.store.join("index.redb");
    let mut bytes = fs::read(&ix).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&ix, bytes).unwrap();
    m.mount();
    for (p, d) in &kept {
        assert_eq!(
            &fs::read(p).unwrap(),
            d,
            "{} after index damage",
            p.display()
        );
    }
    m.unmount();
    assert!(fs::read_dir(&m.store).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("index.damaged")));
    let (code, out) = fsck(&m.store, &key);
    assert_eq!(code, 0, "{out}");
}

/// The terminal prompt (a pseudo-terminal from `script`, util-linux): asked twice for a new
/// store, once to unlock; a wrong answer is refused.
#[test]
fn passphrase_prompt_on_a_terminal() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let run = |cmd: String, input: &str| {
        let mut c = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut c.stdin.take().unwrap(), input.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let s = store.to_str().unwrap();
    let (ok, out) = run(
        format!("{BIN} init --encrypt {s}"),
        "typed secret\rtyped secret\r",
    );
    assert!(ok && out.contains("Repeat the passphrase"), "{out}");
    let (ok, out) = run(format!("{BIN} fsck {s}"), "typed secret\r");
    assert!(ok && out.contains("clean"), "{out}");
    let (ok, out) = run(format!("{BIN} fsck {s}"), "not it\r");
    assert!(!ok && out.contains("wrong passphrase"), "{out}");
}
