//! The engine: a POSIX-shaped filesystem API in plain Rust over the journal, the index, the
//! codecs and the caches. It knows nothing of FUSE; `fuse/` translates kernel requests into
//! calls here, and tests drive it directly.
//!
//! Parts, each owning its state and invariants (a change in one should not need reading the
//! others):
//! - `journal`: the pack log and the index (the only way anything changes on disk), with the
//!   injected pack backend; `space`: the store's filesystem, reserve and admission.
//! - `namespace` (`Names`): names and inode metadata under the namespace lock.
//! - `files`: the open-file table and each file's authoritative state.
//! - `write` (`DirtyBudget`, the compression pool): buffering, encoding, committing, truncation.
//! - `read` (`ReadPath`): lookups, decoding, the block cache, read-ahead.
//! - `choice`: which codecs to try (pure); the codec `Registry` says which are available.
//! - `recompress` (`RecompressState`), `compact`, `policy` (`PolicyCache`), `fsck`, `report`.
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
mod files;
pub mod fsck;
pub mod journal;
pub mod layout;
mod namespace;
mod policy;
mod read;
mod recompress;
mod report;
mod space;
mod write;

use self::journal::{Journal, Recovery};
use crate::codec::Registry;
use crate::error::{Error, Result};
use crate::meta::{Ino, Inode, Kind, Op, Ts, ROOT_INO};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use self::compact::CompactReport;
pub use self::files::FileState;
pub use self::fsck::FsckReport;
pub use self::namespace::{Caller, SetAttr, Statfs, TimeSet, VIRTUAL_PREFIX};
pub use self::recompress::{FileInfo, RecompressReport};
pub use self::report::{dir_size, CodecRow, GroupRow, Stats, Status};

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
    /// Page cache of the metadata index (redb).
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
    /// The unlocked key of an encrypted store (None: a plain store).
    pub key: Option<Arc<crate::crypto::StoreKey>>,
    /// How to load the ONNX Runtime for neural codecs (process-wide: the first engine decides).
    pub neural: crate::neural::RuntimeOptions,
}

impl Default for Options {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Options {
            zstd_level: 3,
            cache_bytes: 128 << 20,
            dirty_limit: 64 << 20,
            workers: cpus,
            index_cache: 32 << 20,
            pack_max: journal::PACK_MAX,
            background: true,
            default_policy: crate::policy::Policy::default(),
            idle_secs: 60,
            codecs_disabled: Vec::new(),
            key: None,
            neural: crate::neural::RuntimeOptions::default(),
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

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: Kind,
    pub name: Vec<u8>,
    /// Position to resume after this entry.
    pub offset: u64,
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
    /// Namespace lock and number allocators (`namespace`).
    ns: namespace::Names,
    /// Readers hold it shared across an index lookup and the pack read it leads to, so
    /// compaction (exclusive) never deletes a pack under a reader.
    gc: RwLock<()>,
    /// The read path's cache, read-ahead and decode limits (`read`).
    reads: read::ReadPath,
    jobs: Mutex<Option<Sender<Job>>>,
    /// Bytes written but not yet committed, and the writers waiting for room (`write`).
    budget: write::DirtyBudget,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    started: Instant,
    pub recovery: Recovery,
    /// Effective policies by directory (`policy`).
    policies: policy::PolicyCache,
    /// Background recompression's queue and counters (`recompress`).
    recomp: recompress::RecompressState,
    /// The store's filesystem: the reserve and admission of new data.
    space: space::Space,
    /// Something was deleted while space is short: compact soon.
    reclaim: AtomicBool,
    /// One compaction at a time (background, pressure and `idcfs compact`).
    compacting: Mutex<()>,
    /// Pack and size of the newest checkpoint written by compaction (needed, so not garbage).
    last_checkpoint: Mutex<(crate::store::PackId, u64)>,
    /// `shutdown` completed.
    closed: AtomicBool,
    /// Tells the kernel to drop its cached pages and attributes of an inode whose content
    /// the engine changed on its own (lossy recompression); set by the FUSE layer.
    invalidator: RwLock<Option<Invalidator>>,
}

/// A callback that drops the kernel's cache of an inode: its pages, and the entries
/// (parent, name) that name it, so that its next lookup reads its attributes afresh (with the
/// write-back cache the kernel keeps its own idea of a cached inode's size).
pub type Invalidator = Box<dyn Fn(Ino, &[(Ino, Vec<u8>)]) + Send + Sync>;

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
    // A lock held under our own pid was released by a store this process closed; a child
    // forked by another thread may still share that descriptor until it execs, so wait a
    // little for it. Another process's lock fails at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY-free: flock through libc on a valid fd.
        if unsafe_flock(f.as_raw_fd()) == 0 {
            break;
        }
        let mut s = String::new();
        let _ = f.seek(std::io::SeekFrom::Start(0));
        let _ = f.read_to_string(&mut s);
        if s.trim() == std::process::id().to_string() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
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
        // Before the registry: the neural codecs' availability depends on it. A missing
        // runtime is logged once and only makes those codecs unavailable.
        let _ = crate::neural::init(&opts.neural);
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
                &dir.join(crate::store::manifest::INDEX_FILE),
                dir,
                opts.index_cache,
                pack_max,
                opts.key.clone(),
            ),
            None => Journal::open(dir, opts.index_cache, pack_max, opts.key.clone()),
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
            reads: read::ReadPath::new(opts.cache_bytes),
            budget: write::DirtyBudget::new(opts.dirty_limit),
            opts,
            store_dir: dir.to_path_buf(),
            _lock: lock,
            files: Mutex::new(HashMap::new()),
            ns: namespace::Names::new(next_ino, next_cookie),
            gc: RwLock::new(()),
            jobs: Mutex::new(None),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            started: Instant::now(),
            recovery,
            policies: Default::default(),
            recomp: Default::default(),
            space,
            reclaim: AtomicBool::new(false),
            compacting: Mutex::new(()),
            last_checkpoint: Mutex::new((0, 0)),
            closed: AtomicBool::new(false),
            invalidator: RwLock::new(None),
        });
        e.ensure_root()?;
        e.recover_marks()?;
        e.space.ensure();
        if !e.space.roomy() {
            // Index updates share commits only with plenty of room on the disk (the syncer
            // keeps it so).
            e.j.index.set_batching(false)?;
        }
        e.start_threads()?;
        Ok(e)
    }

    /// Install the callback that drops the kernel's cache of an inode (the FUSE layer's
    /// notifier); without one (tests without a mount) nothing is cached outside the engine.
    pub fn set_invalidator(&self, f: Invalidator) {
        *self.invalidator.write() = Some(f);
    }

    /// The engine changed `ino`'s content or size by itself: drop the kernel's copies.
    pub(crate) fn invalidate_kernel_cache(&self, ino: Ino) {
        if let Some(f) = self.invalidator.read().as_ref() {
            // Every name of the inode (hard links too): a scan, only done for such changes.
            let names: Vec<(Ino, Vec<u8>)> = self
                .j
                .index
                .all_dirents()
                .filter_map(|d| d.ok())
                .filter(|(_, _, d)| d.ino == ino)
                .map(|(parent, name, _)| (parent, name))
                .collect();
            f(ino, &names);
        }
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
        *self.reads.prefetch.lock() = Some(ptx);
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
            // Index updates share commits only with plenty of room on the disk: a commit
            // that fails for lack of space must not take other updates with it (see `meta`).
            let batch = self.space.roomy();
            if batch != self.j.index.batching() {
                if let Err(e) = self.j.index.set_batching(batch) {
                    tracing::warn!("committing waiting index updates failed: {e}");
                }
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
            // Garbage goes back once the mount has been idle a few seconds (never under
            // foreground I/O), and regardless after a minute.
            // Not while a file is being recompressed (its commit would find its blocks moved),
            // unless that has gone on for five minutes.
            let idle = self.quiet_for(Duration::from_secs(3));
            let recoding = self.recomp.is_active();
            if idle && !recoding {
                if let Err(e) = self.seal_idle() {
                    tracing::warn!("sealing the active pack failed: {e}");
                }
            }
            let every = Duration::from_secs(if recoding { 300 } else { 60 });
            if (idle && !recoding && last_compact.elapsed() >= Duration::from_secs(10))
                || last_compact.elapsed() >= every
            {
                let r = if idle {
                    self.compact_idle()
                } else {
                    self.compact(false)
                };
                if let Err(e) = r {
                    tracing::warn!("background compaction failed: {e}");
                }
                last_compact = Instant::now();
            }
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
        // Background checkpoints compact the index file once it has grown by half.
        self.checkpoint_index_compacting(150)
    }

    /// `checkpoint_index_freeing`, compacting the index file if it has grown to `growth_pct`
    /// percent of its size after the last compaction.
    fn checkpoint_index_compacting(&self, growth_pct: u64) -> Result<()> {
        if self.space.meta_low() {
            // Before the flush: redb keeps the first I/O error it meets and fails every
            // later operation with it, so it must not meet ENOSPC at all.
            self.space
                .release("flushing the metadata index on a full store");
        }
        // The index file is compacted (when bloated) only with room to spare.
        let compact = (!self.space.meta_low()).then_some(growth_pct);
        retry_enospc(&self.space, "flushing the metadata index", || {
            self.j.checkpoint_index_with(compact)
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
            // Sealed packs still go up, and a lease is released.
            if let Err(e) = self.j.log.backend().close() {
                tracing::error!("closing the pack backend: {e}");
            }
            self.closed.store(true, Ordering::Relaxed);
            return Ok(());
        }
        self.checkpoint_index_freeing()?;
        retry_enospc(&self.space, "flushing the metadata index", || {
            self.j.index.mark_clean()
        })?;
        // A remote backend uploads what is left and releases its lease.
        self.j.log.backend().close()?;
        self.closed.store(true, Ordering::Relaxed);
        tracing::info!("store {} flushed", self.store_dir.display());
        Ok(())
    }

    /// Stop the background threads without flushing anything (what a power cut leaves is
    /// then up to the disk; used by crash simulation). Idempotent.
    pub fn halt(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.jobs.lock().take();
        self.reads.prefetch.lock().take();
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }

    /// Make the index durable without syncing the journal first (what a flush racing a power
    /// cut can leave). Crash tests use it to put the index ahead of the durable journal.
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
                tracing::error!(path = %self.log_name(st.ino), "flush failed: {e}");
                first_err.get_or_insert(e);
            }
        }
        self.checkpoint_index_freeing()?;
        // `idcfs umount` flushes through here: acknowledged writes reach the final home.
        self.j.persist(true)?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Run `f`; when it fails for lack of space and releasing the reserve frees some, once more.
fn retry_enospc<T>(sp: &space::Space, why: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    match f() {
        Err(e) if space::is_enospc(&e) && sp.release(why) => f(),
        r => r,
    }
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
