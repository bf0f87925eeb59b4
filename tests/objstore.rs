//! The object-store backend (`--store s3://bucket/prefix`) through real FUSE mounts against a
//! real S3-compatible server on 127.0.0.1: round trips, empty caches, a fresh machine
//! rebuilding from the bucket, kill -9 during uploads, a server outage, the writer lease
//! against moto (in memory, honours conditional PUTs); the server killed and restarted during
//! writes, and the lease without conditional PUTs, against Garage (on disk).

use crate::util::garage::Garage;
use crate::util::s3::S3Server;
use crate::util::{data, random, sh, Mounted, BIN};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A test tree: text and incompressible files of several sizes in nested directories,
/// beside a copy of the project's own sources.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b/c")).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..20u64 {
        let sub = ["", "a", "a/b", "a/b/c"][i as usize % 4];
        let len = [0usize, 1, 4095, 70_000, 300_000][i as usize % 5];
        std::fs::write(root.join(sub).join(format!("t{i}.txt")), data(i, len))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(root.join("big.bin"), random(3 << 20, 7)).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(root.join("a/big.txt"), data(99, 5 << 20)).unwrap_or_else(|e| panic!("{e}"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    sh(
        root,
        &format!("cp -a {} {}/src", src.display(), root.display()),
    );
}

struct Setup {
    server: S3Server,
    dir: tempfile::TempDir,
    url: String,
}

fn setup(bucket: &str) -> Setup {
    let server = S3Server::start();
    server.create_bucket(bucket);
    let dir = tempfile::Builder::new()
        .prefix("idcfs-test-obj")
        .tempdir_in("/var/tmp")
        .unwrap_or_else(|e| panic!("{e}"));
    Setup {
        url: format!("s3://{bucket}/fs1"),
        server,
        dir,
    }
}

impl Setup {
    fn cache(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn mount(&self, cache: &str, extra: &[&str]) -> Mounted {
        let mut m = Mounted::object(&self.url, &self.cache(cache), &self.server.envs(), extra);
        m.mount();
        m
    }

    fn objects(&self) -> Vec<(String, u64)> {
        let (bucket, _) = self.url["s3://".len()..]
            .split_once('/')
            .unwrap_or_default();
        self.server.list(bucket, "fs1/")
    }

    /// `idcfs ARGS` with the server's environment: (exit code, stdout + stderr).
    fn idcfs(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(BIN)
            .args(args)
            .envs(self.server.envs())
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Setup {
    /// `idcfs status --json` of mount `m`.
    fn status(&self, m: &Mounted) -> serde_json::Value {
        let (code, out) = self.idcfs(&["status", "--json"]);
        assert_eq!(code, 0, "{out}");
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("status json: {e}\n{out}"));
        v.as_array()
            .and_then(|rows| {
                rows.iter()
                    .find(|r| r["mountpoint"].as_str() == m.mnt.to_str())
            })
            .map(|r| r["status"].clone())
            .unwrap_or_else(|| panic!("mount not in status: {out}"))
    }
}

fn diff(a: &Path, b: &Path) {
    sh(
        Path::new("/"),
        &format!("diff -r {} {}", a.display(), b.display()),
    );
}

#[test]
fn objstore_round_trip_and_empty_cache_remount() {
    let s = setup("roundtrip");
    let src = s.dir.path().join("src");
    make_tree(&src);
    let mut m = s.mount("cache1", &["--pack-mib", "1"]);
    sh(&m.mnt, &format!("cp -a {} tree", src.display()));
    diff(&src, &m.path("tree"));
    m.unmount();
    // Everything sealed went up whole; unmount left the active pack's tail as a segment and
    // released the lease.
    let objs = s.objects();
    let packs = objs.iter().filter(|(k, _)| k.ends_with(".pack")).count();
    assert!(packs >= 5, "expected several uploaded packs: {objs:?}");
    assert!(
        !objs.iter().any(|(k, _)| k.ends_with("/lease")),
        "lease left behind: {objs:?}"
    );
    let local: Vec<_> = std::fs::read_dir(s.cache("cache1").join("packs"))
        .unwrap_or_else(|e| panic!("{e}"))
        .collect();
    assert!(
        local.len() <= 1,
        "sealed packs left in the cache after unmount: {local:?}"
    );
    // Another cache directory, empty: everything comes back from the bucket.
    let mut m2 = s.mount("cache2", &["--pack-mib", "1"]);
    diff(&src, &m2.path("tree"));
    m2.unmount();
}

#[test]
fn objstore_fresh_machine_rebuilds_from_the_bucket() {
    let s = setup("rebuild");
    let src = s.dir.path().join("src");
    make_tree(&src);
    let mut m = s.mount("cache1", &["--pack-mib", "2"]);
    sh(&m.mnt, &format!("cp -a {} tree", src.display()));
    // A rename and a delete, so the rebuild must replay more than creations.
    sh(&m.mnt, "mv tree/a/t1.txt tree/moved.txt && rm tree/big.bin");
    m.unmount();
    std::fs::rename(src.join("a/t1.txt"), src.join("moved.txt")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_file(src.join("big.bin")).unwrap_or_else(|e| panic!("{e}"));
    // The old machine is gone: only the bucket and the credentials remain.
    std::fs::remove_dir_all(s.cache("cache1")).unwrap_or_else(|e| panic!("{e}"));
    let fresh = s.cache("fresh");
    let (code, out) = s.idcfs(&[
        "fsck",
        &s.url,
        "--cache",
        fresh.to_str().unwrap_or_default(),
        "--rebuild",
    ]);
    assert_eq!(code, 0, "fsck --rebuild failed:\n{out}");
    assert!(out.contains("clean"), "{out}");
    assert!(fresh.join("index.redb").is_file(), "no index rebuilt");
    let mut m2 = s.mount("fresh", &[]);
    diff(&src, &m2.path("tree"));
    m2.unmount();
}

#[test]
fn objstore_kill9_during_uploads_loses_no_fsynced_file() {
    let s = setup("crash");
    let mut m = s.mount("cache1", &["--pack-mib", "1"]);
    let dir = m.path("d");
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let mut synced = Vec::new();
    for i in 0..40u64 {
        let p = dir.join(format!("f{i}"));
        let body = random(200_000 + i as usize * 1000, i);
        let mut f = std::fs::File::create(&p).unwrap_or_else(|e| panic!("{e}"));
        f.write_all(&body).unwrap_or_else(|e| panic!("{e}"));
        f.sync_all().unwrap_or_else(|e| panic!("fsync f{i}: {e}"));
        synced.push((format!("f{i}"), body));
    }
    // Unsynced writes keep the uploader busy while the daemon dies.
    for i in 0..10u64 {
        let _ = std::fs::write(dir.join(format!("u{i}")), random(300_000, 1000 + i));
    }
    m.kill9();
    let check = |m: &Mounted| {
        for (name, body) in &synced {
            let got = std::fs::read(m.path("d").join(name))
                .unwrap_or_else(|e| panic!("{name} lost after kill -9: {e}"));
            assert!(got == *body, "{name} differs after kill -9");
        }
    };
    // The bucket alone holds every fsynced file: a fresh cache (another machine) sees them
    // (the dead process's lease on this host is taken back).
    let mut m2 = s.mount("fresh", &[]);
    check(&m2);
    std::fs::write(m2.path("later"), b"written by the second cache")
        .unwrap_or_else(|e| panic!("{e}"));
    m2.unmount();
    // The crashed cache is now stale (another cache wrote since): it is set aside and read
    // again from the bucket, never merged.
    m.mount();
    check(&m);
    assert_eq!(
        std::fs::read(m.path("later")).unwrap_or_default(),
        b"written by the second cache".to_vec()
    );
    m.unmount();
    assert!(
        m.log_text().contains("another cache wrote"),
        "stale cache not detected"
    );
}

#[test]
fn objstore_same_cache_recovers_after_kill9() {
    let s = setup("recover");
    let mut m = s.mount("cache1", &["--pack-mib", "1", "--fsync", "local"]);
    let mut files = Vec::new();
    for i in 0..12u64 {
        let body = random(400_000, 50 + i);
        let mut f =
            std::fs::File::create(m.path(&format!("f{i}"))).unwrap_or_else(|e| panic!("{e}"));
        f.write_all(&body).unwrap_or_else(|e| panic!("{e}"));
        f.sync_all().unwrap_or_else(|e| panic!("{e}"));
        files.push(body);
    }
    m.kill9();
    // With --fsync=local the data was only on local disk: the same cache recovers it and
    // uploads what was sealed but not uploaded.
    m.mount();
    for (i, body) in files.iter().enumerate() {
        assert!(
            std::fs::read(m.path(&format!("f{i}"))).unwrap_or_default() == *body,
            "f{i} lost"
        );
    }
    m.unmount();
    let local = std::fs::read_dir(s.cache("cache1").join("packs"))
        .unwrap_or_else(|e| panic!("{e}"))
        .count();
    assert!(
        local <= 1,
        "{local} packs still waiting in the cache after unmount"
    );
    let mut m2 = s.mount("fresh", &[]);
    for (i, body) in files.iter().enumerate() {
        assert!(
            std::fs::read(m2.path(&format!("f{i}"))).unwrap_or_default() == *body,
            "f{i} missing from the bucket"
        );
    }
    m2.unmount();
}

#[test]
fn objstore_outage_reads_eio_in_bounded_time_then_recovers() {
    let s = setup("outage");
    let timeout = 3u64;
    let t = timeout.to_string();
    let mut m = s.mount("cache1", &["--pack-mib", "1", "--store-timeout", &t]);
    // Larger than the chunks the backend keeps in memory (8 x 1 MiB packs here), so its
    // start must come from the store again.
    let old = random(24 << 20, 5);
    std::fs::write(m.path("old.bin"), &old).unwrap_or_else(|e| panic!("{e}"));
    m.unmount();
    // A small read cache on an empty cache directory: reads of old.bin go to the server.
    let mut m = s.mount(
        "cache2",
        &[
            "--pack-mib",
            "1",
            "--store-timeout",
            &t,
            "--cache-size",
            "1M",
        ],
    );
    s.server.pause();
    let t0 = Instant::now();
    let r = std::fs::File::open(m.path("old.bin")).and_then(|f| {
        let mut head = vec![0u8; 1 << 20];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).map(|_| head)
    });
    let took = t0.elapsed();
    let err = r
        .err()
        .unwrap_or_else(|| panic!("read served with the store down"));
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        took < Duration::from_secs(timeout * 10),
        "a read with the store down took {took:?}"
    );
    // Writes land in the cache; fsync cannot reach the store and says so, in bounded time.
    let new = random(3 << 20, 6);
    let mut f = std::fs::File::create(m.path("new.bin")).unwrap_or_else(|e| panic!("{e}"));
    f.write_all(&new).unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    let synced = f.sync_all();
    assert!(
        t0.elapsed() < Duration::from_secs(timeout * 10),
        "fsync with the store down took {:?}",
        t0.elapsed()
    );
    assert!(synced.is_err(), "fsync succeeded with the store down");
    let st = s.status(&m);
    assert_eq!(st["backend"]["healthy"], false, "{st}");
    assert!(
        st["backend"]["unpersisted_bytes"].as_u64().unwrap_or(0) > 0
            || st["backend"]["upload_queue"].as_u64().unwrap_or(0) > 0,
        "nothing shown as waiting for upload: {st}"
    );
    s.server.resume();
    // The mount recovers: the same fsync goes through (within a bound: the server first
    // works off what queued up while it was frozen), reads work.
    let back = Instant::now();
    loop {
        match f.sync_all() {
            Ok(()) => break,
            Err(e) if back.elapsed() < Duration::from_secs(60) => {
                eprintln!("fsync after the store came back: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("fsync still failing 60 s after the store came back: {e}"),
        }
    }
    drop(f);
    assert!(std::fs::read(m.path("old.bin")).unwrap_or_default() == old);
    // Background requests that timed out while the server was frozen may report late.
    let mut st = s.status(&m);
    while st["backend"]["healthy"] != true && back.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        let _ = std::fs::read(m.path("old.bin"));
        st = s.status(&m);
    }
    assert_eq!(st["backend"]["healthy"], true, "{st}");
    assert_eq!(st["backend"]["upload_queue"], 0, "{st}");
    assert_eq!(st["backend"]["unpersisted_bytes"], 0, "{st}");
    assert!(st["backend"]["gets"].as_u64().unwrap_or(0) > 0, "{st}");
    m.unmount();
    // Nothing was lost: a fresh cache sees both files.
    let mut m3 = s.mount("fresh", &[]);
    assert!(std::fs::read(m3.path("old.bin")).unwrap_or_default() == old);
    assert!(std::fs::read(m3.path("new.bin")).unwrap_or_default() == new);
    m3.unmount();
}

#[test]
fn objstore_second_writer_refused_and_stale_lease_broken() {
    let s = setup("lease");
    let mut m1 = s.mount("cache1", &[]);
    std::fs::write(m1.path("x"), b"first").unwrap_or_else(|e| panic!("{e}"));
    let pid = m1.pid().unwrap_or_default();
    let mut m2 = Mounted::object(&s.url, &s.cache("cache2"), &s.server.envs(), &[]);
    let err = m2
        .try_mount()
        .unwrap_or_else(|| panic!("a second writable mount was allowed"));
    assert!(
        err.contains("in use by another writer") && err.contains(&format!("pid {pid}")),
        "refusal does not name the holder: {err}"
    );
    m1.unmount();
    // A lease left by a machine that is gone: refused, naming it, until broken explicitly.
    let lease = br#"{"host":"gone-machine","pid":4242,"cache":"/srv/cache","since":1}"#;
    let (code, body) = s.server.http("PUT", "/lease/fs1/lease", lease);
    assert_eq!(code, 200, "{body}");
    let err = m2
        .try_mount()
        .unwrap_or_else(|| panic!("a mount ignored another machine's lease"));
    assert!(err.contains("gone-machine"), "{err}");
    let mut m3 = Mounted::object(
        &s.url,
        &s.cache("cache2"),
        &s.server.envs(),
        &["--break-lease"],
    );
    m3.mount();
    assert_eq!(
        std::fs::read(m3.path("x")).unwrap_or_default(),
        b"first".to_vec()
    );
    m3.unmount();
    assert!(
        !s.objects().iter().any(|(k, _)| k.ends_with("/lease")),
        "lease not released"
    );
}

#[test]
fn objstore_encrypted_store_sends_only_sealed_records() {
    let s = setup("crypt");
    let kf = s.dir.path().join("key");
    std::fs::write(&kf, random(32, 77)).unwrap_or_else(|e| panic!("{e}"));
    let kf = kf.to_str().unwrap_or_default().to_string();
    let mut m = s.mount(
        "cache1",
        &["--encrypt", "--key-file", &kf, "--pack-mib", "1"],
    );
    let marker = "PLAINTEXT-MARKER-7f3a";
    let text: String = (0..20_000)
        .map(|i| format!("{marker} line {i}\n"))
        .collect();
    std::fs::write(m.path("confidential-name.txt"), &text).unwrap_or_else(|e| panic!("{e}"));
    // In incompressible data the marker would be stored verbatim by a plain store (raw
    // blocks), so its absence says the records are sealed, not merely compressed.
    let mut big = random(3 << 20, 3);
    for at in (1000..big.len() - 100).step_by(200_000) {
        big[at..at + marker.len()].copy_from_slice(marker.as_bytes());
    }
    std::fs::write(m.path("big.bin"), &big).unwrap_or_else(|e| panic!("{e}"));
    m.unmount();
    let objs = s.objects();
    assert!(
        objs.iter().any(|(k, _)| k.ends_with("/keys.json")),
        "no key file in the bucket: {objs:?}"
    );
    let mut pack_bytes = 0;
    for (k, size) in &objs {
        let body = s.server.get("crypt", k);
        assert_eq!(body.len() as u64, *size, "{k}");
        let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(
            !has(marker.as_bytes()) && !has(b"confidential-name"),
            "{k} holds plaintext"
        );
        if k.contains("/packs/") {
            pack_bytes += size;
        }
    }
    assert!(
        pack_bytes > 1 << 20,
        "the data did not reach the bucket: {objs:?}"
    );
    // Another machine: the key file comes from the bucket; the secret is still needed.
    let mut locked = Mounted::object(&s.url, &s.cache("nokey"), &s.server.envs(), &[]);
    let err = locked
        .try_mount()
        .unwrap_or_else(|| panic!("an encrypted bucket mounted without its key"));
    assert!(!err.is_empty());
    let mut m2 = s.mount("fresh", &["--key-file", &kf]);
    assert!(std::fs::read_to_string(m2.path("confidential-name.txt")).unwrap_or_default() == text);
    assert!(std::fs::read(m2.path("big.bin")).unwrap_or_default() == big);
    m2.unmount();
}

#[test]
fn objstore_compaction_deletes_old_pack_objects_and_keeps_live_data() {
    let s = setup("compact");
    let mut m = s.mount("cache1", &["--pack-mib", "1"]);
    let mut kept = Vec::new();
    for i in 0..12u64 {
        let body = random(500_000, 300 + i);
        std::fs::write(m.path(&format!("f{i}")), &body).unwrap_or_else(|e| panic!("{e}"));
        if i % 6 == 0 {
            kept.push((i, body));
        }
    }
    sh(&m.mnt, "sync");
    let packs = |s: &Setup| {
        s.objects()
            .into_iter()
            .filter(|(k, _)| k.ends_with(".pack"))
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    // Let the sealed packs reach the bucket.
    let t0 = Instant::now();
    while packs(&s).len() < 4 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = packs(&s);
    assert!(before.len() >= 4, "packs not uploaded: {before:?}");
    for i in 0..12u64 {
        if i % 6 != 0 {
            std::fs::remove_file(m.path(&format!("f{i}"))).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let (code, out) = s.idcfs(&["compact", m.mnt.to_str().unwrap_or_default()]);
    assert_eq!(code, 0, "compact failed: {out}");
    let after = packs(&s);
    let gone = before.iter().filter(|k| !after.contains(k)).count();
    assert!(
        gone >= 2,
        "compaction deleted no pack objects: before {before:?}, after {after:?}\n{out}"
    );
    for (i, body) in &kept {
        assert!(std::fs::read(m.path(&format!("f{i}"))).unwrap_or_default() == *body);
    }
    m.unmount();
    // Offline, through the cache directory: stats count the live data, compact runs.
    let cache = s.cache("cache1");
    let cache = cache.to_str().unwrap_or_default();
    let (code, out) = s.idcfs(&["stats", &s.url, "--cache", cache, "--json"]);
    assert_eq!(code, 0, "offline stats failed: {out}");
    // The JSON comes first (stdout); the daemon's log lines (stderr) follow it.
    let st: serde_json::Value = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .next()
        .and_then(|r| r.ok())
        .unwrap_or_else(|| panic!("stats json:\n{out}"));
    assert_eq!(st["logical_bytes"], 1_000_000, "{out}");
    let (code, out) = s.idcfs(&["compact", &s.url, "--cache", cache]);
    assert_eq!(code, 0, "offline compact failed: {out}");
    assert!(
        !s.objects().iter().any(|(k, _)| k.ends_with("/lease")),
        "offline commands left the lease"
    );
    // The bucket alone still holds exactly the live files.
    let mut m2 = s.mount("fresh", &[]);
    let mut names: Vec<String> = std::fs::read_dir(&m2.mnt)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    assert_eq!(names, vec!["f0".to_string(), "f6".to_string()]);
    for (i, body) in &kept {
        assert!(std::fs::read(m2.path(&format!("f{i}"))).unwrap_or_default() == *body);
    }
    m2.unmount();
}

/// The issue's proof item on a real server that persists to disk (Garage): the server is
/// killed (SIGKILL) and started again while a writer creates and fsyncs files. While it is
/// down, reads of uncached data fail with EIO in bounded time and the writer keeps going
/// (its writes land in the cache; fsync says it could not reach the store); once it is back
/// the mount recovers by itself and, after unmount, a fresh cache finds every file.
#[test]
fn objstore_garage_restart_during_writes_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let mut g = Garage::start();
    g.create_bucket("restart");
    let envs = g.envs();
    let dir = tempfile::Builder::new()
        .prefix("idcfs-test-obj")
        .tempdir_in("/var/tmp")
        .unwrap_or_else(|e| panic!("{e}"));
    let url = "s3://restart/fs1";
    let timeout = 3u64;
    let t = timeout.to_string();
    let opts = ["--pack-mib", "1", "--store-timeout", &t];
    let mut m = Mounted::object(url, &dir.path().join("cache1"), &envs, &opts);
    m.mount();
    let old = random(24 << 20, 5);
    std::fs::write(m.path("old.bin"), &old).unwrap_or_else(|e| panic!("{e}"));
    m.unmount();
    // An empty cache with a small read cache (the index rebuild at mount reads every pack):
    // old.bin is read from the server only. The small cache also means writers are slowed
    // as soon as a sealed pack waits for upload: slowed, they must still make progress.
    let small = [&opts[..], &["--cache-size", "1M"]].concat();
    let mut m = Mounted::object(url, &dir.path().join("cache2"), &envs, &small);
    m.mount();
    std::fs::create_dir(m.path("w")).unwrap_or_else(|e| panic!("{e}"));
    // The writer: files of 300 kB, each fsynced; (name, body, fsync result, when done).
    type Written = (String, Vec<u8>, bool, Instant);
    let written: Arc<Mutex<Vec<Written>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, stop, wdir) = (written.clone(), stop.clone(), m.path("w"));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("f{i}");
                let body = random(300_000, 10_000 + i);
                let mut f = std::fs::File::create(wdir.join(&name))
                    .unwrap_or_else(|e| panic!("create {name}: {e}"));
                f.write_all(&body)
                    .unwrap_or_else(|e| panic!("write {name}: {e}"));
                let ok = f.sync_all().is_ok();
                written.lock().unwrap_or_else(|e| panic!("{e}")).push((
                    name,
                    body,
                    ok,
                    Instant::now(),
                ));
                i += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let before = written.lock().unwrap_or_else(|e| panic!("{e}")).len();
    assert!(before > 0, "the writer made no progress with the server up");
    g.kill();
    let down = Instant::now();
    // A read of data only the server has: EIO, in bounded time, while the writer goes on.
    let t0 = Instant::now();
    let r = std::fs::File::open(m.path("old.bin")).and_then(|f| {
        let mut head = vec![0u8; 1 << 20];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).map(|_| head)
    });
    let took = t0.elapsed();
    let err = r
        .err()
        .unwrap_or_else(|| panic!("read served with the server down"));
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        took < Duration::from_secs(timeout * 10),
        "a read with the server down took {took:?}"
    );
    std::thread::sleep(Duration::from_secs(10));
    let (during, failed_syncs) = {
        let w = written.lock().unwrap_or_else(|e| panic!("{e}"));
        let during: Vec<_> = w.iter().filter(|x| x.3 > down).collect();
        (during.len(), during.iter().filter(|x| !x.2).count())
    };
    assert!(during > 0, "the writer stalled while the server was down");
    assert!(
        failed_syncs > 0,
        "fsync claimed success with the server down"
    );
    let st = status_of(&envs, &m);
    assert_eq!(st["backend"]["healthy"], false, "{st}");
    g.restart();
    let up = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .unwrap_or_else(|_| panic!("the writer panicked"));
    let w = std::mem::take(&mut *written.lock().unwrap_or_else(|e| panic!("{e}")));
    let after = w.iter().filter(|x| x.3 > up && x.2).count();
    // The mount recovers by itself: fsyncs succeed again once the server is back.
    assert!(after > 0, "no fsync succeeded after the server came back");
    eprintln!(
        "restart test: {before} files before the outage, {during} during it ({failed_syncs} fsyncs failed), {} in all; a read with the server down failed in {took:?}",
        w.len()
    );
    // Reads of the server's data work again, and the backlog drains.
    let back = Instant::now();
    loop {
        match std::fs::read(m.path("old.bin")) {
            Ok(b) => {
                assert!(b == old, "old.bin differs after the restart");
                break;
            }
            Err(e) if back.elapsed() < Duration::from_secs(60) => {
                eprintln!("read after the restart: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("old.bin still unreadable 60 s after the restart: {e}"),
        }
    }
    let mut st = status_of(&envs, &m);
    while (st["backend"]["healthy"] != true || st["backend"]["upload_queue"] != 0)
        && back.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(500));
        st = status_of(&envs, &m);
    }
    assert_eq!(st["backend"]["healthy"], true, "{st}");
    assert_eq!(st["backend"]["upload_queue"], 0, "{st}");
    m.unmount();
    // Nothing lost, fsynced or not: unmount returned, so everything is in the bucket.
    g.kill();
    g.restart();
    let mut fresh = Mounted::object(url, &dir.path().join("fresh"), &envs, &[]);
    fresh.mount();
    for (name, body, _, _) in &w {
        let got = std::fs::read(fresh.path("w").join(name))
            .unwrap_or_else(|e| panic!("{name} lost: {e}"));
        assert!(got == *body, "{name} differs");
    }
    assert!(std::fs::read(fresh.path("old.bin")).unwrap_or_default() == old);
    fresh.unmount();
}

/// `idcfs status --json` of mount `m`, the daemon reached with `envs`.
fn status_of(envs: &[(String, String)], m: &Mounted) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["status", "--json"])
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("status json: {e}\n{text}"));
    v.as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["mountpoint"].as_str() == m.mnt.to_str())
        })
        .map(|r| r["status"].clone())
        .unwrap_or_else(|| panic!("mount not in status: {text}"))
}

/// Garage 2.5.0 ignores conditional PUTs (`If-None-Match: *` overwrites): the mount notices,
/// says so, and takes the lease by check, PUT and read-back; a second writer is still refused
/// while the first holds it, and gets it once the first unmounts.
#[test]
fn objstore_garage_without_conditional_put_still_refuses_a_second_writer() {
    let g = Garage::start();
    g.create_bucket("lease");
    let envs = g.envs();
    let dir = tempfile::Builder::new()
        .prefix("idcfs-test-obj")
        .tempdir_in("/var/tmp")
        .unwrap_or_else(|e| panic!("{e}"));
    let url = "s3://lease/fs1";
    let mut m1 = Mounted::object(url, &dir.path().join("cache1"), &envs, &[]);
    m1.mount();
    std::fs::write(m1.path("x"), b"first").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        m1.log_text().contains("ignores conditional PUTs"),
        "the mount did not notice that Garage ignores conditional PUTs:\n{}",
        m1.log_text()
    );
    let pid = m1.pid().unwrap_or_default();
    let mut m2 = Mounted::object(url, &dir.path().join("cache2"), &envs, &[]);
    let err = m2
        .try_mount()
        .unwrap_or_else(|| panic!("a second writable mount was allowed"));
    assert!(
        err.contains("in use by another writer") && err.contains(&format!("pid {pid}")),
        "refusal does not name the holder: {err}"
    );
    // The refused mount left the holder's lease alone: the first mount unmounts cleanly and
    // releases it, and then the second one gets it.
    m1.unmount();
    m2.mount();
    assert_eq!(
        std::fs::read(m2.path("x")).unwrap_or_default(),
        b"first".to_vec()
    );
    m2.unmount();
}
