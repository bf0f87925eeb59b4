//! The read path: block lookups, decoding with a single-flight guard and a bound on
//! concurrent whole-object decodes, the decoded-block cache, and sequential read-ahead.
//!
//! Invariants:
//! - A record is decoded by one thread at a time; others wait for its result in the cache.
//! - At most `workers` whole-file objects are being decoded at once (each is large).
//! - A block that cannot be read or whose decoded bytes fail their checksum is `EIO`, logged
//!   with its path and counted; it never reads as other bytes.

use super::cache::BlockCache;
use super::layout::{blocks_for, spans, BlockSpan, BLOCK, BLOCK_U64};
use super::Engine;
use crate::error::{Error, Result};
use crate::meta::{BlockRef, Ino, Kind};

use crate::store::Loc;
use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// The read path's own state.
pub(super) struct ReadPath {
    /// Decoded blocks and objects by record location.
    pub(super) cache: BlockCache,
    /// Read-ahead: blocks to decode into the cache before they are asked for.
    pub(super) prefetch: Mutex<Option<Sender<(Ino, u64)>>>,
    /// Per inode: (offset the next sequential read starts at, first block not yet queued).
    streams: Mutex<HashMap<Ino, (u64, u64)>>,
    /// Whole-file object decodes running now; at most one per worker (each is large).
    object_decodes: Mutex<usize>,
    object_cv: Condvar,
    /// Records being decoded right now (single flight), and the signal that one finished.
    decoding: Mutex<HashSet<Loc>>,
    decoded_cv: Condvar,
    /// Blocks that failed their checksum or could not be read.
    pub(super) corrupt_reads: AtomicU64,
}

impl ReadPath {
    pub(super) fn new(cache_bytes: usize) -> ReadPath {
        ReadPath {
            cache: BlockCache::new(cache_bytes),
            prefetch: Mutex::new(None),
            streams: Mutex::new(HashMap::new()),
            object_decodes: Mutex::new(0),
            object_cv: Condvar::new(),
            decoding: Mutex::new(HashSet::new()),
            decoded_cv: Condvar::new(),
            corrupt_reads: AtomicU64::new(0),
        }
    }
}

/// Blocks decoded ahead of a sequential reader, so decoding overlaps the kernel's requests
/// and uses every core.
const READ_AHEAD_BLOCKS: u64 = 16;

/// One of the `workers` slots for decoding a whole-file object (different objects decode in
/// parallel on every core; memory stays bounded).
struct ObjectSlot<'a> {
    e: &'a Engine,
}

impl<'a> ObjectSlot<'a> {
    fn take(e: &'a Engine) -> ObjectSlot<'a> {
        let mut n = e.reads.object_decodes.lock();
        while *n >= e.opts.workers.max(1) {
            e.reads.object_cv.wait(&mut n);
        }
        *n += 1;
        ObjectSlot { e }
    }
}

impl Drop for ObjectSlot<'_> {
    fn drop(&mut self) {
        let mut n = self.e.reads.object_decodes.lock();
        *n = n.saturating_sub(1);
        self.e.reads.object_cv.notify_one();
    }
}

/// Clears a single-flight decode mark (also on error or unwind).
struct DecodeDone<'a> {
    e: &'a Engine,
    loc: crate::store::Loc,
}

impl Drop for DecodeDone<'_> {
    fn drop(&mut self) {
        self.e.reads.decoding.lock().remove(&self.loc);
        self.e.reads.decoded_cv.notify_all();
    }
}

fn copy_span(src: &[u8], s: &BlockSpan, out: &mut [u8]) {
    let avail = src.len().saturating_sub(s.skip).min(s.len);
    if avail > 0 {
        out[s.buf_off..s.buf_off + avail].copy_from_slice(&src[s.skip..s.skip + avail]);
    }
}

impl Engine {
    /// Decoded data of a mapped block (cached).
    pub(super) fn block_data(&self, ino: Ino, idx: u64, b: &BlockRef) -> Result<Arc<Vec<u8>>> {
        if b.object {
            // A slice of a whole-file object (decoded once, then served from the cache).
            let obj = self.decoded_record(ino, idx, b, true)?;
            let start = (idx * BLOCK_U64).min(obj.len() as u64) as usize;
            let end = (start + BLOCK).min(obj.len());
            return Ok(Arc::new(obj[start..end].to_vec()));
        }
        self.decoded_record(ino, idx, b, false)
    }

    /// The decoded content of a record (a block, or a whole-file object), cached by location.
    fn decoded_record(
        &self,
        ino: Ino,
        idx: u64,
        b: &BlockRef,
        object: bool,
    ) -> Result<Arc<Vec<u8>>> {
        // Single flight: a reader and the read-ahead asking for the same record decode it
        // once (objects are large: one object decode at a time on top).
        loop {
            if let Some(d) = self.reads.cache.get(&b.loc) {
                return Ok(d);
            }
            let mut busy = self.reads.decoding.lock();
            if !busy.contains(&b.loc) {
                busy.insert(b.loc);
                break;
            }
            self.reads
                .decoded_cv
                .wait_for(&mut busy, Duration::from_millis(100));
        }
        let _done = DecodeDone {
            e: self,
            loc: b.loc,
        };
        let _slot = if object {
            Some(ObjectSlot::take(self))
        } else {
            None
        };
        let res = self.j.read_block(b.loc).and_then(|(h, payload)| {
            let raw = self
                .codecs
                .decode(h.codec, &payload, h.params, h.raw_len as usize)?;
            if self.j.content_hash(&raw) != h.raw_hash {
                return Err(Error::Corrupt(
                    "block checksum mismatch after decoding".into(),
                ));
            }
            Ok(raw)
        });
        match res {
            Ok(raw) => {
                let raw = Arc::new(raw);
                self.reads.cache.insert(b.loc, raw.clone());
                Ok(raw)
            }
            Err(e) => {
                self.reads
                    .corrupt_reads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = self.log_name(ino);
                tracing::error!(ino, block = idx, pack = b.loc.pack, offset = b.loc.off, %path, "unreadable block: {e}");
                Err(match e {
                    Error::Io(io) => Error::Io(io),
                    other => Error::Corrupt(other.to_string()),
                })
            }
        }
    }

    /// Look a block up in the index and load it, safe against concurrent compaction.
    pub(super) fn mapped_block(&self, ino: Ino, idx: u64) -> Result<Option<Arc<Vec<u8>>>> {
        let _gc = self.gc.read();
        match self.j.index.block(ino, idx)? {
            Some(b) => Ok(Some(self.block_data(ino, idx, &b)?)),
            None => Ok(None),
        }
    }

    pub fn read(&self, ino: Ino, off: u64, size: u32) -> Result<Vec<u8>> {
        let st = self.files.lock().get(&ino).cloned();
        let mut need = Vec::new();
        let mut out;
        let locked = st.as_ref().map(|s| s.inner.lock()).filter(|g| !g.detached);
        match locked {
            Some(g) => {
                if g.attr.kind != Kind::File {
                    return Err(Error::IsDir);
                }
                let fsize = g.attr.size;
                if off >= fsize {
                    return Ok(Vec::new());
                }
                let len = (size as u64).min(fsize - off) as usize;
                out = vec![0u8; len];
                for s in spans(off, len) {
                    if let Some(d) = g.dirty.get(&s.idx) {
                        copy_span(d, &s, &mut out);
                    } else if let Some((_, d)) = g.inflight.get(&s.idx) {
                        copy_span(d, &s, &mut out);
                    } else {
                        need.push(s);
                    }
                }
            }
            None => {
                let inode = self.j.index.inode(ino)?.ok_or(Error::NotFound)?;
                if inode.kind != Kind::File {
                    return Err(Error::IsDir);
                }
                if off >= inode.size {
                    return Ok(Vec::new());
                }
                let len = (size as u64).min(inode.size - off) as usize;
                out = vec![0u8; len];
                need.extend(spans(off, len));
            }
        }
        self.read_ahead(ino, off, out.len());
        self.touch_io();
        for s in &need {
            if let Some(d) = self.mapped_block(ino, s.idx)? {
                copy_span(&d, s, &mut out);
            }
        }
        Ok(out)
    }

    fn read_ahead(&self, ino: Ino, off: u64, len: usize) {
        let end = off + len as u64;
        let next_blk = blocks_for(end);
        let (from, to) = {
            let mut streams = self.reads.streams.lock();
            if streams.len() > 1024 {
                streams.clear();
            }
            let e = streams.entry(ino).or_insert((u64::MAX, 0));
            let sequential = e.0 == off || off == 0;
            e.0 = end;
            if !sequential {
                e.1 = next_blk;
                return;
            }
            let from = e.1.max(next_blk);
            let to = next_blk + READ_AHEAD_BLOCKS;
            e.1 = e.1.max(to);
            (from, to)
        };
        if let Some(tx) = self.reads.prefetch.lock().as_ref() {
            for idx in from..to {
                if tx.try_send((ino, idx)).is_err() {
                    break;
                }
            }
        }
    }
}
