//! Ordinary programs on the mount: cp, tar, diff, dd, python, sqlite3, git; with remounts.

use crate::util::{sh, Mounted};
use std::fs;

/// A source tree of real files from this machine (Rust sources, docs, binaries).
fn make_source(dir: &std::path::Path) -> std::path::PathBuf {
    let src = dir.join("src-tree");
    fs::create_dir_all(&src).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    sh(
        dir,
        &format!(
            "cp -a {root}/src {src}/idcfs-src && cp -a /usr/share/doc/bash {src}/bashdoc 2>/dev/null || true; \
             cp /usr/bin/env /usr/bin/ls {src}/ && ln -s idcfs-src/lib.rs {src}/link && ln {src}/ls {src}/ls-hard && \
             mkdir -p {src}/empty && head -c 3000000 /dev/urandom > {src}/random.bin && \
             dd if=/dev/zero of={src}/sparse bs=1 count=1 seek=20000000 2>/dev/null && chmod 640 {src}/random.bin",
            src = src.display()
        ),
    );
    src
}

#[test]
fn cp_tar_diff_dd_with_remount() {
    let mut m = Mounted::new();
    let src = make_source(m.dir.path());
    let mnt = m.mnt.clone();
    sh(
        m.dir.path(),
        &format!("cp -a {} {}/copy", src.display(), mnt.display()),
    );
    sh(
        m.dir.path(),
        &format!(
            "diff -r --no-dereference {} {}/copy",
            src.display(),
            mnt.display()
        ),
    );
    // tar into the mount and back out of it.
    sh(
        m.dir.path(),
        &format!(
            "mkdir {m}/untar && tar -C {s} -cf - . | tar -C {m}/untar -xpf -",
            s = src.display(),
            m = mnt.display()
        ),
    );
    sh(m.dir.path(), &format!("tar -C {}/untar -cf {}/out.tar . && mkdir -p {}/back && tar -C {}/back -xpf {}/out.tar", mnt.display(), m.dir.path().display(), m.dir.path().display(), m.dir.path().display(), m.dir.path().display()));
    sh(
        m.dir.path(),
        &format!(
            "diff -r --no-dereference {} {}/back",
            src.display(),
            m.dir.path().display()
        ),
    );
    // dd with odd block sizes and fsync.
    sh(
        m.dir.path(),
        &format!(
            "dd if={}/random.bin of={}/dd.bin bs=7777 conv=fsync status=none",
            src.display(),
            mnt.display()
        ),
    );
    sh(
        m.dir.path(),
        &format!("cmp {}/random.bin {}/dd.bin", src.display(), mnt.display()),
    );
    m.remount();
    sh(
        m.dir.path(),
        &format!(
            "diff -r --no-dereference {} {}/copy",
            src.display(),
            mnt.display()
        ),
    );
    sh(
        m.dir.path(),
        &format!(
            "diff -r --no-dereference {} {}/untar",
            src.display(),
            mnt.display()
        ),
    );
    sh(
        m.dir.path(),
        &format!("cmp {}/random.bin {}/dd.bin", src.display(), mnt.display()),
    );
    let st = fs::metadata(mnt.join("copy/ls")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(st.nlink(), 2, "hard link preserved by cp -a");
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "fsck after tools: {out}");
}

#[test]
fn sqlite_integrity_and_python() {
    let mut m = Mounted::new();
    let db = m.path("test.db");
    let script = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB); \
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 20000) \
        INSERT INTO t(v, b) SELECT printf('row %d %s', x, hex(randomblob(20))), randomblob(300) FROM c; \
        CREATE INDEX iv ON t(v); UPDATE t SET v = v || '!' WHERE id % 7 = 0; DELETE FROM t WHERE id % 11 = 0; VACUUM;";
    sh(
        m.dir.path(),
        &format!("sqlite3 {} \"{script}\"", db.display()),
    );
    let check = |m: &Mounted| {
        let out = sh(
            m.dir.path(),
            &format!(
                "sqlite3 {} 'PRAGMA integrity_check; SELECT count(*) FROM t;'",
                db.display()
            ),
        );
        assert_eq!(
            out.trim(),
            format!("ok\n{}", 20000 - 20000 / 11),
            "sqlite: {out}"
        );
    };
    check(&m);
    // WAL mode with concurrent reader and writer.
    sh(
        m.dir.path(),
        &format!(
            "sqlite3 {} 'PRAGMA journal_mode=WAL; INSERT INTO t(v) VALUES (\"wal\");'",
            db.display()
        ),
    );
    m.remount();
    let out = sh(
        m.dir.path(),
        &format!(
            "sqlite3 {} 'PRAGMA integrity_check; SELECT count(*) FROM t WHERE v = \"wal\";'",
            db.display()
        ),
    );
    assert_eq!(out.trim(), "ok\n1");
    // Python: seek/overwrite/truncate through the buffered file API, and os.replace.
    let py = format!(
        r#"
import os, hashlib
p = "{mnt}/py.bin"
with open(p, "wb") as f:
    for i in range(300):
        f.write(hashlib.sha256(str(i).encode()).digest() * 100)
with open(p, "r+b") as f:
    f.seek(100000); f.write(b"X" * 5000); f.truncate(500000)
data = open(p, "rb").read()
assert len(data) == 500000, len(data)
assert data[100000:105000] == b"X" * 5000
with open(p + ".tmp", "w") as f:
    f.write("replaced"); f.flush(); os.fsync(f.fileno())
os.replace(p + ".tmp", "{mnt}/final")
assert open("{mnt}/final").read() == "replaced"
print(hashlib.sha256(data).hexdigest())
"#,
        mnt = m.mnt.display()
    );
    let digest = sh(
        m.dir.path(),
        &format!("python3 -c '{}'", py.replace('\'', "'\\''")),
    );
    m.remount();
    let again = sh(
        m.dir.path(),
        &format!("sha256sum {}/py.bin | cut -d' ' -f1", m.mnt.display()),
    );
    assert_eq!(digest.trim(), again.trim());
}

#[test]
fn git_clone_and_fsck() {
    let mut m = Mounted::new();
    let repo = m.dir.path().join("origin");
    let root = env!("CARGO_MANIFEST_DIR");
    sh(
        m.dir.path(),
        &format!(
            "git init -q {r} && cp -a {root}/src {r}/ && cd {r} && git -c user.email=t@t -c user.name=t add -A && \
             git -c user.email=t@t -c user.name=t commit -qm one && echo more >> src/lib.rs && \
             git -c user.email=t@t -c user.name=t commit -qam two && git gc -q",
            r = repo.display()
        ),
    );
    sh(
        m.dir.path(),
        &format!("git clone -q {} {}/clone", repo.display(), m.mnt.display()),
    );
    sh(
        &m.mnt.join("clone"),
        "git fsck --full --strict && git status --porcelain | wc -l | grep -qx 0",
    );
    sh(&m.mnt.join("clone"), "git -c user.email=t@t -c user.name=t commit -q --allow-empty -m three && git gc -q --aggressive");
    m.remount();
    sh(
        &m.mnt.join("clone"),
        "git fsck --full --strict && git log --oneline | wc -l | grep -qx 3",
    );
}
