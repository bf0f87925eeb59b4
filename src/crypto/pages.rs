//! An encrypted file for the metadata index: a redb `StorageBackend` that seals every 4 KiB
//! of the database as one AES-256-GCM-SIV unit, so names, attributes, xattrs and block maps
//! in the index are as unreadable and as tamper-evident as the journal's records.
//!
//! Physical layout: unit `i` (logical bytes `i*4096 .. (i+1)*4096`) is stored at
//! `i * 4124` as nonce (12) ‖ tag (16) ‖ ciphertext (4096); its associated data binds it to
//! the store id and to `i`, so units cannot be moved or swapped. The logical length is
//! always a whole number of units (redb sizes its file in pages; a length that is not is
//! rounded up, the extra bytes reading as zeros).
//!
//! Invariants: every unit on disk is sealed (extension writes sealed zero units, so an
//! attacker cannot pass off an all-zero unit); a unit that fails authentication is an
//! `InvalidData` error, which the index treats as damage (set aside, rebuilt from the
//! journal). A torn unit write in a power cut is damage of the same kind: redb's own
//! double-buffered header cannot protect a unit sealed as a whole, so an encrypted index may
//! be rebuilt after a power cut where a plain one would not.

use super::{Purpose, StoreKey, NONCE_LEN, TAG_LEN};
use parking_lot::RwLock;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

const UNIT: u64 = 4096;
const PHYS: u64 = UNIT + (NONCE_LEN + TAG_LEN) as u64;

pub struct SealedFile {
    file: File,
    key: Arc<StoreKey>,
    /// Readers share, writers (read-modify-write of a unit, resizing) exclude.
    lock: RwLock<()>,
}

impl std::fmt::Debug for SealedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedFile({:?})", self.key)
    }
}

fn damaged(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl SealedFile {
    pub fn open(path: &Path, key: Arc<StoreKey>) -> io::Result<SealedFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(SealedFile {
            file,
            key,
            lock: RwLock::new(()),
        })
    }

    fn units(&self) -> io::Result<u64> {
        let len = self.file.metadata()?.len();
        if len % PHYS != 0 {
            return Err(damaged(format!(
                "encrypted index length {len} is not a whole number of units"
            )));
        }
        Ok(len / PHYS)
    }

    fn ad(&self, unit: u64) -> [u8; 40] {
        let mut ad = [0u8; 40];
        ad[..16].copy_from_slice(b"idcfs index unit");
        ad[16..32].copy_from_slice(&self.key.store_id);
        ad[32..].copy_from_slice(&unit.to_le_bytes());
        ad
    }

    fn read_unit(&self, unit: u64, out: &mut [u8; UNIT as usize]) -> io::Result<()> {
        let mut phys = vec![0u8; PHYS as usize];
        self.file.read_exact_at(&mut phys, unit * PHYS)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&phys[..NONCE_LEN]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&phys[NONCE_LEN..NONCE_LEN + TAG_LEN]);
        out.copy_from_slice(&phys[NONCE_LEN + TAG_LEN..]);
        self.key
            .open(Purpose::IndexUnit, &nonce, &self.ad(unit), out, &tag)
            .map_err(|_| damaged(format!("encrypted index unit {unit} failed authentication")))
    }

    fn write_unit(&self, unit: u64, plain: &[u8; UNIT as usize]) -> io::Result<()> {
        let mut phys = vec![0u8; PHYS as usize];
        phys[NONCE_LEN + TAG_LEN..].copy_from_slice(plain);
        let (nonce, tag) = self
            .key
            .seal(
                Purpose::IndexUnit,
                &self.ad(unit),
                &mut phys[NONCE_LEN + TAG_LEN..],
            )
            .map_err(io::Error::other)?;
        phys[..NONCE_LEN].copy_from_slice(&nonce);
        phys[NONCE_LEN..NONCE_LEN + TAG_LEN].copy_from_slice(&tag);
        self.file.write_all_at(&phys, unit * PHYS)
    }

    /// Grow to `units` units, sealing zeros.
    fn extend_to(&self, have: u64, units: u64) -> io::Result<()> {
        let zero = [0u8; UNIT as usize];
        for u in have..units {
            self.write_unit(u, &zero)?;
        }
        Ok(())
    }
}

/// The units a byte range touches: (unit, offset in the unit, bytes, offset in the range).
fn spans(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let end = offset + len as u64;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let in_unit = (pos % UNIT) as usize;
        let n = ((UNIT as usize) - in_unit).min((end - pos) as usize);
        let span = (pos / UNIT, in_unit, n, (pos - offset) as usize);
        pos += n as u64;
        Some(span)
    })
}

impl redb::StorageBackend for SealedFile {
    fn len(&self) -> Result<u64, io::Error> {
        let _g = self.lock.read();
        Ok(self.units()? * UNIT)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let _g = self.lock.read();
        let end = offset + out.len() as u64;
        if end > self.units()? * UNIT {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the index",
            ));
        }
        let mut buf = [0u8; UNIT as usize];
        for (unit, in_unit, n, at) in spans(offset, out.len()) {
            self.read_unit(unit, &mut buf)?;
            out[at..at + n].copy_from_slice(&buf[in_unit..in_unit + n]);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let _g = self.lock.write();
        let units = len.div_ceil(UNIT);
        let have = self.units()?;
        if units > have {
            self.extend_to(have, units)
        } else {
            // A shrink that cuts inside a unit keeps the unit whole: redb sizes in pages, so
            // this only happens with lengths it never uses.
            self.file.set_len(units * PHYS)
        }
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let _g = self.lock.write();
        let have = self.units()?;
        let first = offset / UNIT;
        if first > have {
            self.extend_to(have, first)?;
        }
        let mut buf = [0u8; UNIT as usize];
        for (unit, in_unit, n, at) in spans(offset, data.len()) {
            if n < UNIT as usize {
                // Partial unit: keep the bytes around the write.
                if unit < have {
                    self.read_unit(unit, &mut buf)?;
                } else {
                    buf = [0u8; UNIT as usize];
                }
            }
            buf[in_unit..in_unit + n].copy_from_slice(&data[at..at + n]);
            self.write_unit(unit, &buf)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata, StorageBackend};

    #[test]
    fn sealed_file_reads_back_and_detects_tampering() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ix");
        let key = Arc::new(StoreKey::from_master(&[3; 32], [4; 16], 1));
        let f = SealedFile::open(&p, key.clone()).unwrap();
        f.set_len(3 * UNIT).unwrap();
        f.write(100, b"hello index").unwrap();
        f.write(UNIT - 3, b"straddle").unwrap();
        let mut out = [0u8; 11];
        f.read(100, &mut out).unwrap();
        assert_eq!(&out, b"hello index");
        let mut out = [0u8; 8];
        f.read(UNIT - 3, &mut out).unwrap();
        assert_eq!(&out, b"straddle");
        assert_eq!(f.len().unwrap(), 3 * UNIT);
        let raw = std::fs::read(&p).unwrap();
        assert!(!raw.windows(5).any(|w| w == b"hello"));
        drop(f);
        // Swap units 0 and 1 on disk: both fail.
        let mut bad = raw.clone();
        let (a, b) = bad.split_at_mut(PHYS as usize);
        a.swap_with_slice(&mut b[..PHYS as usize]);
        std::fs::write(&p, &bad).unwrap();
        let f = SealedFile::open(&p, key.clone()).unwrap();
        let mut out = [0u8; 4];
        assert_eq!(
            f.read(0, &mut out).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A different key cannot read it.
        std::fs::write(&p, &raw).unwrap();
        let other = Arc::new(StoreKey::from_master(&[5; 32], [4; 16], 1));
        let f = SealedFile::open(&p, other).unwrap();
        assert!(f.read(0, &mut out).is_err());
    }

    #[test]
    fn redb_runs_on_a_sealed_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ix");
        let key = Arc::new(StoreKey::from_master(&[3; 32], [4; 16], 1));
        const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("t");
        {
            let db = redb::Builder::new()
                .create_with_backend(SealedFile::open(&p, key.clone()).unwrap())
                .unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(T).unwrap();
                for i in 0u32..2000 {
                    t.insert(&i.to_be_bytes()[..], &b"secret-name"[..]).unwrap();
                }
            }
            w.commit().unwrap();
        }
        let raw = std::fs::read(&p).unwrap();
        assert!(!raw.windows(11).any(|w| w == b"secret-name"));
        let db = redb::Builder::new()
            .create_with_backend(SealedFile::open(&p, key).unwrap())
            .unwrap();
        let r = db.begin_read().unwrap();
        let t = r.open_table(T).unwrap();
        assert_eq!(t.len().unwrap(), 2000);
    }
}
