//! The metadata index: inodes, directory entries, block maps, xattrs and accounting in `redb`.
//!
//! The index is a cache of the journal in the pack files: every change arrives as a list of
//! `Op`s from journal records, and each batch of records is one redb write transaction that
//! also records the last record's sequence number and end position, so the index always names
//! a prefix of the journal it fully holds and recovery replays the rest. Ordinary batches
//! commit without fsync (`Durability::None`: visible at once, durable with the next durable
//! commit); `flush` makes everything durable. Once the journal has recovered, consecutive
//! batches share one open write transaction (`batch`), committed every `BATCH_UPDATES`
//! batches or `BATCH_AGE`, and at every flush: a redb commit costs more than a small batch
//! itself (one per created or deleted file otherwise). Readers read through the open
//! transaction, so every applied batch is visible at once, as before.
//!
//! ## Key layout (one redb table `idx` of `&[u8] -> &[u8]`; integers big-endian so ranges sort
//! numerically)
//! ```text
//! 'M' name                  -> meta values: "applied" and "synced" (postcard `Applied`: seq,
//!                              pack, end offset of the last record applied / known synced),
//!                              "ino", "cookie" (highest ids used, u64 BE), "format" (index
//!                              layout, u64 BE), "clean" (present after a clean close)
//! 'I' ino                   -> Inode (postcard)
//! 'D' parent name           -> Dirent
//! 'C' parent cookie         -> name            (readdir order)
//! 'B' ino idx               -> BlockRef
//! 'N' ino                   -> number of mapped blocks (u64)
//! 'X' ino name              -> xattr value
//! 'O' ino                   -> ()              (unlinked while open)
//! 'U' ino                   -> ()              (blocks committed past the logged size)
//! 'H' hash16                -> Loc of the shared record holding that data (dedup)
//! 'R' pack off              -> Shared (hash, reference count, block ref)
//! 'Q' pack off ino idx      -> ()              (references of a shared record)
//! 'S' codec                 -> CodecStats
//! 'P' pack                  -> PackStats
//! ```
//! Invariants: only `apply` (called under the journal's commit lock) writes to the table; a
//! `B` entry always names a record that exists; the `S` and `P` entries equal what a scan of
//! the `B` entries gives.

mod types;
mod v1;
pub mod wire;

pub use self::types::*;

use crate::error::{Error, Result};
use crate::store::{BlockHeader, Loc, PackId};
use parking_lot::{Mutex, RwLock};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The one table of the index.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idx");

type WTable<'t> = Table<'t, &'static [u8], &'static [u8]>;
/// Entries (key, value) in key order.
type Entries<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a>;

/// Entries a scan reads per read transaction.
const SCAN_CHUNK: usize = 512;

/// The entries of a key range, read in chunks, each in its own short read transaction: a long
/// scan (a checkpoint, fsck, stats) never pins the pages that commits made meanwhile free,
/// which would grow the file and block its compaction. Like sled's iterators before, a scan is
/// not one snapshot: it sees commits made while it runs.
struct Chunked<'a> {
    ix: &'a Index,
    /// Where the next chunk starts (None: the range is exhausted).
    next: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    buf: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
}

impl Iterator for Chunked<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            let start = self.next.take()?;
            let chunk = self
                .ix
                .with_table(|t| t.range_lim(&start, self.end.as_deref(), SCAN_CHUNK));
            match chunk {
                Ok(v) => {
                    if v.len() == SCAN_CHUNK {
                        // The smallest key after the last one read.
                        self.next = v.last().map(|(k, _)| {
                            let mut n = k.clone();
                            n.push(0);
                            n
                        });
                    }
                    self.buf.extend(v);
                }
                // `next` stays None: the scan ends after its error.
                Err(e) => return Some(Err(e)),
            }
        }
        self.buf.pop_front().map(Ok)
    }
}

/// Layout version of the index's keys and values (the 'M' "format" key). An index of another
/// layout is rebuilt from the journal, never read.
pub const INDEX_FORMAT: u64 = 1;

/// Index files smaller than this are never compacted.
#[cfg(not(test))]
const COMPACT_MIN: u64 = 2 << 20;
#[cfg(test)]
const COMPACT_MIN: u64 = 256 << 10;

pub struct Index {
    /// Locked for writing only by `compact_if_bloated` (redb compacts through `&mut`); every
    /// other use holds it just long enough to begin a transaction.
    db: RwLock<Database>,
    /// The database file (None: in memory, tests).
    path: Option<PathBuf>,
    /// Some commit since the last durable one (a flush has something to make durable).
    dirty: AtomicBool,
    /// File size after the last compaction (0: none yet in this session).
    compacted_len: AtomicU64,
    /// In-memory mirrors of the 'S' and 'P' accounting, updated after each applied batch.
    codec_stats: Mutex<BTreeMap<u16, CodecStats>>,
    pack_stats: Mutex<BTreeMap<PackId, PackStats>>,
    /// Non-durable batches applied but not yet committed to redb (see the module comment).
    /// Lock order: `codec_stats`, `pack_stats`, then this.
    open: Mutex<Option<OpenBatch>>,
    /// Whether non-durable batches may wait in `open` (off during recovery and rebuild, where
    /// a failing record must not take earlier ones with it).
    batching: AtomicBool,
    /// A failed write dropped batches applied before it: the index no longer holds what the
    /// journal applied, so every later write fails (the journal turns read-only and the next
    /// mount replays the journal).
    lost: AtomicBool,
}

impl Drop for Index {
    /// Batches still waiting are dropped (aborted) before the database closes, as a crash
    /// would drop them; a clean close flushes first.
    fn drop(&mut self) {
        self.open.get_mut().take();
    }
}

/// The write transaction holding the batches not yet committed.
struct OpenBatch {
    tx: redb::WriteTransaction,
    batches: usize,
    since: std::time::Instant,
}

/// Commit the open transaction after this many batches...
const BATCH_UPDATES: usize = 256;
/// ...or once it is this old (checked at the next batch; `flush` commits it in any case).
const BATCH_AGE: std::time::Duration = std::time::Duration::from_millis(50);

/// One journal record to apply.
pub struct Applying<'a> {
    pub seq: u64,
    pub loc: Loc,
    pub ops: &'a [Op],
    /// The record's block header and payload length, when it carries a block.
    pub block: Option<(&'a BlockHeader, u32)>,
}

/// Position of the last record the index holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub seq: u64,
    pub pack: PackId,
    pub off: u64,
}

/// Encode ops as the metadata of a record of the current version.
pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    wire::encode(ops)
}

/// Decode the metadata of a record of `version` (from its header).
pub fn decode_ops(version: u8, meta: &[u8]) -> Result<Vec<Op>> {
    match version {
        1 => v1::decode(meta),
        2 => wire::decode(meta),
        v => Err(Error::Corrupt(format!("record version {v} is unknown"))),
    }
}

pub fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| Error::Corrupt(format!("encode: {e}")))
}

pub fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    postcard::from_bytes(b).map_err(|e| Error::Corrupt(format!("index value: {e}")))
}

pub fn key_ino(tag: u8, ino: Ino) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(tag);
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

fn key_ino_u64(tag: u8, ino: Ino, n: u64) -> Vec<u8> {
    let mut k = key_ino(tag, ino);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn key_ino_name(tag: u8, ino: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = key_ino(tag, ino);
    k.extend_from_slice(name);
    k
}

fn key_loc(tag: u8, loc: &Loc) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(&loc.pack.to_be_bytes());
    k.extend_from_slice(&loc.off.to_be_bytes());
    k
}

fn key_ref(loc: &Loc, ino: Ino, idx: u64) -> Vec<u8> {
    let mut k = key_loc(b'Q', loc);
    k.extend_from_slice(&ino.to_be_bytes());
    k.extend_from_slice(&idx.to_be_bytes());
    k
}

/// Whether blocks `0..froms.len()` of `ino` are exactly at `froms` (None: a hole).
fn froms_match(v: &View<'_>, ino: Ino, froms: &[Option<Loc>]) -> Result<bool> {
    for (idx, want) in froms.iter().enumerate() {
        let cur = match v.get(&key_block(ino, idx as u64))? {
            Some(c) => Some(dec::<BlockRef>(&c)?.loc),
            None => None,
        };
        if cur != *want {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The `n` slices of the shared whole-file object at `loc`, taken from the files that
/// reference it (any reference of slice `idx` has it); None when some slice has no reference
/// or the record is not an `n`-slice object.
fn object_slices(v: &View<'_>, loc: &Loc, n: usize) -> Result<Option<Vec<BlockRef>>> {
    let prefix = key_loc(b'Q', loc);
    let mut end = prefix.clone();
    end.extend_from_slice(&[0xff; 17]);
    let mut slices: Vec<Option<BlockRef>> = vec![None; n];
    let mut left = n;
    for (k, _) in v.scan_range(prefix, end)? {
        if k.len() != 29 {
            continue;
        }
        let (ino, idx) = (u64_of(&k[13..21]), u64_of(&k[21..29]));
        let Some(slot) = usize::try_from(idx).ok().and_then(|i| slices.get_mut(i)) else {
            return Ok(None);
        };
        if slot.is_some() {
            continue;
        }
        if let Some(b) = v.get(&key_block(ino, idx))? {
            let b: BlockRef = dec(&b)?;
            if b.loc == *loc && b.object {
                *slot = Some(b);
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
    }
    Ok(slices.into_iter().collect())
}

fn key_hash(h: &[u8; 16]) -> Vec<u8> {
    let mut k = vec![b'H'];
    k.extend_from_slice(h);
    k
}

pub fn key_block(ino: Ino, idx: u64) -> Vec<u8> {
    key_ino_u64(b'B', ino, idx)
}

fn key_meta(name: &str) -> Vec<u8> {
    let mut k = vec![b'M'];
    k.extend_from_slice(name.as_bytes());
    k
}

fn u64_of(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[8 - n..].copy_from_slice(&b[b.len() - n..]);
    u64::from_be_bytes(a)
}

/// Read access to the table, in a read or in a write transaction.
trait Src {
    fn get_vec(&self, k: &[u8]) -> Result<Option<Vec<u8>>>;
    fn range_vec(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// At most `limit` entries from `start` up to `end` (None: to the end of the table).
    fn range_lim(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> Src for T {
    fn get_vec(&self, k: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get(k)
            .map_err(redb::Error::from)?
            .map(|v| v.value().to_vec()))
    }
    fn range_vec(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.range_lim(start, Some(end), usize::MAX)
    }
    fn range_lim(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let r = match end {
            Some(end) => self.range::<&[u8]>(start..end),
            None => self.range::<&[u8]>(start..),
        }
        .map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for kv in r.take(limit) {
            let (k, v) = kv.map_err(redb::Error::from)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}

/// The first key after every key that starts with `prefix` (None: no such key).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A batch under construction, with reads that see its own pending writes.
struct View<'a> {
    tree: &'a dyn Src,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    codec_delta: BTreeMap<u16, (i64, i64, i64, i64)>,
    pack_delta: BTreeMap<PackId, (i64, i64)>,
}

/// Whether `inode` (a file) has mapped blocks past its size, or a last block holding bytes
/// past it: what a crash between an extension's blocks and its inode leaves.
fn past_eof(v: &View<'_>, inode: &Inode) -> Result<bool> {
    if inode.kind != Kind::File {
        return Ok(false);
    }
    let bs = crate::engine::layout::BLOCK_U64;
    let last = inode.size.div_ceil(bs);
    let beyond = v.scan_range(
        key_block(inode.ino, last),
        key_ino(b'B', inode.ino.saturating_add(1)),
    )?;
    if !beyond.is_empty() {
        return Ok(true);
    }
    let tail = inode.size % bs;
    if tail != 0 {
        if let Some(b) = v.get(&key_block(inode.ino, inode.size / bs))? {
            let b: BlockRef = dec(&b)?;
            return Ok(u64::from(b.raw_len) > tail);
        }
    }
    Ok(false)
}

impl<'a> View<'a> {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.pending.get(k) {
            return Ok(v.clone());
        }
        self.tree.get_vec(k)
    }
    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.pending.insert(k, Some(v));
    }
    fn del(&mut self, k: Vec<u8>) {
        self.pending.insert(k, None);
    }
    /// Keys (with values) under `prefix`, as the batch would leave them.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut end = prefix.to_vec();
        // Prefixes here are a tag plus a big-endian id: bumping the id gives the range end.
        let id = u64_of(&end[1..9]).saturating_add(1);
        end.truncate(1);
        end.extend_from_slice(&id.to_be_bytes());
        self.scan_range(prefix.to_vec(), end)
    }

    /// Keys (with values) in `start..end`, as the batch would leave them.
    fn scan_range(&self, start: Vec<u8>, end: Vec<u8>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut m: BTreeMap<Vec<u8>, Vec<u8>> =
            self.tree.range_vec(&start, &end)?.into_iter().collect();
        for (k, v) in self.pending.range(start..end) {
            match v {
                Some(v) => m.insert(k.clone(), v.clone()),
                None => m.remove(k),
            };
        }
        Ok(m.into_iter().collect())
    }

    fn unmap_block(&mut self, ino: Ino, key: Vec<u8>, old: &[u8]) -> Result<()> {
        let b: BlockRef = dec(old)?;
        let idx = u64_of(&key[9..17]);
        self.account(&b, -1)?;
        self.deref(&b.loc, ino, idx)?;
        self.del(key);
        self.bump_count(ino, -1)
    }

    /// Drop one reference to a shared record (no-op for unshared ones).
    fn deref(&mut self, loc: &Loc, ino: Ino, idx: u64) -> Result<()> {
        let rk = key_loc(b'R', loc);
        let Some(v) = self.get(&rk)? else {
            return Ok(());
        };
        let mut sh: Shared = dec(&v)?;
        self.del(key_ref(loc, ino, idx));
        sh.refs = sh.refs.saturating_sub(1);
        if sh.refs == 0 {
            self.del(rk);
            // A shared record is live in its pack once, whatever its references.
            self.pack_delta.entry(loc.pack).or_default().0 -= loc.len as i64;
            let hk = key_hash(&sh.hash);
            if self
                .get(&hk)?
                .is_some_and(|h| dec::<Loc>(&h).is_ok_and(|l| l == *loc))
            {
                self.del(hk);
            }
        } else {
            self.put(rk, enc(&sh)?);
        }
        Ok(())
    }

    /// Add a reference to `b`'s record if it is shared, or share it now when `offer` holds
    /// its raw-data hash.
    fn addref(&mut self, b: &BlockRef, ino: Ino, idx: u64, offer: Option<[u8; 16]>) -> Result<()> {
        let rk = key_loc(b'R', &b.loc);
        let sh = match self.get(&rk)? {
            Some(v) => {
                let mut sh: Shared = dec(&v)?;
                sh.refs += 1;
                sh
            }
            None => match offer {
                Some(hash) => {
                    self.put(key_hash(&hash), enc(&b.loc)?);
                    self.pack_delta.entry(b.loc.pack).or_default().0 += b.loc.len as i64;
                    Shared {
                        hash,
                        refs: 1,
                        bref: *b,
                    }
                }
                None => return Ok(()),
            },
        };
        self.put(rk, enc(&sh)?);
        self.put(key_ref(&b.loc, ino, idx), Vec::new());
        Ok(())
    }

    /// Count one reference to `b`'s record in or out of the codec and pack statistics.
    /// Codec rows count every reference; a pack's live bytes count a shared record once (its
    /// whole length, added and removed by `addref`/`deref` with the record's sharing), so
    /// garbage in packs holding deduplicated records stays visible to compaction.
    fn account(&mut self, b: &BlockRef, sign: i64) -> Result<()> {
        let c = self.codec_delta.entry(b.codec).or_default();
        c.0 += sign;
        c.1 += sign * b.raw_len as i64;
        c.2 += sign * b.stored as i64;
        // Blocks of one object share its record: each counts its share.
        let rec = b.record_share() as i64;
        c.3 += sign * rec;
        let shared = self.get(&key_loc(b'R', &b.loc))?.is_some();
        let p = self.pack_delta.entry(b.loc.pack).or_default();
        if !shared {
            p.0 += sign * rec;
        }
        p.1 += sign;
        Ok(())
    }

    fn bump_count(&mut self, ino: Ino, d: i64) -> Result<()> {
        let k = key_ino(b'N', ino);
        let n = self.get(&k)?.map_or(0, |v| u64_of(&v)) as i64 + d;
        if n <= 0 {
            self.del(k);
        } else {
            self.put(k, (n as u64).to_be_bytes().to_vec());
        }
        Ok(())
    }

    fn raise_meta(&mut self, name: &str, v: u64) -> Result<()> {
        let k = key_meta(name);
        if self.get(&k)?.map_or(0, |b| u64_of(&b)) < v {
            self.put(k, v.to_be_bytes().to_vec());
        }
        Ok(())
    }
}

impl Index {
    /// Open the index database file at `path`, creating it when missing, with a page cache of
    /// `cache_bytes`.
    /// With `key` (an encrypted store) the file is sealed unit by unit (`crypto::SealedFile`).
    pub fn open(
        path: &Path,
        cache_bytes: u64,
        key: Option<std::sync::Arc<crate::crypto::StoreKey>>,
    ) -> Result<Index> {
        let open = || -> Result<(Database, bool)> {
            let mut b = redb::Builder::new();
            b.set_cache_size(usize::try_from(cache_bytes).unwrap_or(usize::MAX));
            let mut db = match &key {
                Some(k) => {
                    b.create_with_backend(crate::crypto::SealedFile::open(path, k.clone())?)?
                }
                None => b.create(path)?,
            };
            // Reads trust the pages they find: verify every checksum once (one pass over a file
            // of a few hundred bytes per file stored). A damaged index fails here, with
            // `Corrupted`, and is rebuilt rather than misread.
            let intact = db.check_integrity()?;
            Ok((db, intact))
        };
        // redb 4.6 panics on some damaged pages (an `unreachable!` when a page has no valid
        // type byte) instead of returning `Corrupted`: that is damage too. Nothing is shared
        // with the closure but the path, so unwinding leaves no broken state behind.
        let (db, intact) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(open)).map_err(|p| {
                let why = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Error::Index(redb::Error::Corrupted(format!(
                    "the database failed while opening: {why}"
                )))
            })??;
        if !intact {
            tracing::warn!(
                "metadata index at {} was damaged and repaired to its last intact commit",
                path.display()
            );
        }
        Self::from_db(db, Some(path.to_path_buf()))
    }

    #[cfg(test)]
    pub fn temporary() -> Result<Index> {
        let db = redb::Builder::new().create_with_backend(redb::backends::InMemoryBackend::new())?;
        Self::from_db(db, None)
    }

    fn from_db(db: Database, path: Option<PathBuf>) -> Result<Index> {
        let ix = Index {
            db: RwLock::new(db),
            path,
            dirty: AtomicBool::new(false),
            compacted_len: AtomicU64::new(0),
            codec_stats: Mutex::new(BTreeMap::new()),
            pack_stats: Mutex::new(BTreeMap::new()),
            open: Mutex::new(None),
            batching: AtomicBool::new(false),
            lost: AtomicBool::new(false),
        };
        let exists = match ix.db.read().begin_read()?.open_table(TABLE) {
            Ok(_) => true,
            Err(redb::TableError::TableDoesNotExist(_)) => false,
            Err(e) => return Err(e.into()),
        };
        if !exists {
            ix.write(true, |_| Ok(()))?;
        }
        ix.load_mirrors()?;
        Ok(ix)
    }

    /// Run `f` on a view of everything applied so far: through the open batch's write
    /// transaction when there is one, else a read transaction (committed, durable or not).
    /// `f` must not call back into the index.
    fn with_table<T>(&self, f: impl FnOnce(&dyn Src) -> Result<T>) -> Result<T> {
        let db = self.db.read();
        let open = self.open.lock();
        if let Some(o) = open.as_ref() {
            let t = o.tx.open_table(TABLE)?;
            return f(&t);
        }
        // Begun under the lock: no batch can slip in between the check and the snapshot.
        let tx = db.begin_read()?;
        drop(open);
        let t = tx.open_table(TABLE)?;
        f(&t)
    }

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with_table(|t| t.get_vec(k))
    }

    /// Let non-durable batches wait in one open write transaction (see the module comment).
    /// Off while recovering, where each record is committed on its own; turning it off
    /// commits what waits.
    pub fn set_batching(&self, on: bool) -> Result<()> {
        self.batching.store(on, Ordering::SeqCst);
        if !on {
            self.commit_open()?;
        }
        Ok(())
    }

    pub fn batching(&self) -> bool {
        self.batching.load(Ordering::SeqCst)
    }

    /// Commit the open batch without fsync (nothing when there is none).
    fn commit_open(&self) -> Result<()> {
        let _db = self.db.read();
        let mut open = self.open.lock();
        match open.take() {
            Some(mut o) => {
                o.tx.set_durability(Durability::None)?;
                o.tx.commit().map_err(|e| {
                    self.lost.store(true, Ordering::SeqCst);
                    e.into()
                })
            }
            None => Ok(()),
        }
    }

    /// Entries whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Entries<'_> {
        Box::new(Chunked {
            ix: self,
            next: Some(prefix.to_vec()),
            end: prefix_end(prefix),
            buf: Default::default(),
        })
    }

    /// Run `f` in one write transaction and commit it: with fsync when `durable`, otherwise
    /// visible at once but durable only with the next durable commit. With batching on, a
    /// non-durable write joins the open batch and is committed with it later (still visible
    /// at once); a durable one commits the open batch with it. An error aborts the
    /// transaction, and with it the batches waiting in it (see `lost`).
    fn write<T>(&self, durable: bool, f: impl FnOnce(&mut WTable<'_>) -> Result<T>) -> Result<T> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::Corrupt(
                "the metadata index lost updates after a failed write; remount to replay the journal".into(),
            ));
        }
        let db = self.db.read();
        let mut open = self.open.lock();
        if durable {
            // A durable commit may fail for lack of space, which is tolerated (the next flush
            // tries again): the batches waiting are committed on their own first, so such a
            // failure never takes them along.
            if let Some(mut o) = open.take() {
                o.tx.set_durability(Durability::None)?;
                if let Err(e) = o.tx.commit() {
                    self.lost.store(true, Ordering::SeqCst);
                    return Err(e.into());
                }
            }
        }
        let mut o = match open.take() {
            Some(o) => o,
            None => OpenBatch {
                tx: db.begin_write()?,
                batches: 0,
                since: std::time::Instant::now(),
            },
        };
        let res = (|| {
            let mut t = o.tx.open_table(TABLE)?;
            f(&mut t)
        })();
        let out = match res {
            Ok(out) => out,
            Err(e) => {
                if o.batches > 0 {
                    tracing::error!(
                        batches = o.batches,
                        "an index update failed: the updates waiting with it are dropped too"
                    );
                    self.lost.store(true, Ordering::SeqCst);
                }
                // Dropping the transaction aborts it.
                drop(o);
                return Err(e);
            }
        };
        o.batches += 1;
        if !durable
            && self.batching.load(Ordering::SeqCst)
            && o.batches < BATCH_UPDATES
            && o.since.elapsed() < BATCH_AGE
        {
            *open = Some(o);
            self.dirty.store(true, Ordering::SeqCst);
            return Ok(out);
        }
        o.tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        // Write transactions are exclusive (and `open` is held): no other commit can slip
        // between this and ours.
        let was_dirty = durable && self.dirty.swap(false, Ordering::SeqCst);
        let res = o.tx.commit().map_err(Error::from);
        // A non-durable commit leaves work for the next flush; so does a failed durable one.
        if (!durable && res.is_ok()) || (was_dirty && res.is_err()) {
            self.dirty.store(true, Ordering::SeqCst);
        }
        if res.is_err() && o.batches > 1 {
            self.lost.store(true, Ordering::SeqCst);
        }
        res.map(|()| out)
    }

    fn load_mirrors(&self) -> Result<()> {
        let mut cs = BTreeMap::new();
        for kv in self.scan_prefix(b"S") {
            let (k, v) = kv?;
            if k.len() == 3 {
                cs.insert(u16::from_be_bytes([k[1], k[2]]), dec(&v)?);
            }
        }
        let mut ps = BTreeMap::new();
        for kv in self.scan_prefix(b"P") {
            let (k, v) = kv?;
            if k.len() == 5 {
                ps.insert(u32::from_be_bytes([k[1], k[2], k[3], k[4]]), dec(&v)?);
            }
        }
        *self.codec_stats.lock() = cs;
        *self.pack_stats.lock() = ps;
        Ok(())
    }

    /// Remove everything (used by rebuild).
    pub fn clear(&self) -> Result<()> {
        self.write(false, |t| Ok(t.retain(|_, _| false)?))?;
        self.load_mirrors()
    }

    /// Make every commit so far durable (an empty durable commit; nothing when there is
    /// nothing to make durable).
    pub fn flush(&self) -> Result<()> {
        if !self.dirty.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.write(true, |_| Ok(()))
    }

    /// Rewrite the database file compactly when its allocated size has grown past
    /// `COMPACT_MIN` and to `growth_pct` percent of its size after the last compaction (above 100, the cost stays
    /// proportional to the growth).
    /// redb reuses freed pages but never returns them to the filesystem: churn (recompression,
    /// compaction, deletes) leaves the file several times larger than its live pages.
    ///
    /// Call only with everything durable and no commit in between (compaction commits
    /// durably): the journal calls it under its commit lock right after a checkpoint. Returns
    /// whether it compacted; a transaction still alive elsewhere (an iterator) defers it.
    pub fn compact_if_bloated(&self, growth_pct: u64) -> Result<bool> {
        let len = self.size_on_disk();
        let base = self.compacted_len.load(Ordering::Relaxed);
        if self.path.is_none() || len < COMPACT_MIN || len <= base.saturating_mul(growth_pct) / 100
        {
            return Ok(false);
        }
        // Called right after a durable flush under the commit lock: nothing waits in a batch.
        self.commit_open()?;
        let mut db = self.db.write();
        // Readers that began just before the lock was taken finish within microseconds. One
        // pass moves what fits below the end; a few more passes get most of the rest.
        let (mut passes, mut waits) = (0, 0);
        loop {
            match db.compact() {
                Ok(true) if passes < 8 => passes += 1,
                Ok(_) => break,
                Err(redb::CompactionError::TransactionInProgress) if passes == 0 && waits < 4 => {
                    waits += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(redb::CompactionError::TransactionInProgress) if passes > 0 => break,
                // A reader still holds a snapshot: the next checkpoint tries again.
                Err(redb::CompactionError::TransactionInProgress) => return Ok(false),
                Err(e) => return Err(Error::Index(e.into())),
            }
        }
        drop(db);
        let after = self.size_on_disk();
        self.compacted_len.store(after, Ordering::Relaxed);
        tracing::debug!(before = len, after, "metadata index compacted");
        Ok(true)
    }

    /// Bytes the index occupies on disk: its allocated blocks. (redb grows the file by
    /// doubling it with `set_len`; the unwritten tail is a hole that costs nothing.)
    pub fn size_on_disk(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.path
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.blocks() * 512)
    }

    pub fn applied(&self) -> Result<Applied> {
        Ok(match self.get(&key_meta("applied"))? {
            Some(v) => dec(&v)?,
            None => Applied::default(),
        })
    }

    pub fn max_ino(&self) -> Result<Ino> {
        Ok(self.get(&key_meta("ino"))?.map_or(ROOT_INO, |v| u64_of(&v)))
    }

    pub fn max_cookie(&self) -> Result<u64> {
        Ok(self.get(&key_meta("cookie"))?.map_or(0, |v| u64_of(&v)))
    }

    pub fn inode(&self, ino: Ino) -> Result<Option<Inode>> {
        match self.get(&key_ino(b'I', ino))? {
            Some(v) => Ok(Some(dec(&v)?)),
            None => Ok(None),
        }
    }

    pub fn dirent(&self, parent: Ino, name: &[u8]) -> Result<Option<Dirent>> {
        match self.get(&key_ino_name(b'D', parent, name))? {
            Some(v) => Ok(Some(dec(&v)?)),
            None => Ok(None),
        }
    }

    /// Directory entries with cookie > `after`, in cookie order, at most `limit`.
    pub fn readdir(
        &self,
        dir: Ino,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>, Dirent)>> {
        let mut start = key_ino_u64(b'C', dir, after.saturating_add(1));
        let end = key_ino(b'C', dir.saturating_add(1));
        let want = limit.max(1);
        // One view for the cookies and their entries.
        self.with_table(|t| {
            let mut out = Vec::new();
            loop {
                let chunk = t.range_lim(&start, Some(&end), want)?;
                let more = chunk.len() == want;
                for (k, name) in &chunk {
                    let cookie = u64_of(&k[9..17]);
                    if let Some(d) = t.get_vec(&key_ino_name(b'D', dir, name))? {
                        out.push((cookie, name.clone(), dec(&d)?));
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                }
                match chunk.last() {
                    Some((k, _)) if more => {
                        start = k.clone();
                        start.push(0);
                    }
                    _ => return Ok(out),
                }
            }
        })
    }

    pub fn dir_is_empty(&self, dir: Ino) -> Result<bool> {
        Ok(self
            .scan_prefix(&key_ino(b'D', dir))
            .next()
            .transpose()?
            .is_none())
    }

    pub fn block(&self, ino: Ino, idx: u64) -> Result<Option<BlockRef>> {
        match self.get(&key_block(ino, idx))? {
            Some(v) => Ok(Some(dec(&v)?)),
            None => Ok(None),
        }
    }

    /// Mapped blocks of `ino` with index >= `from`, ascending, at most `limit`.
    pub fn blocks_from(&self, ino: Ino, from: u64, limit: usize) -> Result<Vec<(u64, BlockRef)>> {
        let start = key_block(ino, from);
        let end = key_ino(b'B', ino.saturating_add(1));
        let mut out = Vec::new();
        for (k, v) in self.with_table(|t| t.range_lim(&start, Some(&end), limit))? {
            out.push((u64_of(&k[9..17]), dec(&v)?));
        }
        Ok(out)
    }

    pub fn block_count(&self, ino: Ino) -> Result<u64> {
        Ok(self.get(&key_ino(b'N', ino))?.map_or(0, |v| u64_of(&v)))
    }

    pub fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get(&key_ino_name(b'X', ino, name))
    }

    pub fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for kv in self.scan_prefix(&key_ino(b'X', ino)) {
            let (k, _) = kv?;
            out.push(k[9..].to_vec());
        }
        Ok(out)
    }

    /// Inodes carrying a mark ('O' orphan, 'U' unsized).
    pub fn marked(&self, tag: u8) -> Result<Vec<Ino>> {
        let mut out = Vec::new();
        for kv in self.scan_prefix(&[tag]) {
            let (k, _) = kv?;
            if k.len() == 9 {
                out.push(u64_of(&k[1..9]));
            }
        }
        Ok(out)
    }

    /// The index layout version this index was written with (None: before versions were
    /// recorded, which is layout 1).
    pub fn format(&self) -> Result<Option<u64>> {
        Ok(self.get(&key_meta("format"))?.map(|v| u64_of(&v)))
    }

    pub fn set_format(&self, v: u64) -> Result<()> {
        if self.format()? == Some(v) {
            return Ok(());
        }
        self.write(false, |t| {
            t.insert(key_meta("format").as_slice(), v.to_be_bytes().as_slice())?;
            Ok(())
        })
    }

    /// The journal position known durable when the index was last flushed: records up to it
    /// were synced before the index that applied them could reach the disk.
    pub fn synced(&self) -> Result<Option<Applied>> {
        match self.get(&key_meta("synced"))? {
            Some(v) => Ok(Some(dec(&v)?)),
            None => Ok(None),
        }
    }

    /// Record that the journal is durable up to what the index has applied (call after
    /// syncing the journal, before flushing the index).
    pub fn note_synced(&self) -> Result<()> {
        self.write(false, |t| {
            let a = match t.get_vec(&key_meta("applied"))? {
                Some(v) => dec(&v)?,
                None => Applied::default(),
            };
            t.insert(key_meta("synced").as_slice(), enc(&a)?.as_slice())?;
            Ok(())
        })
    }

    /// Record that the store was closed cleanly (derived counters are exact).
    pub fn mark_clean(&self) -> Result<()> {
        self.write(true, |t| {
            t.insert(key_meta("clean").as_slice(), [1u8].as_slice())?;
            Ok(())
        })
    }

    /// Whether the last close was clean; clears the mark (durably) for this session.
    pub fn take_clean(&self) -> Result<bool> {
        if self.get(&key_meta("clean"))?.is_none() {
            return Ok(false);
        }
        self.write(true, |t| {
            Ok(t.remove(key_meta("clean").as_slice())?.is_some())
        })
    }

    /// Recompute the derived counters ('S', 'P', 'N', and the 'R'/'Q' reference counts of
    /// shared records) from the block map. After an unclean stop they may be off (they are
    /// not, with every batch one transaction, but an index written by an older build may be).
    pub fn recount(&self) -> Result<()> {
        let mut cs: BTreeMap<u16, CodecStats> = BTreeMap::new();
        let mut ps: BTreeMap<PackId, PackStats> = BTreeMap::new();
        let mut counts: BTreeMap<Ino, u64> = BTreeMap::new();
        // Shared records: their reference counts and reverse references, from the block map.
        let mut shared: BTreeMap<Loc, Shared> = BTreeMap::new();
        for sh in self.all_shared() {
            let sh = sh?;
            shared.insert(sh.bref.loc, Shared { refs: 0, ..sh });
        }
        for b in self.all_blocks() {
            let (ino, _, r) = b?;
            let c = cs.entry(r.codec).or_default();
            c.blocks += 1;
            c.logical += r.raw_len as u64;
            c.payload += r.stored as u64;
            c.records += r.record_share();
            let p = ps.entry(r.loc.pack).or_default();
            // A shared record counts once in its pack (added below).
            if !shared.contains_key(&r.loc) {
                p.live_bytes += r.record_share();
            }
            p.live_blocks += 1;
            *counts.entry(ino).or_default() += 1;
        }
        let mut qrefs: Vec<(Loc, Ino, u64)> = Vec::new();
        for b in self.all_blocks() {
            let (ino, idx, r) = b?;
            if let Some(sh) = shared.get_mut(&r.loc) {
                sh.refs += 1;
                qrefs.push((r.loc, ino, idx));
            }
        }
        for (loc, sh) in &shared {
            if sh.refs > 0 {
                ps.entry(loc.pack).or_default().live_bytes += loc.len as u64;
            }
        }
        self.write(false, |t| {
            for tag in [b'S', b'P', b'N', b'R', b'Q'] {
                let end = [tag + 1];
                t.retain_in::<&[u8], _>([tag].as_slice()..end.as_slice(), |_, _| false)?;
            }
            for (codec, c) in &cs {
                let mut k = vec![b'S'];
                k.extend_from_slice(&codec.to_be_bytes());
                t.insert(k.as_slice(), enc(c)?.as_slice())?;
            }
            for (pack, p) in &ps {
                let mut k = vec![b'P'];
                k.extend_from_slice(&pack.to_be_bytes());
                t.insert(k.as_slice(), enc(p)?.as_slice())?;
            }
            for (ino, n) in &counts {
                t.insert(key_ino(b'N', *ino).as_slice(), n.to_be_bytes().as_slice())?;
            }
            for (loc, sh) in &shared {
                if sh.refs == 0 {
                    let hk = key_hash(&sh.hash);
                    if t.get_vec(&hk)?
                        .is_some_and(|h| dec::<Loc>(&h).is_ok_and(|l| l == *loc))
                    {
                        t.remove(hk.as_slice())?;
                    }
                } else {
                    t.insert(key_loc(b'R', loc).as_slice(), enc(sh)?.as_slice())?;
                }
            }
            for (loc, ino, idx) in &qrefs {
                t.insert(key_ref(loc, *ino, *idx).as_slice(), [].as_slice())?;
            }
            Ok(())
        })?;
        *self.codec_stats.lock() = cs;
        *self.pack_stats.lock() = ps;
        Ok(())
    }

    /// Flag `ino` for the post-recovery size check (offline rebuild only).
    pub fn mark_unsized(&self, ino: Ino) -> Result<()> {
        self.write(false, |t| {
            t.insert(key_ino(b'U', ino).as_slice(), [].as_slice())?;
            Ok(())
        })
    }

    pub fn codec_stats(&self) -> BTreeMap<u16, CodecStats> {
        self.codec_stats.lock().clone()
    }

    pub fn pack_stats(&self) -> BTreeMap<PackId, PackStats> {
        self.pack_stats.lock().clone()
    }

    /// Every inode (fsck, checkpoint).
    pub fn all_inodes(&self) -> impl Iterator<Item = Result<Inode>> + '_ {
        self.scan_prefix(b"I").map(|kv| dec(&kv?.1))
    }

    /// Every directory entry as (parent, name, dirent).
    pub fn all_dirents(&self) -> impl Iterator<Item = Result<(Ino, Vec<u8>, Dirent)>> + '_ {
        self.scan_prefix(b"D").map(|kv| {
            let (k, v) = kv?;
            Ok((u64_of(&k[1..9]), k[9..].to_vec(), dec(&v)?))
        })
    }

    /// Every block map entry as (ino, idx, ref).
    pub fn all_blocks(&self) -> impl Iterator<Item = Result<(Ino, u64, BlockRef)>> + '_ {
        self.scan_prefix(b"B").map(|kv| {
            let (k, v) = kv?;
            Ok((u64_of(&k[1..9]), u64_of(&k[9..17]), dec(&v)?))
        })
    }

    /// Every xattr as (ino, name, value).
    pub fn all_xattrs(&self) -> impl Iterator<Item = Result<(Ino, Vec<u8>, Vec<u8>)>> + '_ {
        self.scan_prefix(b"X").map(|kv| {
            let (k, v) = kv?;
            Ok((u64_of(&k[1..9]), k[9..].to_vec(), v))
        })
    }

    /// Apply one journal record: `ops` from the record at `loc` with sequence `seq`; `block`
    /// describes the record's payload when it has one. Caller holds the commit lock.
    pub fn apply(
        &self,
        seq: u64,
        loc: Loc,
        ops: &[Op],
        block: Option<(&BlockHeader, u32)>,
    ) -> Result<()> {
        self.apply_many(&[Applying {
            seq,
            loc,
            ops,
            block,
        }])
    }

    /// Apply consecutive journal records in one write transaction (atomic, without fsync:
    /// group commit amortises its fixed cost). Caller holds the commit lock.
    pub fn apply_many(&self, recs: &[Applying<'_>]) -> Result<()> {
        let Some(last) = recs.last() else {
            return Ok(());
        };
        // Accounting mirrors stay locked until the commit, so they change with the table.
        let mut cs = self.codec_stats.lock();
        let mut ps = self.pack_stats.lock();
        let (new_cs, new_ps) = self.write(false, |t| {
            let mut v = View {
                tree: &*t,
                pending: BTreeMap::new(),
                codec_delta: BTreeMap::new(),
                pack_delta: BTreeMap::new(),
            };
            for r in recs {
                let new_ref = r.block.map(|(h, stored)| BlockRef {
                    object: false,
                    loc: r.loc,
                    codec: h.codec,
                    params: h.params,
                    raw_len: h.raw_len,
                    stored,
                });
                let hash = r.block.map(|(h, _)| h.raw_hash);
                for op in r.ops {
                    self.apply_op(&mut v, op, new_ref, hash)?;
                }
            }
            let applied = enc(&Applied {
                seq: last.seq,
                pack: last.loc.pack,
                off: last.loc.off + last.loc.len as u64,
            })?;
            // Fold accounting deltas into the persisted counters.
            let mut new_cs = Vec::new();
            for (codec, (b, l, s, r)) in &v.codec_delta {
                let mut c = cs.get(codec).copied().unwrap_or_default();
                c.blocks = (c.blocks as i64 + b).max(0) as u64;
                c.logical = (c.logical as i64 + l).max(0) as u64;
                c.payload = (c.payload as i64 + s).max(0) as u64;
                c.records = (c.records as i64 + r).max(0) as u64;
                new_cs.push((*codec, c));
            }
            let mut new_ps = Vec::new();
            for (pack, (bytes, n)) in &v.pack_delta {
                let mut p = ps.get(pack).copied().unwrap_or_default();
                p.live_bytes = (p.live_bytes as i64 + bytes).max(0) as u64;
                p.live_blocks = (p.live_blocks as i64 + n).max(0) as u64;
                new_ps.push((*pack, p));
            }
            let pending = std::mem::take(&mut v.pending);
            drop(v);
            for (k, val) in pending {
                match val {
                    Some(val) => t.insert(k.as_slice(), val.as_slice())?,
                    None => t.remove(k.as_slice())?,
                };
            }
            for (codec, c) in &new_cs {
                let mut k = vec![b'S'];
                k.extend_from_slice(&codec.to_be_bytes());
                t.insert(k.as_slice(), enc(c)?.as_slice())?;
            }
            for (pack, p) in &new_ps {
                let mut k = vec![b'P'];
                k.extend_from_slice(&pack.to_be_bytes());
                t.insert(k.as_slice(), enc(p)?.as_slice())?;
            }
            t.insert(key_meta("applied").as_slice(), applied.as_slice())?;
            Ok((new_cs, new_ps))
        })?;
        cs.extend(new_cs);
        ps.extend(new_ps);
        Ok(())
    }

    fn apply_op(
        &self,
        v: &mut View<'_>,
        op: &Op,
        new_ref: Option<BlockRef>,
        hash: Option<[u8; 16]>,
    ) -> Result<()> {
        match op {
            Op::PutInode(inode) => {
                v.put(key_ino(b'I', inode.ino), enc(inode)?);
                // The post-crash size check stays due while blocks lie past the logged size.
                // The write path logs an inode after its blocks, but a checkpoint restates
                // inodes and blocks as they stood (replayed, it would otherwise clear the
                // mark of a file whose extension was still being committed), and so does a
                // namespace change that logs the stored inode while data cannot be stored.
                if !past_eof(v, inode)? {
                    v.del(key_ino(b'U', inode.ino));
                }
                v.raise_meta("ino", inode.ino)?;
            }
            Op::DelInode { ino } => {
                for (k, old) in v.scan(&key_ino(b'B', *ino))? {
                    v.unmap_block(*ino, k, &old)?;
                }
                for (k, _) in v.scan(&key_ino(b'X', *ino))? {
                    v.del(k);
                }
                for tag in [b'I', b'O', b'U', b'N'] {
                    v.del(key_ino(tag, *ino));
                }
            }
            Op::PutDirent { parent, name, ent } => {
                let dk = key_ino_name(b'D', *parent, name);
                if let Some(old) = v.get(&dk)? {
                    let old: Dirent = dec(&old)?;
                    v.del(key_ino_u64(b'C', *parent, old.cookie));
                }
                v.put(dk, enc(ent)?);
                v.put(key_ino_u64(b'C', *parent, ent.cookie), name.clone());
                v.raise_meta("cookie", ent.cookie)?;
            }
            Op::DelDirent { parent, name } => {
                let dk = key_ino_name(b'D', *parent, name);
                if let Some(old) = v.get(&dk)? {
                    let old: Dirent = dec(&old)?;
                    v.del(key_ino_u64(b'C', *parent, old.cookie));
                }
                v.del(dk);
            }
            Op::PutBlock { ino, idx } | Op::PutBlockShared { ino, idx } => {
                let b = new_ref.ok_or_else(|| Error::Corrupt("PutBlock without payload".into()))?;
                let offer = if matches!(op, Op::PutBlockShared { .. }) {
                    hash
                } else {
                    None
                };
                self.map_block(v, *ino, *idx, b, offer)?;
                let u = key_ino(b'U', *ino);
                if v.get(&u)?.is_none() {
                    v.put(u, Vec::new());
                }
            }
            Op::RefBlock { ino, idx, hash } => {
                let l = v
                    .get(&key_hash(hash))?
                    .ok_or_else(|| Error::Corrupt("RefBlock names no shared record".into()))?;
                let loc: Loc = dec(&l)?;
                let sh: Shared = dec(&v
                    .get(&key_loc(b'R', &loc))?
                    .ok_or_else(|| Error::Corrupt("shared record without refcount".into()))?)?;
                self.map_block(v, *ino, *idx, sh.bref, None)?;
                let u = key_ino(b'U', *ino);
                if v.get(&u)?.is_none() {
                    v.put(u, Vec::new());
                }
            }
            Op::SnapShared { hash, bref } => {
                // References follow as SnapBlocks and count themselves in; the record is
                // live in its pack once.
                if v.get(&key_loc(b'R', &bref.loc))?.is_none() {
                    v.pack_delta.entry(bref.loc.pack).or_default().0 += bref.loc.len as i64;
                }
                v.put(key_hash(hash), enc(&bref.loc)?);
                v.put(
                    key_loc(b'R', &bref.loc),
                    enc(&Shared {
                        hash: *hash,
                        refs: 0,
                        bref: *bref,
                    })?,
                );
            }
            Op::SnapBlock { ino, idx, bref } => self.map_block(v, *ino, *idx, *bref, None)?,
            Op::MoveBlock { ino, idx, from } => {
                let b =
                    new_ref.ok_or_else(|| Error::Corrupt("MoveBlock without payload".into()))?;
                let k = key_block(*ino, *idx);
                if let Some(old) = v.get(&k)? {
                    let old: BlockRef = dec(&old)?;
                    // Compare-and-swap: a block rewritten since the copy was made keeps the
                    // newer data. The new record may hold a different encoding (recompression).
                    if old.loc == *from {
                        // A shared record stays shared at its new place.
                        let offer = match v.get(&key_loc(b'R', from))? {
                            Some(r) => Some(dec::<Shared>(&r)?.hash),
                            None => None,
                        };
                        self.map_block(v, *ino, *idx, b, offer)?;
                    }
                }
            }
            Op::MoveObject { ino, idx, from } => {
                let b =
                    new_ref.ok_or_else(|| Error::Corrupt("MoveObject without payload".into()))?;
                if let Some(old) = v.get(&key_block(*ino, *idx))? {
                    let old: BlockRef = dec(&old)?;
                    if old.loc == *from && old.object {
                        // A shared object stays shared at its new place (objects written
                        // before object deduplication existed were never shared: no change).
                        let offer = match v.get(&key_loc(b'R', from))? {
                            Some(r) => Some(dec::<Shared>(&r)?.hash),
                            None => None,
                        };
                        self.map_block(v, *ino, *idx, BlockRef { loc: b.loc, ..old }, offer)?;
                    }
                }
            }
            Op::PutObject { ino, froms } | Op::PutObjectShared { ino, froms } => {
                let b =
                    new_ref.ok_or_else(|| Error::Corrupt("PutObject without payload".into()))?;
                let offer = if matches!(op, Op::PutObjectShared { .. }) {
                    hash
                } else {
                    None
                };
                self.put_object(v, *ino, froms, b, offer)?;
            }
            Op::PutLossyObject {
                ino,
                froms,
                old_size,
                size,
            } => {
                let b = new_ref
                    .ok_or_else(|| Error::Corrupt("PutLossyObject without payload".into()))?;
                self.put_lossy_object(v, *ino, froms, *old_size, *size, b)?;
            }
            Op::RefObject { ino, hash, froms } => {
                if !froms_match(v, *ino, froms)? {
                    return Ok(());
                }
                let l = v
                    .get(&key_hash(hash))?
                    .ok_or_else(|| Error::Corrupt("RefObject names no shared object".into()))?;
                let loc: Loc = dec(&l)?;
                let slices = object_slices(v, &loc, froms.len())?.ok_or_else(|| {
                    Error::Corrupt("RefObject names an incomplete shared object".into())
                })?;
                for (idx, b) in slices.into_iter().enumerate() {
                    self.map_block(v, *ino, idx as u64, b, None)?;
                }
            }
            Op::DelBlocks { ino, from, to } => {
                let end = if *to == u64::MAX {
                    key_ino(b'B', ino.saturating_add(1))
                } else {
                    key_block(*ino, *to)
                };
                for (k, old) in v.scan_range(key_block(*ino, *from), end)? {
                    v.unmap_block(*ino, k, &old)?;
                }
            }
            Op::SetXattr { ino, name, value } => {
                v.put(key_ino_name(b'X', *ino, name), value.clone())
            }
            Op::DelXattr { ino, name } => v.del(key_ino_name(b'X', *ino, name)),
            Op::Orphan { ino, on } => {
                if *on {
                    v.put(key_ino(b'O', *ino), Vec::new());
                } else {
                    v.del(key_ino(b'O', *ino));
                }
            }
            Op::CheckpointBegin | Op::CheckpointEnd { .. } => {}
        }
        Ok(())
    }

    /// Map blocks `0..froms.len()` of `ino` to slices of the object record `b`, if they all
    /// still have the locations in `froms`; `offer` registers the object as shared under
    /// its content hash.
    fn put_object(
        &self,
        v: &mut View<'_>,
        ino: Ino,
        froms: &[Option<Loc>],
        b: BlockRef,
        offer: Option<[u8; 16]>,
    ) -> Result<()> {
        let ino = &ino;
        let n = froms.len() as u64;
        let same = froms_match(v, *ino, froms)?;
        // Replayed after it was applied, the blocks already name this record.
        let already = v
            .get(&key_block(*ino, 0))?
            .map(|c| dec::<BlockRef>(&c))
            .transpose()?
            .is_some_and(|c| c.loc == b.loc);
        if same && !already && n > 0 {
            let total = b.raw_len as u64;
            let bs = crate::engine::layout::BLOCK_U64;
            let lens: Vec<u64> = (0..n)
                .map(|i| total.saturating_sub(i * bs).min(bs))
                .collect();
            // The payload is shared out by raw length; block 0 takes the remainder.
            let mut shares: Vec<u32> = lens
                .iter()
                .map(|l| (b.stored as u64 * l).checked_div(total).unwrap_or(0) as u32)
                .collect();
            let rest = b.stored.saturating_sub(shares.iter().sum());
            if let Some(s0) = shares.first_mut() {
                *s0 += rest;
            }
            for idx in 0..n {
                let (len, share) = (lens[idx as usize] as u32, shares[idx as usize]);
                self.map_block(
                    v,
                    *ino,
                    idx,
                    BlockRef {
                        raw_len: len,
                        stored: share,
                        object: true,
                        ..b
                    },
                    offer,
                )?;
            }
        }
        Ok(())
    }

    /// `Op::PutLossyObject`: replace the content of `ino` (still `old_size` bytes in the
    /// blocks `froms`) by the lossy object `b` of `size` bytes.
    fn put_lossy_object(
        &self,
        v: &mut View<'_>,
        ino: Ino,
        froms: &[Option<Loc>],
        old_size: u64,
        size: u64,
        b: BlockRef,
    ) -> Result<()> {
        let Some(raw) = v.get(&key_ino(b'I', ino))? else {
            return Ok(());
        };
        let mut inode: Inode = dec(&raw)?;
        // Replayed after it was applied: the inode is already marked and sized.
        if inode.flags & FLAG_LOSSY != 0
            || inode.size != old_size
            || b.raw_len as u64 != size
            || !froms_match(v, ino, froms)?
        {
            return Ok(());
        }
        // Blocks beyond `froms` (none when the sizes agree) go too: the file is replaced.
        for (k, old) in v.scan(&key_ino(b'B', ino))? {
            v.unmap_block(ino, k, &old)?;
        }
        let n = size.div_ceil(crate::engine::layout::BLOCK_U64) as usize;
        self.put_object(v, ino, &vec![None; n], b, None)?;
        inode.size = size;
        inode.flags |= FLAG_LOSSY;
        v.put(key_ino(b'I', ino), enc(&inode)?);
        Ok(())
    }

    fn map_block(
        &self,
        v: &mut View<'_>,
        ino: Ino,
        idx: u64,
        b: BlockRef,
        offer: Option<[u8; 16]>,
    ) -> Result<()> {
        let k = key_block(ino, idx);
        match v.get(&k)? {
            Some(old) => {
                let old: BlockRef = dec(&old)?;
                if old == b {
                    // Replay of an op already applied: nothing changes.
                    return Ok(());
                }
                v.account(&old, -1)?;
                v.deref(&old.loc, ino, idx)?;
            }
            None => v.bump_count(ino, 1)?,
        }
        // After addref: a record shared by it is counted in its pack by addref, once.
        v.addref(&b, ino, idx, offer)?;
        v.account(&b, 1)?;
        v.put(k, enc(&b)?);
        Ok(())
    }

    /// The shared record holding data with this hash, if any.
    pub fn shared(&self, hash: &[u8; 16]) -> Result<Option<Shared>> {
        self.with_table(|t| {
            let Some(l) = t.get_vec(&key_hash(hash))? else {
                return Ok(None);
            };
            let loc: Loc = dec(&l)?;
            match t.get_vec(&key_loc(b'R', &loc))? {
                Some(v) => Ok(Some(dec(&v)?)),
                None => Ok(None),
            }
        })
    }

    /// Whether a shared whole-file object of `n` slices holds content `hash` (every slice
    /// still referenced, so a new reference can copy them).
    pub fn has_shared_object(&self, hash: &[u8; 16], n: usize) -> Result<bool> {
        self.with_table(|t| {
            let Some(l) = t.get_vec(&key_hash(hash))? else {
                return Ok(false);
            };
            let loc: Loc = dec(&l)?;
            let v = View {
                tree: t,
                pending: BTreeMap::new(),
                codec_delta: BTreeMap::new(),
                pack_delta: BTreeMap::new(),
            };
            Ok(n > 0 && object_slices(&v, &loc, n)?.is_some())
        })
    }

    /// References (ino, idx) of the shared record at `loc`; empty when it is not shared.
    pub fn shared_refs(&self, loc: &Loc) -> Result<Vec<(Ino, u64)>> {
        let mut out = Vec::new();
        for kv in self.scan_prefix(&key_loc(b'Q', loc)) {
            let (k, _) = kv?;
            out.push((u64_of(&k[13..21]), u64_of(&k[21..29])));
        }
        Ok(out)
    }

    /// Every shared record (checkpoints).
    pub fn all_shared(&self) -> impl Iterator<Item = Result<Shared>> + '_ {
        self.scan_prefix(b"R").map(|kv| dec(&kv?.1))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn inode(ino: Ino) -> Inode {
        Inode {
            ino,
            kind: Kind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            size: 0,
            rdev: 0,
            atime: Ts::default(),
            mtime: Ts::default(),
            ctime: Ts::default(),
            crtime: Ts::default(),
            parent: ROOT_INO,
            target: Vec::new(),
            flags: 0,
        }
    }

    fn create(ix: &Index, seq: u64, ino: Ino, name: &[u8]) {
        let ops = [
            Op::PutInode(inode(ino)),
            Op::PutDirent {
                parent: ROOT_INO,
                name: name.to_vec(),
                ent: Dirent {
                    ino,
                    kind: Kind::File,
                    cookie: ino + 2,
                },
            },
        ];
        let loc = Loc {
            pack: 1,
            off: seq * 100,
            len: 100,
        };
        ix.apply(seq, loc, &ops, None).unwrap();
    }

    /// The post-crash size check (`U`) stays due while a block lies past the logged size,
    /// whatever logs the inode: a replayed checkpoint restates an inode whose extension was
    /// still being committed (the crash simulation found a file left with a block past its
    /// end that no check trimmed). It is cleared once the size covers every block, and a
    /// last block holding bytes past the size also keeps it.
    #[test]
    fn size_check_stays_due_while_blocks_lie_past_the_logged_size() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Index::open(&dir.path().join("index.redb"), 1 << 20, None).unwrap();
        let bs = crate::engine::layout::BLOCK_U64;
        let mut seq = 0;
        let mut put = |ops: &[Op], raw_len: Option<u32>| {
            seq += 1;
            let h = raw_len.map(|raw_len| BlockHeader {
                codec: 0,
                params: 0,
                raw_len,
                raw_hash: [0; 16],
            });
            let loc = Loc {
                pack: 1,
                off: seq * 1000,
                len: 1000,
            };
            ix.apply(seq, loc, ops, h.as_ref().map(|h| (h, 900)))
                .unwrap();
        };
        let sized = |ino: Ino, size: u64| {
            let mut i = inode(ino);
            i.size = size;
            Op::PutInode(i)
        };
        put(&[sized(20, 100)], None);
        assert!(ix.marked(b'U').unwrap().is_empty());
        // An extension: block 2 committed before the inode that covers it.
        put(&[Op::PutBlock { ino: 20, idx: 2 }], Some(bs as u32));
        assert_eq!(ix.marked(b'U').unwrap(), vec![20]);
        // A checkpoint restating the old size (replayed after a crash) keeps the mark.
        put(&[sized(20, 100)], None);
        assert_eq!(ix.marked(b'U').unwrap(), vec![20]);
        // The inode that covers the block clears it.
        put(&[sized(20, 3 * bs)], None);
        assert!(ix.marked(b'U').unwrap().is_empty());
        // A last block holding bytes past the size keeps it too.
        put(&[sized(22, 1000)], None);
        put(&[Op::PutBlock { ino: 22, idx: 0 }], Some(5000));
        put(&[sized(22, 1000)], None);
        assert_eq!(ix.marked(b'U').unwrap(), vec![22]);
        put(&[sized(22, 5000)], None);
        assert!(ix.marked(b'U').unwrap().is_empty());
        // A trim and the inode in one record (what the size check logs) clears it.
        put(&[Op::PutBlock { ino: 22, idx: 1 }], Some(700));
        put(
            &[
                Op::DelBlocks {
                    ino: 22,
                    from: 1,
                    to: u64::MAX,
                },
                sized(22, 5000),
            ],
            None,
        );
        assert!(ix.marked(b'U').unwrap().is_empty());
        // Directories never carry blocks.
        let mut d = inode(21);
        d.kind = Kind::Dir;
        put(&[Op::PutInode(d)], None);
        assert!(ix.marked(b'U').unwrap().is_empty());
    }

    /// Commits are visible to the next read at once (also from other threads) and survive a
    /// reopen once flushed; a failed batch leaves nothing behind.
    #[test]
    fn commits_are_visible_atomic_and_durable_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        {
            let ix = std::sync::Arc::new(Index::open(&path, 1 << 20, None).unwrap());
            for i in 0..50u64 {
                create(&ix, i + 1, 10 + i, format!("f{i}").as_bytes());
                let r = ix.clone();
                let seen = std::thread::spawn(move || r.inode(10 + i).unwrap().is_some())
                    .join()
                    .unwrap();
                assert!(seen, "inode {} not visible after its commit", 10 + i);
            }
            assert_eq!(ix.applied().unwrap().seq, 50);
            assert_eq!(ix.readdir(ROOT_INO, 0, 1000).unwrap().len(), 50);
            assert_eq!(ix.readdir(ROOT_INO, 0, 7).unwrap().len(), 7);
            assert!(!ix.dir_is_empty(ROOT_INO).unwrap());
            assert_eq!(ix.all_inodes().count(), 50);
            // A batch whose op fails (RefBlock naming no shared record) changes nothing.
            let bad = [
                Op::PutInode(inode(999)),
                Op::RefBlock {
                    ino: 999,
                    idx: 0,
                    hash: [7; 16],
                },
            ];
            let loc = Loc {
                pack: 1,
                off: 9000,
                len: 10,
            };
            assert!(ix.apply(51, loc, &bad, None).is_err());
            assert!(ix.inode(999).unwrap().is_none());
            assert_eq!(ix.applied().unwrap().seq, 50);
            ix.note_synced().unwrap();
            ix.flush().unwrap();
            ix.recount().unwrap();
        }
        let ix = Index::open(&path, 1 << 20, None).unwrap();
        assert_eq!(ix.applied().unwrap().seq, 50);
        assert_eq!(ix.synced().unwrap().map(|a| a.seq), Some(50));
        assert_eq!(ix.all_dirents().count(), 50);
        assert!(ix.size_on_disk() > 0);
        ix.clear().unwrap();
        assert_eq!(ix.all_inodes().count(), 0);
        assert_eq!(ix.applied().unwrap(), Applied::default());
    }

    /// With batching, applied records wait in one open transaction: visible at once to
    /// every reader (other threads too) and to scans, committed by a flush; without the
    /// flush, closing the index drops them (the journal replays them at the next open).
    #[test]
    fn batched_updates_are_visible_at_once_and_durable_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        {
            let ix = Index::open(&path, 1 << 20, None).unwrap();
            ix.set_batching(true).unwrap();
            for i in 0..10u64 {
                create(&ix, i + 1, 10 + i, format!("f{i}").as_bytes());
                assert!(ix.inode(10 + i).unwrap().is_some(), "visible at once");
            }
            std::thread::scope(|s| {
                s.spawn(|| assert!(ix.dirent(ROOT_INO, b"f9").unwrap().is_some()));
            });
            assert_eq!(ix.all_dirents().count(), 10);
            assert_eq!(ix.readdir(ROOT_INO, 0, 4).unwrap().len(), 4);
            assert_eq!(ix.applied().unwrap().seq, 10);
            ix.flush().unwrap();
            for i in 10..20u64 {
                create(&ix, i + 1, 10 + i, format!("f{i}").as_bytes());
            }
            assert_eq!(ix.applied().unwrap().seq, 20);
        }
        let ix = Index::open(&path, 1 << 20, None).unwrap();
        assert_eq!(ix.applied().unwrap().seq, 10, "flushed batches only");
        assert_eq!(ix.all_inodes().count(), 10);
        assert!(ix.inode(25).unwrap().is_none());
        // Turning batching off commits what waits.
        ix.set_batching(true).unwrap();
        create(&ix, 11, 40, b"g");
        ix.set_batching(false).unwrap();
        assert!(ix.inode(40).unwrap().is_some());
    }

    /// Churn bloats the file; compaction gives the space back, and readers keep working.
    #[test]
    fn bloated_file_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let ix = Index::open(&path, 1 << 20, None).unwrap();
        let mut seq = 0;
        // A live read transaction pins the pages of its snapshot: what the commits meanwhile
        // free cannot be reused (why scans read in chunks).
        let pin = ix.db.read().begin_read().unwrap();
        for round in 0..4u64 {
            for i in 0..3000u64 {
                seq += 1;
                create(&ix, seq, 10 + i, format!("file-{round}-{i}").as_bytes());
            }
            for i in 0..3000u64 {
                seq += 1;
                let loc = Loc {
                    pack: 1,
                    off: seq * 100,
                    len: 100,
                };
                let ops = [
                    Op::DelDirent {
                        parent: ROOT_INO,
                        name: format!("file-{round}-{i}").into_bytes(),
                    },
                    Op::DelInode { ino: 10 + i },
                ];
                ix.apply(seq, loc, &ops, None).unwrap();
            }
            ix.flush().unwrap();
        }
        assert!(ix.compact_if_bloated(150).is_ok_and(|done| !done), "pinned");
        drop(pin);
        create(&ix, seq + 1, 5, b"kept");
        ix.flush().unwrap();
        let before = ix.size_on_disk();
        assert!(before >= COMPACT_MIN, "{before}");
        assert!(ix.compact_if_bloated(150).unwrap());
        let after = ix.size_on_disk();
        assert!(after < before / 2, "{before} -> {after}");
        assert!(ix.inode(5).unwrap().is_some());
        assert_eq!(ix.all_inodes().count(), 1);
        // Not again until it grows.
        assert!(!ix.compact_if_bloated(150).unwrap());
        assert!(!ix.compact_if_bloated(100).unwrap());
        // Scans longer than a chunk see every entry once, in order.
        for i in 0..(SCAN_CHUNK as u64 * 2 + 7) {
            create(&ix, seq + 2 + i, 100_000 + i, format!("s{i:05}").as_bytes());
        }
        let inos: Vec<Ino> = ix.all_inodes().map(|i| i.unwrap().ino).collect();
        assert_eq!(inos.len(), SCAN_CHUNK * 2 + 8);
        assert!(inos.windows(2).all(|w| w[0] < w[1]));
    }

    /// A file that is not a redb database is reported as damage (set aside and rebuilt by the
    /// journal), never as an I/O error and never as a panic.
    #[test]
    fn garbage_file_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        std::fs::write(&path, vec![0x5au8; 64 << 10]).unwrap();
        match Index::open(&path, 1 << 20, None) {
            Err(Error::Index(e)) => assert!(crate::error::index_corrupt(&e), "{e:?}"),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("garbage opened as an index"),
        }
    }
}
