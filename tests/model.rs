//! Seeded randomized differential test: the same random operations on the mount and on a
//! plain directory, with the trees compared after every step (and remounts in between).
//! IDCFS_MODEL_OPS sets the number of steps (default 2000), IDCFS_MODEL_SEED the seed.

use crate::util::Mounted;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

const NAMES: [&str; 6] = ["a", "b", "c", "d0", "d1", "e"];
const DIRS: [&str; 4] = ["", "d0", "d1", "d0/d1"];

fn rel(rng: &mut StdRng) -> String {
    let d = DIRS[rng.random_range(0..DIRS.len())];
    let n = NAMES[rng.random_range(0..NAMES.len())];
    if d.is_empty() {
        n.to_string()
    } else {
        format!("{d}/{n}")
    }
}

fn res<T>(r: std::io::Result<T>) -> Result<(), i32> {
    r.map(|_| ()).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn xattr_set(p: &Path, name: &str, v: &[u8]) -> Result<(), i32> {
    let (cp, cn) = (
        CString::new(p.as_os_str().as_bytes()).unwrap(),
        CString::new(name).unwrap(),
    );
    let r = unsafe { libc::lsetxattr(cp.as_ptr(), cn.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    }
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut list = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(cp.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in list[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
    {
        let name_s = String::from_utf8_lossy(name).into_owned();
        if !name_s.starts_with("user.") {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let mut buf = vec![0u8; 65536];
        let r = unsafe {
            libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        buf.truncate(r.max(0) as usize);
        out.insert(name_s, buf);
    }
    out
}

/// Everything observable about a tree: type, mode, nlink, size, content, target, xattrs.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(r) = stack.pop() {
        let mut ents: Vec<_> = fs::read_dir(root.join(&r))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        ents.sort();
        for name in ents {
            let rp = r.join(&name);
            let p = root.join(&rp);
            let md = fs::symlink_metadata(&p).unwrap();
            let mut desc = format!(
                "mode={:o} nlink={} size={}",
                md.mode(),
                md.nlink(),
                md.len()
            );
            if md.is_dir() {
                stack.push(rp.clone());
                desc = format!("mode={:o} nlink={}", md.mode(), md.nlink());
            } else if md.file_type().is_symlink() {
                desc.push_str(&format!(" -> {}", fs::read_link(&p).unwrap().display()));
            } else {
                let d = fs::read(&p).unwrap();
                desc.push_str(&format!(" hash={}", blake3::hash(&d).to_hex()));
            }
            desc.push_str(&format!(" xattrs={:?}", xattrs(&p)));
            out.insert(rp.display().to_string(), desc);
        }
    }
    out
}

/// Apply one random op to `root`; `rng` is cloned per side so both see the same op.
fn step(rng: &mut StdRng, root: &Path) -> (String, Result<(), i32>) {
    let op = rng.random_range(0..100);
    let a = rel(rng);
    let p = root.join(&a);
    match op {
        0..=29 => {
            let off = if rng.random_bool(0.2) {
                rng.random_range(0..3_000_000u64)
            } else {
                rng.random_range(0..300_000u64)
            };
            let len = rng.random_range(0..200_000usize);
            let seed = rng.random::<u64>();
            let buf = crate::util::data(seed, len);
            let r = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&p)
                .and_then(|f| f.write_all_at(&buf, off));
            (format!("write {a} @{off} +{len}"), res(r))
        }
        30..=37 => {
            let len = rng.random_range(0..1_000_000u64);
            (
                format!("truncate {a} {len}"),
                res(OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(len))),
            )
        }
        38..=45 => {
            let b = rel(rng);
            (
                format!("rename {a} {b}"),
                res(fs::rename(&p, root.join(&b))),
            )
        }
        46..=51 => {
            let b = rel(rng);
            (
                format!("link {a} {b}"),
                res(fs::hard_link(&p, root.join(&b))),
            )
        }
        52..=60 => (format!("unlink {a}"), res(fs::remove_file(&p))),
        61..=68 => (format!("mkdir {a}"), res(fs::create_dir(&p))),
        69..=74 => (format!("rmdir {a}"), res(fs::remove_dir(&p))),
        75..=79 => {
            let v = vec![rng.random::<u8>(); rng.random_range(0..100)];
            let n = format!("user.k{}", rng.random_range(0..3));
            (format!("setxattr {a} {n}"), xattr_set(&p, &n, &v))
        }
        80..=84 => {
            let r = OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|f| f.sync_all());
            (format!("fsync {a}"), res(r))
        }
        85..=89 => {
            let mode = [0o600, 0o644, 0o755, 0o4755, 0o640][rng.random_range(0..5)];
            use std::os::unix::fs::PermissionsExt;
            (
                format!("chmod {a} {mode:o}"),
                res(fs::set_permissions(&p, fs::Permissions::from_mode(mode))),
            )
        }
        90..=94 => {
            let t = rng.random_range(0..1000usize);
            (
                format!("symlink {a}"),
                res(std::os::unix::fs::symlink(format!("target{t}"), &p)),
            )
        }
        _ => {
            let off = rng.random_range(0..400_000u64);
            let mut buf = vec![0u8; 70_000];
            let r = fs::File::open(&p).and_then(|f| f.read_at(&mut buf, off));
            (format!("read {a} @{off}"), res(r))
        }
    }
}

#[test]
fn random_ops_match_a_plain_directory() {
    let ops: usize = std::env::var("IDCFS_MODEL_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("IDCFS_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0001_dcf5);
    let mut m = Mounted::new();
    let reference = m.dir.path().join("reference");
    fs::create_dir(&reference).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..ops {
        let mut r2 = rng.clone();
        let (what, got) = step(&mut rng, &m.mnt);
        let (_, want) = step(&mut r2, &reference);
        assert_eq!(
            got, want,
            "seed {seed} step {i}: {what}: mount and reference disagree"
        );
        let (a, b) = (snapshot(&m.mnt), snapshot(&reference));
        if a != b {
            let diff: Vec<String> = a
                .keys()
                .chain(b.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| format!("{k}: mount {:?} reference {:?}", a.get(k), b.get(k)))
                .collect();
            panic!(
                "seed {seed} step {i}: after {what}, trees differ:\n{}",
                diff.join("\n")
            );
        }
        if i % 500 == 499 {
            m.remount();
            assert_eq!(
                snapshot(&m.mnt),
                snapshot(&reference),
                "seed {seed}: after remount at step {i}"
            );
        }
    }
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "fsck after the model run: {out}");
}
