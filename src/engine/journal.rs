//! The journal: the pack log is the source of truth, the redb index a replayable cache of it.
//!
//! `commit` appends one record (metadata ops plus at most one block payload) and applies it to
//! the index under one lock, so index order equals log order. Recovery replays the records
//! after the index's `applied` position; `rebuild` recreates the index from the packs alone,
//! starting at the newest complete checkpoint, reading each pack once.
//!
//! Invariants:
//! - Every change to the index goes through `commit` (or replay of committed records).
//! - A record is appended before it is applied; when applying fails after the append, the
//!   journal turns read-only because index and log disagree until the next mount.
//! - The journal also turns read-only when the backing store fails a write for any reason but
//!   ENOSPC (a partial record may sit at the tail), or fails a sync (after a failed fsync the
//!   page cache no longer says what is on disk). Reads keep working; mutations get EROFS; the
//!   next mount recovers everything that was synced before the fault.
//! - Packs are only deleted when every record in them is older than the newest checkpoint and
//!   the index has been flushed past them.

use crate::crypto::StoreKey;
use crate::error::{Error, Result};
use crate::meta::{decode_ops, encode_ops, Applied, Applying, Index, Ino, Op, INDEX_FORMAT};
use crate::store::{BlockHeader, Loc, LocalDir, PackBackend, PackLog, Record, ScanEnd};
use parking_lot::Mutex;
use std::path::Path;
use std::sync::Arc;

/// Metadata a rebuild keeps of the records it scanned (see `rebuild_inner`) before it
/// reads the packs a second time instead.
const REBUILD_KEEP_BYTES: usize = 256 << 20;

/// A scanned record without its block payload: what applying it to the index needs.
struct Kept {
    loc: Loc,
    seq: u64,
    version: u8,
    meta: Vec<u8>,
    block: Option<(BlockHeader, u32)>,
}

impl Kept {
    /// Memory it holds, roughly.
    fn cost(&self) -> usize {
        std::mem::size_of::<Kept>() + self.meta.len()
    }
}

pub struct Journal {
    pub log: PackLog,
    pub index: Index,
    /// Next sequence number; the lock is the commit lock.
    next_seq: Mutex<u64>,
    poisoned: Mutex<Option<String>>,
}

/// What recovery did at open.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub replayed: u64,
    pub torn_tail: Option<(u32, u64, String)>,
    pub rebuilt: bool,
}

/// A record to commit: its metadata ops and, optionally, a block (header and payload).
pub type NewRecord<'a> = (Vec<Op>, Option<(&'a BlockHeader, &'a [u8])>);

/// Default size at which the active pack is sealed and a new one started.
pub const PACK_MAX: u64 = 256 << 20;

impl Journal {
    /// Open the store's packs and index, replaying what the index misses. A missing index is
    /// rebuilt from the packs; an index that is ahead of the packs (lost pack data) is rebuilt.
    pub fn open(
        store: &Path,
        index_cache: u64,
        pack_max: u64,
        key: Option<Arc<StoreKey>>,
    ) -> Result<(Journal, Recovery)> {
        let layout = crate::store::manifest::open(store)?;
        match (layout.encrypted, &key) {
            (true, None) => {
                return Err(Error::Locked(format!(
                    "store {} is encrypted: unlock it with its passphrase (prompt, --passphrase-file) or --key-file",
                    store.display()
                )))
            }
            (false, Some(_)) => {
                return Err(Error::Locked(format!(
                    "store {} is not encrypted; encryption is chosen when a store is created (`idcfs init --encrypt` on an empty directory)",
                    store.display()
                )))
            }
            _ => {}
        }
        let backend: Arc<dyn PackBackend> = Arc::new(LocalDir::open(&layout.packs)?);
        Self::open_with(backend, &layout.index, store, index_cache, pack_max, key)
    }

    /// Open over an injected pack backend, with the index at `index_path` (`store` names the
    /// store in messages).
    pub fn open_with(
        backend: Arc<dyn PackBackend>,
        index_path: &Path,
        store: &Path,
        index_cache: u64,
        pack_max: u64,
        key: Option<Arc<StoreKey>>,
    ) -> Result<(Journal, Recovery)> {
        let log = PackLog::open(backend, pack_max, key.clone())?;
        let index_path = index_path.to_path_buf();
        let mut fresh = !index_path.exists();
        let index = match Index::open(&index_path, index_cache, key.clone()) {
            Ok(i) => i,
            // The index is a cache: a damaged one is set aside and rebuilt from the journal,
            // never a reason not to mount. (I/O errors such as a full disk or permissions are
            // reported instead: rebuilding would not help.)
            Err(e) if matches!(&e, Error::Index(r) if crate::error::index_corrupt(r))
                || matches!(e, Error::Corrupt(_)) =>
            {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let aside = index_path.with_file_name(format!("index.damaged-{t}"));
                tracing::warn!(
                    "metadata index at {} is damaged ({e}): keeping it at {} and rebuilding from the pack files",
                    index_path.display(),
                    aside.display()
                );
                std::fs::rename(&index_path, &aside)?;
                fresh = true;
                Index::open(&index_path, index_cache, key.clone())?
            }
            Err(e) => {
                return Err(Error::Corrupt(format!(
                    "cannot open the metadata index at {}: {e}; run `idcfs fsck --rebuild {}` to rebuild it from the pack files",
                    index_path.display(),
                    store.display()
                )))
            }
        };
        let j = Journal {
            log,
            index,
            next_seq: Mutex::new(1),
            poisoned: Mutex::new(None),
        };
        let has_packs = j
            .log
            .backend()
            .list()?
            .iter()
            .any(|&p| j.log.backend().len(p).unwrap_or(0) > 0);
        let other_layout = j.index.format()?.filter(|&f| f != INDEX_FORMAT);
        let rec = if fresh && has_packs {
            tracing::warn!("metadata index missing: rebuilding it from the pack files");
            j.rebuild()?
        } else if let Some(f) = other_layout {
            tracing::warn!(
                "metadata index has layout {f}, this build uses {INDEX_FORMAT}: rebuilding it from the pack files"
            );
            j.rebuild()?
        } else {
            match j.replay() {
                Ok(r) => r,
                Err(Error::Corrupt(why)) if why.starts_with("index ahead") => {
                    tracing::warn!("{why}: rebuilding the index from the pack files");
                    j.rebuild()?
                }
                Err(e) => return Err(e),
            }
        };
        j.index.set_format(INDEX_FORMAT)?;
        // Recovered: from now on, consecutive index updates share redb commits.
        j.index.set_batching(true)?;
        // Builds before the redb index kept a sled database in `index/`: once the new index
        // holds everything, that cache is dead weight.
        let old = index_path.with_file_name("index");
        if old != index_path && old.is_dir() {
            tracing::warn!(
                "the metadata index engine changed (sled to redb): the index was rebuilt into {}; removing the old one at {}",
                index_path.display(),
                old.display()
            );
            j.index.flush()?;
            std::fs::remove_dir_all(&old)?;
        }
        Ok((j, rec))
    }

    fn check_poison(&self) -> Result<()> {
        match &*self.poisoned.lock() {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Why the journal is read-only, if it is.
    pub fn read_only(&self) -> Option<String> {
        self.poisoned.lock().clone()
    }

    /// Turn the journal read-only (the first reason is kept and logged once).
    pub fn set_read_only(&self, why: String) {
        let mut p = self.poisoned.lock();
        if p.is_none() {
            tracing::error!("{why}; the filesystem is now read-only (reads keep working), remount after fixing the disk to recover");
            *p = Some(why);
        }
    }

    /// A failed append: anything but ENOSPC (which leaves the log intact: the partial record
    /// was cut) turns the journal read-only.
    fn append_failed(&self, e: crate::store::StoreError) -> Error {
        if e.errno() != libc::ENOSPC {
            self.set_read_only(format!("journal write failed: {e}"));
        }
        e.into()
    }

    /// Append and apply one record. Returns its location.
    pub fn commit(&self, ops: &[Op], block: Option<(&BlockHeader, &[u8])>) -> Result<Loc> {
        let mut seq = self.next_seq.lock();
        self.commit_locked(&mut seq, ops, block)
    }

    /// Map `ino`'s blocks (now at `froms`) to the shared whole-file object holding content
    /// `hash`, when one exists: decided under the commit lock, so the object cannot go away
    /// before the reference is applied. False when there is none (nothing is written).
    pub fn ref_object(&self, ino: Ino, froms: Vec<Option<Loc>>, hash: [u8; 16]) -> Result<bool> {
        let mut seq = self.next_seq.lock();
        self.check_poison()?;
        if !self.index.has_shared_object(&hash, froms.len())? {
            return Ok(false);
        }
        self.commit_locked(&mut seq, &[Op::RefObject { ino, hash, froms }], None)?;
        Ok(true)
    }

    /// The content hash recorded for raw data (checksums, dedup): keyed in an encrypted
    /// store, so equal content is recognisable only to the key holder.
    pub fn content_hash(&self, data: &[u8]) -> [u8; 16] {
        match self.log.key() {
            Some(k) => k.content_hash(data),
            None => crate::store::raw_hash(data),
        }
    }

    fn commit_locked(
        &self,
        seq: &mut u64,
        ops: &[Op],
        block: Option<(&BlockHeader, &[u8])>,
    ) -> Result<Loc> {
        self.check_poison()?;
        let meta = encode_ops(ops);
        let loc = self
            .log
            .append_record(*seq, &meta, block)
            .map_err(|e| self.append_failed(e))?;
        let applied = self
            .index
            .apply(*seq, loc, ops, block.map(|(h, p)| (h, p.len() as u32)));
        *seq += 1;
        if let Err(e) = applied {
            self.set_read_only(format!("index update failed after a journal append: {e}"));
            return Err(e);
        }
        Ok(loc)
    }

    /// Append and apply several records with one index batch (group commit). The records
    /// are consecutive in the log and become visible together.
    pub fn commit_many(&self, recs: &[NewRecord<'_>]) -> Result<Vec<Loc>> {
        let mut seq = self.next_seq.lock();
        self.check_poison()?;
        // Deduplication is decided under the commit lock, so the shared record a `RefBlock`
        // names cannot disappear before the reference is applied. Any record offering a
        // shared block is deduplicated, whatever else it carries (the inode riding on a
        // file's last block, say), against the index or an earlier record of this batch:
        // the batch is applied in order in one view, so that record is shared by then.
        let mut owned: Vec<NewRecord<'_>> = Vec::with_capacity(recs.len());
        let mut batch: std::collections::HashMap<[u8; 16], u32> = Default::default();
        for (ops, block) in recs {
            if let Some((h, _)) = block {
                let mut shared = ops
                    .iter()
                    .enumerate()
                    .filter(|(_, op)| matches!(op, Op::PutBlockShared { .. }));
                if let (Some((at, &Op::PutBlockShared { ino, idx })), None) =
                    (shared.next(), shared.next())
                {
                    let known = match batch.get(&h.raw_hash) {
                        Some(&len) => len == h.raw_len,
                        None => self
                            .index
                            .shared(&h.raw_hash)?
                            .is_some_and(|sh| sh.bref.raw_len == h.raw_len),
                    };
                    if known {
                        let mut ops = ops.clone();
                        ops[at] = Op::RefBlock {
                            ino,
                            idx,
                            hash: h.raw_hash,
                        };
                        owned.push((ops, None));
                        continue;
                    }
                    batch.entry(h.raw_hash).or_insert(h.raw_len);
                }
            }
            owned.push((ops.clone(), *block));
        }
        let recs = &owned[..];
        let metas: Vec<Vec<u8>> = recs.iter().map(|(ops, _)| encode_ops(ops)).collect();
        let first = *seq;
        let mut locs = Vec::with_capacity(recs.len());
        for (i, ((_, block), meta)) in recs.iter().zip(&metas).enumerate() {
            match self.log.append_record(first + i as u64, meta, *block) {
                Ok(loc) => locs.push(loc),
                Err(e) => {
                    // Records already appended are valid journal entries: apply them so the
                    // index and the log stay in step, then report the failure.
                    self.apply_appended(first, recs, &locs, &mut seq)?;
                    return Err(self.append_failed(e));
                }
            }
        }
        self.apply_appended(first, recs, &locs, &mut seq)?;
        Ok(locs)
    }

    fn apply_appended(
        &self,
        first: u64,
        recs: &[NewRecord<'_>],
        locs: &[Loc],
        seq: &mut u64,
    ) -> Result<()> {
        let applying: Vec<Applying<'_>> = locs
            .iter()
            .zip(recs)
            .enumerate()
            .map(|(i, (loc, (ops, block)))| Applying {
                seq: first + i as u64,
                loc: *loc,
                ops,
                block: block.map(|(h, p)| (h, p.len() as u32)),
            })
            .collect();
        let res = self.index.apply_many(&applying);
        *seq = first + locs.len() as u64;
        if let Err(e) = res {
            self.set_read_only(format!("index update failed after a journal append: {e}"));
            return Err(e);
        }
        Ok(())
    }

    /// Make every committed record durable.
    pub fn sync(&self) -> Result<()> {
        self.check_poison()?;
        if let Err(e) = self.log.sync() {
            self.set_read_only(format!("journal sync failed: {e}"));
            return Err(e.into());
        }
        Ok(())
    }

    /// Make every synced record durable in the backend's final home (an object store; a
    /// no-op for a local directory). A failure keeps the data in the local cache for a later
    /// retry, so it is reported without turning the journal read-only.
    pub fn persist(&self, strict: bool) -> Result<()> {
        self.log.backend().persist(strict).map_err(Error::Io)
    }

    /// Make the index durable too (cheapens the next recovery; not needed for safety).
    pub fn checkpoint_index(&self) -> Result<()> {
        self.checkpoint_index_with(None)
    }

    /// `checkpoint_index`, then, with `compact` = Some(growth percent), compact the index file
    /// if it has grown that much since its last compaction (still under the commit lock:
    /// compaction commits durably, so nothing newer than the journal sync may be pending).
    /// Ask for compaction only with room on the disk.
    pub fn checkpoint_index_with(&self, compact: Option<u64>) -> Result<()> {
        // Under the commit lock, so the position noted as synced is one the sync covered.
        let _seq = self.next_seq.lock();
        self.sync()?;
        self.index.note_synced()?;
        self.index.flush().inspect_err(|e| {
            if e.errno() != libc::ENOSPC {
                self.set_read_only(format!("metadata index flush failed: {e}"));
            }
        })?;
        if let Some(growth_pct) = compact {
            if let Err(e) = self.index.compact_if_bloated(growth_pct) {
                // redb keeps a failed write's error: later index updates fail and turn the
                // journal read-only on their own.
                tracing::error!("compacting the metadata index failed: {e}");
            }
        }
        Ok(())
    }

    /// Whether the journal still holds every record from `from` (a position known durable)
    /// up to `to` (the index's applied position): after a power cut the index may have
    /// reached the disk with records whose journal bytes did not.
    fn journal_holds(&self, from: Applied, to: Applied) -> Result<bool> {
        let mut reached = false;
        for p in self.log.backend().list()? {
            if p < from.pack || p > to.pack {
                continue;
            }
            let start = if p == from.pack { from.off } else { 0 };
            if start > self.log.backend().len(p)? {
                return Ok(false);
            }
            self.log.scan(p, start, |loc, r| {
                if loc.pack == to.pack && loc.off + loc.len as u64 == to.off && r.seq == to.seq {
                    reached = true;
                }
                Ok(())
            })?;
        }
        Ok(reached)
    }

    /// Read the block payload of the record at `loc`.
    pub fn read_block(&self, loc: Loc) -> Result<(BlockHeader, Vec<u8>)> {
        let rec = self.log.read(loc)?;
        rec.block
            .ok_or_else(|| Error::Corrupt(format!("record {loc:?} has no block payload")))
    }

    /// Apply a run of consecutive records in one index batch.
    fn apply_records(&self, pending: &mut Vec<(Loc, Record)>) -> Result<()> {
        let ops: Vec<Vec<Op>> = pending
            .iter()
            .map(|(_, r)| decode_ops(r.version, &r.meta))
            .collect::<Result<_>>()?;
        let applying: Vec<Applying<'_>> = pending
            .iter()
            .zip(&ops)
            .map(|((loc, r), ops)| Applying {
                seq: r.seq,
                loc: *loc,
                ops,
                block: r.block.as_ref().map(|(h, p)| (h, p.len() as u32)),
            })
            .collect();
        self.index.apply_many(&applying)?;
        pending.clear();
        Ok(())
    }

    /// Replay records after the index's applied position.
    fn replay(&self) -> Result<Recovery> {
        let applied = self.index.applied()?;
        let packs = self.log.backend().list()?;
        let mut rec = Recovery::default();
        let mut last_seq = applied.seq;
        // A pack shorter than what the index knows to be durable was cut on purpose (or by a
        // disk that lies): no crash does that. In an encrypted store the index is
        // authenticated, so it is kept: records past the cut read as EIO (their files only),
        // fsck names them, and new records go to a fresh pack so that no location the index
        // names is ever reused. (A plain store rebuilds, as for any index ahead of the journal.)
        let mut truncated = false;
        if let (Some(synced), Some(_)) = (self.index.synced()?, self.log.key()) {
            if packs.contains(&synced.pack) {
                let len = self.log.backend().len(synced.pack)?;
                if len < synced.off {
                    tracing::error!(
                        pack = synced.pack,
                        len,
                        durable = synced.off,
                        "the journal was truncated below what was durable (tampering or a lying disk): files whose records were cut read as EIO; run `idcfs fsck`"
                    );
                    self.log.start_new_pack()?;
                    truncated = true;
                }
            }
        }
        if let (Some(synced), false) = (self.index.synced()?, truncated) {
            if applied.seq > synced.seq && !self.journal_holds(synced, applied)? {
                return Err(Error::Corrupt(format!(
                    "index ahead of the pack files (records up to sequence {} were applied, the journal holds fewer)",
                    applied.seq
                )));
            }
        }
        if applied.seq > 0 && !truncated {
            let exists = packs.contains(&applied.pack);
            let len = if exists {
                self.log.backend().len(applied.pack)?
            } else {
                0
            };
            let newer = packs.iter().any(|&p| p > applied.pack);
            if (!exists && !newer) || (exists && len < applied.off) {
                return Err(Error::Corrupt(format!(
                    "index ahead of the pack files (index at pack {} offset {}, pack length {len})",
                    applied.pack, applied.off
                )));
            }
        }
        let last_pack = packs.last().copied();
        for &p in packs
            .iter()
            .filter(|&&p| applied.seq == 0 || p >= applied.pack)
        {
            let from = if applied.seq > 0 && p == applied.pack {
                applied.off
            } else {
                0
            };
            let mut pending: Vec<(Loc, Record)> = Vec::new();
            let end = self.log.scan(p, from, |loc, r| {
                if r.seq <= last_seq {
                    return Err(Error::Corrupt(format!(
                        "sequence went backwards at {loc:?}"
                    )));
                }
                last_seq = r.seq;
                rec.replayed += 1;
                pending.push((loc, r));
                if pending.len() >= 256 {
                    self.apply_records(&mut pending)?;
                }
                Ok(())
            })?;
            self.apply_records(&mut pending)?;
            if let ScanEnd::Torn { off, end, reason } = end {
                if Some(p) == last_pack {
                    tracing::warn!(pack = p, off, end, %reason, "cutting a torn record at the end of the journal (interrupted write)");
                    self.log.truncate_active(off)?;
                    rec.torn_tail = Some((p, off, reason));
                } else {
                    return Err(Error::Corrupt(format!(
                        "pack {p} is damaged at offset {off} ({reason}); run `idcfs fsck --rebuild` to recover what can be"
                    )));
                }
            }
        }
        *self.next_seq.lock() = last_seq + 1;
        if rec.replayed > 0 {
            tracing::info!(
                records = rec.replayed,
                "replayed journal records the index had not yet stored"
            );
        }
        Ok(rec)
    }

    /// Recreate the index from the pack files alone.
    pub fn rebuild(&self) -> Result<Recovery> {
        // Each record is committed on its own: one that cannot be applied is skipped without
        // taking the records before it along.
        let batching = self.index.batching();
        self.index.set_batching(false)?;
        let rec = self.rebuild_inner(REBUILD_KEEP_BYTES);
        if batching {
            self.index.set_batching(true)?;
        }
        rec
    }

    fn rebuild_inner(&self, keep_limit: usize) -> Result<Recovery> {
        self.index.clear()?;
        let packs = self.log.backend().list()?;
        // One pass over the packs (each is read once, which over an object store means each
        // byte is fetched once even when the packs outgrow the read cache): it finds the newest
        // complete checkpoint and keeps the metadata of every record that may still be needed
        // (those from the newest complete checkpoint found so far on; block payloads are not
        // kept, only their headers and lengths). Should the kept metadata outgrow
        // `keep_limit`, or a checkpoint come that starts before one already found,
        // the records are read again from the packs instead (the old second pass).
        let mut open_cp: Option<u64> = None;
        let mut done_cp: Option<u64> = None;
        let mut kept: Vec<Kept> = Vec::new();
        let mut kept_bytes = 0usize;
        let mut pruned_to = 0u64;
        let mut overflow = false;
        let mut ends = Vec::with_capacity(packs.len());
        for &p in &packs {
            let end = self.log.scan(p, 0, |loc, r| {
                if let Ok(ops) = decode_ops(r.version, &r.meta) {
                    for op in &ops {
                        match op {
                            Op::CheckpointBegin => open_cp = Some(r.seq),
                            Op::CheckpointEnd { begin_seq } if open_cp == Some(*begin_seq) => {
                                done_cp = Some(*begin_seq)
                            }
                            _ => {}
                        }
                    }
                }
                if overflow {
                    return Ok(());
                }
                if let Some(b) = done_cp {
                    if b < pruned_to {
                        overflow = true;
                        kept = Vec::new();
                        return Ok(());
                    }
                    if b > pruned_to {
                        kept.retain(|k| k.seq >= b);
                        kept_bytes = kept.iter().map(Kept::cost).sum();
                        pruned_to = b;
                    }
                }
                let k = Kept {
                    loc,
                    seq: r.seq,
                    version: r.version,
                    block: r.block.map(|(h, p)| (h, p.len() as u32)),
                    meta: r.meta,
                };
                kept_bytes += k.cost();
                if kept_bytes > keep_limit {
                    tracing::info!(
                        "index rebuild: the records since the last checkpoint are too many to keep; reading the packs a second time"
                    );
                    overflow = true;
                    kept = Vec::new();
                } else {
                    kept.push(k);
                }
                Ok(())
            })?;
            ends.push((p, end));
        }
        let start = done_cp.unwrap_or(0);
        let mut rec = Recovery {
            rebuilt: true,
            ..Default::default()
        };
        let mut last_seq = 0;
        let mut apply = |k: &Kept| -> Result<()> {
            if k.seq < start || k.seq <= last_seq {
                return Ok(());
            }
            // Its sequence number is used even if the record is skipped, so it is never
            // handed out again.
            last_seq = k.seq;
            let loc = k.loc;
            let ops = match decode_ops(k.version, &k.meta) {
                Ok(ops) => ops,
                // Ops of a newer writer: refuse rather than rebuild without them.
                Err(e @ Error::Store(crate::store::StoreError::Unsupported(_))) => return Err(e),
                Err(e) => {
                    tracing::error!(?loc, "skipping a record whose metadata cannot be read: {e}");
                    return Ok(());
                }
            };
            if let Err(e) =
                self.index
                    .apply(k.seq, loc, &ops, k.block.as_ref().map(|(h, n)| (h, *n)))
            {
                tracing::error!(?loc, "skipping a record that cannot be applied: {e}");
                return Ok(());
            }
            rec.replayed += 1;
            Ok(())
        };
        if overflow {
            for &p in &packs {
                self.log.scan(p, 0, |loc, r| {
                    apply(&Kept {
                        loc,
                        seq: r.seq,
                        version: r.version,
                        block: r.block.map(|(h, p)| (h, p.len() as u32)),
                        meta: r.meta,
                    })
                })?;
            }
        } else {
            for k in &kept {
                apply(k)?;
            }
        }
        drop(kept);
        let last_pack = packs.last().copied();
        for (p, end) in ends {
            if let ScanEnd::Torn { off, reason, .. } = end {
                if Some(p) == last_pack {
                    self.log.truncate_active(off)?;
                    rec.torn_tail = Some((p, off, reason));
                } else {
                    tracing::error!(pack = p, off, %reason, "damaged pack: records after this point are lost");
                }
            }
        }
        // Blocks committed past a logged size may exist anywhere: check every file.
        let inos: Vec<u64> = self
            .index
            .all_inodes()
            .filter_map(|i| i.ok())
            .map(|i| i.ino)
            .collect();
        for ino in inos {
            if self.index.block_count(ino)? > 0 {
                self.index.mark_unsized(ino)?;
            }
        }
        *self.next_seq.lock() = last_seq + 1;
        // What the rebuild read is what the disk holds now: note it as the synced position.
        self.log.sync()?;
        self.index.note_synced()?;
        self.index.flush()?;
        tracing::info!(
            records = rec.replayed,
            from_checkpoint = start,
            "index rebuilt from the pack files"
        );
        Ok(rec)
    }

    /// Write a full snapshot of the index into the log so that older packs are no longer
    /// needed to rebuild it. Holds the commit lock for the duration.
    pub fn checkpoint(&self) -> Result<u64> {
        let mut seq = self.next_seq.lock();
        self.check_poison()?;
        let begin = *seq;
        let emit = |ops: &[Op], seq: &mut u64| -> Result<()> {
            let loc = self
                .log
                .append_record(*seq, &crate::meta::wire::encode_packed(ops), None)
                .map_err(|e| self.append_failed(e))?;
            // Snapshot ops restate the current state: only the applied position moves.
            self.index.apply(*seq, loc, &[], None)?;
            *seq += 1;
            Ok(())
        };
        emit(&[Op::CheckpointBegin], &mut seq)?;
        let mut chunk: Vec<Op> = Vec::new();
        const CHUNK: usize = 2000;
        for i in self.index.all_inodes() {
            chunk.push(Op::PutInode(i?));
            if chunk.len() >= CHUNK {
                emit(&std::mem::take(&mut chunk), &mut seq)?;
            }
        }
        for d in self.index.all_dirents() {
            let (parent, name, ent) = d?;
            chunk.push(Op::PutDirent { parent, name, ent });
            if chunk.len() >= CHUNK {
                emit(&std::mem::take(&mut chunk), &mut seq)?;
            }
        }
        for x in self.index.all_xattrs() {
            let (ino, name, value) = x?;
            chunk.push(Op::SetXattr { ino, name, value });
            if chunk.len() >= CHUNK {
                emit(&std::mem::take(&mut chunk), &mut seq)?;
            }
        }
        for sh in self.index.all_shared() {
            let sh = sh?;
            chunk.push(Op::SnapShared {
                hash: sh.hash,
                bref: sh.bref,
            });
            if chunk.len() >= CHUNK {
                emit(&std::mem::take(&mut chunk), &mut seq)?;
            }
        }
        for b in self.index.all_blocks() {
            let (ino, idx, bref) = b?;
            chunk.push(Op::SnapBlock { ino, idx, bref });
            if chunk.len() >= CHUNK {
                emit(&std::mem::take(&mut chunk), &mut seq)?;
            }
        }
        for ino in self.index.marked(b'O')? {
            chunk.push(Op::Orphan { ino, on: true });
        }
        if !chunk.is_empty() {
            emit(&chunk, &mut seq)?;
        }
        emit(&[Op::CheckpointEnd { begin_seq: begin }], &mut seq)?;
        Ok(begin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{Inode, Kind};

    fn inode(ino: Ino, size: u64) -> Inode {
        Inode {
            ino,
            kind: Kind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            size,
            rdev: 0,
            atime: Default::default(),
            mtime: Default::default(),
            ctime: Default::default(),
            crtime: Default::default(),
            parent: 1,
            target: Vec::new(),
            flags: 0,
        }
    }

    fn inodes(j: &Journal) -> Vec<Inode> {
        j.index
            .all_inodes()
            .map(|i| i.unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    /// The one-pass rebuild (metadata kept from the newest complete checkpoint on) and its
    /// fallback (the packs read a second time, when the kept metadata outgrows its budget)
    /// give the index the journal describes, across packs and a checkpoint.
    #[test]
    fn rebuild_in_one_pass_and_its_fallback_agree() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let backend: Arc<dyn PackBackend> =
            Arc::new(LocalDir::open(&dir.path().join("packs")).unwrap_or_else(|e| panic!("{e}")));
        let (j, _) = Journal::open_with(
            backend,
            &dir.path().join("index.redb"),
            dir.path(),
            1 << 20,
            1024,
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for i in 0..50u64 {
            j.commit(&[Op::PutInode(inode(100 + i, i))], None)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        j.checkpoint().unwrap_or_else(|e| panic!("{e}"));
        for i in 0..50u64 {
            let op = if i % 3 == 0 {
                Op::DelInode { ino: 100 + i }
            } else {
                Op::PutInode(inode(100 + i, 1000 + i))
            };
            j.commit(&[op], None).unwrap_or_else(|e| panic!("{e}"));
        }
        j.commit(&[Op::PutInode(inode(500, 5))], None)
            .unwrap_or_else(|e| panic!("{e}"));
        let want = inodes(&j);
        assert!(
            j.log.backend().list().unwrap_or_default().len() > 3,
            "the records should span several packs"
        );
        j.index
            .set_batching(false)
            .unwrap_or_else(|e| panic!("{e}"));
        let one = j
            .rebuild_inner(REBUILD_KEEP_BYTES)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(inodes(&j), want, "one-pass rebuild");
        let two = j.rebuild_inner(0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(inodes(&j), want, "two-pass rebuild");
        assert_eq!(one.replayed, two.replayed);
        // Started at the checkpoint: not every record since the first was applied.
        assert!(one.replayed < 102, "replayed {}", one.replayed);
    }
}
