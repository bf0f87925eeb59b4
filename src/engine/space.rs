//! Space on the filesystem that holds the store: the emergency reserve, admission of new
//! data, and the free space `statfs` reports.
//!
//! Invariants:
//! - New data is admitted only while the store's filesystem keeps `floor()` bytes free after
//!   it: a margin for metadata (journal records, the redb index, the log), plus the reserve's
//!   size while the reserve file is not in place. So data never eats the room that deleting
//!   needs, and `statfs` reports exactly what can still be written (free minus floor).
//! - `STORE/reserve` is a fully allocated, synced file. It is deleted when a metadata commit
//!   that frees space (unlink, rmdir, rename, truncate, the unmount flush, opening the index,
//!   compaction) would otherwise fail for lack of space, and re-created once there is room.
//! - Nothing here blocks: every check is a `statvfs` (cached briefly while space is ample).

use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Free space above which a store is never under space pressure, however large its disk.
const PRESSURE_CAP: u64 = 4 << 30;

/// Numbers of the store's filesystem, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct FsSpace {
    pub total: u64,
    /// Free for unprivileged writers (`f_bavail`).
    pub avail: u64,
    /// Free including root's reserved blocks (`f_bfree`).
    pub free: u64,
    pub frsize: u64,
}

/// `statvfs` of `path`.
pub fn fs_space(path: &Path) -> Result<FsSpace> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid("store path"))?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    #[allow(unsafe_code)]
    // SAFETY: c is a valid NUL-terminated path and s points to writable statvfs storage.
    let rc = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::Io(std::io::Error::last_os_error()));
    }
    #[allow(unsafe_code)]
    // SAFETY: statvfs succeeded and filled the struct.
    let s = unsafe { s.assume_init() };
    let fr = s.f_frsize.max(1);
    Ok(FsSpace {
        total: s.f_blocks * fr,
        avail: s.f_bavail * fr,
        free: s.f_bfree * fr,
        frsize: fr,
    })
}

pub fn enospc() -> Error {
    Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC))
}

/// Whether an error means the store's filesystem is full.
pub fn is_enospc(e: &Error) -> bool {
    e.errno() == libc::ENOSPC
}

/// Cached `avail` and the bytes admitted since it was measured.
struct Probe {
    at: Option<Instant>,
    avail: u64,
    admitted: u64,
}

pub struct Space {
    dir: PathBuf,
    path: PathBuf,
    /// Size of the reserve file.
    pub reserve: u64,
    /// Kept free beyond the reserve for metadata.
    pub margin: u64,
    pub total: u64,
    /// Bytes of the reserve file now in place (0 when released).
    held: AtomicU64,
    /// Serializes creating and deleting the reserve file.
    lock: Mutex<()>,
    probe: Mutex<Probe>,
    /// When creating the reserve last failed (retried only after a pause).
    create_failed: Mutex<Option<Instant>>,
}

impl Space {
    /// Size the reserve for the store's filesystem. If that filesystem is already full, the
    /// reserve is released at once so the index can be opened.
    pub fn open(dir: &Path) -> Result<Space> {
        let fs = fs_space(dir)?;
        let reserve = (fs.total / 16).clamp(2 * MIB, 64 * MIB);
        // The margin also absorbs data admitted concurrently and still in memory (several
        // writers pass the check before their blocks reach the packs).
        let margin = (fs.total / 32).clamp(2 * MIB, 64 * MIB);
        let path = dir.join("reserve");
        let held = std::fs::metadata(&path).map_or(0, |m| m.len());
        let sp = Space {
            dir: dir.to_path_buf(),
            path,
            reserve,
            margin,
            total: fs.total,
            held: AtomicU64::new(held),
            lock: Mutex::new(()),
            probe: Mutex::new(Probe {
                at: None,
                avail: fs.avail,
                admitted: 0,
            }),
            create_failed: Mutex::new(None),
        };
        if fs.avail < margin {
            sp.release("the store's filesystem is full when opening the store");
        }
        Ok(sp)
    }

    /// Pack size that keeps compaction possible on a small filesystem (a pack is the unit
    /// compaction frees, and copying its live part needs free space).
    pub fn pack_cap(&self) -> u64 {
        (self.total / 16).max(MIB)
    }

    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Free bytes new data must leave untouched.
    pub fn floor(&self) -> u64 {
        self.margin + self.reserve.saturating_sub(self.held())
    }

    /// Fresh free space of the store's filesystem.
    pub fn avail(&self) -> Result<u64> {
        let fs = fs_space(&self.dir)?;
        let mut p = self.probe.lock();
        *p = Probe {
            at: Some(Instant::now()),
            avail: fs.avail,
            admitted: 0,
        };
        Ok(fs.avail)
    }

    /// Bytes that can still be written: free space above the floor.
    pub fn writable(&self) -> Result<u64> {
        Ok(self.avail()?.saturating_sub(self.floor()))
    }

    /// Admit `len` new bytes (`pending`: data accepted earlier and not yet in the packs), or
    /// refuse with ENOSPC. Measures again unless the last measurement is recent and ample.
    pub fn admit(&self, len: u64, pending: u64) -> Result<()> {
        let need = len + pending;
        let floor = self.floor();
        {
            let mut p = self.probe.lock();
            let est = p.avail.saturating_sub(p.admitted);
            let fresh = p.at.is_some_and(|t| t.elapsed() < Duration::from_secs(1));
            if fresh && est > floor + need + 64 * MIB {
                p.admitted += len;
                return Ok(());
            }
        }
        // Measure and admit under one lock, so concurrent writers are counted one by one.
        let fs = fs_space(&self.dir)?;
        let mut p = self.probe.lock();
        *p = Probe {
            at: Some(Instant::now()),
            avail: fs.avail,
            admitted: 0,
        };
        if fs.avail < floor + need {
            return Err(enospc());
        }
        p.admitted += len;
        Ok(())
    }

    /// Whether free space is low enough that deleted data should be reclaimed right away
    /// (and closes wait for their commit, so ENOSPC reaches them): below an eighth of the
    /// filesystem, but never more than `PRESSURE_CAP`. Without the cap a large disk would be
    /// "short" with hundreds of GiB free (a 2 TB disk at 88%), and every delete would compact
    /// and every small file's close would wait, for no reason: what can be in flight at once
    /// (the write buffers and the compression queue) is a few hundred MiB.
    pub fn pressure(&self) -> bool {
        let low = pressure_below(self.total, self.reserve);
        self.writable().map_or(true, |w| w < low)
    }

    /// Whether the disk has so much room that metadata index updates may wait and share
    /// commits (`meta` batching): no space pressure and at least 1 GiB writable. Far from
    /// the space floor, so no batch is ever committed near a full disk, where a failed
    /// commit would take the waiting updates (and redb) down with it.
    pub fn roomy(&self) -> bool {
        !self.pressure() && self.writable().is_ok_and(|w| w >= 1 << 30)
    }

    /// Whether a metadata commit may not find room (then the reserve is released first).
    pub fn meta_low(&self) -> bool {
        self.avail().map_or(true, |a| a < self.margin / 2)
    }

    /// Delete the reserve file. True when it was in place (space was freed).
    pub fn release(&self, why: &str) -> bool {
        let _g = self.lock.lock();
        let held = self.held();
        let existed = match std::fs::remove_file(&self.path) {
            Ok(()) => {
                // Commit the delete: a journaling filesystem (ext4) lets the freed blocks be
                // allocated only after its transaction commits.
                let _ = File::open(&self.dir).and_then(|d| d.sync_all());
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::error!(
                    "cannot delete the space reserve {}: {e}",
                    self.path.display()
                );
                false
            }
        };
        self.held.store(0, Ordering::Relaxed);
        self.probe.lock().at = None;
        if existed {
            tracing::warn!(
                bytes = held,
                "{why}: released the space reserve; new data is refused until space is reclaimed"
            );
        }
        existed
    }

    /// Re-create the reserve when it is missing and there is room for it and for the margin
    /// after it. Quiet when there is not (retried later).
    pub fn ensure(&self) {
        if self.held() >= self.reserve {
            return;
        }
        if self
            .create_failed
            .lock()
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        let Ok(avail) = self.avail() else { return };
        if avail < self.reserve + 2 * self.margin {
            return;
        }
        let _g = self.lock.lock();
        match self.create() {
            Ok(()) => {
                self.held.store(self.reserve, Ordering::Relaxed);
                self.probe.lock().at = None;
                tracing::info!(bytes = self.reserve, "space reserve in place");
            }
            Err(e) => {
                *self.create_failed.lock() = Some(Instant::now());
                tracing::debug!("cannot create the space reserve yet: {e}");
            }
        }
    }

    fn create(&self) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let tmp = self.dir.join("reserve.tmp");
        let res = (|| {
            let mut f = File::create(&tmp)?;
            #[allow(unsafe_code)]
            // SAFETY: fallocate on a valid fd; no memory is passed.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, self.reserve as libc::off_t) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return Err(e);
                }
                // No fallocate: real blocks, written out.
                let zeros = vec![0u8; MIB as usize];
                let mut left = self.reserve;
                while left > 0 {
                    let n = left.min(MIB) as usize;
                    f.write_all(&zeros[..n])?;
                    left -= n as u64;
                }
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }
}

/// Writable bytes below which a filesystem of `total` bytes is under space pressure.
fn pressure_below(total: u64, reserve: u64) -> u64 {
    (total / 8).min(PRESSURE_CAP).max(2 * reserve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_is_an_eighth_of_small_disks_and_capped_on_large_ones() {
        const GIB: u64 = 1 << 30;
        // A 256 MiB test filesystem: an eighth, or twice the reserve when that is larger.
        assert_eq!(pressure_below(256 * MIB, 8 * MIB), 32 * MIB);
        assert_eq!(pressure_below(256 * MIB, 64 * MIB), 128 * MIB);
        // 16 GiB: still an eighth (2 GiB).
        assert_eq!(pressure_below(16 * GIB, 64 * MIB), 2 * GIB);
        // 2 TB at 88% full has 240 GiB free: not short of space.
        assert_eq!(pressure_below(2048 * GIB, 64 * MIB), PRESSURE_CAP);
        assert!(pressure_below(2048 * GIB, 64 * MIB) < 240 * GIB);
    }
}
