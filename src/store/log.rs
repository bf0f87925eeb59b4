//! The append log over a `PackBackend`: writes records to the active pack, rotates packs,
//! reads records back by location and scans packs for recovery.
//!
//! Invariants: appends are serialized by the caller (the journal's commit lock), so sequence
//! order equals append order; a pack is synced before the next one is created, so a sync of the
//! active pack makes every earlier record durable.

use super::{
    encode, header_len, record_len, BlockHeader, Loc, PackAppender, PackBackend, PackId, RawHeader,
    Record, StoreError, HEADER_LEN, MAGIC, RECORD_VERSION,
};
use crate::crypto::StoreKey;
use parking_lot::Mutex;
use std::io;
use std::sync::Arc;

pub struct PackLog {
    backend: Arc<dyn PackBackend>,
    active: Mutex<Active>,
    pack_max: u64,
    /// Records skipped by scans because they failed authentication (why, for fsck; the
    /// first 1000).
    tampered: Mutex<Vec<String>>,
    /// An encrypted store's key: every record is sealed with it and bound to its location.
    key: Option<Arc<StoreKey>>,
}

struct Active {
    id: PackId,
    len: u64,
    app: Arc<dyn PackAppender>,
}

/// How a scan of one pack ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte up to `end` formed valid records.
    Clean { end: u64 },
    /// A record at `off` was unreadable; `end` is the pack length.
    Torn { off: u64, end: u64, reason: String },
}

impl PackLog {
    /// Open the log; the newest pack becomes the active pack (pack 1 for a new store).
    pub fn open(
        backend: Arc<dyn PackBackend>,
        pack_max: u64,
        key: Option<Arc<StoreKey>>,
    ) -> Result<PackLog, StoreError> {
        let existing = backend.list()?;
        let id = match existing.last() {
            // An uploaded pack cannot grow: start the next one (new packs may always start).
            Some(&last) if backend.is_sealed(last) => last + 1,
            Some(&last) => last,
            None => 1,
        };
        let app: Arc<dyn PackAppender> = Arc::from(backend.open_append(id)?);
        if existing.is_empty() {
            // A new store's first pack: make its creation durable before anything synced in
            // it is acknowledged (a file whose directory entry was never synced can vanish in
            // a power cut together with its synced data).
            backend.sync_dir()?;
        }
        let len = backend.len(id)?;
        Ok(PackLog {
            backend,
            active: Mutex::new(Active { id, len, app }),
            pack_max,
            tampered: Default::default(),
            key,
        })
    }

    pub fn backend(&self) -> &Arc<dyn PackBackend> {
        &self.backend
    }

    /// Id and length of the active pack.
    pub fn active(&self) -> (PackId, u64) {
        let a = self.active.lock();
        (a.id, a.len)
    }

    /// Records scans skipped because they failed authentication since the last call.
    pub fn take_tampered(&self) -> Vec<String> {
        std::mem::take(&mut *self.tampered.lock())
    }

    pub fn key(&self) -> Option<&Arc<StoreKey>> {
        self.key.as_ref()
    }

    /// Encode and append one record; returns where it landed. The location is chosen first
    /// because a sealed record is bound to it.
    pub fn append_record(
        &self,
        seq: u64,
        meta: &[u8],
        block: Option<(&BlockHeader, &[u8])>,
    ) -> Result<Loc, StoreError> {
        let mut a = self.active.lock();
        let len = record_len(
            meta.len(),
            block.map_or(0, |(_, p)| p.len()),
            self.key.is_some(),
        );
        if a.len > 0 && a.len + len > self.pack_max {
            self.rotate(&mut a)?;
        }
        let rec = encode(seq, meta, block, self.key.as_deref(), a.id, a.len)?;
        self.append_locked(&mut a, &rec)
    }

    /// Append one encoded (plain) record; returns where it landed.
    pub fn append(&self, rec: &[u8]) -> Result<Loc, StoreError> {
        let mut a = self.active.lock();
        if a.len > 0 && a.len + rec.len() as u64 > self.pack_max {
            self.rotate(&mut a)?;
        }
        self.append_locked(&mut a, rec)
    }

    fn append_locked(&self, a: &mut Active, rec: &[u8]) -> Result<Loc, StoreError> {
        let off = a.len;
        if let Err(e) = a.app.append(rec) {
            // A partial write may have landed: cut it off so the next record starts clean.
            // If that fails too the tail holds garbage: report it as EIO (never ENOSPC), so
            // the journal stops appending.
            if let Err(te) = a.app.truncate(off) {
                return Err(StoreError::Io(io::Error::other(format!(
                    "{e}; cutting the partial record off failed: {te}"
                ))));
            }
            return Err(e.into());
        }
        a.len += rec.len() as u64;
        Ok(Loc {
            pack: a.id,
            off,
            len: rec.len() as u32,
        })
    }

    /// Seal the active pack and start a new one (used by rotation and compaction).
    pub fn seal_active(&self) -> Result<PackId, StoreError> {
        let mut a = self.active.lock();
        if a.len > 0 {
            self.rotate(&mut a)?;
        }
        Ok(a.id)
    }

    /// Seal the active pack even when empty (after a truncation: its offsets may be named
    /// by the index and must not be reused).
    pub fn start_new_pack(&self) -> Result<PackId, StoreError> {
        let mut a = self.active.lock();
        self.rotate(&mut a)?;
        Ok(a.id)
    }

    fn rotate(&self, a: &mut Active) -> Result<(), StoreError> {
        self.backend.seal(a.id, &*a.app)?;
        let id = a.id + 1;
        let app: Arc<dyn PackAppender> = Arc::from(self.backend.open_append(id)?);
        self.backend.sync_dir()?;
        *a = Active { id, len: 0, app };
        Ok(())
    }

    /// Make every appended record durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        // Sync outside the lock so appends continue meanwhile; records appended before this
        // call are in this pack or in older ones, which were synced when they were sealed.
        let app = self.active.lock().app.clone();
        app.sync()?;
        Ok(())
    }

    /// Cut the active pack at `len` (torn tail after a crash).
    pub fn truncate_active(&self, len: u64) -> Result<(), StoreError> {
        let mut a = self.active.lock();
        a.app.truncate(len)?;
        a.len = len;
        Ok(())
    }

    /// Read and verify the record at `loc`.
    pub fn read(&self, loc: Loc) -> Result<Record, StoreError> {
        let mut buf = vec![0u8; loc.len as usize];
        self.backend
            .read_at(loc.pack, loc.off, &mut buf)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof | io::ErrorKind::NotFound => {
                    StoreError::Corrupt(format!("record {loc:?} missing: {e}"))
                }
                _ => StoreError::Io(e),
            })?;
        let h = RawHeader::parse(&buf)?;
        if h.total_len() != loc.len as u64 {
            return Err(StoreError::Corrupt(format!(
                "record {loc:?} length mismatch"
            )));
        }
        h.finish(
            &buf[h.header_len()..],
            self.key.as_deref(),
            loc.pack,
            loc.off,
        )
    }

    /// Visit every valid record of `pack` from offset `from`, in order.
    pub fn scan(
        &self,
        pack: PackId,
        from: u64,
        f: impl FnMut(Loc, Record) -> Result<(), crate::error::Error>,
    ) -> Result<ScanEnd, crate::error::Error> {
        let key = self.key.as_deref();
        self.scan_with(pack, from, |h, body, off| h.finish(body, key, pack, off), f)
    }

    /// Check the framing of every record of `pack` without any key: lengths, versions and
    /// checksums (what a locked encrypted store allows). The records passed to `f` carry
    /// only their sequence number and seal.
    pub fn scan_framing(
        &self,
        pack: PackId,
        f: impl FnMut(Loc, Record) -> Result<(), crate::error::Error>,
    ) -> Result<ScanEnd, crate::error::Error> {
        self.scan_with(
            pack,
            0,
            |h, body, _| {
                h.verify(body)?;
                Ok(Record {
                    version: h.version,
                    seq: h.seq,
                    seal: super::Seal {
                        key_id: h.key_id(),
                        nonce: [0; 12],
                    },
                    meta: Vec::new(),
                    block: None,
                })
            },
            f,
        )
    }

    fn scan_with(
        &self,
        pack: PackId,
        from: u64,
        open: impl Fn(&RawHeader, &[u8], u64) -> Result<Record, StoreError>,
        mut f: impl FnMut(Loc, Record) -> Result<(), crate::error::Error>,
    ) -> Result<ScanEnd, crate::error::Error> {
        let end = self.backend.len(pack)?;
        let mut off = from;
        let mut hdr = [0u8; HEADER_LEN];
        while off < end {
            let torn = |reason: String| Ok(ScanEnd::Torn { off, end, reason });
            // Read as much of a header as the pack holds; its version says how long it is.
            let avail = (end - off).min(HEADER_LEN as u64) as usize;
            self.backend.read_at(pack, off, &mut hdr[..avail])?;
            let hl = match header_len(&hdr[..avail]) {
                Ok(hl) => hl,
                // A torn write leaves a prefix of a real record, never a valid magic with a
                // version this build does not know: that is a record of a newer format, and
                // cutting it would destroy data. Refuse instead.
                Err(_) if avail >= 5 && &hdr[0..4] == MAGIC && hdr[4] > RECORD_VERSION => {
                    return Err(StoreError::Unsupported(format!(
                        "pack {pack} holds a record of version {} at offset {off}, written by a newer idcfs or damaged in its header (this build reads record versions 1 to {RECORD_VERSION})",
                        hdr[4]
                    ))
                    .into());
                }
                Err(e) => return torn(e.to_string()),
            };
            if avail < hl {
                return torn("short header".into());
            }
            let h = match RawHeader::parse(&hdr[..hl]) {
                Ok(h) => h,
                Err(e @ StoreError::Unsupported(_)) => return Err(e.into()),
                Err(e) => return torn(e.to_string()),
            };
            if off + h.total_len() > end {
                return torn("record runs past the end of the pack".into());
            }
            let mut body = vec![0u8; h.total_len() as usize - hl];
            self.backend.read_at(pack, off + hl as u64, &mut body)?;
            let rec = match open(&h, &body, off) {
                Ok(r) => r,
                Err(e @ StoreError::Unsupported(_)) => return Err(e.into()),
                // Its checksum holds, so it is no torn write: skip it (what it carried is
                // lost, reads of it give EIO, fsck reports it) and never cut what follows.
                Err(StoreError::Tampered(why)) => {
                    tracing::error!("skipping a record that failed authentication: {why}");
                    let mut t = self.tampered.lock();
                    if t.len() < 1000 {
                        t.push(why);
                    }
                    off += h.total_len();
                    continue;
                }
                Err(e) => return torn(e.to_string()),
            };
            let loc = Loc {
                pack,
                off,
                len: h.total_len() as u32,
            };
            f(loc, rec)?;
            off += h.total_len();
        }
        Ok(ScanEnd::Clean { end: off })
    }

    pub fn remove_pack(&self, pack: PackId) -> Result<(), StoreError> {
        if pack == self.active.lock().id {
            return Err(StoreError::Corrupt(
                "refusing to remove the active pack".into(),
            ));
        }
        self.backend.remove(pack)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{encode_record, LocalDir};

    #[test]
    fn append_rotate_read_scan_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let backend: Arc<dyn PackBackend> =
            Arc::new(LocalDir::open(dir.path()).unwrap_or_else(|e| panic!("{e}")));
        let log = PackLog::open(backend.clone(), 300, None).unwrap_or_else(|e| panic!("{e}"));
        let mut locs = Vec::new();
        for seq in 1..=10u64 {
            let rec = encode_record(seq, &[seq as u8; 50], None).unwrap_or_else(|e| panic!("{e}"));
            locs.push(log.append(&rec).unwrap_or_else(|e| panic!("{e}")));
        }
        assert!(
            backend.list().unwrap_or_default().len() > 1,
            "rotation happened"
        );
        for (i, l) in locs.iter().enumerate() {
            assert_eq!(
                log.read(*l).unwrap_or_else(|e| panic!("{e}")).seq,
                i as u64 + 1
            );
        }
        // Tear the tail of the active pack.
        let (id, len) = log.active();
        let app = backend.open_append(id).unwrap_or_else(|e| panic!("{e}"));
        app.append(b"IDCR\x02garbage")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut n = 0;
        let end = log.scan(id, 0, |_, _| {
            n += 1;
            Ok(())
        });
        match end {
            Ok(ScanEnd::Torn { off, .. }) => assert_eq!(off, len),
            other => panic!("expected torn tail, got {other:?}"),
        }
        assert!(n >= 1);
    }
}
