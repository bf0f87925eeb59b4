//! Compaction: reclaim pack space held by overwritten and deleted blocks.
//!
//! Live blocks of mostly-dead sealed packs are copied (payload as is, no re-encoding) into the
//! active pack with `MoveBlock` records; then a checkpoint restates the whole index so the old
//! packs' metadata records are no longer needed; then the index is flushed and the old packs
//! deleted. A crash at any point leaves either the old or the new location valid.
//!
//! Under space pressure (`compact_for_space`) the mostly-dead packs are taken first and only
//! as many as the free space (the reserve included) can copy the live part of, so compaction
//! itself never runs the store out of space; each round frees room for the next.
//!
//! Once the mount is idle (`compact_idle`), garbage anywhere (the active pack included) is
//! reclaimed whenever it exceeds `IDLE_GARBAGE` of the packs, emptiest packs first, until at
//! most `IDLE_GARBAGE_LEFT` is left, and any pack that is mostly garbage is reclaimed
//! whatever the share; a large active pack is sealed, so later garbage gathers in new packs.
//! The newest checkpoint is needed, so it never counts as garbage (otherwise each
//! compaction's own checkpoint would trigger the next).

use super::Engine;
use crate::error::Result;
use crate::meta::{decode_ops, Op};
use crate::store::PackId;

/// In the background, a pack is compacted when less than this share of it is live.
const LIVE_THRESHOLD: f64 = 0.5;
/// On request (`idcfs compact`), any pack with more than a tenth of garbage is.
const LIVE_THRESHOLD_FORCED: f64 = 0.9;
/// Background compaction waits until at least this much space can be reclaimed.
const MIN_RECLAIM: u64 = 16 << 20;
/// Share of the packs that may stay garbage once the mount is idle (the bound is 10%;
/// measured on the dev corpus, a 10% trigger left 6% of the packs as garbage after the
/// background recompression settled).
const IDLE_GARBAGE: f64 = 0.04;
/// What an idle compaction leaves at most (low, so the footprint a user sees after a busy
/// period is close to the live data, not 10% above it).
const IDLE_GARBAGE_LEFT: f64 = 0.02;
/// Idle compaction does not bother below this much garbage (tiny stores).
const IDLE_MIN_RECLAIM: u64 = 1 << 20;
/// Once idle, an active pack this large is sealed (see `seal_idle`).
const IDLE_SEAL: u64 = 16 << 20;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CompactReport {
    pub packs_removed: usize,
    pub blocks_moved: u64,
    pub bytes_reclaimed: u64,
}

impl Engine {
    /// Compact sealed packs that are mostly garbage. `force` ignores the minimum gain.
    pub fn compact(&self, force: bool) -> Result<CompactReport> {
        if force {
            let r = self.compact_with(LIVE_THRESHOLD_FORCED, 0, None)?;
            // Asked for: compact the index file too, if it grew at all since its last one.
            self.checkpoint_index_compacting(100)?;
            Ok(r)
        } else {
            self.compact_with(LIVE_THRESHOLD, MIN_RECLAIM, None)
        }
    }

    /// Pack bytes no block refers to (what compaction could reclaim), sealed packs only.
    pub(super) fn garbage_bytes(&self) -> u64 {
        let backend = self.j.log.backend();
        let stats = self.j.index.pack_stats();
        let (active, _) = self.j.log.active();
        let packs = backend.list().unwrap_or_default();
        packs
            .into_iter()
            .filter(|&p| p != active)
            .map(|p| {
                let len = backend.len(p).unwrap_or(0);
                len.saturating_sub(stats.get(&p).map_or(0, |s| s.live_bytes))
            })
            .sum()
    }

    /// Idle-time reclaim: when more than `IDLE_GARBAGE` of the packs (the active one
    /// included) is garbage, compact the emptiest packs until at most `IDLE_GARBAGE_LEFT`
    /// is left; and, whatever the share, every pack that is mostly garbage (cheap: less is
    /// copied than freed).
    pub(super) fn compact_idle(&self) -> Result<CompactReport> {
        let _one = self.compacting.lock();
        self.check_writable()?;
        let backend = self.j.log.backend().clone();
        let stats = self.j.index.pack_stats();
        let (cp_pack, cp_len) = *self.last_checkpoint.lock();
        let (active, active_len) = self.j.log.active();
        let mut packs: Vec<(PackId, u64, u64)> = Vec::new();
        for p in backend.list()? {
            let len = if p == active {
                active_len
            } else {
                backend.len(p)?
            };
            let mut live = stats.get(&p).map_or(0, |s| s.live_bytes);
            if p == cp_pack {
                // The newest checkpoint is needed: it counts as live where it is.
                live += cp_len;
            }
            packs.push((p, len, live.min(len)));
        }
        let total: u64 = packs.iter().map(|&(_, len, _)| len).sum();
        let garbage = packs.iter().map(|&(_, len, live)| len - live).sum::<u64>();
        let share = garbage >= IDLE_MIN_RECLAIM && (garbage as f64) > IDLE_GARBAGE * total as f64;
        let mostly = |len: u64, live: u64| {
            len - live >= IDLE_MIN_RECLAIM && (live as f64) < LIVE_THRESHOLD * len as f64
        };
        packs.sort_by_key(|&(p, len, live)| (live * 1000 / len.max(1), p));
        let mut left = garbage;
        let mut victims = Vec::new();
        for (p, len, live) in packs {
            let over = share && (left as f64) > IDLE_GARBAGE_LEFT * total as f64;
            if len == live || !(over || mostly(len, live)) {
                continue;
            }
            left = left.saturating_sub(len - live);
            victims.push((p, len));
        }
        if victims.is_empty() {
            return Ok(CompactReport::default());
        }
        tracing::debug!(garbage, total, victims = victims.len(), "idle compaction");
        self.compact_packs(victims)
    }

    /// Once idle: seal an active pack of `IDLE_SEAL` or more, so what is written after this
    /// idle period, and the garbage it makes, gathers in packs of its own (cheap to reclaim:
    /// `compact_idle` takes any pack that is mostly garbage). Skipped while a compaction runs.
    pub(super) fn seal_idle(&self) -> Result<()> {
        let Some(_one) = self.compacting.try_lock() else {
            return Ok(());
        };
        self.check_writable()?;
        if self.j.log.active().1 >= IDLE_SEAL {
            self.j.log.seal_active()?;
        }
        Ok(())
    }

    /// Reclaim what deletes freed, with only the space there is.
    pub(super) fn compact_for_space(&self) -> Result<CompactReport> {
        // Room for the checkpoint that restates the index (a rough upper bound per entry).
        let blocks: u64 = self.j.index.codec_stats().values().map(|c| c.blocks).sum();
        let inodes = self.ns.inodes_allocated() + 1;
        let checkpoint = blocks * 96 + inodes * 256 + (256 << 10);
        let avail = self.space.avail()? + self.space.held();
        let budget = avail.saturating_sub(checkpoint + self.space.margin / 2);
        self.compact_with(LIVE_THRESHOLD_FORCED, 1, Some(budget))
    }

    /// Compact packs less than `threshold` live, when that reclaims at least `min_reclaim`;
    /// with a `budget`, only packs whose live bytes fit in it (emptiest first).
    fn compact_with(
        &self,
        threshold: f64,
        min_reclaim: u64,
        budget: Option<u64>,
    ) -> Result<CompactReport> {
        let _one = self.compacting.lock();
        self.check_writable()?;
        let backend = self.j.log.backend().clone();
        let stats = self.j.index.pack_stats();
        let live_of = |p: PackId| stats.get(&p).map_or(0, |s| s.live_bytes);
        let (active, active_len) = self.j.log.active();
        let mut candidates: Vec<(PackId, u64, u64)> = Vec::new();
        for p in backend.list()? {
            let len = if p == active {
                active_len
            } else {
                backend.len(p)?
            };
            let live = live_of(p);
            if len > 0 && (live as f64) < threshold * len as f64 {
                candidates.push((p, len, live));
            }
        }
        if budget.is_some() {
            candidates.sort_by_key(|&(p, len, live)| (live * 1000 / len.max(1), p));
        }
        let mut victims: Vec<(PackId, u64)> = Vec::new();
        let mut reclaim = 0;
        let mut copy = 0;
        for (p, len, live) in candidates {
            if budget.is_some_and(|b| copy + live > b) {
                continue;
            }
            copy += live;
            victims.push((p, len));
            reclaim += len - live;
        }
        if victims.is_empty() || reclaim < min_reclaim.max(1) {
            return Ok(CompactReport::default());
        }
        if budget.is_some() && copy + self.space.margin > self.space.avail()? {
            // The reserve exists for this: copying the live data is what frees the rest.
            self.space.release("compacting a full store");
        }
        self.compact_packs(victims)
    }

    /// Move the live records out of `victims`, checkpoint, and delete the packs emptied.
    /// The caller holds `self.compacting` (victims were chosen under it).
    fn compact_packs(&self, victims: Vec<(PackId, u64)>) -> Result<CompactReport> {
        let mut report = CompactReport::default();
        if victims.is_empty() {
            return Ok(report);
        }
        let backend = self.j.log.backend().clone();
        let (active, _) = self.j.log.active();
        if victims.iter().any(|&(p, _)| p == active) {
            // Only sealed packs are compacted: seal the active one (a new one starts).
            self.j.log.seal_active()?;
        }
        tracing::info!(packs = victims.len(), "compacting pack files");
        for &(p, _) in &victims {
            // Find the records of this pack that the block map still points at.
            // Records the block map still points at, with every reference to each (a record
            // shared by deduplication has several).
            let mut live: Vec<(crate::store::Loc, Vec<(crate::meta::Ino, u64)>)> = Vec::new();
            self.j.log.scan(p, 0, |loc, rec| {
                if rec.block.is_none() {
                    return Ok(());
                }
                let mut refs = self.j.index.shared_refs(&loc)?;
                if refs.is_empty() {
                    for op in decode_ops(rec.version, &rec.meta)? {
                        // A lossy object maps as many slices as its own length needs.
                        let object = match &op {
                            Op::PutObject { ino, froms } | Op::PutObjectShared { ino, froms } => {
                                Some((*ino, froms.len() as u64))
                            }
                            Op::PutLossyObject { ino, size, .. } => {
                                Some((*ino, size.div_ceil(crate::engine::layout::BLOCK_U64)))
                            }
                            _ => None,
                        };
                        if let Some((ino, n)) = object {
                            let ino = &ino;
                            for idx in 0..n {
                                if self.j.index.block(*ino, idx)?.is_some_and(|b| b.loc == loc) {
                                    refs.push((*ino, idx));
                                }
                            }
                        }
                        // A moved object is live through its `MoveObject` ops, so it can be
                        // moved again and its pack freed.
                        if let Op::PutBlock { ino, idx }
                        | Op::PutBlockShared { ino, idx }
                        | Op::MoveBlock { ino, idx, .. }
                        | Op::MoveObject { ino, idx, .. } = op
                        {
                            if self.j.index.block(ino, idx)?.is_some_and(|b| b.loc == loc) {
                                refs.push((ino, idx));
                            }
                        }
                    }
                }
                if !refs.is_empty() {
                    live.push((loc, refs));
                }
                Ok(())
            })?;
            for (loc, refs) in live {
                let (h, payload) = self.j.read_block(loc)?;
                let mut ops = Vec::with_capacity(refs.len());
                for &(ino, idx) in &refs {
                    let object = self.j.index.block(ino, idx)?.is_some_and(|b| b.object);
                    ops.push(if object {
                        Op::MoveObject {
                            ino,
                            idx,
                            from: loc,
                        }
                    } else {
                        Op::MoveBlock {
                            ino,
                            idx,
                            from: loc,
                        }
                    });
                }
                self.j.commit(&ops, Some((&h, &payload)))?;
                report.blocks_moved += refs.len() as u64;
            }
        }
        let before = self.j.log.active();
        self.j.checkpoint()?;
        let after = self.j.log.active();
        // The checkpoint just written is needed: idle reclaim must not count it as garbage.
        *self.last_checkpoint.lock() = if after.0 == before.0 {
            (after.0, after.1.saturating_sub(before.1))
        } else {
            (0, 0)
        };
        self.checkpoint_index_freeing()?;
        // The records that now hold the live blocks, and the checkpoint, must be durable in
        // the backend's final home before the old packs go (an object store uploads in the
        // background); outside the gc lock, so readers do not wait for an upload.
        self.j.persist(true)?;
        let stats = self.j.index.pack_stats();
        let _gc = self.gc.write();
        for (p, len) in victims {
            if stats.get(&p).map_or(0, |s| s.live_blocks) == 0 {
                self.j.log.remove_pack(p)?;
                report.packs_removed += 1;
                report.bytes_reclaimed += len;
            }
        }
        backend.sync_dir()?;
        tracing::info!(?report, "compaction done");
        Ok(report)
    }
}
