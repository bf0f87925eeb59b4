//! POSIX semantics through a real mount: each test states the behaviour a kernel filesystem has.

use crate::util::{data, Mounted};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
fn create_write_read_append_trunc_excl() {
    let m = Mounted::new();
    let p = m.path("f");
    fs::write(&p, b"hello world").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello world");
    // O_APPEND from two handles.
    let mut a = OpenOptions::new().append(true).open(&p).unwrap();
    let mut b = OpenOptions::new().append(true).open(&p).unwrap();
    a.write_all(b"+a").unwrap();
    b.write_all(b"+b").unwrap();
    drop((a, b));
    assert_eq!(fs::read(&p).unwrap(), b"hello world+a+b");
    // O_TRUNC
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap()
        .write_all(b"x")
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"x");
    // O_EXCL
    let e = OpenOptions::new().write(true).create_new(true).open(&p);
    assert_eq!(e.err().map(|e| e.kind()), Some(ErrorKind::AlreadyExists));
    // Random-offset writes across block boundaries, read back at odd offsets.
    let big = data(7, 3 * 131072 + 5000);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("g"))
        .unwrap();
    f.write_all_at(&big, 0).unwrap();
    f.write_all_at(b"PATCH", 131070).unwrap();
    let mut want = big.clone();
    want[131070..131075].copy_from_slice(b"PATCH");
    let mut buf = vec![0u8; 10];
    f.read_exact_at(&mut buf, 131068).unwrap();
    assert_eq!(buf, &want[131068..131078]);
    drop(f);
    assert_eq!(fs::read(m.path("g")).unwrap(), want);
}

#[test]
fn truncate_up_down_and_sparse_holes() {
    let mut m = Mounted::new();
    let p = m.path("t");
    let d = data(1, 300_000);
    fs::write(&p, &d).unwrap();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(140_000).unwrap();
    f.set_len(500_000).unwrap();
    drop(f);
    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), 500_000);
    assert_eq!(&got[..140_000], &d[..140_000]);
    assert!(
        got[140_000..].iter().all(|&b| b == 0),
        "extended region must read as zeros"
    );
    // Sparse: a write far out leaves a hole that reads as zeros and costs nothing.
    let s = m.path("sparse");
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&s)
        .unwrap();
    f.write_all_at(b"end", 64 << 20).unwrap();
    drop(f);
    let md = fs::metadata(&s).unwrap();
    assert_eq!(md.len(), (64 << 20) + 3);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "hole must not be allocated: {} blocks",
        md.blocks()
    );
    m.remount();
    let got = fs::read(&p).unwrap();
    assert_eq!(&got[..140_000], &d[..140_000]);
    assert!(got[140_000..].iter().all(|&b| b == 0));
    let mut f = File::open(&s).unwrap();
    let mut buf = vec![1u8; 4096];
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let stats = m.stats_json();
    assert!(
        stats["stored_bytes"].as_u64().unwrap() < 4 << 20,
        "sparse file stored too much: {stats}"
    );
}

#[test]
fn beyond_4gib() {
    let m = Mounted::new();
    let p = m.path("huge");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let off = 5u64 << 30;
    f.write_all_at(b"past four gigabytes", off).unwrap();
    let mut buf = [0u8; 19];
    f.read_exact_at(&mut buf, off).unwrap();
    assert_eq!(&buf, b"past four gigabytes");
    assert_eq!(f.metadata().unwrap().len(), off + 19);
    f.write_all_at(b"middle", 3 << 30).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut f = File::open(&p).unwrap();
    let mut buf = vec![1u8; 1 << 20];
    f.seek(SeekFrom::Start((3 << 30) - 1000)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert!(buf[..1000].iter().all(|&b| b == 0));
    assert_eq!(&buf[1000..1006], b"middle");
    assert!(
        fs::metadata(&p).unwrap().blocks() * 512 <= 2 * 131072,
        "only two blocks allocated"
    );
}

#[test]
fn mkdir_rmdir_and_nonempty() {
    let m = Mounted::new();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/x"), b"1").unwrap();
    assert_eq!(errno_of(fs::remove_dir(m.path("d"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::create_dir(m.path("d"))), libc::EEXIST);
    assert_eq!(errno_of(fs::remove_dir(m.path("d/x"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_file(m.path("d"))), libc::EISDIR);
    assert_eq!(errno_of(fs::read(m.path("nope"))), libc::ENOENT);
    assert_eq!(errno_of(fs::write(m.path("d/x/y"), b"")), libc::ENOTDIR);
    let long = "n".repeat(256);
    assert_eq!(errno_of(fs::write(m.path(&long), b"")), libc::ENAMETOOLONG);
    fs::create_dir(m.path("d/sub")).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 3);
    fs::remove_file(m.path("d/x")).unwrap();
    fs::remove_dir(m.path("d/sub")).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 2);
    fs::remove_dir(m.path("d")).unwrap();
    assert!(!m.path("d").exists());
}

#[test]
fn unlink_open_file_keeps_data_until_close() {
    let mut m = Mounted::new();
    let p = m.path("u");
    let d = data(3, 400_000);
    fs::write(&p, &d).unwrap();
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    assert!(!p.exists());
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert_eq!(got, d);
    f.write_all_at(b"still writable", 10).unwrap();
    let mut b = [0u8; 14];
    f.read_exact_at(&mut b, 10).unwrap();
    assert_eq!(&b, b"still writable");
    drop(f);
    m.unmount();
    let (code, out) = m.fsck();
    assert_eq!(code, 0, "{out}");
    m.mount();
    let st = m.stats_json();
    assert!(
        st["logical_bytes"].as_u64().unwrap() < 1000,
        "space of the unlinked file not reclaimed: {st}"
    );
}

#[test]
fn rename_semantics() {
    let m = Mounted::new();
    fs::write(m.path("a"), b"A").unwrap();
    fs::write(m.path("b"), b"B").unwrap();
    fs::rename(m.path("a"), m.path("b")).unwrap();
    assert_eq!(fs::read(m.path("b")).unwrap(), b"A");
    assert!(!m.path("a").exists());
    // Directory over an empty directory; over a non-empty one fails.
    fs::create_dir_all(m.path("d1/in")).unwrap();
    fs::create_dir(m.path("d2")).unwrap();
    fs::rename(m.path("d1"), m.path("d2")).unwrap();
    assert!(m.path("d2/in").is_dir());
    fs::create_dir_all(m.path("d3/x")).unwrap();
    assert_eq!(
        errno_of(fs::rename(m.path("d3"), m.path("d2"))),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of(fs::rename(m.path("b"), m.path("d3"))),
        libc::EISDIR
    );
    assert_eq!(
        errno_of(fs::rename(m.path("d3"), m.path("b"))),
        libc::ENOTDIR
    );
    assert_eq!(
        errno_of(fs::rename(m.path("d2"), m.path("d2/in/sub"))),
        libc::EINVAL
    );
    // Across directories; nlink of parents follows.
    fs::rename(m.path("d2/in"), m.path("d3/in")).unwrap();
    assert_eq!(fs::metadata(m.path("d2")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(m.path("d3")).unwrap().nlink(), 4);
    // RENAME_NOREPLACE and RENAME_EXCHANGE.
    fs::write(m.path("x"), b"X").unwrap();
    fs::write(m.path("y"), b"Y").unwrap();
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(&m.path("x")).as_ptr(),
            libc::AT_FDCWD,
            c(&m.path("y")).as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!((r, last_errno()), (-1, libc::EEXIST));
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(&m.path("x")).as_ptr(),
            libc::AT_FDCWD,
            c(&m.path("y")).as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0, "exchange: errno {}", last_errno());
    assert_eq!(fs::read(m.path("x")).unwrap(), b"Y");
    assert_eq!(fs::read(m.path("y")).unwrap(), b"X");
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(&m.path("x")).as_ptr(),
            libc::AT_FDCWD,
            c(&m.path("d3")).as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0, "exchange file and dir: errno {}", last_errno());
    assert!(m.path("x").is_dir() && m.path("d3").is_file());
    assert!(m.path("x/in").is_dir());
}

#[test]
fn hard_links_symlinks_fifo() {
    let mut m = Mounted::new();
    fs::write(m.path("f"), b"data").unwrap();
    fs::hard_link(m.path("f"), m.path("g")).unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::hard_link(m.path("f"), m.path("d/h")).unwrap();
    assert_eq!(fs::metadata(m.path("f")).unwrap().nlink(), 3);
    assert_eq!(
        fs::metadata(m.path("f")).unwrap().ino(),
        fs::metadata(m.path("d/h")).unwrap().ino()
    );
    fs::remove_file(m.path("f")).unwrap();
    assert_eq!(fs::metadata(m.path("g")).unwrap().nlink(), 2);
    fs::write(m.path("d/h"), b"changed").unwrap();
    assert_eq!(fs::read(m.path("g")).unwrap(), b"changed");
    assert_eq!(
        errno_of(fs::hard_link(m.path("d"), m.path("dl"))),
        libc::EPERM
    );
    std::os::unix::fs::symlink("d/h", m.path("s")).unwrap();
    assert_eq!(fs::read_link(m.path("s")).unwrap().as_os_str(), "d/h");
    assert_eq!(fs::read(m.path("s")).unwrap(), b"changed");
    assert!(fs::symlink_metadata(m.path("s"))
        .unwrap()
        .file_type()
        .is_symlink());
    let r = unsafe { libc::mkfifo(c(&m.path("fifo")).as_ptr(), 0o644) };
    assert_eq!(r, 0);
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(m.path("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    m.remount();
    assert_eq!(fs::metadata(m.path("g")).unwrap().nlink(), 2);
    assert_eq!(fs::read_link(m.path("s")).unwrap().as_os_str(), "d/h");
    assert!(fs::symlink_metadata(m.path("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn attributes_chmod_chown_utimens_ns() {
    let mut m = Mounted::new();
    let p = m.path("f");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4751);
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let ts = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 987_654_321,
        },
    ];
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c(&p).as_ptr(), ts.as_ptr(), 0) };
    assert_eq!(r, 0);
    let check = |p: &Path| {
        let md = fs::metadata(p).unwrap();
        assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123_456_789));
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 987_654_321));
    };
    check(&p);
    m.remount();
    check(&p);
    let md = fs::metadata(&p).unwrap();
    // chown may clear setuid (as the kernel does); the permission bits stay.
    assert_eq!(md.mode() & 0o777, 0o751);
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
}

#[test]
fn setgid_directory_inheritance() {
    let m = Mounted::new();
    let d = m.path("sg");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(0), Some(4321)).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(d.join("f"), b"").unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    assert_eq!(fs::metadata(d.join("f")).unwrap().gid(), 4321);
    let sub = fs::metadata(d.join("sub")).unwrap();
    assert_eq!(sub.gid(), 4321);
    assert_ne!(sub.mode() & 0o2000, 0, "subdirectory inherits setgid");
}

#[test]
fn xattrs() {
    let mut m = Mounted::new();
    let p = m.path("f");
    fs::write(&p, b"x").unwrap();
    let cp = c(&p);
    let set = |name: &str, val: &[u8], flags: i32| unsafe {
        let n = CString::new(name).unwrap();
        if libc::setxattr(
            cp.as_ptr(),
            n.as_ptr(),
            val.as_ptr().cast(),
            val.len(),
            flags,
        ) == 0
        {
            0
        } else {
            last_errno()
        }
    };
    let get = |name: &str| -> Result<Vec<u8>, i32> {
        let n = CString::new(name).unwrap();
        let mut buf = vec![0u8; 70000];
        let r =
            unsafe { libc::getxattr(cp.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            Err(last_errno())
        } else {
            buf.truncate(r as usize);
            Ok(buf)
        }
    };
    assert_eq!(set("user.a", b"1", 0), 0);
    assert_eq!(set("user.b", b"two", 0), 0);
    assert_eq!(get("user.a"), Ok(b"1".to_vec()));
    assert_eq!(get("user.missing"), Err(libc::ENODATA));
    assert_eq!(set("user.a", b"x", libc::XATTR_CREATE), libc::EEXIST);
    assert_eq!(set("user.c", b"x", libc::XATTR_REPLACE), libc::ENODATA);
    assert_eq!(set("user.big", &vec![7u8; 65536], 0), 0);
    assert_eq!(get("user.big").map(|v| v.len()), Ok(65536));
    assert_eq!(set("user.toobig", &vec![7u8; 65537], 0), libc::E2BIG);
    // Size probe and ERANGE.
    let n = CString::new("user.b").unwrap();
    assert_eq!(
        unsafe { libc::getxattr(cp.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) },
        3
    );
    let mut small = [0u8; 2];
    assert_eq!(
        unsafe { libc::getxattr(cp.as_ptr(), n.as_ptr(), small.as_mut_ptr().cast(), 2) },
        -1
    );
    assert_eq!(last_errno(), libc::ERANGE);
    let mut list = vec![0u8; 1000];
    let len = unsafe { libc::listxattr(cp.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    let names: Vec<&[u8]> = list[..len as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(names, vec![&b"user.a"[..], b"user.b", b"user.big"]);
    let r = unsafe { libc::removexattr(cp.as_ptr(), n.as_ptr()) };
    assert_eq!(r, 0);
    assert_eq!(get("user.b"), Err(libc::ENODATA));
    assert_eq!(unsafe { libc::removexattr(cp.as_ptr(), n.as_ptr()) }, -1);
    assert_eq!(last_errno(), libc::ENODATA);
    m.remount();
    assert_eq!(get("user.a"), Ok(b"1".to_vec()));
    assert_eq!(get("user.big").map(|v| v.len()), Ok(65536));
}

#[test]
fn readdir_offsets_stable_under_changes() {
    let m = Mounted::new();
    let d = m.path("many");
    fs::create_dir(&d).unwrap();
    for i in 0..2000 {
        fs::write(d.join(format!("f{i:05}")), b"").unwrap();
    }
    // Read part of the directory, then add and remove entries, then finish reading:
    // every entry present throughout is returned exactly once.
    let dp = unsafe { libc::opendir(c(&d).as_ptr()) };
    assert!(!dp.is_null());
    let mut seen = std::collections::HashMap::new();
    let mut n = 0;
    loop {
        let e = unsafe { libc::readdir(dp) };
        if e.is_null() {
            break;
        }
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        *seen.entry(name).or_insert(0) += 1;
        n += 1;
        if n == 700 {
            for i in 0..300 {
                fs::write(d.join(format!("new{i}")), b"").unwrap();
            }
            for i in (1500..2000).step_by(2) {
                fs::remove_file(d.join(format!("f{i:05}"))).unwrap();
            }
        }
    }
    unsafe { libc::closedir(dp) };
    for i in 0..1500 {
        assert_eq!(seen.get(&format!("f{i:05}")), Some(&1), "f{i:05}");
    }
    for i in (1501..2000).step_by(2) {
        assert_eq!(seen.get(&format!("f{i:05}")), Some(&1), "f{i:05}");
    }
    assert!(seen.values().all(|&c| c == 1), "no entry twice");
    assert_eq!(fs::read_dir(&d).unwrap().count(), 2000 - 250 + 300);
}

#[test]
fn fallocate_and_punch_hole() {
    let m = Mounted::new();
    let p = m.path("fa");
    let d = data(9, 1 << 20);
    fs::write(&p, &d).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    use std::os::fd::AsRawFd;
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            100_000,
            400_000,
        )
    };
    assert_eq!(r, 0, "punch: errno {}", last_errno());
    let mut want = d.clone();
    want[100_000..500_000].fill(0);
    drop(f);
    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "punched range must read as zeros and the rest unchanged"
    );
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 3 << 20) };
    assert_eq!(r, 0);
    assert_eq!(f.metadata().unwrap().len(), 3 << 20);
    let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_COLLAPSE_RANGE, 0, 131072) };
    assert_eq!((r, last_errno()), (-1, libc::EOPNOTSUPP));
}

#[test]
fn shared_writable_mmap() {
    let mut m = Mounted::new();
    let p = m.path("mm");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.set_len(1 << 20).unwrap();
    use std::os::fd::AsRawFd;
    let len = 1 << 20;
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(ptr, libc::MAP_FAILED);
    let s = unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) };
    for (i, b) in s.iter_mut().enumerate().step_by(4096) {
        *b = ((i / 4096) % 251) as u8 + 1;
    }
    assert_eq!(unsafe { libc::msync(ptr, len, libc::MS_SYNC) }, 0);
    assert_eq!(unsafe { libc::munmap(ptr, len) }, 0);
    drop(f);
    m.remount();
    let got = fs::read(&p).unwrap();
    for i in (0..len).step_by(4096) {
        assert_eq!(got[i], ((i / 4096) % 251) as u8 + 1, "page {}", i / 4096);
    }
}

#[test]
fn statfs_and_not_empty_mountpoint_refused() {
    let m = Mounted::new();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c(&m.mnt).as_ptr(), &mut s) }, 0);
    assert!(s.f_blocks > 0 && s.f_bsize > 0 && s.f_namemax == 255);
    // A non-empty directory is refused with instructions, and its files stay untouched.
    let other = m.dir.path().join("full");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("keep.txt"), b"precious").unwrap();
    let out = m.idcfs(&[
        "mount",
        "--store",
        m.dir.path().join("s2").to_str().unwrap(),
        other.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("not empty") && msg.contains("cp -a"), "{msg}");
    assert_eq!(fs::read(other.join("keep.txt")).unwrap(), b"precious");
}

#[test]
fn permissions_enforced_for_other_users() {
    let m = Mounted::new();
    let d = m.path("private");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(d.join("secret"), b"s").unwrap();
    let sticky = m.path("tmp");
    fs::create_dir(&sticky).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(sticky.join("rootfile"), b"r").unwrap();
    fs::set_permissions(sticky.join("rootfile"), fs::Permissions::from_mode(0o666)).unwrap();
    // As an unprivileged user: denied by mode bits and by the sticky bit.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c"])
        .arg(format!(
            "cat {0}/secret; echo rc=$?; rm -f {1}/rootfile; echo rc=$?; echo hi > {1}/mine && echo ok",
            d.display(),
            sticky.display()
        ))
        .output()
        .unwrap();
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(o.contains("rc=1\nrc=1\nok"), "stdout: {o}\nstderr: {e}");
    assert!(
        e.contains("Permission denied") || e.contains("Operation not permitted"),
        "{e}"
    );
    assert!(sticky.join("rootfile").exists());
    assert_eq!(fs::metadata(sticky.join("mine")).unwrap().uid(), 65534);
}

/// The filesystem, not the kernel, clears set-user-ID and set-group-ID bits (the mount asks
/// for FUSE_HANDLE_KILLPRIV_V2): the bits must end up as a local filesystem leaves them, be
/// visible at once (the kernel's cached attributes too) and survive a remount.
#[test]
fn setuid_bits_are_cleared_as_a_local_filesystem_does() {
    let mut m = Mounted::new();
    let d = m.path("k");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
    let mode = |name: &str| fs::metadata(d.join(name)).unwrap().mode() & 0o7777;
    let make = |name: &str, owner: u32, perm: u32| {
        let p = d.join(name);
        fs::write(&p, b"abc").unwrap();
        std::os::unix::fs::chown(&p, Some(owner), Some(owner)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(perm)).unwrap();
        assert_eq!(mode(name), perm, "{name}");
    };
    // A shell command in the directory, as root or as an unprivileged user.
    let run = |uid: u32, script: &str| {
        let id = [format!("--reuid={uid}"), format!("--regid={uid}")];
        let out = std::process::Command::new("setpriv")
            .args(&id)
            .args(["--clear-groups", "sh", "-c"])
            .arg(script)
            .current_dir(&d)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
    };
    let as_nobody = |script: &str| run(65534, script);
    // chown by root: set-user-ID goes; set-group-ID goes only with group execute.
    make("chown-x", 0, 0o6755);
    std::os::unix::fs::chown(d.join("chown-x"), Some(1234), Some(5678)).unwrap();
    assert_eq!(mode("chown-x"), 0o755);
    make("chown-nox", 0, 0o2745);
    std::os::unix::fs::chown(d.join("chown-nox"), Some(1234), Some(5678)).unwrap();
    assert_eq!(mode("chown-nox"), 0o2745);
    // A write or truncate by a caller without CAP_FSETID clears them; by root it does not.
    make("write-user", 65534, 0o6775);
    as_nobody("echo x >> write-user");
    assert_eq!(mode("write-user"), 0o775);
    make("write-nox", 65534, 0o2666);
    as_nobody("echo x >> write-nox");
    assert_eq!(mode("write-nox"), 0o2666);
    make("write-root", 0, 0o4755);
    run(0, "echo x >> write-root");
    assert_eq!(mode("write-root"), 0o4755);
    make("trunc-user", 65534, 0o4777);
    as_nobody("truncate -s 1 trunc-user && echo y > trunc-user2 && : > trunc-user");
    assert_eq!(mode("trunc-user"), 0o777);
    make("trunc-root", 0, 0o4755);
    run(0, "truncate -s 1 trunc-root");
    assert_eq!(mode("trunc-root"), 0o4755);
    // fallocate by a caller without CAP_FSETID (the kernel does not say so in the request).
    make("falloc-user", 65534, 0o4777);
    as_nobody("fallocate -l 300000 falloc-user");
    assert_eq!(mode("falloc-user"), 0o777);
    // chgrp by the owner to one of their groups.
    make("chgrp-user", 65534, 0o6755);
    as_nobody("chgrp 65534 chgrp-user");
    assert_eq!(mode("chgrp-user"), 0o755);
    // Directories keep theirs (as on Linux).
    let sub = d.join("dir");
    fs::create_dir(&sub).unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o2755)).unwrap();
    std::os::unix::fs::chown(&sub, Some(1234), None).unwrap();
    assert_eq!(fs::metadata(&sub).unwrap().mode() & 0o7777, 0o2755);
    m.remount();
    for (name, want) in [
        ("chown-x", 0o755),
        ("chown-nox", 0o2745),
        ("write-user", 0o775),
        ("write-nox", 0o2666),
        ("write-root", 0o4755),
        ("trunc-user", 0o777),
        ("trunc-root", 0o4755),
        ("chgrp-user", 0o755),
        ("falloc-user", 0o777),
    ] {
        assert_eq!(mode(name), want, "{name} after remount");
    }
    assert_eq!(fs::read(d.join("write-user")).unwrap(), b"abcx\n");
}
