//! The write path: the per-file write buffer, sealing full blocks into the compression
//! pool, encoding them with the candidates of `choice`, committing them in groups, draining
//! on flush and fsync, and truncation.
//!
//! Invariants:
//! - `inflight[idx]` holds the newest sealed version of a block; a worker commits a version
//!   only if it is still the newest, so an older version never overwrites a newer one.
//! - A file's size is logged only after every block below it that was written before has been
//!   committed, so after a crash no file shows bytes that were never written.
//! - A block that fails to commit goes back to the write buffer (nothing is dropped), the
//!   file remembers the errno for its writer's next fsync/close, and its dirty budget is
//!   released all the same, so no writer waits on a commit that cannot happen.

use super::choice::{accept, candidates, must_verify, pays, Candidate, Stage, Tuning};
use super::files::{FileInner, FileState};
use super::layout::{blocks_for, spans, BlockSpan, BLOCK, BLOCK_U64, MAX_FILE_SIZE};
use super::{Engine, Job};
use crate::classify::{classify_block, ContentClass};
use crate::codec::{EncodeParams, RAW};
use crate::error::{Error, Result};
use crate::meta::{Ino, Op, Ts};
use crate::store::BlockHeader;
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A block after the codec decision.
pub(super) struct Encoded {
    hole: bool,
    header: BlockHeader,
    payload: Vec<u8>,
    class: ContentClass,
}

/// The dirty-data budget: bytes written but not yet committed, bounded so that memory stays
/// bounded; writers wait for room.
///
/// Invariant: every byte `add`ed is `release`d exactly once, whether its commit succeeded or
/// failed, so a writer never waits on a commit that cannot happen.
pub(super) struct DirtyBudget {
    bytes: Mutex<usize>,
    room: Condvar,
    limit: usize,
}

impl DirtyBudget {
    pub(super) fn new(limit: usize) -> DirtyBudget {
        DirtyBudget {
            bytes: Mutex::new(0),
            room: Condvar::new(),
            limit,
        }
    }

    pub(super) fn add(&self, n: usize) {
        *self.bytes.lock() += n;
    }

    pub(super) fn release(&self, n: usize) {
        let mut d = self.bytes.lock();
        let was = *d;
        *d = d.saturating_sub(n);
        // Wake waiting writers only when crossing back under the limit (no thundering herd).
        if was > self.limit && *d <= self.limit {
            self.room.notify_all();
        }
    }

    /// Block a writer while too much data waits for compression, unless `give_up` says
    /// waiting cannot help (the store turned read-only).
    pub(super) fn wait(&self, give_up: impl Fn() -> bool) {
        let mut d = self.bytes.lock();
        while *d > self.limit && !give_up() {
            self.room.wait_for(&mut d, Duration::from_millis(100));
        }
    }

    pub(super) fn bytes(&self) -> usize {
        *self.bytes.lock()
    }
}

impl Engine {
    /// The level to compress at now: the policy's write level, or zstd -1 while compression
    /// is falling behind the writers (a quarter of the dirty budget is waiting), so writers
    /// are not throttled; background recompression upgrades those blocks later.
    pub(super) fn adaptive_level(&self, want: Option<i32>) -> Option<i32> {
        match want {
            Some(l) if l > 1 && self.budget.bytes() > self.opts.dirty_limit / 4 => Some(1),
            other => other,
        }
    }

    /// Encode one block of a file at policy `level` for the write path.
    pub(super) fn encode_block(&self, data: &[u8], level: crate::policy::Level) -> Encoded {
        let cands = self.write_candidates(None, data.len() as u64, level);
        self.encode_block_with(data, &cands)
    }

    /// The write path's candidates for a file of `class` and `size` at policy `level`
    /// (`choice::candidates`, with this mount's write level and codec availability).
    pub(super) fn write_candidates(
        &self,
        class: Option<ContentClass>,
        size: u64,
        level: crate::policy::Level,
    ) -> Vec<Candidate> {
        let eff = crate::policy::Effective {
            level,
            ..Default::default()
        };
        let tuning = Tuning {
            write_level: self.opts.zstd_level,
        };
        let avail = |id| self.codecs.available(id);
        candidates(class, &eff, size, Stage::Write, &tuning, &avail)
    }

    /// Encode a block with the first of the block candidates that pays (smallest wins among
    /// those tried: a dictionary is tried before plain zstd and kept when it pays); zero
    /// blocks become holes, high-entropy ones and those no candidate shrinks are stored raw.
    fn encode_block_with(&self, data: &[u8], cands: &[Candidate]) -> Encoded {
        let class = classify_block(data);
        let raw_len = data.len() as u32;
        let mk = |codec, params, payload: Vec<u8>, hole| Encoded {
            hole,
            header: BlockHeader {
                codec,
                params,
                raw_len,
                raw_hash: if hole {
                    [0; 16]
                } else {
                    self.j.content_hash(data)
                },
            },
            payload,
            class,
        };
        match class {
            ContentClass::Zero => mk(RAW, 0, Vec::new(), true),
            ContentClass::Incompressible => mk(RAW, 0, data.to_vec(), false),
            _ => {
                let mut out = Vec::new();
                for c in cands.iter().filter(|c| !c.whole_file) {
                    // Load, not content: while compression lags the writers, zstd -1.
                    let level = self.adaptive_level(Some(c.level)).unwrap_or(c.level);
                    let p = EncodeParams {
                        level,
                        model: c.model,
                    };
                    let r = self
                        .codecs
                        .get(c.codec)
                        .map(|k| k.encode(data, &p, &mut out));
                    if let Ok(Ok(params)) = r {
                        // Decoding costs CPU: keep an encoding only when it saves 1/32, and
                        // only when it passes `choice`'s verification rule.
                        let verified = || {
                            !must_verify(c, Stage::Write)
                                || self
                                    .codecs
                                    .decode(c.codec, &out, params, data.len())
                                    .is_ok_and(|d| accept(c.fidelity, data, &d))
                        };
                        if pays(data.len(), out.len()) && verified() {
                            return mk(c.codec, params, out, false);
                        }
                    }
                }
                mk(RAW, 0, data.to_vec(), false)
            }
        }
    }

    /// Compress and commit sealed blocks as one group (one index batch), each only if it
    /// is still the newest version of its block. A file whose every pending block is in the
    /// group gets its inode in the same batch, riding in the record of its last block (one
    /// record and one index update fewer per small file), and a closed file that is then
    /// clean leaves the open-file table at once.
    ///
    /// Never leaves a job half done: if encoding or committing panics (a bug), each job that
    /// is still in flight goes back to its file's write buffer with EIO for its writer, and
    /// its dirty budget is released, so no drain or writer waits for it forever.
    pub(super) fn run_jobs(&self, jobs: Vec<Job>) {
        let keys: Vec<_> = jobs
            .iter()
            .map(|j| (j.st.clone(), j.idx, j.gen, j.data.clone()))
            .collect();
        let run = std::panic::AssertUnwindSafe(|| self.run_jobs_inner(jobs));
        if let Ok(states) = std::panic::catch_unwind(run) {
            for st in &states {
                self.try_detach(st);
            }
            return;
        }
        tracing::error!(
            jobs = keys.len(),
            "internal error while storing blocks; their files report EIO"
        );
        for (st, idx, gen, data) in keys {
            {
                let mut g = st.inner.lock();
                if matches!(g.inflight.get(&idx), Some((g2, _)) if *g2 == gen) {
                    g.inflight.remove(&idx);
                    g.dirty.entry(idx).or_insert_with(|| data.as_ref().clone());
                    g.err.get_or_insert(libc::EIO);
                    g.failed_at = Some(Instant::now());
                }
            }
            st.cv.notify_all();
            self.budget.release(data.len());
        }
    }

    /// Returns the files of the group.
    fn run_jobs_inner(&self, jobs: Vec<Job>) -> Vec<Arc<FileState>> {
        let mut work: Vec<(Job, Encoded, Option<ContentClass>)> = jobs
            .into_iter()
            .map(|j| {
                // A whole file in one partial block: classify it now, so that a small text
                // file is written with its class's dictionary from the start.
                let class = (j.idx == 0 && j.data.len() < BLOCK).then(|| {
                    let head = &j.data[..j.data.len().min(crate::classify::MAX_HEAD)];
                    crate::classify::classify_file(head, j.data.len() as u64)
                });
                let cands = self.write_candidates(class, j.data.len() as u64, j.level);
                let e = self.encode_block_with(&j.data, &cands);
                (j, e, class)
            })
            .collect();
        // Lock each file once, in inode order (the only place holding several file locks).
        // One inode may have two states here: a stale job of a state dropped since (its
        // block was truncated away) next to jobs of the state that replaced it. Ordering by
        // state too keeps each state's jobs together, so no state is locked twice.
        work.sort_by_key(|(j, _, _)| (j.st.ino, Arc::as_ptr(&j.st) as usize, j.idx));
        let mut states: Vec<Arc<FileState>> = Vec::new();
        for (j, _, _) in &work {
            if states.last().is_none_or(|s| !Arc::ptr_eq(s, &j.st)) {
                states.push(j.st.clone());
            }
        }
        let mut guards: Vec<_> = states.iter().map(|s| s.inner.lock()).collect();
        let guard_of =
            |st: &Arc<FileState>| states.iter().position(|s| Arc::ptr_eq(s, st)).unwrap_or(0);
        // Block 0 decides a file's content class (kept in the inode's flags for stats).
        for (j, e, early) in &work {
            if j.idx != 0 || e.hole {
                continue;
            }
            let g = &mut guards[guard_of(&j.st)];
            let head = &j.data[..j.data.len().min(crate::classify::MAX_HEAD)];
            let class = match early {
                Some(c) if g.attr.size == j.data.len() as u64 => *c,
                _ => crate::classify::classify_file(head, g.attr.size),
            };
            let flag = crate::classify::class_flag(class);
            if !g.detached && g.attr.flags & 0xff != flag {
                g.attr.flags = (g.attr.flags & !0xff) | flag;
                g.attr_dirty = true;
                if tracing::enabled!(tracing::Level::DEBUG) {
                    tracing::debug!(
                        path = %self.log_name(j.st.ino),
                        class = class.name(),
                        codec = self.codecs.name(e.header.codec),
                        params = e.header.params,
                        "codec choice: {}",
                        match (e.class, e.header.codec) {
                            (crate::classify::ContentClass::Incompressible, _) => "high-entropy content is stored as is".to_string(),
                            (_, RAW) if j.level == crate::policy::Level::Off => "the directory's policy is level=off".to_string(),
                            (_, RAW) => "compression saved less than 1/32".to_string(),
                            _ => format!("policy write level zstd -{}", e.header.params),
                        }
                    );
                }
            }
        }
        let mut recs: Vec<super::journal::NewRecord<'_>> = Vec::new();
        // The file (index into `states`) of each record, and each file's live jobs.
        let mut rec_file: Vec<usize> = Vec::new();
        let mut live_of = vec![0usize; states.len()];
        let mut live = Vec::new();
        for (k, (j, e, _)) in work.iter().enumerate() {
            let f = guard_of(&j.st);
            let g = &guards[f];
            if g.detached || !matches!(g.inflight.get(&j.idx), Some((g2, _)) if *g2 == j.gen) {
                continue;
            }
            live.push(k);
            live_of[f] += 1;
            if e.hole {
                // Zeros: unmap the block (if it was mapped) instead of storing it.
                if matches!(self.j.index.block(j.st.ino, j.idx), Ok(None)) {
                    continue;
                }
                recs.push((
                    vec![Op::DelBlocks {
                        ino: j.st.ino,
                        from: j.idx,
                        to: j.idx + 1,
                    }],
                    None,
                ));
            } else {
                let ino = j.st.ino;
                let op = if j.dedup {
                    Op::PutBlockShared { ino, idx: j.idx }
                } else {
                    Op::PutBlock { ino, idx: j.idx }
                };
                recs.push((vec![op], Some((&e.header, e.payload.as_slice()))));
            }
            rec_file.push(f);
        }
        // A file with nothing buffered and nothing in flight but this group's blocks: every
        // byte below its size is committed with this batch, so its inode may be logged in
        // the same batch, after its last block (sizes are logged only after their data).
        let mut attached = Vec::new();
        for (f, g) in guards.iter().enumerate() {
            let ours = live_of[f];
            if ours == 0
                || g.detached
                || !g.attr_dirty
                || !g.dirty.is_empty()
                || g.inflight.len() != ours
            {
                continue;
            }
            match rec_file.iter().rposition(|&r| r == f) {
                Some(r) => recs[r].0.push(Op::PutInode(g.attr.clone())),
                None => {
                    recs.push((vec![Op::PutInode(g.attr.clone())], None));
                    rec_file.push(f);
                }
            }
            attached.push(f);
        }
        let res = if recs.is_empty() {
            Ok(Vec::new())
        } else {
            self.j.commit_many(&recs)
        };
        if res.is_ok() {
            for &f in &attached {
                guards[f].attr_dirty = false;
            }
        }
        for k in live {
            let (j, _, _) = &work[k];
            let g = &mut guards[guard_of(&j.st)];
            g.inflight.remove(&j.idx);
            if let Err(e) = &res {
                // One line per file until its writer hears of it (fsync/close).
                if g.err.is_none() {
                    tracing::error!(
                        ino = j.st.ino,
                        block = j.idx,
                        "cannot store data, kept in memory for a retry: {e}"
                    );
                }
                g.failed_at = Some(Instant::now());
                g.err.get_or_insert(e.errno());
                // Keep the data: a later flush retries.
                g.dirty
                    .entry(j.idx)
                    .or_insert_with(|| j.data.as_ref().clone());
            }
        }
        drop(guards);
        for st in &states {
            st.cv.notify_all();
        }
        for (j, _, _) in &work {
            self.budget.release(j.data.len());
        }
        states
    }

    /// Take block `idx` out of the write buffer as a new in-flight version, counted in the
    /// dirty budget until its commit (or failure) releases it.
    fn take_block(
        &self,
        st: &Arc<FileState>,
        g: &mut FileInner,
        idx: u64,
        level: crate::policy::Level,
        dedup: bool,
    ) -> Option<Job> {
        let data = Arc::new(g.dirty.remove(&idx)?);
        g.gen += 1;
        let gen = g.gen;
        g.inflight.insert(idx, (gen, data.clone()));
        self.budget.add(data.len());
        Some(Job {
            st: st.clone(),
            idx,
            gen,
            data,
            level,
            dedup,
        })
    }

    /// Move a filled block from the write buffer to the compression pool. Returns the job
    /// when the pool is gone (shutdown), for the caller to run inline.
    fn seal(&self, st: &Arc<FileState>, g: &mut FileInner, idx: u64) -> Option<Job> {
        let (level, dedup) = self.write_policy(g.attr.parent);
        let job = self.take_block(st, g, idx, level, dedup)?;
        self.submit(job)
    }

    /// Queue a job on the compression pool; gives it back when the pool is full or gone
    /// (shutdown), for the caller to run inline.
    fn submit(&self, job: Job) -> Option<Job> {
        match self.jobs.lock().as_ref() {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => None,
                Err(e) => Some(e.into_inner()),
            },
            None => Some(job),
        }
    }

    /// close() while the store has room: hand the file's buffered blocks to the compression
    /// pool instead of compressing and committing them in the caller, so a writer of many
    /// small files never waits for its last file (the pool commits them in groups, each
    /// file's inode in the record of its last block, within milliseconds). Reports a
    /// write-back error met earlier, like `drain`; one met by the pool afterwards stays with
    /// the file for a later fsync and is logged, and the blocks stay buffered for a retry
    /// (the background flush), as for any write-back failure.
    pub(super) fn hand_off(&self, st: &Arc<FileState>) -> Result<()> {
        let inline = {
            let mut g = st.inner.lock();
            if g.detached {
                return Ok(());
            }
            if let Some(errno) = g.err.take() {
                return Err(Error::Io(std::io::Error::from_raw_os_error(errno)));
            }
            if g.dirty.is_empty() {
                if g.inflight.is_empty() && g.attr_dirty {
                    // Only attributes changed: one small record, as `drain` writes it.
                    self.j.commit(&[Op::PutInode(g.attr.clone())], None)?;
                    g.attr_dirty = false;
                    g.dirty_since = None;
                }
                // Blocks in flight carry the inode with the last of them.
                return Ok(());
            }
            let (level, dedup) = self.write_policy(g.attr.parent);
            let idxs: Vec<u64> = g.dirty.keys().copied().collect();
            let mut inline = Vec::new();
            for idx in idxs {
                if let Some(job) = self.take_block(st, &mut g, idx, level, dedup) {
                    inline.extend(self.submit(job));
                }
            }
            inline
        };
        if !inline.is_empty() {
            self.run_jobs(inline);
        }
        Ok(())
    }

    /// The write buffer for block `s.idx`, loaded from the newest version when the write
    /// does not cover the whole block. Caller holds the file lock.
    fn dirty_block<'g>(
        &self,
        ino: Ino,
        g: &'g mut FileInner,
        s: &BlockSpan,
    ) -> Result<&'g mut Vec<u8>> {
        if !g.dirty.contains_key(&s.idx) {
            let mut base = Vec::with_capacity(BLOCK);
            if !s.covers_block() {
                let start = s.idx * BLOCK_U64;
                if let Some((_, d)) = g.inflight.get(&s.idx) {
                    base.extend_from_slice(d);
                } else if start < g.attr.size {
                    if let Some(d) = self.mapped_block(ino, s.idx)? {
                        let keep = (d.len() as u64).min(g.attr.size - start) as usize;
                        base.extend_from_slice(&d[..keep]);
                    }
                }
            }
            g.dirty.insert(s.idx, base);
        }
        g.dirty
            .get_mut(&s.idx)
            .ok_or(Error::Invalid("write buffer vanished"))
    }

    pub fn write(&self, ino: Ino, off: u64, data: &[u8]) -> Result<u32> {
        if data.is_empty() {
            return Ok(0);
        }
        let end = off
            .checked_add(data.len() as u64)
            .ok_or(Error::FileTooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(Error::FileTooBig);
        }
        self.check_writable()?;
        // A backend that drains slower than writers fill it (an object store's uploads)
        // paces them here, in proportion, before any lock is taken: writers slow down
        // smoothly and nothing else waits behind them.
        let pace = self.j.log.backend().admit_delay(data.len() as u64);
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
        // Refuse data that would eat into the room deletes need (see `space`).
        self.space
            .admit(data.len() as u64, self.budget.bytes() as u64)?;
        self.budget.wait(|| self.j.read_only().is_some());
        self.touch_io();
        let inline = self.with_live(ino, |st, g| {
            let mut inline = Vec::new();
            for s in spans(off, data.len()) {
                let buf = self.dirty_block(ino, g, &s)?;
                let src = &data[s.buf_off..s.buf_off + s.len];
                if buf.len() == s.skip {
                    // Appending (the common case): no zero fill first.
                    buf.extend_from_slice(src);
                } else {
                    if buf.len() < s.skip + s.len {
                        buf.resize(s.skip + s.len, 0);
                    }
                    buf[s.skip..s.skip + s.len].copy_from_slice(src);
                }
                if buf.len() == BLOCK {
                    inline.extend(self.seal(st, g, s.idx));
                }
            }
            if end > g.attr.size {
                g.attr.size = end;
            }
            let now = Ts::now();
            g.attr.mtime = now;
            g.attr.ctime = now;
            g.attr_dirty = true;
            g.written = true;
            g.last_write = Instant::now();
            g.dirty_since.get_or_insert_with(Instant::now);
            Ok(inline)
        })?;
        if !inline.is_empty() {
            self.run_jobs(inline);
        }
        Ok(data.len() as u32)
    }

    /// Commit every buffered block of a file and then its inode. Returns (and clears) the
    /// first write-back error since the last report.
    pub(super) fn drain(&self, st: &Arc<FileState>) -> Result<()> {
        self.drain_with(st, true)
    }

    /// `drain`; with `report` false (background flushes, namespace operations, sync) the
    /// file's write-back error is left for its writer's fsync/close, and returned only when
    /// this attempt fails too.
    pub(super) fn drain_with(&self, st: &Arc<FileState>, report: bool) -> Result<()> {
        let errno_err = |n: i32| Error::Io(std::io::Error::from_raw_os_error(n));
        let mut tried = false;
        loop {
            let mut g = st.inner.lock();
            if g.detached {
                return Ok(());
            }
            if report {
                if let Some(errno) = g.err.take() {
                    return Err(errno_err(errno));
                }
            } else if let (true, Some(errno)) = (tried, g.err) {
                return Err(errno_err(errno));
            }
            if g.dirty.is_empty() && g.inflight.is_empty() {
                if g.attr_dirty {
                    self.j.commit(&[Op::PutInode(g.attr.clone())], None)?;
                    g.attr_dirty = false;
                }
                g.dirty_since = None;
                g.failed_at = None;
                return Ok(());
            }
            let idxs: Vec<u64> = g.dirty.keys().copied().collect();
            if idxs.is_empty() {
                st.cv.wait_for(&mut g, Duration::from_millis(50));
                continue;
            }
            let mut jobs = Vec::new();
            let (level, dedup) = self.write_policy(g.attr.parent);
            for idx in idxs {
                if let Some(job) = self.take_block(st, &mut g, idx, level, dedup) {
                    jobs.push(job);
                }
            }
            tried = true;
            drop(g);
            // The caller waits anyway: compress here rather than hand off to the pool.
            self.run_jobs(jobs);
        }
    }

    /// Trim what a crash left past a file's logged size (blocks committed before the size).
    pub(super) fn fix_size(&self, ino: Ino) -> Result<()> {
        let Some(inode) = self.j.index.inode(ino)? else {
            return Ok(());
        };
        let mut ops = Vec::new();
        let last = blocks_for(inode.size);
        if !self.j.index.blocks_from(ino, last, 1)?.is_empty() {
            ops.push(Op::DelBlocks {
                ino,
                from: last,
                to: u64::MAX,
            });
        }
        let tail = (inode.size % BLOCK_U64) as usize;
        let mut enc = None;
        if tail != 0 {
            if let Some(b) = self.j.index.block(ino, inode.size / BLOCK_U64)? {
                if b.raw_len as usize > tail {
                    let d = self.block_data(ino, inode.size / BLOCK_U64, &b)?;
                    let e = self.encode_block(&d[..tail], self.level_for(inode.parent));
                    if e.hole {
                        ops.push(Op::DelBlocks {
                            ino,
                            from: inode.size / BLOCK_U64,
                            to: inode.size / BLOCK_U64 + 1,
                        });
                    } else {
                        ops.insert(
                            0,
                            Op::PutBlock {
                                ino,
                                idx: inode.size / BLOCK_U64,
                            },
                        );
                        enc = Some(e);
                    }
                }
            }
        }
        if !ops.is_empty() {
            tracing::info!(
                ino,
                size = inode.size,
                "trimming blocks written past the logged size before a crash"
            );
        }
        ops.push(Op::PutInode(inode));
        self.j.commit(
            &ops,
            enc.as_ref().map(|e| (&e.header, e.payload.as_slice())),
        )?;
        Ok(())
    }

    /// Change a file's size. Caller holds the namespace lock.
    pub(super) fn truncate(&self, ino: Ino, new: u64, mtime: bool) -> Result<()> {
        if new > MAX_FILE_SIZE {
            return Err(Error::FileTooBig);
        }
        let st = self.state(ino)?;
        self.check_writable()?;
        {
            // Buffered blocks past the new end are dropped rather than stored first, so a
            // file whose buffered data cannot be stored (no space) can still be truncated.
            let mut g = st.inner.lock();
            if !g.detached && new < g.attr.size {
                let last = blocks_for(new);
                g.dirty.retain(|i, _| *i < last);
                g.inflight.retain(|i, _| *i < last);
            }
        }
        match self.drain_with(&st, false) {
            // What stays buffered is logged by a later drain (handled below).
            Err(e) if super::space::is_enospc(&e) => {
                tracing::debug!(ino, "truncating with data still buffered: {e}")
            }
            r => r?,
        }
        self.with_live(ino, |_st, g| {
            let old = g.attr.size;
            let mut ops = Vec::new();
            let mut enc = None;
            if new < old {
                let last = blocks_for(new);
                g.dirty.retain(|i, _| *i < last);
                g.inflight.retain(|i, _| *i < last);
                let tail = (new % BLOCK_U64) as usize;
                if tail != 0 {
                    let t = new / BLOCK_U64;
                    let cur: Option<Vec<u8>> = if let Some(d) = g.dirty.remove(&t) {
                        Some(d)
                    } else if let Some((_, d)) = g.inflight.remove(&t) {
                        Some(d.as_ref().clone())
                    } else {
                        self.mapped_block(ino, t)?.map(|d| d.as_ref().clone())
                    };
                    if let Some(mut d) = cur {
                        if d.len() > tail {
                            d.truncate(tail);
                            let e = self.encode_block(&d, self.level_for(g.attr.parent));
                            if e.hole {
                                ops.push(Op::DelBlocks {
                                    ino,
                                    from: t,
                                    to: t + 1,
                                });
                            } else {
                                ops.push(Op::PutBlock { ino, idx: t });
                                enc = Some(e);
                            }
                        } else {
                            g.dirty.insert(t, d);
                        }
                    }
                }
                if !self.j.index.blocks_from(ino, last, 1)?.is_empty() {
                    ops.push(Op::DelBlocks {
                        ino,
                        from: last,
                        to: u64::MAX,
                    });
                }
            }
            g.attr.size = new;
            g.written = true;
            let now = Ts::now();
            if mtime {
                g.attr.mtime = now;
            }
            g.attr.ctime = now;
            if g.dirty.is_empty() && g.inflight.is_empty() {
                ops.push(Op::PutInode(g.attr.clone()));
                self.commit_freeing(
                    &ops,
                    enc.as_ref().map(|e| (&e.header, e.payload.as_slice())),
                )?;
                g.attr_dirty = false;
            } else {
                // A racing writer dirtied blocks meanwhile (or they could not be stored yet):
                // log the data now, the inode at the next drain.
                if !ops.is_empty() {
                    self.commit_freeing(
                        &ops,
                        enc.as_ref().map(|e| (&e.header, e.payload.as_slice())),
                    )?;
                }
                g.attr_dirty = true;
            }
            Ok(())
        })
    }

    /// Zero `off..off+len` inside the file (punch hole): whole blocks become holes.
    pub(super) fn zero_range(&self, ino: Ino, off: u64, len: u64) -> Result<()> {
        let (st, size) = self.with_live(ino, |st, g| Ok((st.clone(), g.attr.size)))?;
        let end = off.saturating_add(len).min(size);
        if off >= end {
            return Ok(());
        }
        let first_full = off.div_ceil(BLOCK_U64);
        let last_full = end / BLOCK_U64; // exclusive
                                         // Partial edges: write zeros through the normal path (keeps size unchanged).
        let head_end = (first_full * BLOCK_U64).min(end);
        if off < head_end {
            self.write(ino, off, &vec![0u8; (head_end - off) as usize])?;
        }
        let tail_start = (last_full * BLOCK_U64).max(off);
        if last_full >= first_full && tail_start < end {
            self.write(ino, tail_start, &vec![0u8; (end - tail_start) as usize])?;
        }
        if last_full > first_full {
            let mut g = st.inner.lock();
            if g.detached {
                return Err(Error::NotFound);
            }
            g.dirty.retain(|i, _| *i < first_full || *i >= last_full);
            g.inflight.retain(|i, _| *i < first_full || *i >= last_full);
            self.commit_freeing(
                &[Op::DelBlocks {
                    ino,
                    from: first_full,
                    to: last_full,
                }],
                None,
            )?;
        }
        Ok(())
    }
}
