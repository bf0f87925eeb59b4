//! Crash safety: kill -9 during writes, recovery, fsck; corrupt blocks read as EIO; the index
//! rebuilt from the pack files alone.

use crate::util::{data, sh, Mounted};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn intended(i: u64) -> Vec<u8> {
    let len = (i * 7919 % 700_000) as usize + (i % 3) as usize;
    data(i, len)
}

/// Writer: creates files w<i>, fsyncs each file and the directory, then records it.
fn writer(dir: std::path::PathBuf, start: u64, stop: Arc<AtomicBool>, done: Arc<Mutex<Vec<u64>>>) {
    let mut i = start;
    while !stop.load(Ordering::Relaxed) {
        let d = intended(i);
        let p = dir.join(format!("w{i}"));
        let ok = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&p)?;
            // Several writes, so a crash can land between them.
            for chunk in d.chunks(50_000) {
                f.write_all(chunk)?;
            }
            f.sync_all()?;
            File::open(&dir)?.sync_all()?;
            Ok(())
        })();
        if ok.is_err() {
            return;
        }
        done.lock().unwrap().push(i);
        i += 1;
    }
}

#[test]
fn kill9_during_writes_then_recover() {
    let mut m = Mounted::new();
    let dir = m.path("crash");
    fs::create_dir(&dir).unwrap();
    let mut all: Vec<u64> = Vec::new();
    let mut next = 0u64;
    for (round, delay_ms) in [150u64, 700, 1300, 400].into_iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let t = {
            let (dir, stop, done) = (dir.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || writer(dir, next, stop, done))
        };
        // An unsynced overwrite of an old file in flight too.
        if let Some(&old) = all.first() {
            let _ = OpenOptions::new()
                .write(true)
                .open(dir.join(format!("w{old}")))
                .and_then(|f| f.write_all_at(&intended(old), 0));
        }
        // Let the writer fsync at least one file first, so every round tests progress.
        let t0 = std::time::Instant::now();
        while done.lock().unwrap().is_empty() && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        m.kill9();
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        let fsynced = done.lock().unwrap().clone();
        assert!(
            !fsynced.is_empty(),
            "round {round}: the writer made no progress before the kill"
        );
        all.extend(&fsynced);
        next = all.iter().max().map_or(0, |m| m + 1) + 1000;
        let (code, out) = m.fsck();
        assert_eq!(
            code,
            0,
            "round {round}: fsck after kill -9 found problems:\n{out}\n{}",
            m.log_text()
        );
        m.mount();
        for &i in &all {
            let got = fs::read(dir.join(format!("w{i}")))
                .unwrap_or_else(|e| panic!("round {round}: fsynced w{i} lost: {e}"));
            assert!(
                got == intended(i),
                "round {round}: fsynced file w{i} differs ({} vs {} bytes)",
                got.len(),
                intended(i).len()
            );
        }
        // Files caught mid-write hold a prefix of what was written: never foreign bytes.
        for e in fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let i: u64 = name[1..].parse().unwrap();
            let got = fs::read(dir.join(&name)).unwrap();
            let want = intended(i);
            assert!(
                got.len() <= want.len() && got == want[..got.len()],
                "round {round}: {name} holds bytes that were never written"
            );
        }
    }
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "{out}");
}

#[test]
fn corrupt_block_reads_eio_and_fsck_reports_it() {
    let mut m = Mounted::new();
    // Random blocks are stored raw, so each block's marker can be found in the pack file.
    let mut content = Vec::new();
    for b in 0..6u8 {
        let mut blk = format!("MARKER-BLOCK-{b}-").into_bytes();
        let mut rnd = vec![0u8; 131072 - blk.len()];
        File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut rnd)
            .unwrap();
        blk.extend(rnd);
        content.extend(blk);
    }
    fs::write(m.path("victim"), &content).unwrap();
    fs::write(m.path("bystander"), b"unrelated file").unwrap();
    m.unmount();
    let packs = m.store.join("journal");
    let pack = fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    let needle = b"MARKER-BLOCK-3-";
    let pos = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("marker in pack");
    bytes[pos + 5000] ^= 0xff;
    fs::write(&pack, &bytes).unwrap();
    m.mount();
    let f = File::open(m.path("victim")).unwrap();
    let mut buf = vec![0u8; 131072];
    for b in 0..6u64 {
        let r = f.read_exact_at(&mut buf, b * 131072);
        if b == 3 {
            assert_eq!(
                r.err().and_then(|e| e.raw_os_error()),
                Some(libc::EIO),
                "corrupt block must read as EIO"
            );
        } else {
            r.unwrap_or_else(|e| panic!("block {b} must stay readable: {e}"));
            assert_eq!(
                &buf[..],
                &content[b as usize * 131072..(b as usize + 1) * 131072]
            );
        }
    }
    assert_eq!(fs::read(m.path("bystander")).unwrap(), b"unrelated file");
    assert!(
        m.log_text().contains("/victim"),
        "the log names the affected path"
    );
    assert!(m.stats_json()["corrupt_reads"].as_u64().unwrap() >= 1);
    drop(f);
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 1, "fsck must fail: {out}");
    assert!(out.contains("/victim") && out.contains("block 3"), "{out}");
}

#[test]
fn index_rebuilt_from_packs_alone() {
    let mut m = Mounted::new();
    let src = format!("{}/src", env!("CARGO_MANIFEST_DIR"));
    sh(
        m.dir.path(),
        &format!(
            "cp -a {src} {}/tree && mkdir {}/tree/e && echo x > {}/tree/e/f && ln -s f {}/tree/e/l",
            m.mnt.display(),
            m.mnt.display(),
            m.mnt.display(),
            m.mnt.display()
        ),
    );
    sh(m.dir.path(), &format!("setfattr -n user.note -v kept {}/tree/e/f && rm -rf {}/tree/fuse && mv {}/tree/cli.rs {}/tree/renamed.rs", m.mnt.display(), m.mnt.display(), m.mnt.display(), m.mnt.display()));
    let before = sh(m.dir.path(), &format!("cd {} && find . -printf '%p %y %m %s %n %l\\n' | sort && find . -type f -exec sha256sum {{}} + | sort && getfattr -n user.note tree/e/f", m.mnt.display()));
    m.unmount();
    // 1. Index deleted: the mount rebuilds it on its own.
    fs::remove_file(m.store.join("index.redb")).unwrap();
    m.mount();
    let after = sh(m.dir.path(), &format!("cd {} && find . -printf '%p %y %m %s %n %l\\n' | sort && find . -type f -exec sha256sum {{}} + | sort && getfattr -n user.note tree/e/f", m.mnt.display()));
    assert_eq!(before, after, "tree after rebuilding a deleted index");
    m.unmount();
    // 2. Index damaged: fsck --rebuild recreates it from the packs.
    {
        let e = m.store.join("index.redb");
        let mut b = fs::read(&e).unwrap();
        for x in b.iter_mut().step_by(97) {
            *x ^= 0x5a;
        }
        fs::write(&e, b).unwrap();
    }
    let out = m.idcfs(&["fsck", "--rebuild", m.store.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "fsck --rebuild: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    m.mount();
    let after = sh(m.dir.path(), &format!("cd {} && find . -printf '%p %y %m %s %n %l\\n' | sort && find . -type f -exec sha256sum {{}} + | sort && getfattr -n user.note tree/e/f", m.mnt.display()));
    assert_eq!(
        before, after,
        "tree after fsck --rebuild of a damaged index"
    );
}

#[test]
fn compaction_reclaims_space_and_keeps_data() {
    let mut m = Mounted::with_args(&["--pack-mib=1"]);
    // Incompressible data so pack sizes track what is written.
    let mut keep = vec![0u8; 3 << 20];
    File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut keep)
        .unwrap();
    fs::write(m.path("keep"), &keep).unwrap();
    for i in 0..8 {
        let mut junk = vec![0u8; 2 << 20];
        File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut junk)
            .unwrap();
        fs::write(m.path(&format!("junk{i}")), &junk).unwrap();
    }
    // Overwrite part of `keep` (old blocks become garbage), delete the junk.
    let patch = data(5, 300_000);
    OpenOptions::new()
        .write(true)
        .open(m.path("keep"))
        .unwrap()
        .write_all_at(&patch, 1_000_000)
        .unwrap();
    keep[1_000_000..1_300_000].copy_from_slice(&patch);
    for i in 0..8 {
        fs::remove_file(m.path(&format!("junk{i}"))).unwrap();
    }
    let before = m.stats_json()["pack_bytes"].as_u64().unwrap();
    let out = m.idcfs(&["compact", m.mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = m.stats_json()["pack_bytes"].as_u64().unwrap();
    assert!(
        after < before / 2,
        "compaction reclaimed too little: {before} -> {after}"
    );
    // The random part of `keep` (all but the compressible 300 kB patch) must remain.
    assert!(
        after >= (3 << 20) - 300_000,
        "live data must remain: {after}"
    );
    assert_eq!(fs::read(m.path("keep")).unwrap(), keep);
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "{out}");
    // The index can still be rebuilt from what compaction left (checkpoint + newer packs).
    fs::remove_file(m.store.join("index.redb")).unwrap();
    m.mount();
    assert_eq!(fs::read(m.path("keep")).unwrap(), keep);
    assert!(!m.path("junk0").exists());
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "after rebuild: {out}");
}
