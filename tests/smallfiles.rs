//! Many small files, as `tar -x` writes them: what the small-file fast path defers (close
//! hands data to the compression pool, index updates share redb commits, the kernel caches
//! entries and attributes for a minute and lists directories with attributes) must never
//! show: names, sizes, contents and attributes are right at once through any path, after
//! renames, links and deletes, in `stats`, after a remount and after kill -9.

use crate::util::{data, Mounted};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

const FILES: u64 = 300;

fn body(i: u64) -> Vec<u8> {
    // Empty, tiny, a few KiB (the dictionary path), and a few past one 128 KiB block.
    let len = match i % 7 {
        0 => 0,
        1 => 1 + (i as usize % 50),
        6 => 130_000 + (i as usize * 37) % 9000,
        _ => 200 + (i as usize * 977) % 12_000,
    };
    data(i, len)
}

fn mode(i: u64) -> u32 {
    [0o644, 0o600, 0o755, 0o640][i as usize % 4]
}

fn mtime(i: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + i * 3600)
}

fn rel(i: u64) -> String {
    format!("d{}/sub{}/f{i}", i % 5, i % 3)
}

/// What tar does per file: create, write, chown/chmod/utimens on the open file, close.
fn extract(root: &Path, i: u64) {
    let p = root.join(rel(i));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    let b = body(i);
    // tar writes in records: several writes for the larger files.
    for chunk in b.chunks(10_240) {
        f.write_all(chunk).unwrap();
    }
    std::os::unix::fs::fchown(&f, Some(0), Some(0)).unwrap();
    f.set_permissions(fs::Permissions::from_mode(mode(i)))
        .unwrap();
    f.set_modified(mtime(i)).unwrap();
    drop(f);
}

fn check(root: &Path, i: u64, what: &str) {
    let p = root.join(rel(i));
    let md = fs::metadata(&p).unwrap_or_else(|e| panic!("{what}: {}: {e}", p.display()));
    let b = body(i);
    assert_eq!(md.len(), b.len() as u64, "{what}: size of {}", p.display());
    assert_eq!(
        md.mode() & 0o7777,
        mode(i),
        "{what}: mode of {}",
        p.display()
    );
    assert_eq!(
        md.modified().unwrap(),
        mtime(i),
        "{what}: mtime of {}",
        p.display()
    );
    assert!(
        fs::read(&p).unwrap() == b,
        "{what}: content of {}",
        p.display()
    );
}

#[test]
fn many_small_files_are_right_at_once_and_after_remount_and_kill9() {
    let mut m = Mounted::new();
    let root = m.path("t");
    for i in 0..FILES {
        extract(&root, i);
    }
    // At once, without sync: every name, size, attribute and byte.
    for i in 0..FILES {
        check(&root, i, "right after extraction");
    }
    // Listings with attributes (readdirplus) agree with stat.
    for d in 0..5 {
        for s in 0..3 {
            let dir = root.join(format!("d{d}/sub{s}"));
            let mut n = 0;
            for e in fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                let i: u64 = e.file_name().to_string_lossy()[1..].parse().unwrap();
                let md = e.metadata().unwrap();
                assert_eq!(md.len(), body(i).len() as u64, "listed size of f{i}");
                assert_eq!(md.mode() & 0o7777, mode(i), "listed mode of f{i}");
                n += 1;
            }
            assert_eq!(n, (0..FILES).filter(|i| i % 5 == d && i % 3 == s).count());
        }
    }
    // stats counts what was just closed.
    let logical: u64 = (0..FILES).map(|i| body(i).len() as u64).sum();
    let st = m.stats_json();
    assert_eq!(
        st["logical_bytes"].as_u64().unwrap(),
        logical,
        "stats right after the closes: {st}"
    );

    // Changes through one path show through another at once (cached entries and
    // attributes must follow): a hard link, a rename of the directory, chmod, truncate.
    let a = root.join(rel(10));
    let link = m.path("link10");
    fs::hard_link(&a, &link).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().nlink(), 2);
    fs::set_permissions(&link, fs::Permissions::from_mode(0o604)).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().mode() & 0o7777, 0o604);
    OpenOptions::new()
        .write(true)
        .open(&link)
        .unwrap()
        .set_len(3)
        .unwrap();
    assert_eq!(fs::metadata(&a).unwrap().len(), 3);
    assert_eq!(fs::read(&a).unwrap(), body(10)[..3]);
    fs::rename(root.join("d1"), root.join("moved")).unwrap();
    assert!(!root.join(rel(1)).exists());
    assert!(fs::read(root.join("moved/sub1/f1")).unwrap() == body(1));
    fs::rename(root.join("moved"), root.join("d1")).unwrap();
    fs::remove_file(&a).unwrap();
    assert_eq!(fs::metadata(&link).unwrap().nlink(), 1);
    assert!(!a.exists());
    fs::remove_file(&link).unwrap();
    // A name deleted and created again is the new file, not a cached one.
    let b = root.join(rel(11));
    fs::remove_file(&b).unwrap();
    fs::write(&b, b"again").unwrap();
    assert_eq!(fs::read(&b).unwrap(), b"again");
    assert_eq!(fs::metadata(&b).unwrap().len(), 5);
    fs::remove_file(&b).unwrap();
    extract(&root, 11);

    // Everything closed (never fsynced) survives a clean remount...
    m.remount();
    for i in (0..FILES).filter(|&i| i != 10) {
        check(&root, i, "after a remount");
    }
    // ...and kill -9 a moment after the closes: close returns before the pool commits, but
    // the commit follows within milliseconds, well inside the documented write-back delay.
    for i in FILES..FILES + 100 {
        extract(&root, i);
    }
    File::open(&root).unwrap().sync_all().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    m.kill9();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "fsck after kill -9: {out}");
    m.mount();
    for i in (0..FILES + 100).filter(|&i| i != 10) {
        check(&root, i, "after kill -9");
    }
    // rm -rf of the whole tree, then the names are gone and new files can take them.
    fs::remove_dir_all(&root).unwrap();
    assert!(!root.exists());
    extract(&root, 3);
    check(&root, 3, "recreated after rm -rf");
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "fsck: {out}");
}
