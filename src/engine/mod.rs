//! The engine: a POSIX-shaped filesystem API in plain Rust over the journal, the index, the
//! codecs and the caches. It knows nothing of FUSE; `fuse/` translates kernel requests into
//! calls here, and tests drive it directly.
//!
//! Lock order (never taken in the other direction):
//! `ns` (namespace mutations) → `files` (open-file table) → a file's `inner` → journal commit.
//! Compression workers take only a file's `inner` and then the journal.
//!
//! Durability invariants:
//! - A file's size is logged (`PutInode`) only after every block below it that was written
//!   before has been committed, so after a crash no file shows bytes that were never written.
//! - Stored blocks never hold data past the file size (truncate crops; recovery trims blocks
//!   committed past a logged size), so extending a file always exposes zeros.
//! - `fsync` returns after the file's blocks and inode are committed and the journal synced.
//!
//! Space and faults:
//! - New data is admitted only above the space floor (`space`); deleting never needs more
//!   than the reserve, and space freed by deletes is reclaimed by compaction right away while
//!   space is short.
//! - A write-back failure keeps the data in memory, releases its dirty budget and is reported
//!   by the file's next fsync or close; nothing waits for space to appear.
//! - Once the journal is read-only (a failed disk write or sync), mutations fail with EROFS,
//!   reads keep working and background work stops.

mod cache;
pub mod choice;
mod compact;
mod data;
pub mod fsck;
pub mod journal;
pub mod layout;
mod namespace;
mod policy;
mod recompress;
mod space;

use self::cache::BlockCache;
use self::journal::{Journal, Recovery};
use crate::codec::Registry;
use crate::error::{Error, Result};
use crate::meta::{Ino, Inode, Kind, Op, Ts, ROOT_INO};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex, RwLock};
use serde::Serialize;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use self::compact::CompactReport;
pub use self::data::FileState;
pub use self::fsck::FsckReport;
pub use self::namespace::{Caller, SetAttr, Statfs, TimeSet, VIRTUAL_PREFIX};
pub use self::recompress::{FileInfo, RecompressReport};

/// Tunables of one mounted store.
#[derive(Clone, Debug)]
pub struct Options {
    /// zstd level used on the write path.
    pub zstd_level: i32,
    /// Decoded-block cache size.
    pub cache_bytes: usize,
    /// Dirty data held in memory before writers wait for compression to catch up.
    pub dirty_limit: usize,
    /// Compression worker threads.
    pub workers: usize,
    /// sled page cache.
    pub index_cache: u64,
    /// Size at which a pack file is sealed.
    pub pack_max: u64,
    /// Run the background syncer and compactor threads.
    pub background: bool,
    /// Mount-wide default policy (from the config file).
    pub default_policy: crate::policy::Policy,
    /// Closed files untouched this long are recompressed in the background.
    pub idle_secs: u64,
    /// Codecs never chosen for new data on this mount (config `[codecs] disabled`).
    pub codecs_disabled: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Options {
            zstd_level: 3,
            cache_bytes: 64 << 20,
            dirty_limit: 64 << 20,
            workers: cpus,
            index_cache: 32 << 20,
            pack_max: journal::PACK_MAX,
            background: true,
            default_policy: crate::policy::Policy::default(),
            idle_secs: 60,
            codecs_disabled: Vec::new(),
        }
    }
}

/// Attributes as the kernel sees them.
#[derive(Clone, Debug)]
pub struct Attr {
    pub inode: Inode,
    /// 512-byte units allocated (mapped blocks; holes cost nothing).
    pub blocks: u64,
}

/// What `idcfs status` reports for a mount.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Status {
    pub store: String,
    /// Why the mount turned read-only (a disk write or sync failed), when it did.
    #[serde(default)]
    pub read_only: Option<String>,
    pub pid: u32,
    pub uptime_secs: u64,
    pub cache_bytes: u64,
    pub cache_limit: u64,
    pub dirty_bytes: u64,
    pub dirty_limit: u64,
    pub live_files: u64,
    pub recompress_queue: u64,
    /// Codecs that may not encode here, each with the reason.
    #[serde(default)]
    pub unavailable_codecs: Vec<String>,
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: Kind,
    pub name: Vec<u8>,
    /// Position to resume after this entry.
    pub offset: u64,
}

/// What `idcfs stats` reports.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Stats {
    pub store: String,
    /// Raw bytes of all stored blocks (what the files hold, holes excluded).
    pub logical_bytes: u64,
    /// Bytes the store occupies on disk: pack files plus the metadata index.
    pub stored_bytes: u64,
    pub saved_bytes: i64,
    /// logical / stored.
    pub ratio: f64,
    pub pack_bytes: u64,
    pub index_bytes: u64,
    /// Pack bytes not referenced by any block: the metadata journal plus space that
    /// compaction will reclaim.
    pub unreferenced_bytes: u64,
    pub files: u64,
    pub corrupt_reads: u64,
    /// Whole-file (format-aware) encodings that failed verification, did not pay or timed out.
    #[serde(default)]
    pub format_fallbacks: u64,
    pub uptime_secs: u64,
    pub cache_bytes: u64,
    pub codecs: Vec<CodecRow>,
    /// Per top-level entry of the mount (filled by `stats_detailed`).
    #[serde(default)]
    pub top_dirs: Vec<GroupRow>,
    /// Per content class (filled by `stats_detailed`).
    #[serde(default)]
    pub classes: Vec<GroupRow>,
}

/// Logical and stored bytes of a group of files.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct GroupRow {
    pub name: String,
    pub files: u64,
    pub logical_bytes: u64,
    /// Bytes of the group's block records (payload and headers; shared records counted per use).
    pub stored_bytes: u64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct CodecRow {
    pub codec: String,
    pub blocks: u64,
    pub logical_bytes: u64,
    /// Record bytes on disk for this codec's blocks (payload plus headers).
    pub stored_bytes: u64,
}

struct Job {
    st: Arc<FileState>,
    idx: u64,
    gen: u64,
    data: Arc<Vec<u8>>,
    /// The file's policy level (the write path's candidates follow from it).
    level: crate::policy::Level,
    /// The file's policy asks for deduplication.
    dedup: bool,
}

pub struct Engine {
    j: Journal,
    codecs: Registry,
    opts: Options,
    store_dir: PathBuf,
    _lock: File,
    files: Mutex<HashMap<Ino, Arc<FileState>>>,
    ns: Mutex<()>,
    /// Readers hold it shared across an index lookup and the pack read it leads to, so
    /// compaction (exclusive) never deletes a pack under a reader.
    gc: RwLock<()>,
    next_ino: AtomicU64,
    next_cookie: AtomicU64,
    cache: BlockCache,
    jobs: Mutex<Option<Sender<Job>>>,
    /// Read-ahead: blocks to decode into the cache before they are asked for.
    prefetch: Mutex<Option<Sender<(Ino, u64)>>>,
    /// Per inode: (offset the next sequential read starts at, first block not yet queued).
    streams: Mutex<HashMap<Ino, (u64, u64)>>,
    dirty: Mutex<usize>,
    dirty_cv: Condvar,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    started: Instant,
    corrupt_reads: AtomicU64,
    pub recovery: Recovery,
    /// Effective policies by directory (`policy`).
    policies: policy::PolicyCache,
    /// Background recompression's queue and counters (`recompress`).
    recomp: recompress::RecompressState,
    /// Whole-file object decodes running now; at most one per worker (each is large).
    object_decodes: Mutex<usize>,
    object_cv: Condvar,
    /// Records being decoded right now (single flight), and the signal that one finished.
    decoding: Mutex<std::collections::HashSet<crate::store::Loc>>,
    decoded_cv: Condvar,
    /// The store's filesystem: the reserve and admission of new data.
    space: space::Space,
    /// Something was deleted while space is short: compact soon.
    reclaim: AtomicBool,
    /// One compaction at a time (background, pressure and `idcfs compact`).
    compacting: Mutex<()>,
    /// `shutdown` completed.
    closed: AtomicBool,
}

/// Take the store's exclusive lock, or say who holds it.
pub fn lock_store(dir: &Path) -> Result<File> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    // SAFETY-free: flock through libc on a valid fd.
    let rc = unsafe_flock(f.as_raw_fd());
    if rc != 0 {
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!(
                "store {} is in use by another idcfs process (pid {}); unmount it first",
                dir.display(),
                s.trim()
            ),
        )));
    }
    f.set_len(0)?;
    f.seek(std::io::SeekFrom::Start(0))?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}

#[allow(unsafe_code)]
fn unsafe_flock(fd: i32) -> i32 {
    // SAFETY: flock only reads the fd number; a bad fd yields an error code.
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }
}

impl Engine {
    /// Open (or create) the store in `dir` and recover it.
    pub fn open(dir: &Path, opts: Options) -> Result<Arc<Engine>> {
        Self::open_inner(dir, opts, None)
    }

    /// Open with an injected pack backend (an object store, or a simulated disk in tests);
    /// the index and the lock stay in `dir`.
    pub fn open_with_backend(
        dir: &Path,
        opts: Options,
        backend: Arc<dyn crate::store::PackBackend>,
    ) -> Result<Arc<Engine>> {
        Self::open_inner(dir, opts, Some(backend))
    }

    fn open_inner(
        dir: &Path,
        opts: Options,
        backend: Option<Arc<dyn crate::store::PackBackend>>,
    ) -> Result<Arc<Engine>> {
        std::fs::create_dir_all(dir)?;
        let codecs = Registry::with_disabled(&opts.codecs_disabled)
            .map_err(|e| Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let space = space::Space::open(dir)?;
        // Each step below writes a little (the pid, the index's files): on a full filesystem
        // the reserve makes room for it.
        let lock = retry_enospc(&space, "taking the store lock", || lock_store(dir))?;
        let pack_max = opts.pack_max.min(space.pack_cap());
        let open_journal = || match &backend {
            Some(b) => Journal::open_with(
                b.clone(),
                &dir.join("index"),
                dir,
                opts.index_cache,
                pack_max,
            ),
            None => Journal::open(dir, opts.index_cache, pack_max),
        };
        let (j, recovery) = match open_journal() {
            // The index's open error is not typed: release the reserve if space is short.
            Err(e) if space.meta_low() && space.release("opening the metadata index") => {
                tracing::debug!("retrying the open after: {e}");
                open_journal()?
            }
            r => r?,
        };
        if !retry_enospc(&space, "opening the metadata index", || {
            j.index.take_clean()
        })? {
            // Derived counters may be off after an unclean stop: recount them.
            j.index.recount()?;
        }
        let next_ino = j.index.max_ino()? + 1;
        let next_cookie = (j.index.max_cookie()? + 1).max(3);
        let e = Arc::new(Engine {
            j,
            codecs,
            cache: BlockCache::new(opts.cache_bytes),
            opts,
            store_dir: dir.to_path_buf(),
            _lock: lock,
            files: Mutex::new(HashMap::new()),
            ns: Mutex::new(()),
            gc: RwLock::new(()),
            next_ino: AtomicU64::new(next_ino),
            next_cookie: AtomicU64::new(next_cookie),
            jobs: Mutex::new(None),
            prefetch: Mutex::new(None),
            streams: Mutex::new(HashMap::new()),
            dirty: Mutex::new(0),
            dirty_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            started: Instant::now(),
            corrupt_reads: AtomicU64::new(0),
            recovery,
            policies: Default::default(),
            recomp: Default::default(),
            object_decodes: Mutex::new(0),
            object_cv: Condvar::new(),
            decoding: Mutex::new(std::collections::HashSet::new()),
            decoded_cv: Condvar::new(),
            space,
            reclaim: AtomicBool::new(false),
            compacting: Mutex::new(()),
            closed: AtomicBool::new(false),
        });
        e.ensure_root()?;
        e.recover_marks()?;
        e.space.ensure();
        e.start_threads()?;
        Ok(e)
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    fn ensure_root(&self) -> Result<()> {
        if self.j.index.inode(ROOT_INO)?.is_some() {
            return Ok(());
        }
        let now = Ts::now();
        let root = Inode {
            ino: ROOT_INO,
            kind: Kind::Dir,
            perm: 0o755,
            uid: current_uid(),
            gid: current_gid(),
            nlink: 2,
            size: 0,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            parent: ROOT_INO,
            target: Vec::new(),
            flags: 0,
        };
        self.j.commit(&[Op::PutInode(root)], None)?;
        self.j.sync()
    }

    /// Finish what a crash interrupted: reclaim unlinked-while-open inodes and trim blocks
    /// committed past a logged size.
    fn recover_marks(&self) -> Result<()> {
        for ino in self.j.index.marked(b'O')? {
            tracing::info!(ino, "reclaiming a file that was unlinked while open");
            self.commit_freeing(&[Op::DelInode { ino }], None)?;
        }
        for ino in self.j.index.marked(b'U')? {
            self.fix_size(ino)?;
        }
        Ok(())
    }

    fn start_threads(self: &Arc<Self>) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(1024);
        *self.jobs.lock() = Some(tx);
        let mut threads = self.threads.lock();
        for i in 0..self.opts.workers.max(1) {
            let e = self.clone();
            let rx: Receiver<Job> = rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("idcfs-zip{i}"))
                    .spawn(move || e.worker(rx))?,
            );
        }
        let (ptx, prx) = crossbeam_channel::bounded::<(Ino, u64)>(256);
        *self.prefetch.lock() = Some(ptx);
        for i in 0..self.opts.workers.max(1) {
            let e = self.clone();
            let prx = prx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("idcfs-ra{i}"))
                    .spawn(move || {
                        while let Ok((ino, idx)) = prx.recv() {
                            // Errors surface when the block is actually read.
                            let _ = e.mapped_block(ino, idx);
                        }
                    })?,
            );
        }
        if self.opts.background {
            let e = self.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("idcfs-recompress".into())
                    .spawn(move || {
                        while !e.stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(500));
                            // Recompression writes new copies before compaction frees the
                            // old: not on a read-only store, nor while space is short.
                            if e.j.read_only().is_none() && !e.space.pressure() {
                                e.recompress_idle();
                            }
                        }
                    })?,
            );
            let e = self.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("idcfs-sync".into())
                    .spawn(move || e.syncer())?,
            );
        }
        Ok(())
    }

    fn worker(&self, rx: Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            // Take what else is queued so one index batch covers several blocks.
            let mut jobs = vec![first];
            while jobs.len() < 16 {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.run_jobs(jobs);
        }
    }

    /// Background: drain idle dirty files, sync the journal and the index, compact.
    fn syncer(&self) {
        let mut last_flush = Instant::now();
        let mut last_compact = Instant::now();
        let mut last_pressure = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            if self.j.read_only().is_some() {
                // Nothing can be written: keep buffered data for the writers' fsync/close.
                continue;
            }
            let states: Vec<Arc<FileState>> = self.files.lock().values().cloned().collect();
            for st in states {
                if st.wants_drain(Duration::from_secs(1), Duration::from_secs(10)) {
                    // The error stays with the file for its writer's fsync/close; the failed
                    // blocks are retried after a pause.
                    if let Err(e) = self.drain_with(&st, false) {
                        tracing::debug!(ino = st.ino, "background flush failed: {e}");
                    }
                }
                self.try_detach(&st);
            }
            // Deletes give their space back at once while space is short, or when what
            // they freed is a large share of the filesystem (small stores); otherwise the
            // periodic compaction below collects it.
            let wanted = self.reclaim.swap(false, Ordering::Relaxed);
            let due = (wanted || last_pressure.elapsed() >= Duration::from_secs(10))
                && (self.space.pressure()
                    || (wanted && self.garbage_bytes() >= self.space.total / 16));
            if due {
                if let Err(e) = self.compact_for_space() {
                    tracing::warn!("compaction to reclaim space failed: {e}");
                }
                last_pressure = Instant::now();
            }
            self.space.ensure();
            if last_flush.elapsed() >= Duration::from_secs(5) {
                if let Err(e) = self.checkpoint_index_freeing() {
                    tracing::warn!("periodic sync failed: {e}");
                }
                last_flush = Instant::now();
            }
            if last_compact.elapsed() >= Duration::from_secs(60) {
                if let Err(e) = self.compact(false) {
                    tracing::warn!("background compaction failed: {e}");
                }
                last_compact = Instant::now();
            }
        }
    }

    fn add_dirty(&self, n: usize) {
        *self.dirty.lock() += n;
    }

    fn release_dirty(&self, n: usize) {
        let mut d = self.dirty.lock();
        let was = *d;
        *d = d.saturating_sub(n);
        // Wake waiting writers only when crossing back under the limit (no thundering herd).
        if was > self.opts.dirty_limit && *d <= self.opts.dirty_limit {
            self.dirty_cv.notify_all();
        }
    }

    /// Block a writer while too much data waits for compression (bounded memory). Jobs
    /// release their budget whether they commit or fail, so this always ends.
    fn wait_budget(&self) {
        let mut d = self.dirty.lock();
        while *d > self.opts.dirty_limit && self.j.read_only().is_none() {
            self.dirty_cv.wait_for(&mut d, Duration::from_millis(100));
        }
    }

    /// EROFS once the journal is read-only (for paths that buffer instead of committing).
    pub(crate) fn check_writable(&self) -> Result<()> {
        match self.j.read_only() {
            Some(why) => Err(Error::Poisoned(why)),
            None => Ok(()),
        }
    }

    /// Commit a record that frees space (or must succeed on a full store: unlink, rmdir,
    /// rename, truncate, the unmount flush): the reserve is released when space is short.
    fn commit_freeing(
        &self,
        ops: &[Op],
        block: Option<(&crate::store::BlockHeader, &[u8])>,
    ) -> Result<crate::store::Loc> {
        if self.space.meta_low() {
            // Before the commit, so the index's own writes find room too.
            self.space.release("a delete on a full store");
        }
        let loc = retry_enospc(&self.space, "a delete on a full store", || {
            self.j.commit(ops, block)
        })?;
        self.reclaim.store(true, Ordering::Relaxed);
        Ok(loc)
    }

    /// Make the journal and the index durable, with the reserve's help on a full store.
    fn checkpoint_index_freeing(&self) -> Result<()> {
        if self.space.meta_low() {
            // Before the flush: sled keeps the first I/O error it meets and fails every
            // later operation with it, so it must not meet ENOSPC at all.
            self.space
                .release("flushing the metadata index on a full store");
        }
        retry_enospc(&self.space, "flushing the metadata index", || {
            self.j.checkpoint_index()
        })
    }

    /// Commit everything, make it durable and stop background threads. Idempotent.
    ///
    /// Always completes: data that cannot be stored (no space, or a read-only store) was
    /// reported to its writers at fsync/close and is logged again here; the metadata flush
    /// uses the reserve. Fails only when the metadata cannot be made durable.
    pub fn shutdown(&self) -> Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let ro = self.j.read_only();
        if ro.is_none() {
            if let Err(e) = self.sync_all() {
                tracing::error!("unmount: some data could not be stored: {e}");
            }
        }
        self.halt();
        if let Some(why) = self.j.read_only() {
            // The index may be ahead of what reached the disk: leave it unclean, so the next
            // mount checks it against the journal.
            tracing::warn!(
                "store {} is read-only ({why}); the next mount recovers it",
                self.store_dir.display()
            );
            self.closed.store(true, Ordering::Relaxed);
            return Ok(());
        }
        self.checkpoint_index_freeing()?;
        retry_enospc(&self.space, "flushing the metadata index", || {
            self.j.index.mark_clean()
        })?;
        self.closed.store(true, Ordering::Relaxed);
        tracing::info!("store {} flushed", self.store_dir.display());
        Ok(())
    }

    /// Stop the background threads without flushing anything (what a power cut leaves is
    /// then up to the disk; used by crash simulation). Idempotent.
    pub fn halt(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.jobs.lock().take();
        self.prefetch.lock().take();
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }

    /// Write the index to disk without syncing the journal first: what sled may do on its own
    /// at any time. Crash tests use it to put the index ahead of the durable journal.
    pub fn flush_index_unsynced(&self) -> Result<()> {
        self.j.index.flush()
    }

    /// Drain every file and make the journal and the index durable. Errors stay with their
    /// files too, for the writers' fsync/close.
    pub fn sync_all(&self) -> Result<()> {
        let states: Vec<Arc<FileState>> = self.files.lock().values().cloned().collect();
        let mut first_err = None;
        for st in states {
            if let Err(e) = self.drain_with(&st, false) {
                tracing::error!(path = %self.path_of(st.ino), "flush failed: {e}");
                first_err.get_or_insert(e);
            }
        }
        self.checkpoint_index_freeing()?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn stats(&self) -> Result<Stats> {
        let cs = self.j.index.codec_stats();
        let backend = self.j.log.backend();
        let mut pack_bytes = 0;
        for p in backend.list()? {
            pack_bytes += backend.len(p).unwrap_or(0);
        }
        let index_bytes = dir_size(&self.store_dir.join("index"));
        let logical: u64 = cs.values().map(|c| c.logical).sum();
        let records: u64 = cs.values().map(|c| c.records).sum();
        let stored = pack_bytes + index_bytes;
        let codecs = cs
            .iter()
            .filter(|(_, c)| c.blocks > 0)
            .map(|(id, c)| CodecRow {
                codec: self.codecs.name(*id),
                blocks: c.blocks,
                logical_bytes: c.logical,
                stored_bytes: c.records,
            })
            .collect();
        Ok(Stats {
            store: self.store_dir.display().to_string(),
            logical_bytes: logical,
            stored_bytes: stored,
            saved_bytes: logical as i64 - stored as i64,
            ratio: if stored > 0 {
                logical as f64 / stored as f64
            } else {
                0.0
            },
            pack_bytes,
            index_bytes,
            unreferenced_bytes: pack_bytes.saturating_sub(records),
            files: self.next_ino.load(Ordering::Relaxed).saturating_sub(1),
            corrupt_reads: self.corrupt_reads.load(Ordering::Relaxed),
            format_fallbacks: self.recomp.fallbacks(),
            uptime_secs: self.started.elapsed().as_secs(),
            cache_bytes: self.cache.bytes() as u64,
            codecs,
            top_dirs: Vec::new(),
            classes: Vec::new(),
        })
    }

    /// `stats` plus the breakdown by top-level directory and content class (one pass over
    /// the block map).
    pub fn stats_detailed(&self) -> Result<Stats> {
        let mut st = self.stats()?;
        let mut top_of: HashMap<Ino, String> = HashMap::new();
        let mut inode_info: HashMap<Ino, (String, String)> = HashMap::new();
        let mut tops: std::collections::BTreeMap<String, GroupRow> = Default::default();
        let mut classes: std::collections::BTreeMap<String, GroupRow> = Default::default();
        let mut last_ino = 0;
        for b in self.j.index.all_blocks() {
            let (ino, _, r) = b?;
            let (top, class) = match inode_info.get(&ino) {
                Some(x) => x.clone(),
                None => {
                    let Some(i) = self.j.index.inode(ino)? else {
                        continue;
                    };
                    let x = (
                        self.top_dir(i.parent, &mut top_of)?,
                        crate::classify::class_name_of_flags(i.flags).to_string(),
                    );
                    inode_info.insert(ino, x.clone());
                    x
                }
            };
            for (map, key) in [(&mut tops, top), (&mut classes, class)] {
                let row = map.entry(key.clone()).or_insert_with(|| GroupRow {
                    name: key,
                    ..Default::default()
                });
                if ino != last_ino {
                    row.files += 1;
                }
                row.logical_bytes += r.raw_len as u64;
                row.stored_bytes += r.record_share();
            }
            last_ino = ino;
        }
        st.top_dirs = tops.into_values().collect();
        st.top_dirs
            .sort_by_key(|r| std::cmp::Reverse(r.stored_bytes));
        st.classes = classes.into_values().collect();
        st.classes
            .sort_by_key(|r| std::cmp::Reverse(r.stored_bytes));
        Ok(st)
    }

    /// Name of the top-level entry that directory `dir` lies in ("/" for the root itself).
    fn top_dir(&self, dir: Ino, memo: &mut HashMap<Ino, String>) -> Result<String> {
        if dir == ROOT_INO {
            return Ok("/".into());
        }
        if let Some(t) = memo.get(&dir) {
            return Ok(t.clone());
        }
        let mut cur = dir;
        let mut chain = vec![];
        for _ in 0..4096 {
            let i = self.j.index.inode(cur)?.ok_or(Error::NotFound)?;
            chain.push(cur);
            if i.parent == ROOT_INO {
                break;
            }
            cur = i.parent;
        }
        // The top-level directory's own name, from the root's entries.
        let mut name = format!("<inode {cur}>");
        let mut off = 2;
        'scan: loop {
            let ents = self.j.index.readdir(ROOT_INO, off, 1024)?;
            let Some(last) = ents.last() else { break };
            off = last.0;
            for (_, n, d) in &ents {
                if d.ino == cur {
                    name = format!("/{}", String::from_utf8_lossy(n));
                    break 'scan;
                }
            }
        }
        for c in chain {
            memo.insert(c, name.clone());
        }
        Ok(name)
    }

    pub fn status(&self) -> Status {
        Status {
            store: self.store_dir.display().to_string(),
            read_only: self.j.read_only(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            cache_bytes: self.cache.bytes() as u64,
            cache_limit: self.opts.cache_bytes as u64,
            dirty_bytes: *self.dirty.lock() as u64,
            dirty_limit: self.opts.dirty_limit as u64,
            live_files: self.files.lock().len() as u64,
            recompress_queue: self.recomp.queued(),
            unavailable_codecs: self
                .codecs
                .unavailable()
                .into_iter()
                .map(|(name, why)| format!("{name}: {why}"))
                .collect(),
        }
    }

    /// A path of `ino` for log messages (a scan: only used on errors).
    pub fn path_of(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut cur = ino;
        for _ in 0..4096 {
            if cur == ROOT_INO {
                break;
            }
            let found = self
                .j
                .index
                .all_dirents()
                .filter_map(|d| d.ok())
                .find(|(_, _, d)| d.ino == cur);
            match found {
                Some((parent, name, _)) => {
                    parts.push(String::from_utf8_lossy(&name).into_owned());
                    cur = parent;
                }
                None => return format!("<unlinked inode {ino}>"),
            }
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }
}

/// Run `f`; when it fails for lack of space and releasing the reserve frees some, once more.
fn retry_enospc<T>(sp: &space::Space, why: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    match f() {
        Err(e) if space::is_enospc(&e) && sp.release(why) => f(),
        r => r,
    }
}

/// Total size of the regular files below `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

pub fn current_uid() -> u32 {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions.
    unsafe {
        libc::geteuid()
    }
}

pub fn current_gid() -> u32 {
    #[allow(unsafe_code)]
    // SAFETY: getegid has no preconditions.
    unsafe {
        libc::getegid()
    }
}

/// Reject names the kernel should never send but a direct caller might.
fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::Invalid("bad file name"));
    }
    if name.len() > 255 {
        return Err(Error::NameTooLong);
    }
    Ok(())
}
