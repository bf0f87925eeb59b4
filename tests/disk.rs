//! Full and failing disks, through the mount, with the store on a small tmpfs or a
//! loop-mounted ext4: ENOSPC instead of hangs, deletes that always work and give space back,
//! mount/fsck on a full disk, honest statfs, and read-only (EROFS) after a disk write fault
//! with everything fsynced recovered by the next mount.

use crate::util::{idcfs, is_mounted, random, sh, Mounted};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// A small filesystem to hold a store, unmounted (lazily, so it never fails) on drop. Declare
/// it after the `Mounted` that uses it, so the FUSE mount goes first.
struct Backing {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    img: Option<PathBuf>,
}

impl Backing {
    fn tmpfs(mib: u64) -> Backing {
        let tmp = tempfile::Builder::new()
            .prefix("idcfs-disk")
            .tempdir_in("/var/tmp")
            .unwrap();
        let dir = tmp.path().join("fs");
        fs::create_dir(&dir).unwrap();
        sh(
            tmp.path(),
            &format!("mount -t tmpfs -o size={mib}m tmpfs {}", dir.display()),
        );
        Backing {
            _tmp: tmp,
            dir,
            img: None,
        }
    }

    fn ext4(mib: u64) -> Backing {
        let tmp = tempfile::Builder::new()
            .prefix("idcfs-disk")
            .tempdir_in("/var/tmp")
            .unwrap();
        let dir = tmp.path().join("fs");
        let img = tmp.path().join("img");
        fs::create_dir(&dir).unwrap();
        sh(
            tmp.path(),
            &format!(
                "truncate -s {mib}M {i} && mkfs.ext4 -q -F {i} && mount -o loop {i} {d}",
                i = img.display(),
                d = dir.display()
            ),
        );
        Backing {
            _tmp: tmp,
            dir,
            img: Some(img),
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// The disk fails: every later read or write of the ext4 returns EIO (EXT4_IOC_SHUTDOWN,
    /// after flushing what the page cache holds, as a dying disk that had written it would).
    fn fail(&self) {
        let f = File::open(&self.dir).unwrap();
        const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587D;
        let flags: u32 = 0; // EXT4_GOING_FLAGS_DEFAULT: sync, then shut down
        #[allow(unsafe_code)]
        // SAFETY: the ioctl reads one u32 from a valid pointer on a valid fd.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), EXT4_IOC_SHUTDOWN, &flags) };
        assert_eq!(rc, 0, "ext4 shutdown: {}", std::io::Error::last_os_error());
    }

    /// The disk is replaced by a working one with the same contents: unmount, mount again.
    fn cycle(&self) {
        let img = self.img.as_ref().unwrap();
        sh(
            &self.dir,
            &format!(
                "cd / && umount {d} && mount -o loop {i} {d}",
                d = self.dir.display(),
                i = img.display()
            ),
        );
    }

    /// Fill the filesystem from outside the store (another program eating all the space).
    fn hog(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        let mut f = File::create(&p).unwrap();
        let buf = vec![0xa5u8; 64 << 10];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("hog: {e}"),
            }
        }
        let _ = f.sync_all();
        // Small writes until even those fail.
        for _ in 0..4096 {
            if f.write(&buf[..512]).is_err() {
                break;
            }
        }
        p
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Run `f` on a thread; panic if it does not finish within `secs` (a hang is a failure).
fn within<T: Send + 'static>(what: &str, secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not return within {secs} s (hang)")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Create `p` with `data`, fsync it; the errno of the first failure.
fn write_fsync(p: &Path, data: &[u8]) -> Result<(), i32> {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .map_err(errno)?;
    for c in data.chunks(MIB) {
        f.write_all(c).map_err(errno)?;
    }
    f.sync_all().map_err(errno)?;
    drop(f);
    Ok(())
}

/// (available, total) bytes of a mounted filesystem.
fn statfs(p: &Path) -> (u64, u64) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    #[allow(unsafe_code)]
    // SAFETY: valid path and writable statvfs storage.
    let rc = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    assert_eq!(rc, 0, "statvfs {}", p.display());
    #[allow(unsafe_code)]
    // SAFETY: statvfs succeeded.
    let s = unsafe { s.assume_init() };
    (s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize)
}

/// Wait until the mount reports at least `want` bytes available (reclaim is automatic).
fn wait_avail(mnt: &Path, want: u64, secs: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (avail, _) = statfs(mnt);
        if avail >= want || Instant::now() > deadline {
            return avail;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue run 2: store on a 64 MiB tmpfs, 4 MiB files fsynced until ENOSPC, all but two
/// deleted, then an 8 MiB write (it hung, with `ls` and `umount`). Now: ENOSPC at the fill,
/// deletes give the space back on their own, the write, `ls` and `umount` return promptly,
/// statfs tells the truth, and everything fsynced survives.
#[test]
fn full_tmpfs_fill_delete_then_write() {
    fill_delete_then_write(false);
}

/// The same on an encrypted store: sealed records and the encrypted index meet ENOSPC too.
#[test]
fn full_tmpfs_fill_delete_then_write_encrypted() {
    fill_delete_then_write(true);
}

fn fill_delete_then_write(encrypted: bool) {
    let back = Backing::tmpfs(64);
    // The key file lives outside the small filesystem.
    let keydir = tempfile::tempdir().unwrap();
    let key = keydir.path().join("key");
    let mut args: Vec<String> = Vec::new();
    if encrypted {
        fs::write(&key, random(32, 5)).unwrap();
        let (code, out) = idcfs(&[
            "init",
            "--encrypt",
            back.store().to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{out}");
        args = vec!["--key-file".into(), key.to_string_lossy().into_owned()];
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut m = Mounted::with_store(&back.store(), &args);
    let (avail0, _) = statfs(&m.mnt);
    assert!(avail0 > 40 * MIB as u64, "statfs of a new store: {avail0}");
    let mut ok = Vec::new();
    let mut failed = None;
    for i in 0..30u64 {
        let p = m.path(&format!("f{i}"));
        let d = random(4 * MIB, i);
        match within("a 4 MiB write+fsync", 60, move || write_fsync(&p, &d)) {
            Ok(()) => ok.push(i),
            Err(e) => {
                failed = Some((i, e));
                break;
            }
        }
    }
    let (i, errno) = failed.expect("the store never filled up");
    assert_eq!(
        errno,
        libc::ENOSPC,
        "file f{i} failed with errno {errno}, want ENOSPC"
    );
    // statfs promised space that really was writable (random data does not compress).
    let written = ok.len() as u64 * 4 * MIB as u64;
    assert!(
        written + 8 * MIB as u64 >= avail0,
        "statfs said {avail0} bytes were free, only {written} could be written"
    );
    let (avail_full, _) = statfs(&m.mnt);
    assert!(
        avail_full < 4 * MIB as u64,
        "statfs reports {avail_full} bytes free on a full store"
    );
    // Delete all but two fsynced files (and the one that failed).
    let keep: Vec<u64> = ok[ok.len() - 2..].to_vec();
    for &i in ok.iter().filter(|i| !keep.contains(i)).chain([i].iter()) {
        let p = m.path(&format!("f{i}"));
        within("rm", 20, move || fs::remove_file(&p))
            .unwrap_or_else(|e| panic!("rm f{i} on a full store: {e}"));
    }
    let freed = (ok.len() - 2) as u64 * 4 * MIB as u64;
    let avail = wait_avail(&m.mnt, freed / 2 + 8 * MIB as u64, 20);
    assert!(
        avail >= freed / 2 + 8 * MIB as u64,
        "deleting {freed} bytes gave back only {avail} bytes within 20 s"
    );
    let big = random(8 * MIB, 99);
    let (p, d) = (m.path("big"), big.clone());
    within("the 8 MiB write after the deletes", 60, move || {
        write_fsync(&p, &d)
    })
    .unwrap_or_else(|e| panic!("8 MiB write after freeing {freed} bytes: errno {e}"));
    let mnt = m.mnt.clone();
    let mut names = within("ls", 20, move || {
        fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<Vec<_>>()
    });
    names.sort();
    let mut want: Vec<String> = keep.iter().map(|i| format!("f{i}")).collect();
    want.push("big".into());
    want.sort();
    assert_eq!(names, want, "ls after the write");
    let mut m = within("umount", 90, move || {
        m.unmount();
        m
    });
    let store = m.store.to_string_lossy().into_owned();
    let (code, out) = idcfs(&[&["fsck", store.as_str()][..], &args].concat());
    assert_eq!(code, 0, "fsck: {out}");
    m.mount();
    for &i in &keep {
        assert!(
            fs::read(m.path(&format!("f{i}"))).unwrap() == random(4 * MIB, i),
            "fsynced f{i} changed"
        );
    }
    assert!(fs::read(m.path("big")).unwrap() == big, "big changed");
    m.unmount();
}

/// Issue run 1: store on a 60 MiB ext4; a writer runs it full, something else takes the last
/// bytes. `rm` must work, give the space back, `umount` must flush, and `mount`, `fsck` and
/// `fsck --rebuild` must work while the disk is full.
#[test]
fn full_ext4_rm_umount_mount_fsck() {
    let back = Backing::ext4(60);
    let mut m = Mounted::with_store(&back.store(), &[]);
    let keep = random(2 * MIB, 7);
    write_fsync(&m.path("keep"), &keep).unwrap();
    for n in ["t", "r1", "r2"] {
        write_fsync(&m.path(n), &random(MIB, 5)).unwrap();
    }
    fs::create_dir(m.path("d")).unwrap();
    let p = m.path("big");
    let res = within("writing until the disk is full", 90, move || {
        write_fsync(&p, &random(100 * MIB, 8))
    });
    assert_eq!(res, Err(libc::ENOSPC), "filling the store");
    // Another program takes whatever is left (the store's margin too).
    let hog = back.hog("hog1");
    // Every operation that frees space works on the full disk.
    let (t, r1, r2, d) = (m.path("t"), m.path("r1"), m.path("r2"), m.path("d"));
    within("truncate, rename, rmdir on a full disk", 30, move || {
        OpenOptions::new().write(true).open(&t)?.set_len(0)?;
        fs::rename(&r1, &r2)?;
        fs::remove_dir(&d)
    })
    .unwrap_or_else(|e| panic!("truncate/rename/rmdir on a full disk: {e}"));
    let p = m.path("big");
    within("rm on a full disk", 20, move || fs::remove_file(&p))
        .unwrap_or_else(|e| panic!("rm on a full disk: {e}"));
    let mnt = m.mnt.clone();
    within("ls", 20, move || fs::read_dir(&mnt).unwrap().count());
    // The deleted data comes back without anyone asking (the hog stays).
    let avail = wait_avail(&m.mnt, 20 * MIB as u64, 20);
    assert!(avail >= 20 * MIB as u64, "space not reclaimed: {avail}");
    // Full again: the hog takes the reclaimed space too.
    let hog2 = back.hog("hog2");
    let mut m = within("umount on a full disk", 90, move || {
        m.unmount();
        m
    });
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "fsck on a full disk: {out}");
    let store = m.store.to_str().unwrap().to_string();
    let (code, out) = idcfs(&["fsck", "--rebuild", &store]);
    assert_eq!(code, 0, "fsck --rebuild on a full disk: {out}");
    m.mount();
    assert!(
        fs::read(m.path("keep")).unwrap() == keep,
        "fsynced file changed"
    );
    assert!(!m.path("big").exists());
    assert_eq!(fs::metadata(m.path("t")).unwrap().len(), 0);
    assert!(!m.path("r1").exists() && !m.path("d").exists());
    assert!(fs::read(m.path("r2")).unwrap() == random(MIB, 5));
    m.unmount();
    fs::remove_file(hog).unwrap();
    fs::remove_file(hog2).unwrap();
    m.mount();
    let (avail, _) = statfs(&m.mnt);
    write_fsync(&m.path("after"), &random(4 * MIB, 9))
        .unwrap_or_else(|e| panic!("write after space came back ({avail} free): errno {e}"));
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "fsck: {out}");
}

/// A disk write fault: the mount turns read-only (EROFS), reads go on, `idcfs status` says
/// so, and after the disk is back a remount has every fsynced file.
#[test]
fn disk_write_error_turns_read_only() {
    let back = Backing::ext4(128);
    let mut m = Mounted::with_store(&back.store(), &[]);
    let mut synced: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..4u64 {
        let d = random(MIB + i as usize * 1000, 100 + i);
        write_fsync(&m.path(&format!("s{i}")), &d).unwrap();
        synced.push((format!("s{i}"), d));
    }
    // A writer keeps going while the disk fails.
    let dir = m.mnt.clone();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p2 = progress.clone();
    let writer = std::thread::spawn(move || {
        let mut done = Vec::new();
        for i in 0..100_000u64 {
            let d = random(200_000, 1000 + i);
            match write_fsync(&dir.join(format!("w{i}")), &d) {
                Ok(()) => {
                    done.push((format!("w{i}"), d));
                    p2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => return (done, e),
            }
        }
        (done, 0)
    });
    // Fail the disk once the writer is under way (however loaded the machine is).
    let t0 = std::time::Instant::now();
    while progress.load(std::sync::atomic::Ordering::Relaxed) < 3
        && t0.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    back.fail();
    let (done, errno) = within("the writer", 60, move || writer.join().unwrap());
    assert!(
        errno == libc::EIO || errno == libc::EROFS,
        "the writer failed with errno {errno}"
    );
    assert!(
        !done.is_empty(),
        "the writer made no progress before the fault"
    );
    synced.extend(done);
    // From now on: EROFS for changes, reads keep working.
    let e = write_fsync(&m.path("after"), b"x").unwrap_err();
    assert_eq!(e, libc::EROFS, "write after the fault");
    let e = fs::create_dir(m.path("d")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "mkdir after the fault");
    for (n, d) in &synced[..4] {
        assert!(
            fs::read(m.path(n)).unwrap() == *d,
            "{n} unreadable after the fault"
        );
    }
    let (code, out) = idcfs(&["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mountpoint"].as_str() == m.mnt.to_str())
        .unwrap_or_else(|| panic!("our mount is not in `idcfs status`: {out}"));
    let why = row["status"]["read_only"].as_str().unwrap_or_default();
    assert!(!why.is_empty(), "status does not say read-only: {row}");
    assert!(
        m.log_text().contains("read-only"),
        "the log does not say read-only"
    );
    m.unmount();
    back.cycle();
    m.mount();
    for (n, d) in &synced {
        let got = fs::read(m.path(n)).unwrap_or_else(|e| panic!("fsynced {n} lost: {e}"));
        assert!(got == *d, "fsynced {n} differs after recovery");
    }
    write_fsync(&m.path("after"), b"works again").unwrap();
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "fsck after the fault: {out}");
    assert!(!is_mounted(&m.mnt));
}

/// The hang: the daemon's log on the same full filesystem as the store (as `idcfs
/// mount` keeps it). Writers meet ENOSPC while the log cannot grow; nothing may hang, not the
/// writers, `ls`, `rm` or `umount`, and the daemon stays up.
#[test]
fn full_disk_under_the_log_never_hangs() {
    let back = Backing::tmpfs(64);
    let log = back.dir.join("idcfs.log");
    let mut m = Mounted::with_store_and_log(&back.store(), &log, &[]);
    let keep = random(4 * MIB, 1);
    write_fsync(&m.path("keep"), &keep).unwrap();
    for i in 0..4u64 {
        write_fsync(&m.path(&format!("old{i}")), &random(4 * MIB, 10 + i)).unwrap();
    }
    // Everything else, the log's room included, is taken.
    let hog = back.hog("hog");
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let dir = m.mnt.clone();
            std::thread::spawn(move || {
                let mut errs = Vec::new();
                for i in 0..3u64 {
                    let p = dir.join(format!("w{w}-{i}"));
                    if let Err(e) = write_fsync(&p, &random(4 * MIB, 100 * w + i)) {
                        errs.push(e);
                    }
                }
                errs
            })
        })
        .collect();
    let errs = within("writers on a full disk", 90, move || {
        writers
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect::<Vec<i32>>()
    });
    assert!(!errs.is_empty(), "writes on a full disk succeeded");
    assert!(
        errs.iter().all(|&e| e == libc::ENOSPC),
        "writers failed with {errs:?}, want ENOSPC"
    );
    let mnt = m.mnt.clone();
    within("ls and rm on a full disk", 30, move || {
        for i in 0..4u64 {
            fs::remove_file(mnt.join(format!("old{i}")))?;
        }
        fs::read_dir(&mnt).map(|d| d.count())
    })
    .unwrap_or_else(|e| panic!("rm on a full disk: {e}"));
    let mnt = m.mnt.clone();
    let st = within("statfs", 20, move || statfs(&mnt));
    assert!(st.1 > 0);
    let mut m = within("umount on a full disk", 90, move || {
        m.unmount();
        m
    });
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "fsck: {out}");
    fs::remove_file(hog).unwrap();
    m.mount();
    assert!(
        fs::read(m.path("keep")).unwrap() == keep,
        "fsynced file changed"
    );
    m.unmount();
}
