//! Open files: the table of per-inode `FileState`s (the authoritative inode and write buffer
//! of a file while it is open or holds uncommitted data), attributes, and the open, flush,
//! fsync and release calls that bracket a file's use.
//!
//! Invariants:
//! - A file's `FileState` exists while it is open or holds uncommitted data; while it exists,
//!   its `attr` is the authoritative inode (size and mtime run ahead of the index).
//! - A detached state is dead: every path that finds one retries with a fresh state.
//! - fsync returns after the file's blocks and inode are committed and the journal synced.

use super::layout::BLOCK_U64;
use super::{Attr, Engine};
use crate::error::{Error, Result};
use crate::meta::{Ino, Inode, Kind, Op};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct FileState {
    pub ino: Ino,
    pub(super) inner: Mutex<FileInner>,
    pub(super) cv: Condvar,
}

pub(super) struct FileInner {
    pub attr: Inode,
    /// `attr` differs from the logged inode.
    pub attr_dirty: bool,
    /// Blocks being filled, not yet sealed.
    pub dirty: BTreeMap<u64, Vec<u8>>,
    /// Sealed blocks on their way to the journal: idx -> (generation, data).
    pub inflight: HashMap<u64, (u64, Arc<Vec<u8>>)>,
    pub gen: u64,
    pub opens: u32,
    /// First write-back error since the last flush/fsync reported one.
    pub err: Option<i32>,
    /// When a commit of this file's blocks last failed (background retries wait a while).
    pub failed_at: Option<Instant>,
    pub last_write: Instant,
    pub dirty_since: Option<Instant>,
    pub detached: bool,
    /// Data changed while this state lived (the file becomes a recompression candidate).
    pub written: bool,
}

impl FileState {
    pub(super) fn is_clean(g: &FileInner) -> bool {
        g.dirty.is_empty() && g.inflight.is_empty() && !g.attr_dirty
    }

    pub(super) fn inner_attr(&self) -> Option<Inode> {
        let g = self.inner.lock();
        (!g.detached).then(|| g.attr.clone())
    }

    /// Mirror what namespace operations change (link count, ctime, parent).
    pub(super) fn set_ns_fields(&self, i: &Inode) {
        let mut g = self.inner.lock();
        if !g.detached {
            g.attr.nlink = i.nlink;
            g.attr.ctime = i.ctime;
            g.attr.parent = i.parent;
        }
    }

    pub(super) fn opens(&self) -> u32 {
        self.inner.lock().opens
    }

    /// Change the live inode in memory and mark it for the next drain. False when dead.
    pub(super) fn defer_attr(&self, f: impl FnOnce(&mut Inode)) -> bool {
        let mut g = self.inner.lock();
        if g.detached {
            return false;
        }
        f(&mut g.attr);
        g.attr_dirty = true;
        g.last_write = Instant::now();
        g.dirty_since.get_or_insert_with(Instant::now);
        true
    }

    /// No buffered data and no write for `idle`.
    pub(super) fn quiet_for(&self, idle: Duration) -> bool {
        let g = self.inner.lock();
        g.dirty.is_empty() && g.inflight.is_empty() && g.last_write.elapsed() >= idle
    }

    /// Whether the background syncer should flush this file now.
    pub(super) fn wants_drain(&self, idle: Duration, max_age: Duration) -> bool {
        let g = self.inner.lock();
        if g.detached || (g.dirty.is_empty() && !g.attr_dirty) {
            return false;
        }
        if g.failed_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
        {
            return false;
        }
        g.last_write.elapsed() >= idle || g.dirty_since.is_some_and(|t| t.elapsed() >= max_age)
    }
}

impl Engine {
    /// The live state of a regular file, created on first use.
    pub(super) fn state(&self, ino: Ino) -> Result<Arc<FileState>> {
        let mut files = self.files.lock();
        if let Some(st) = files.get(&ino) {
            return Ok(st.clone());
        }
        let attr = self.j.index.inode(ino)?.ok_or(Error::NotFound)?;
        match attr.kind {
            Kind::File => {}
            Kind::Dir => return Err(Error::IsDir),
            _ => return Err(Error::Invalid("not a regular file")),
        }
        let st = Arc::new(FileState {
            ino,
            inner: Mutex::new(FileInner {
                attr,
                attr_dirty: false,
                dirty: BTreeMap::new(),
                inflight: HashMap::new(),
                gen: 0,
                opens: 0,
                err: None,
                failed_at: None,
                last_write: Instant::now(),
                dirty_since: None,
                detached: false,
                written: false,
            }),
            cv: Condvar::new(),
        });
        files.insert(ino, st.clone());
        Ok(st)
    }

    /// Run `f` on a file's live state under its lock, retrying past states detached meanwhile.
    pub(super) fn with_live<T>(
        &self,
        ino: Ino,
        f: impl FnOnce(&Arc<FileState>, &mut FileInner) -> Result<T>,
    ) -> Result<T> {
        let mut f = Some(f);
        loop {
            let st = self.state(ino)?;
            let mut g = st.inner.lock();
            if g.detached {
                continue;
            }
            let f = f.take().ok_or(Error::Invalid("state callback reused"))?;
            return f(&st, &mut g);
        }
    }

    /// Forget a clean, closed file's state.
    pub(super) fn try_detach(&self, st: &Arc<FileState>) {
        let mut files = self.files.lock();
        let mut g = st.inner.lock();
        if !g.detached && g.opens == 0 && FileState::is_clean(&g) {
            g.detached = true;
            files.remove(&st.ino);
            if g.written {
                self.note_modified(st.ino);
            }
        }
    }

    /// Drop a file's state and its uncommitted data (the inode is being deleted).
    pub(super) fn kill_state(&self, ino: Ino) {
        let st = self.files.lock().remove(&ino);
        if let Some(st) = st {
            let mut g = st.inner.lock();
            g.detached = true;
            g.dirty.clear();
            g.inflight.clear();
            g.attr_dirty = false;
            st.cv.notify_all();
        }
    }

    /// Current attributes of any inode.
    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let st = self.files.lock().get(&ino).cloned();
        let (inode, extra) = match st {
            Some(st) => {
                let g = st.inner.lock();
                (g.attr.clone(), g.dirty.len() as u64)
            }
            None => (self.j.index.inode(ino)?.ok_or(Error::NotFound)?, 0),
        };
        let blocks = if inode.kind == Kind::File {
            (self.j.index.block_count(ino)? + extra) * (BLOCK_U64 / 512)
        } else {
            1
        };
        Ok(Attr { inode, blocks })
    }

    /// open(2) of a regular file.
    pub fn open_file(&self, ino: Ino) -> Result<()> {
        let _ns = self.ns.lock();
        self.with_live(ino, |_st, g| {
            g.opens += 1;
            Ok(())
        })
    }

    /// Commit buffered data and report write-back errors (waits for the commit).
    pub fn flush(&self, ino: Ino) -> Result<()> {
        let st = self.files.lock().get(&ino).cloned();
        match st {
            Some(st) => self.drain(&st),
            None => Ok(()),
        }
    }

    /// close(): like `flush`, but with room on the disk the data goes to the compression
    /// pool and close returns at once (`hand_off`), so a writer of many small files never
    /// waits for compression and commit. While space is short (or the store is read-only)
    /// close waits for the commit, so ENOSPC reaches the writer's close. Durability is
    /// unchanged: data reaches the journal within milliseconds instead of at once, and
    /// neither was synced before (only fsync syncs).
    pub fn close(&self, ino: Ino) -> Result<()> {
        let st = self.files.lock().get(&ino).cloned();
        match st {
            Some(st) if self.close_may_defer() => self.hand_off(&st),
            Some(st) => self.drain(&st),
            None => Ok(()),
        }
    }

    /// Whether a close may leave its data to the compression pool: not when a commit could
    /// fail for lack of space or because the store is read-only.
    fn close_may_defer(&self) -> bool {
        self.j.read_only().is_none() && !self.space.pressure()
    }

    /// Wait until every closed file's data is committed (what `close` handed to the pool),
    /// so reports read from the index (stats, fileinfo) count what was written.
    pub(super) fn settle_closed(&self) {
        let states: Vec<Arc<FileState>> = self.files.lock().values().cloned().collect();
        for st in states {
            if st.opens() == 0 {
                if let Err(e) = self.drain_with(&st, false) {
                    tracing::debug!(ino = st.ino, "data of a closed file not stored yet: {e}");
                }
                self.try_detach(&st);
            }
        }
    }

    pub fn fsync(&self, ino: Ino) -> Result<()> {
        let st = self.files.lock().get(&ino).cloned();
        if let Some(st) = st {
            self.drain(&st)?;
        }
        self.j.sync()?;
        self.j.persist(false)
    }

    /// Sync the journal (directories: their entries are committed as they change).
    pub fn fsync_dir(&self) -> Result<()> {
        self.j.sync()?;
        self.j.persist(false)
    }

    /// Last close of a file handle.
    pub fn release(&self, ino: Ino) -> Result<()> {
        let Some(st) = self.files.lock().get(&ino).cloned() else {
            return Ok(());
        };
        let (last, orphan) = {
            let mut g = st.inner.lock();
            g.opens = g.opens.saturating_sub(1);
            (g.opens == 0 && !g.detached, g.attr.nlink == 0)
        };
        if !last {
            return Ok(());
        }
        if orphan {
            let _ns = self.ns.lock();
            let still = st.inner.lock().opens == 0;
            if still {
                self.kill_state(ino);
                self.commit_freeing(&[Op::DelInode { ino }], None)?;
            }
            return Ok(());
        }
        // The kernel does not wait for release: the pool (or the background flush) commits
        // what is left and drops the state once it is clean.
        let res = if self.close_may_defer() {
            self.hand_off(&st)
        } else {
            self.drain(&st)
        };
        self.try_detach(&st);
        res
    }
}
