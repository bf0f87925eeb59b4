//! Background recompression: closed, idle files are re-encoded with the strongest choice
//! their policy allows and swapped in block by block.
//!
//! Each re-encoded block is verified (decoded and compared) and committed as a `MoveBlock`
//! record, a compare-and-swap on the block's old location: a block written meanwhile keeps
//! the new data, readers see either encoding (never a mix inside a block), and a crash leaves
//! either the old or the new encoding. The work yields to foreground I/O.

use super::choice::{accept, candidates, must_verify, Candidate, Fidelity, Stage, Tuning};
use super::layout::{blocks_for, BLOCK_U64};
use super::Engine;
use crate::classify::class_of_flags;
use crate::codec::{zstd_dict_level, EncodeParams, Granularity, CM_BLOCK, RAW, ZSTD, ZSTD_DICT};
use crate::error::{Error, Result};
use crate::meta::{Ino, Kind, Op};
use crate::policy::Effective;
use crate::store::BlockHeader;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What recompressing one file did.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct RecompressReport {
    pub blocks: u64,
    pub recoded: u64,
    pub stored_before: u64,
    pub stored_after: u64,
}

/// Longest a whole-file encoding may take before the file keeps its generic blocks: a base,
/// plus time in proportion to the file's size (the slowest recoders, such as a package of PNGs
/// inside xz, take about 5 s per MiB on this class of machine).
const WHOLE_FILE_TIMEOUT: Duration = Duration::from_secs(120);
const WHOLE_FILE_SECS_PER_MIB: u64 = 10;

fn whole_file_timeout(len: usize) -> Duration {
    WHOLE_FILE_TIMEOUT + Duration::from_secs(WHOLE_FILE_SECS_PER_MIB * (len as u64 >> 20))
}

/// Blocks re-encoded per journal group.
const GROUP: usize = 16;

/// Recompression's own state: which files wait, when foreground I/O last happened, and how
/// often a whole-file encoding fell back.
#[derive(Default)]
pub(super) struct RecompressState {
    /// Files modified since their last recompression, with when they were last touched.
    queue: parking_lot::Mutex<std::collections::BTreeMap<Ino, Instant>>,
    /// Milliseconds since the engine started of the last foreground read or write.
    last_io: AtomicU64,
    /// Whole-file encodings that failed, did not pay or timed out (the file kept its blocks).
    fallbacks: AtomicU64,
    /// Files taken off the queue and being recompressed now.
    running: AtomicU64,
    /// Files whose content was replaced by a lossy reconstruction since the mount.
    pub(super) lossy_files: AtomicU64,
    /// Files being recompressed now, in the background or on request.
    active: AtomicU64,
}

/// Counts a file as being recompressed while it lives.
struct Active<'a>(&'a AtomicU64);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RecompressState {
    /// Queue `ino` as touched at `at` (replacing an earlier time).
    fn queue(&self, ino: Ino, at: Instant) {
        self.queue.lock().insert(ino, at);
    }

    fn remove(&self, ino: Ino) {
        self.queue.lock().remove(&ino);
    }

    /// Up to `max` files untouched for `idle`.
    fn due(&self, idle: Duration, max: usize) -> Vec<Ino> {
        self.queue
            .lock()
            .iter()
            .filter(|(_, t)| t.elapsed() >= idle)
            .map(|(i, _)| *i)
            .take(max)
            .collect()
    }

    /// Files waiting for recompression, the one being recompressed included (so that an
    /// empty queue means the background work is done).
    pub(super) fn queued(&self) -> u64 {
        self.queue.lock().len() as u64 + self.running.load(Ordering::Relaxed)
    }

    /// Whether a file is being recompressed now. Background compaction waits for it: moving
    /// the blocks of a file being encoded makes its commit (conditional on their old
    /// locations) a no-op, and the encoding work is lost.
    pub(super) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    fn fell_back(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }
}

impl Engine {
    /// Remember that `ino` changed; it becomes a candidate once idle.
    pub(super) fn note_modified(&self, ino: Ino) {
        self.recomp.queue(ino, Instant::now());
    }

    /// Whether foreground I/O is going on (recompression then waits).
    fn busy(&self) -> bool {
        let last = self.recomp.last_io.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        self.budget.bytes() > 0 || now.saturating_sub(last) < 200
    }

    /// No foreground read or write for `d` and nothing buffered.
    pub(super) fn quiet_for(&self, d: Duration) -> bool {
        let last = self.recomp.last_io.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        self.budget.bytes() == 0 && now.saturating_sub(last) >= d.as_millis() as u64
    }

    pub(super) fn touch_io(&self) {
        self.recomp
            .last_io
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Background loop body: recompress files idle for `idle_secs`.
    pub(super) fn recompress_idle(&self) {
        let idle = Duration::from_secs(self.opts.idle_secs);
        let due = self.recomp.due(idle, 64);
        for ino in due {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let live = self.files.lock().get(&ino).cloned();
            if live.is_some_and(|st| !st.quiet_for(idle)) {
                // Being written: try again after it settles (readers do not hold it back).
                self.recomp.queue(ino, Instant::now());
                continue;
            }
            self.recomp.running.fetch_add(1, Ordering::Relaxed);
            self.recomp.remove(ino);
            let res = self.recompress_file(ino, true);
            self.recomp.running.fetch_sub(1, Ordering::Relaxed);
            match res {
                Ok(r) if r.recoded > 0 => {
                    tracing::debug!(
                        ino,
                        recoded = r.recoded,
                        before = r.stored_before,
                        after = r.stored_after,
                        "recompressed"
                    )
                }
                Ok(_) | Err(Error::NotFound) => {}
                Err(e) => tracing::warn!(ino, "background recompression failed: {e}"),
            }
        }
    }

    /// Queue (or, with `now`, run) recompression of a file or of every file below a directory.
    pub(super) fn recompress_tree(&self, ino: Ino, now: bool) -> Result<()> {
        let mut stack = vec![ino];
        while let Some(cur) = stack.pop() {
            let i = self.getattr(cur)?.inode;
            match i.kind {
                Kind::File if now => {
                    self.recompress_file(cur, false)?;
                }
                Kind::File => {
                    // Due immediately.
                    let t = Instant::now()
                        .checked_sub(Duration::from_secs(self.opts.idle_secs))
                        .unwrap_or_else(Instant::now);
                    self.recomp.queue(cur, t);
                }
                Kind::Dir => {
                    let mut off = 2;
                    loop {
                        let ents = self.j.index.readdir(cur, off, 1024)?;
                        let Some(last) = ents.last() else { break };
                        off = last.0;
                        stack.extend(
                            ents.iter()
                                .filter(|(_, _, d)| matches!(d.kind, Kind::File | Kind::Dir))
                                .map(|(_, _, d)| d.ino),
                        );
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Re-encode a file's blocks with its policy's recompression level. `polite` waits while
    /// foreground I/O is going on.
    pub fn recompress_file(&self, ino: Ino, polite: bool) -> Result<RecompressReport> {
        let inode = self.j.index.inode(ino)?.ok_or(Error::NotFound)?;
        self.recomp.active.fetch_add(1, Ordering::Relaxed);
        let _active = Active(&self.recomp.active);
        let mut rep = RecompressReport::default();
        if inode.kind != Kind::File {
            return Ok(rep);
        }
        let eff = self.effective_policy(inode.parent).unwrap_or_default();
        let cands = self.recompress_candidates(&inode, &eff);
        // Format-aware whole-file codecs first (balanced and stronger): the smallest wins.
        let whole: Vec<&Candidate> = cands.iter().filter(|c| c.whole_file).collect();
        // A compaction that moves the file's blocks while it is being encoded (seconds for
        // the slow codecs) makes the commit a no-op (it is conditional on the old locations):
        // read and encode again, a few times.
        for attempt in 0..3 {
            if whole.is_empty() {
                break;
            }
            match self.try_whole_file(ino, &inode, &whole, eff.dedup) {
                Ok(Some(r)) if self.is_object(ino)? => return Ok(r),
                Ok(Some(_)) => {
                    tracing::debug!(
                        ino,
                        attempt,
                        "blocks moved during whole-file encoding, again"
                    );
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(ino, "whole-file recompression failed: {e}");
                    break;
                }
            }
        }
        let block_cands: Vec<Candidate> = cands.into_iter().filter(|c| !c.whole_file).collect();
        // The strongest plain zstd and dictionary on offer decide which stored blocks are
        // already as good as recompression would make them.
        let Some(target) = block_cands
            .iter()
            .find(|c| c.codec == ZSTD)
            .map(|c| c.level)
        else {
            return Ok(rep);
        };
        let dict = block_cands
            .iter()
            .find(|c| c.codec == ZSTD_DICT)
            .map(|c| c.model);
        // Context mixing per block (archive, files too large for one object) beats any zstd
        // level: only blocks it already holds are final.
        let cm_block = block_cands.iter().any(|c| c.codec == CM_BLOCK);
        let mut from = 0;
        loop {
            let blocks = self.j.index.blocks_from(ino, from, GROUP)?;
            let Some(&(last, _)) = blocks.last() else {
                break;
            };
            from = last + 1;
            let mut encoded = Vec::new();
            let mut candidates = Vec::new();
            for (idx, b) in blocks {
                rep.blocks += 1;
                rep.stored_before += b.stored as u64;
                // Shared (deduplicated) blocks keep their one copy; object slices belong to a
                // whole-file encoding.
                if b.object
                    || !self.j.index.shared_refs(&b.loc)?.is_empty()
                    // Raw blocks are incompressible, except small text-like ones a
                    // dictionary may still shrink.
                    || (b.codec == RAW && dict.is_none() && !cm_block)
                    || b.codec == CM_BLOCK
                    || (b.codec == ZSTD_DICT
                        && (target as u32) <= zstd_dict_level(b.params)
                        && !cm_block)
                    || (b.codec == ZSTD
                        && b.stored > 0
                        && (target as u32) <= b.params
                        && dict.is_none()
                        && !cm_block)
                {
                    rep.stored_after += b.stored as u64;
                    continue;
                }
                let data = {
                    let _gc = self.gc.read();
                    match self.j.index.block(ino, idx)? {
                        Some(cur) if cur.loc == b.loc => self.block_data(ino, idx, &b)?,
                        _ => continue,
                    }
                };
                candidates.push((idx, b, data));
            }
            // Every block candidate; the smallest result wins.
            let encode_one = |data: &[u8]| -> Option<(Candidate, u32, Vec<u8>)> {
                let mut best: Option<(Candidate, u32, Vec<u8>)> = None;
                for c in &block_cands {
                    let Ok(codec) = self.codecs.get(c.codec) else {
                        continue;
                    };
                    let mut out = Vec::new();
                    let p = EncodeParams {
                        level: c.level,
                        model: c.model,
                    };
                    if let Ok(params) = codec.encode(data, &p, &mut out) {
                        if best.as_ref().is_none_or(|b| out.len() < b.2.len()) {
                            best = Some((*c, params, out));
                        }
                    }
                }
                best
            };
            // Encode the group on every core when asked explicitly; one at a time in the
            // background (it must not compete with foreground work). A single block (every
            // small file) is encoded here: this thread keeps its zstd contexts, and a
            // dictionary context at a high level costs more to set up than the encode.
            let threads = if polite { 1 } else { self.opts.workers.max(1) };
            let results: Vec<Option<(Candidate, u32, Vec<u8>)>> =
                if threads == 1 || candidates.len() < 2 {
                    candidates.iter().map(|(_, _, d)| encode_one(d)).collect()
                } else {
                    let per = candidates.len().div_ceil(threads).max(1);
                    std::thread::scope(|sc| {
                        let handles: Vec<_> = candidates
                            .chunks(per)
                            .map(|chunk| {
                                let encode_one = &encode_one;
                                sc.spawn(move || {
                                    chunk
                                        .iter()
                                        .map(|(_, _, d)| encode_one(d))
                                        .collect::<Vec<_>>()
                                })
                            })
                            .collect();
                        handles
                            .into_iter()
                            .flat_map(|h| h.join().unwrap_or_default())
                            .collect()
                    })
                };
            for ((idx, b, data), res) in candidates.into_iter().zip(results) {
                let Some((cand, params, out)) = res else {
                    rep.stored_after += b.stored as u64;
                    continue;
                };
                let codec = cand.codec;
                // Keep the new encoding only if it is smaller and passes `choice`'s rule.
                let verified = !must_verify(&cand, Stage::Recompress)
                    || self
                        .codecs
                        .decode(codec, &out, params, data.len())
                        .is_ok_and(|d| accept(cand.fidelity, &data, &d));
                if !verified || out.len() >= b.stored as usize {
                    rep.stored_after += b.stored as u64;
                    continue;
                }
                rep.stored_after += out.len() as u64;
                let h = BlockHeader {
                    codec,
                    params,
                    raw_len: data.len() as u32,
                    raw_hash: self.j.content_hash(&data),
                };
                encoded.push((idx, b.loc, h, out));
            }
            if !encoded.is_empty() {
                let recs: Vec<super::journal::NewRecord<'_>> = encoded
                    .iter()
                    .map(|(idx, from, h, p)| {
                        (
                            vec![Op::MoveBlock {
                                ino,
                                idx: *idx,
                                from: *from,
                            }],
                            Some((h, p.as_slice())),
                        )
                    })
                    .collect();
                self.j.commit_many(&recs)?;
                rep.recoded += encoded.len() as u64;
            }
            while polite && self.busy() && !self.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(rep)
    }

    /// Recompression candidates for a file under its effective policy (`choice::candidates`).
    fn recompress_candidates(&self, inode: &crate::meta::Inode, eff: &Effective) -> Vec<Candidate> {
        let tuning = Tuning {
            write_level: self.opts.zstd_level,
        };
        let avail = |id| self.codecs.available(id);
        let mut v = candidates(
            class_of_flags(inode.flags),
            eff,
            inode.size,
            Stage::Recompress,
            &tuning,
            &avail,
        );
        // Content that already is a lossy reconstruction never loses quality again.
        if inode.flags & crate::meta::FLAG_LOSSY != 0 {
            v.retain(|c| c.fidelity == Fidelity::Lossless);
        }
        v
    }

    /// Whether the file's first mapped block is a slice of a whole-file object (what a
    /// whole-file commit that took effect leaves).
    fn is_object(&self, ino: Ino) -> Result<bool> {
        Ok(self
            .j
            .index
            .blocks_from(ino, 0, 1)?
            .first()
            .is_some_and(|(_, b)| b.object))
    }

    /// One whole-file encoding of `data` by `cand`, verified by decoding it; None when the
    /// codec refuses, does not pay, times out or fails verification (logged and counted).
    /// Returns the params, the payload and, for a lossy candidate, the decoded content (what
    /// the file will hold).
    fn encode_whole(
        &self,
        ino: Ino,
        cand: &Candidate,
        data: &std::sync::Arc<Vec<u8>>,
    ) -> Result<Option<WholeEncoding>> {
        let codec = self.codecs.get(cand.codec)?.clone();
        if let Granularity::WholeFile { max_len } = codec.granularity() {
            if data.len() > max_len {
                return Ok(None);
            }
        } else {
            return Ok(None);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        {
            let (codec, data) = (codec.clone(), data.clone());
            let params = EncodeParams {
                level: cand.level,
                model: cand.model,
            };
            // On its own thread so a pathological input cannot stall recompression for good.
            std::thread::Builder::new()
                .name("idcfs-recode".into())
                .spawn(move || {
                    let mut out = Vec::new();
                    let r = codec.encode(&data, &params, &mut out).map(|p| (p, out));
                    let _ = tx.send(r);
                })?;
        }
        let path = || self.log_name(ino);
        let (params, out) = match rx.recv_timeout(whole_file_timeout(data.len())) {
            Ok(Ok(x)) => x,
            Ok(Err(crate::codec::CodecError::NotWorthIt)) => return Ok(None),
            Ok(Err(e)) => {
                self.recomp.fell_back();
                tracing::info!(path = %path(), codec = codec.name(), "format-aware codec refused the file, keeping generic blocks: {e}");
                return Ok(None);
            }
            Err(_) => {
                self.recomp.fell_back();
                tracing::warn!(path = %path(), codec = codec.name(), "format-aware encoding timed out, keeping generic blocks");
                return Ok(None);
            }
        };
        // Verify independently of the codec's own check before anything is replaced. A lossy
        // reconstruction has its own length, which the codec says.
        let lossy = cand.fidelity != Fidelity::Lossless;
        let want = match codec.decoded_len(&out, params) {
            Ok(Some(n)) if lossy => n,
            Ok(_) => data.len(),
            Err(e) => {
                self.recomp.fell_back();
                tracing::error!(path = %path(), codec = codec.name(), "lossy payload does not decode, keeping generic blocks: {e}");
                return Ok(None);
            }
        };
        let back = self.codecs.decode(cand.codec, &out, params, want);
        let back = match back {
            Ok(b) if accept(cand.fidelity, data, &b) => b,
            _ if lossy => {
                self.recomp.fell_back();
                tracing::warn!(path = %path(), codec = codec.name(), "lossy encoding misses the quality target, keeping lossless storage");
                return Ok(None);
            }
            _ => {
                self.recomp.fell_back();
                tracing::error!(path = %path(), codec = codec.name(), "format-aware round trip mismatch, keeping generic blocks");
                return Ok(None);
            }
        };
        Ok(Some(WholeEncoding {
            params,
            payload: out,
            lossy: lossy.then_some(back),
        }))
    }

    /// Re-encode a whole file with the format-aware codec of its class (JPEG, deflate
    /// containers, PCM audio) as one object. `None` when it does not apply or does not pay;
    /// failures, mismatches and timeouts are logged and counted, and the file keeps its blocks.
    fn try_whole_file(
        &self,
        ino: Ino,
        inode: &crate::meta::Inode,
        cands: &[&Candidate],
        dedup: bool,
    ) -> Result<Option<RecompressReport>> {
        // Objects are decoded whole and cached whole: keep them well inside the cache.
        let mut max = 0;
        for c in cands {
            if let Granularity::WholeFile { max_len } = self.codecs.get(c.codec)?.granularity() {
                max = max.max(max_len.min(self.opts.cache_bytes / 2) as u64);
            }
        }
        if inode.size == 0 || inode.size > max {
            return Ok(None);
        }
        if let Some(st) = self.files.lock().get(&ino).cloned() {
            if !st.quiet_for(Duration::ZERO) {
                return Ok(None);
            }
        }
        // Snapshot the block locations, then read exactly those blocks.
        let n = blocks_for(inode.size);
        let mut froms = Vec::with_capacity(n as usize);
        let mut data = Vec::with_capacity(inode.size as usize);
        let mut old_stored = 0u64;
        {
            let _gc = self.gc.read();
            for idx in 0..n {
                let want = (inode.size - idx * BLOCK_U64).min(BLOCK_U64) as usize;
                let start = data.len();
                match self.j.index.block(ino, idx)? {
                    Some(b) if b.object => return Ok(None),
                    Some(b) => {
                        froms.push(Some(b.loc));
                        old_stored += b.stored as u64;
                        let d = self.block_data(ino, idx, &b)?;
                        data.extend_from_slice(&d[..d.len().min(want)]);
                    }
                    None => froms.push(None),
                }
                data.resize(start + want, 0);
            }
        }
        let hash = self.j.content_hash(&data);
        // Under dedup=on, a file identical to one already stored as a shared object just
        // references it (no encoding at all).
        if dedup && self.j.ref_object(ino, froms.clone(), hash)? {
            tracing::debug!(path = %self.log_name(ino), "whole-file deduplication");
            return Ok(Some(RecompressReport {
                blocks: n,
                recoded: n,
                stored_before: old_stored,
                stored_after: 0,
            }));
        }
        let data = std::sync::Arc::new(data);
        // Every candidate is tried; the smallest verified encoding wins.
        let mut best: Option<(crate::codec::CodecId, WholeEncoding)> = None;
        let mut tried: Vec<String> = Vec::new();
        for cand in cands {
            let name = self.codecs.name(cand.codec);
            let Some(enc) = self.encode_whole(ino, cand, &data)? else {
                tried.push(format!("{name}: refused"));
                continue;
            };
            let n = enc.payload.len();
            tried.push(format!("{name}: {n}"));
            if n as u64 >= old_stored || best.as_ref().is_some_and(|b| b.1.payload.len() <= n) {
                continue;
            }
            best = Some((cand.codec, enc));
        }
        let path = || self.log_name(ino);
        let Some((codec_id, enc)) = best else {
            if cands.iter().any(|c| c.fidelity != Fidelity::Lossless) {
                tracing::info!(path = %path(), stored = old_stored, tried = %tried.join(", "), "lossy policy: no candidate beat the current storage");
            }
            return Ok(None);
        };
        let (params, out) = (enc.params, &enc.payload);
        let codec = self.codecs.get(codec_id)?.clone();
        if let Some(back) = &enc.lossy {
            let Some(r) = self.commit_lossy(ino, inode, froms, codec_id, params, out, back)? else {
                return Ok(None);
            };
            tracing::info!(
                path = %path(),
                codec = codec.name(),
                params,
                size_before = inode.size,
                size_after = back.len(),
                stored_before = old_stored,
                stored_after = out.len(),
                quality = %match crate::codec::image_psnr(&data, back) {
                    Some(db) => format!("PSNR {db:.2} dB"),
                    None => format!("SNR {:.1} dB", crate::codec::pcm_snr(&data, back)),
                },
                tried = %tried.join(", "),
                "lossy recompression: smallest candidate meeting the policy's quality target"
            );
            self.recomp.lossy_files.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(RecompressReport {
                stored_before: old_stored,
                ..r
            }));
        }
        let h = BlockHeader {
            codec: codec_id,
            params,
            raw_len: data.len() as u32,
            raw_hash: hash,
        };
        let op = if dedup {
            Op::PutObjectShared { ino, froms }
        } else {
            Op::PutObject { ino, froms }
        };
        self.j.commit(&[op], Some((&h, out)))?;
        tracing::debug!(path = %path(), codec = codec.name(), before = old_stored, after = out.len(), tried = %tried.join(", "), "whole-file recompression");
        Ok(Some(RecompressReport {
            blocks: n,
            recoded: n,
            stored_before: old_stored,
            stored_after: out.len() as u64,
        }))
    }

    /// Replace the content of `ino` (still as snapshotted in `froms`) by the lossy object
    /// `payload`, which decodes to `back`. None when the file is open or changed meanwhile
    /// (it keeps its lossless storage). The kernel's cached pages and size are dropped.
    #[allow(clippy::too_many_arguments)]
    fn commit_lossy(
        &self,
        ino: Ino,
        inode: &crate::meta::Inode,
        froms: Vec<Option<crate::store::Loc>>,
        codec: crate::codec::CodecId,
        params: u32,
        payload: &[u8],
        back: &[u8],
    ) -> Result<Option<RecompressReport>> {
        let h = BlockHeader {
            codec,
            params,
            raw_len: back.len() as u32,
            raw_hash: self.j.content_hash(back),
        };
        let op = Op::PutLossyObject {
            ino,
            froms,
            old_size: inode.size,
            size: back.len() as u64,
        };
        {
            // An open file keeps its content: its live state holds the old size, and a
            // reader would see the content change under it. Holding the table of live files
            // keeps the file from being opened until the swap is committed.
            let files = self.files.lock();
            if files.contains_key(&ino) {
                return Ok(None);
            }
            // Another recompression of the same file (the idle scan beside an explicit
            // `recompress`) may have swapped it in meanwhile: this op would then do nothing
            // but store a payload nobody references, and be counted twice. Checked under
            // the same lock as that swap, so one of them wins.
            if self
                .j
                .index
                .inode(ino)?
                .is_some_and(|i| i.flags & crate::meta::FLAG_LOSSY != 0)
            {
                return Ok(None);
            }
            self.j.commit(&[op], Some((&h, payload)))?;
        }
        let now = self.j.index.inode(ino)?;
        if !now
            .is_some_and(|i| i.flags & crate::meta::FLAG_LOSSY != 0 && i.size == back.len() as u64)
        {
            // The file changed between the snapshot and the commit: the op did nothing.
            return Ok(None);
        }
        self.invalidate_kernel_cache(ino);
        Ok(Some(RecompressReport {
            blocks: blocks_for(back.len() as u64),
            recoded: blocks_for(back.len() as u64),
            stored_before: 0,
            stored_after: payload.len() as u64,
        }))
    }

    /// How a file is stored: per-encoding block counts and bytes.
    pub fn file_info(&self, ino: Ino) -> Result<FileInfo> {
        let inode = self.getattr(ino)?.inode;
        let mut fi = FileInfo {
            size: inode.size,
            ..Default::default()
        };
        let mut from = 0;
        loop {
            let blocks = self.j.index.blocks_from(ino, from, 1024)?;
            let Some(&(last, _)) = blocks.last() else {
                break;
            };
            from = last + 1;
            for (_, b) in blocks {
                fi.blocks += 1;
                fi.logical += b.raw_len as u64;
                fi.stored += b.stored as u64;
                let name = match b.codec {
                    ZSTD => format!("zstd:{}", b.params),
                    ZSTD_DICT => crate::codec::describe_zstd_dict(b.params),
                    c => self.codecs.name(c),
                };
                *fi.encodings.entry(name).or_default() += 1;
            }
        }
        Ok(fi)
    }
}

/// A verified whole-file encoding.
struct WholeEncoding {
    params: u32,
    payload: Vec<u8>,
    /// For a lossy encoding: the content it decodes to (the file's new content).
    lossy: Option<Vec<u8>>,
}

/// What `user.idcfs.fileinfo` reports.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct FileInfo {
    pub size: u64,
    pub blocks: u64,
    pub logical: u64,
    pub stored: u64,
    /// encoding ("zstd:19", "raw", …) -> blocks
    pub encodings: std::collections::BTreeMap<String, u64>,
}
