//! Pack files in an S3-compatible object store (`--store s3://bucket/prefix`), through the
//! `object_store` crate, with a local cache directory.
//!
//! What it owns: the bucket layout under the prefix, the local cache directory's `packs/`
//! (packs not yet uploaded) and `chunks/` (the read cache), the upload queue, the writer
//! lease, and a tokio runtime of its own (the trait is synchronous: its methods `block_on`
//! that runtime and are never called from inside it).
//!
//! Bucket layout (`FORMAT.md`, "Object-store layout"):
//! ```text
//! PREFIX/MANIFEST                   "idcfs-object-store 1"
//! PREFIX/lease                      the writer's lease (JSON: host, pid, cache, since)
//! PREFIX/keys.json                  an encrypted store's wrapped key (as in a local store)
//! PREFIX/writer                     id of the cache directory that wrote last (a cache
//!                                   that is not it is stale and is read again)
//! PREFIX/packs/XXXXXXXX.pack        a sealed pack: the same bytes as a local pack file
//! PREFIX/packs/XXXXXXXX.seg/OOOO…   a segment of the active pack, starting at offset OOOO…
//!                                   (16 hex digits): what fsync made durable before sealing
//! ```
//! Invariants:
//! - Pack and segment objects are never modified: a sealed pack is uploaded whole (again
//!   with the same bytes only when a crash came between its upload and the cleanup), and its
//!   segments are deleted only after that upload succeeded. (`lease` and `writer` are the
//!   only objects overwritten.)
//! - A local pack file is deleted only after its whole object is in the bucket.
//! - The segments of a pack are contiguous from offset 0 and concatenate to a prefix of the
//!   pack's bytes (only completed appends are uploaded; a truncation below what was uploaded
//!   replaces them).
//! - At open, a pack that exists only as segments is rebuilt into the cache from them; every
//!   local pack but the newest is sealed and queued for upload.
//! - Reads wait for the store a bounded time (the configured timeout per request, twice
//!   when a read-ahead of the same chunk was in flight) and then fail with EIO, never hang.
//! - The lease is created with a conditional PUT where the server honours one (probed at
//!   each open); where it does not (Garage 2.5.0), by a check, a PUT and a read-back, which is
//!   weaker and said so in the log.
//! - Writers are never stopped by a full backlog, only slowed: once the bytes not yet in the
//!   bucket pass half the cache size, each write taken in by the engine pauses in proportion
//!   to its size and to how far they are over that soft limit, at most `MAX_APPEND_DELAY`
//!   per write (`admit_delay`, outside every lock); past the cache size appends pause too
//!   (under the commit lock: what pacing at admission did not hold back, e.g. recompression).
//! - Reads of uploaded packs go through 2 MiB chunks: the last few in memory, the rest in
//!   `chunks/` (LRU, bounded by the cache size); a sequential reader gets the next chunks
//!   fetched in parallel.

use super::{BackendStatus, PackAppender, PackBackend, PackId};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjPath;
use object_store::{
    ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Granularity of the read cache and of remote reads: large enough that sequential scans
/// (replay, rebuild, compaction) cost one GET per 2 MiB, not two per record.
const CHUNK: u64 = 2 << 20;
/// Chunks kept in memory after a fetch (sequential scans and read-ahead reuse them).
const HOT_CHUNKS: usize = 8;
const FETCH_LOCKS: usize = 16;
/// Chunks a sequential reader gets fetched ahead of it, in parallel.
const READ_AHEAD: u64 = 4;
const MANIFEST_TEXT: &str = "idcfs-object-store 1\n";
/// Writers are slowed once the upload backlog passes this fraction of the cache size.
const SOFT_BACKLOG: f64 = 0.5;
/// Longest pause of one append: an unreachable store slows writers to a crawl, never to a
/// stop (the cache grows instead).
const MAX_APPEND_DELAY: Duration = Duration::from_millis(250);
/// Floor of the upload-rate estimate (bytes/s): with nothing drained lately (a store that
/// is down) the pauses stay finite.
const MIN_UPLOAD_RATE: f64 = 1e6;
/// The estimate before the first upload completed (which then replaces it).
const INITIAL_UPLOAD_RATE: f64 = 50e6;

/// How to reach the bucket and how to cache it.
#[derive(Clone, Debug)]
pub struct ObjectConfig {
    /// `s3://bucket/prefix`.
    pub url: String,
    /// Local cache directory (packs not yet uploaded, the read cache; the index beside them).
    pub cache_dir: PathBuf,
    /// Read-cache bound in bytes; also the upload backlog at which writers go no faster than
    /// the uploads drain (they are slowed progressively from half of it).
    pub cache_bytes: u64,
    /// `--fsync=local`: fsync returns once data is on local disk (weaker: see README).
    pub fsync_local: bool,
    /// Bound on one remote operation as a caller sees it (reads, fsync).
    pub timeout: Duration,
    /// Concurrent uploads.
    pub uploads: usize,
    /// Take the lease even when another holder has it.
    pub break_lease: bool,
}

impl ObjectConfig {
    pub fn new(url: &str, cache_dir: &Path) -> ObjectConfig {
        ObjectConfig {
            url: url.to_string(),
            cache_dir: cache_dir.to_path_buf(),
            cache_bytes: 1 << 30,
            fsync_local: false,
            timeout: Duration::from_secs(30),
            uploads: 4,
            break_lease: false,
        }
    }
}

/// Split `s3://bucket/prefix` into bucket and prefix (without slashes at the ends).
pub fn parse_url(url: &str) -> io::Result<(String, String)> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url}: an object store is named s3://bucket/prefix"),
        )
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url}: no bucket name"),
        ));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// A client of the bucket in `cfg.url` (endpoint, region, credentials from the AWS_*
/// environment) on a runtime of its own; with the prefix.
fn connect(
    cfg: &ObjectConfig,
) -> io::Result<(tokio::runtime::Runtime, Arc<dyn ObjectStore>, String)> {
    let (bucket, prefix) = parse_url(&cfg.url)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("idcfs-s3")
        .enable_all()
        .build()?;
    let retry = RetryConfig {
        max_retries: 10,
        retry_timeout: cfg.timeout,
        ..RetryConfig::default()
    };
    // Set through the config keys: a whole `ClientOptions` would replace what the
    // environment set (AWS_ALLOW_HTTP among others). Humantime durations.
    let secs = |d: Duration| format!("{}s", d.as_secs().max(1));
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(&bucket)
        .with_retry(retry)
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            secs(cfg.timeout.max(Duration::from_secs(120))),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            secs(cfg.timeout.min(Duration::from_secs(5))),
        )
        .build()
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("object store {}: {e}", cfg.url),
            )
        })?;
    Ok((rt, Arc::new(store), prefix))
}

/// The key file of an encrypted store in the bucket (`PREFIX/keys.json`: the master key
/// wrapped by the passphrase or key file, as in a local store): copied into the cache
/// directory when the bucket has one. Returns whether it has.
pub fn fetch_keys(cfg: &ObjectConfig, name: &str) -> io::Result<bool> {
    let (rt, store, prefix) = connect(cfg)?;
    let obj = obj_path(&prefix, name);
    let r = rt.block_on(async {
        tokio::time::timeout(cfg.timeout, async { store.get(&obj).await?.bytes().await }).await
    });
    let bytes = match r {
        Ok(Ok(b)) => b,
        Ok(Err(object_store::Error::NotFound { .. })) => return Ok(false),
        Ok(Err(e)) => return Err(other(format!("object store: GET {obj}: {e}"))),
        Err(_) => return Err(timed_out(&format!("GET {obj}"), cfg.timeout)),
    };
    fs::create_dir_all(&cfg.cache_dir)?;
    let dest = cfg.cache_dir.join(name);
    let tmp = dest.with_extension("tmp");
    fs::write(&tmp, &bytes)?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, &dest)?;
    Ok(true)
}

/// Put a new store's key file into the bucket, only if there is none (conditional PUT), and
/// only into a bucket prefix that holds no packs yet.
pub fn publish_keys(cfg: &ObjectConfig, name: &str) -> io::Result<()> {
    let (rt, store, prefix) = connect(cfg)?;
    let packs = obj_path(&prefix, "packs");
    let listed = rt.block_on(async {
        tokio::time::timeout(cfg.timeout, async {
            store.list(Some(&packs)).try_collect::<Vec<_>>().await
        })
        .await
    });
    match listed {
        Ok(Ok(v)) if v.is_empty() => {}
        Ok(Ok(_)) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already holds a store, which is not encrypted: encryption is chosen when a store is created", cfg.url),
            ))
        }
        Ok(Err(e)) => return Err(other(format!("object store: LIST: {e}"))),
        Err(_) => return Err(timed_out("LIST", cfg.timeout)),
    }
    let body = fs::read(cfg.cache_dir.join(name))?;
    let obj = obj_path(&prefix, name);
    let r = rt.block_on(async {
        tokio::time::timeout(
            cfg.timeout,
            store.put_opts(
                &obj,
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            ),
        )
        .await
    });
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(other(format!("object store: PUT {obj}: {e}"))),
        Err(_) => Err(timed_out(&format!("PUT {obj}"), cfg.timeout)),
    }
}

fn obj_path(prefix: &str, rel: &str) -> ObjPath {
    if prefix.is_empty() {
        ObjPath::from(rel)
    } else {
        ObjPath::from(format!("{prefix}/{rel}"))
    }
}

/// Is `s` an object-store URL rather than a directory?
pub fn is_url(s: &str) -> bool {
    s.starts_with("s3://")
}

#[derive(Default)]
struct State {
    /// Sealed packs in the bucket, with their lengths.
    remote: BTreeMap<PackId, u64>,
    /// Packs in the local cache: the active one and sealed ones awaiting upload.
    local: BTreeMap<PackId, LocalPack>,
    /// Uploads in flight.
    uploading: HashSet<PackId>,
    /// Failed uploads: retry not before this time, and how many attempts failed.
    retry_at: HashMap<PackId, (Instant, u32)>,
    /// Segment objects of packs not yet uploaded whole: (offset, length), ascending.
    segments: BTreeMap<PackId, Vec<(u64, u64)>>,
}

struct LocalPack {
    file: Arc<File>,
    sealed: bool,
    /// Bytes appended completely (what a segment may include).
    appended: Arc<AtomicU64>,
}

#[derive(Default)]
struct Counters {
    puts: AtomicU64,
    gets: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
}

/// A chunk of a pack: (pack, chunk index).
type ChunkKey = (PackId, u64);

struct ChunkCache {
    lru: lru::LruCache<(PackId, u64), u64>,
    bytes: u64,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    cfg: ObjectConfig,
    packs_dir: PathBuf,
    chunks_dir: PathBuf,
    rt: tokio::runtime::Runtime,
    state: Mutex<State>,
    /// Signalled when an upload finishes or a pack is sealed.
    changed: Condvar,
    /// One tail-segment upload at a time (later fsyncs find their bytes already covered).
    tail: Mutex<()>,
    chunks: Mutex<ChunkCache>,
    /// Chunks being read ahead.
    prefetching: Mutex<HashSet<ChunkKey>>,
    /// Chunk fetches in progress, striped by chunk.
    fetching: [Mutex<()>; FETCH_LOCKS],
    /// The chunks fetched last, newest first (at most `HOT_CHUNKS`).
    hot: Mutex<std::collections::VecDeque<(ChunkKey, Arc<Vec<u8>>)>>,
    counters: Counters,
    health: Mutex<(bool, Option<String>)>,
    stop: AtomicBool,
    lease_held: AtomicBool,
    /// Upload throughput estimate for the writer throttle.
    rate: Mutex<UploadRate>,
    /// The old backpressure (a writer waits at each seal while the backlog exceeds the cache
    /// size), kept only to compare against in benchmarks: `IDCFS_BACKLOG=stall`.
    stall_at_seal: bool,
}

/// How fast the uploader drains the backlog: bytes per second over all concurrent uploads,
/// smoothed over the last few completed uploads (not sampled over time: one 64 MiB PUT
/// completes at once, and a time-sampled rate would read zero while it is in flight).
struct UploadRate {
    per_sec: f64,
    /// Whether an upload completed yet (the first one replaces the initial guess outright).
    measured: bool,
    /// When the backlog-over-the-cache-size warning was logged last.
    warned: Option<Instant>,
    /// The writers' pacing schedule: when the next paced write may go. Shared by every
    /// writer thread, so concurrent writes are paced together, not each on its own.
    next: Option<Instant>,
}

/// The object-store pack backend.
pub struct ObjectBackend {
    inner: Arc<Inner>,
    uploader: Mutex<Option<std::thread::JoinHandle<()>>>,
    closed: AtomicBool,
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

fn timed_out(what: &str, t: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("object store: {what} did not complete within {t:?}"),
    )
}

impl Inner {
    fn path(&self, rel: &str) -> ObjPath {
        obj_path(&self.prefix, rel)
    }

    fn pack_obj(&self, pack: PackId) -> ObjPath {
        self.path(&format!("packs/{pack:08x}.pack"))
    }

    fn seg_obj(&self, pack: PackId, off: u64) -> ObjPath {
        self.path(&format!("packs/{pack:08x}.seg/{off:016x}"))
    }

    fn local_path(&self, pack: PackId) -> PathBuf {
        self.packs_dir.join(format!("{pack:08x}.pack"))
    }

    fn chunk_path(&self, pack: PackId, idx: u64) -> PathBuf {
        self.chunks_dir.join(format!("{pack:08x}-{idx:08x}"))
    }

    /// Run a remote operation with a time bound, noting the store's health.
    fn run<T>(
        &self,
        what: &str,
        limit: Duration,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> io::Result<T> {
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(limit, fut).await });
        match r {
            Ok(Ok(v)) => {
                *self.health.lock() = (true, None);
                Ok(v)
            }
            Ok(Err(e)) => {
                let err = match e {
                    object_store::Error::NotFound { .. } => {
                        io::Error::new(io::ErrorKind::NotFound, format!("{what}: {e}"))
                    }
                    object_store::Error::AlreadyExists { .. } => {
                        io::Error::new(io::ErrorKind::AlreadyExists, format!("{what}: {e}"))
                    }
                    e => {
                        *self.health.lock() = (false, Some(format!("{what}: {e}")));
                        other(format!("object store: {what}: {e}"))
                    }
                };
                Err(err)
            }
            Err(_) => {
                *self.health.lock() = (false, Some(format!("{what}: timed out")));
                Err(timed_out(what, limit))
            }
        }
    }

    fn put(&self, obj: &ObjPath, data: Vec<u8>, mode: PutMode, limit: Duration) -> io::Result<()> {
        let n = data.len() as u64;
        let payload = PutPayload::from(data);
        let opts = PutOptions::from(mode);
        self.run(
            &format!("PUT {obj}"),
            limit,
            self.store.put_opts(obj, payload, opts),
        )?;
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        self.counters.up.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    fn get_range(&self, obj: &ObjPath, start: u64, end: u64) -> io::Result<bytes::Bytes> {
        let b = self.run(
            &format!("GET {obj}"),
            self.cfg.timeout,
            self.store.get_range(obj, start..end),
        )?;
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.counters
            .down
            .fetch_add(b.len() as u64, Ordering::Relaxed);
        if b.len() as u64 != end - start {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{obj}: short read"),
            ));
        }
        Ok(b)
    }

    fn get_all(&self, obj: &ObjPath) -> io::Result<bytes::Bytes> {
        let store = self.store.clone();
        let o = obj.clone();
        let b = self.run(&format!("GET {obj}"), self.cfg.timeout, async move {
            store.get(&o).await?.bytes().await
        })?;
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.counters
            .down
            .fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }

    fn delete(&self, obj: &ObjPath) -> io::Result<()> {
        match self.run(
            &format!("DELETE {obj}"),
            self.cfg.timeout,
            self.store.delete(obj),
        ) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Every object under the prefix's `packs/`: (name relative to `packs/`, size).
    fn list_packs(&self) -> io::Result<Vec<(String, u64)>> {
        let base = self.path("packs");
        let store = self.store.clone();
        let b = base.clone();
        let metas: Vec<object_store::ObjectMeta> =
            self.run("LIST packs", self.cfg.timeout, async move {
                store.list(Some(&b)).try_collect::<Vec<_>>().await
            })?;
        let base_s = format!("{base}/");
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let s = m.location.to_string();
                s.strip_prefix(&base_s).map(|r| (r.to_string(), m.size))
            })
            .collect())
    }

    /// Fill `out` from offset `c_off` of chunk `idx` of a sealed remote pack: from the chunks
    /// just fetched (memory), the cache directory (a ranged read of the chunk file), or the
    /// store (one GET of the whole chunk, then cached).
    fn hot_chunk(&self, key: ChunkKey) -> Option<Arc<Vec<u8>>> {
        self.hot
            .lock()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, c)| c.clone())
    }

    fn read_chunk(
        self: &Arc<Self>,
        pack: PackId,
        idx: u64,
        pack_len: u64,
        c_off: usize,
        out: &mut [u8],
    ) -> io::Result<()> {
        let key = (pack, idx);
        // A sequential reader (the chunk before this one was read recently) gets the next
        // chunks fetched in parallel ahead of it: one GET at a time is slow on any store.
        if idx > 0 && self.hot_chunk((pack, idx - 1)).is_some() {
            self.prefetch(pack, idx + 1, pack_len);
        }
        if let Some(c) = self.hot_chunk(key) {
            out.copy_from_slice(&c[c_off..c_off + out.len()]);
            return Ok(());
        }
        let p = self.chunk_path(pack, idx);
        if self.chunks.lock().lru.get(&key).is_some() {
            if let Ok(()) = File::open(&p).and_then(|f| f.read_exact_at(out, c_off as u64)) {
                return Ok(());
            }
        }
        // A read-ahead of this chunk in flight: wait for it (bounded) rather than fetch twice.
        let waited = Instant::now();
        while self.prefetching.lock().contains(&key) && waited.elapsed() < self.cfg.timeout {
            std::thread::sleep(Duration::from_millis(2));
        }
        // One fetch per chunk at a time: the reader and the read-ahead threads often want the
        // same chunk together; the ones that waited find it in memory.
        let _f = self.fetching[(pack as usize * 31 + idx as usize) % FETCH_LOCKS].lock();
        if let Some(c) = self.hot_chunk(key) {
            out.copy_from_slice(&c[c_off..c_off + out.len()]);
            return Ok(());
        }
        let start = idx * CHUNK;
        let end = (start + CHUNK).min(pack_len);
        let b = Arc::new(self.get_range(&self.pack_obj(pack), start, end)?.to_vec());
        out.copy_from_slice(&b[c_off..c_off + out.len()]);
        self.keep_chunk(key, b);
        Ok(())
    }

    /// A fetched chunk goes into memory (sequential scans read it record by record) and into
    /// the cache directory (best effort: a chunk that cannot be stored is fetched again).
    fn keep_chunk(&self, key: ChunkKey, b: Arc<Vec<u8>>) {
        {
            let mut h = self.hot.lock();
            h.retain(|(k, _)| *k != key);
            h.push_front((key, b.clone()));
            h.truncate(HOT_CHUNKS);
        }
        let p = self.chunk_path(key.0, key.1);
        let tmp = p.with_extension("tmp");
        if fs::write(&tmp, &*b)
            .and_then(|_| fs::rename(&tmp, &p))
            .is_ok()
        {
            let mut c = self.chunks.lock();
            if let Some(old) = c.lru.put(key, b.len() as u64) {
                c.bytes -= old;
            }
            c.bytes += b.len() as u64;
            while c.bytes > self.cfg.cache_bytes {
                match c.lru.pop_lru() {
                    Some(((pk, ix), n)) => {
                        c.bytes -= n;
                        let _ = fs::remove_file(self.chunk_path(pk, ix));
                    }
                    None => break,
                }
            }
        }
    }

    /// Fetch chunks `from..from + READ_AHEAD` of `pack` in the background, in parallel (the
    /// ones not cached or in flight already). Failures are dropped: a reader fetches again.
    fn prefetch(self: &Arc<Self>, pack: PackId, from: u64, pack_len: u64) {
        if pack_len == 0 || self.stop.load(Ordering::Relaxed) {
            return;
        }
        let last = (pack_len - 1) / CHUNK;
        let mut want = Vec::new();
        for i in from..=(from + READ_AHEAD - 1).min(last) {
            let key = (pack, i);
            if self.hot_chunk(key).is_some() || self.chunks.lock().lru.contains(&key) {
                continue;
            }
            if self.prefetching.lock().insert(key) {
                want.push(key);
            }
        }
        if want.is_empty() {
            return;
        }
        let me = self.clone();
        // A thread of its own (not a tokio worker): it blocks on the runtime, then writes the
        // chunks to the cache directory.
        let spawned = std::thread::Builder::new()
            .name("idcfs-s3-ahead".into())
            .spawn(move || {
                let obj = me.pack_obj(pack);
                let gets =
                    want.iter().map(|&(_, i)| {
                        let start = i * CHUNK;
                        let end = (start + CHUNK).min(pack_len);
                        let store = me.store.clone();
                        let obj = obj.clone();
                        let limit = me.cfg.timeout;
                        async move {
                            tokio::time::timeout(limit, store.get_range(&obj, start..end)).await
                        }
                    });
                let got = me.rt.block_on(futures::future::join_all(gets));
                for (key, r) in want.iter().zip(got) {
                    if let Ok(Ok(b)) = r {
                        me.counters.gets.fetch_add(1, Ordering::Relaxed);
                        me.counters
                            .down
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                        me.keep_chunk(*key, Arc::new(b.to_vec()));
                    }
                    me.prefetching.lock().remove(key);
                }
            });
        if spawned.is_err() {
            self.prefetching.lock().retain(|k| k.0 != pack);
        }
    }

    fn drop_chunks(&self, pack: PackId) {
        self.hot.lock().retain(|((p, _), _)| *p != pack);
        let mut c = self.chunks.lock();
        let keys: Vec<(PackId, u64)> = c
            .lru
            .iter()
            .filter(|((p, _), _)| *p == pack)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(n) = c.lru.pop(&k) {
                c.bytes -= n;
                let _ = fs::remove_file(self.chunk_path(k.0, k.1));
            }
        }
    }

    /// Upload one sealed local pack whole, then drop its segments and its local copy.
    fn upload(&self, pack: PackId) -> io::Result<()> {
        let file = match self.state.lock().local.get(&pack) {
            Some(l) => l.file.clone(),
            None => return Ok(()),
        };
        let len = file.metadata()?.len();
        let mut data = vec![0u8; len as usize];
        file.read_exact_at(&mut data, 0)?;
        let limit = self.cfg.timeout.max(Duration::from_secs(120));
        let t0 = Instant::now();
        self.put(&self.pack_obj(pack), data, PutMode::Overwrite, limit)?;
        let parallel = self.state.lock().uploading.len();
        self.note_upload(len, t0.elapsed(), parallel);
        let segs = {
            let mut st = self.state.lock();
            st.remote.insert(pack, len);
            st.local.remove(&pack);
            st.retry_at.remove(&pack);
            st.segments.remove(&pack).unwrap_or_default()
        };
        // Superseded by the whole object: left-over segments are only clutter (open ignores
        // segments of a pack that exists whole).
        for (off, _) in segs {
            if let Err(e) = self.delete(&self.seg_obj(pack, off)) {
                tracing::debug!(pack, off, "deleting an uploaded pack's segment: {e}");
            }
        }
        let _ = fs::remove_file(self.local_path(pack));
        tracing::debug!(pack, len, "pack uploaded");
        Ok(())
    }

    /// Bytes in the cache not yet in the bucket: the sealed packs waiting for upload and the
    /// active pack's bytes past its uploaded segments. What the throttle looks at: it grows
    /// with every append, not in steps of a whole pack at each seal.
    fn pending_bytes(&self) -> u64 {
        let st = self.state.lock();
        st.local
            .iter()
            .map(|(p, l)| {
                let done = if l.sealed {
                    0
                } else {
                    st.segments
                        .get(p)
                        .and_then(|s| s.last())
                        .map_or(0, |(o, n)| o + n)
                };
                l.appended.load(Ordering::Relaxed).saturating_sub(done)
            })
            .sum()
    }

    /// Sealed local packs waiting for upload, and their bytes.
    fn backlog(&self) -> (u64, u64) {
        let st = self.state.lock();
        let mut n = 0;
        let mut bytes = 0;
        for l in st.local.values().filter(|l| l.sealed) {
            n += 1;
            bytes += l.appended.load(Ordering::Relaxed);
        }
        (n, bytes)
    }

    /// Bytes per second the uploader drains (at least `MIN_UPLOAD_RATE`).
    fn upload_rate(&self) -> f64 {
        self.rate.lock().per_sec.max(MIN_UPLOAD_RATE)
    }

    /// Note a completed upload of `len` bytes that took `took`, `parallel` uploads running.
    fn note_upload(&self, len: u64, took: Duration, parallel: usize) {
        let now = len as f64 / took.as_secs_f64().max(1e-3) * parallel.max(1) as f64;
        let mut r = self.rate.lock();
        r.per_sec = if r.measured {
            0.7 * r.per_sec + 0.3 * now
        } else {
            now
        };
        r.measured = true;
        tracing::debug!(len, ?took, parallel, rate = r.per_sec, "upload rate");
    }

    /// Slow a writer that appended `n` bytes, progressively: nothing while the upload
    /// backlog is under `SOFT_BACKLOG` of the cache size; beyond it, a pause of
    /// `n / upload rate` times how far the backlog is into the band between the soft limit
    /// and the cache size. At the cache size a writer goes no faster than the uploads drain,
    /// so the backlog settles inside the band instead of writers running into a wall (the
    /// old behaviour: full speed, then a stall of up to the timeout at each sealed pack).
    fn delay(&self, n: u64) -> Duration {
        let backlog = self.pending_bytes();
        let hard = self.cfg.cache_bytes as f64;
        let soft = hard * SOFT_BACKLOG;
        if (backlog as f64) <= soft {
            return Duration::ZERO;
        }
        let over = (backlog as f64 - soft) / (hard - soft).max(1.0);
        if over > 1.0 {
            let mut r = self.rate.lock();
            if r.warned
                .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
            {
                r.warned = Some(Instant::now());
                tracing::warn!(
                    backlog,
                    "the upload backlog exceeds the cache size: writers are slowed (is the object store reachable?)"
                );
            }
        }
        // Writers get rate × (1 − over) / over: the upload rate at the middle of the band,
        // less and less towards the cache size, so the backlog settles inside the band even
        // when the rate estimate runs high.
        let factor = (over / (1.0 - over).max(0.05)).min(20.0);
        let cost = Duration::from_secs_f64(n as f64 * factor / self.upload_rate());
        let now = Instant::now();
        let mut r = self.rate.lock();
        let start = r.next.map_or(now, |t| t.max(now));
        let until = start + cost;
        r.next = Some(until);
        drop(r);
        let pause = until.saturating_duration_since(now).min(MAX_APPEND_DELAY);
        if pause < Duration::from_micros(50) {
            return Duration::ZERO;
        }
        tracing::trace!(n, backlog, over, ?pause, "writer slowed");
        pause
    }

    /// The safety net at append (under the journal's commit lock, so only past the cache
    /// size): what writers' pacing at admission (`admit_delay`) did not hold back, such as
    /// background recompression's output, is slowed here.
    fn throttle(&self, n: u64) {
        if self.pending_bytes() > self.cfg.cache_bytes {
            std::thread::sleep(self.delay(n));
        }
    }

    /// The old backpressure (`IDCFS_BACKLOG=stall`, benchmarks only): wait at a seal while
    /// the backlog exceeds the cache size, for at most the timeout.
    fn stall_until_drained(&self) {
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            let (_, bytes) = self.backlog();
            if bytes <= self.cfg.cache_bytes || Instant::now() >= deadline {
                return;
            }
            let mut st = self.state.lock();
            self.changed.wait_for(&mut st, Duration::from_millis(100));
        }
    }

    /// The uploader: sealed packs go up with bounded concurrency; a failed upload stays in
    /// the cache and is retried with backoff.
    fn upload_loop(self: &Arc<Self>) {
        while !self.stop.load(Ordering::Relaxed) {
            let batch: Vec<PackId> = {
                let mut st = self.state.lock();
                let now = Instant::now();
                let ready: Vec<PackId> = st
                    .local
                    .iter()
                    .filter(|(p, l)| {
                        l.sealed
                            && !st.uploading.contains(p)
                            && st.retry_at.get(p).is_none_or(|(t, _)| *t <= now)
                    })
                    .map(|(p, _)| *p)
                    .take(self.cfg.uploads.max(1))
                    .collect();
                if ready.is_empty() {
                    self.changed.wait_for(&mut st, Duration::from_millis(200));
                    continue;
                }
                for p in &ready {
                    st.uploading.insert(*p);
                }
                ready
            };
            let handles: Vec<_> = batch
                .iter()
                .map(|&p| {
                    let me = self.clone();
                    std::thread::spawn(move || (p, me.upload(p)))
                })
                .collect();
            for h in handles {
                let Ok((p, r)) = h.join() else { continue };
                let mut st = self.state.lock();
                st.uploading.remove(&p);
                if let Err(e) = r {
                    let tries = st.retry_at.get(&p).map_or(0, |(_, n)| *n) + 1;
                    let wait = Duration::from_millis(500u64 << tries.min(6));
                    tracing::warn!(pack = p, tries, "upload failed, retrying in {wait:?}: {e}");
                    st.retry_at.insert(p, (Instant::now() + wait, tries));
                }
            }
            self.changed.notify_all();
        }
    }

    /// Wait until no sealed pack below `below` (all, when None) awaits upload, up to
    /// `deadline`.
    fn wait_uploads(&self, below: Option<PackId>, deadline: Instant) -> io::Result<()> {
        let mut st = self.state.lock();
        loop {
            let pending = st
                .local
                .iter()
                .any(|(id, l)| l.sealed && below.is_none_or(|b| *id < b));
            if !pending {
                return Ok(());
            }
            // Retry failed uploads now: someone is waiting for them.
            let now = Instant::now();
            for v in st.retry_at.values_mut() {
                v.0 = v.0.min(now);
            }
            self.changed.notify_all();
            if self.changed.wait_until(&mut st, deadline).timed_out() {
                let why = self.health.lock().1.clone().unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("object store: sealed packs not uploaded in time ({why}); they stay in the cache and are retried"),
                ));
            }
        }
    }

    /// Upload `pack`'s appended bytes not yet in the bucket as one segment (nothing when it
    /// was uploaded whole meanwhile).
    fn persist_tail(&self, pack: PackId) -> io::Result<()> {
        let _t = self.tail.lock();
        let (file, appended, done) = {
            let st = self.state.lock();
            let Some(l) = st.local.get(&pack) else {
                return Ok(());
            };
            let done = st
                .segments
                .get(&pack)
                .and_then(|s| s.last())
                .map_or(0, |(o, n)| o + n);
            (l.file.clone(), l.appended.load(Ordering::Acquire), done)
        };
        if appended <= done {
            return Ok(());
        }
        let mut data = vec![0u8; (appended - done) as usize];
        file.read_exact_at(&mut data, done)?;
        let obj = self.seg_obj(pack, done);
        self.put(&obj, data, PutMode::Overwrite, self.cfg.timeout)?;
        let mut st = self.state.lock();
        if st.local.contains_key(&pack) {
            st.segments
                .entry(pack)
                .or_default()
                .push((done, appended - done));
        } else {
            // Uploaded whole meanwhile: this segment is clutter.
            drop(st);
            let _ = self.delete(&obj);
        }
        Ok(())
    }

    /// Make everything appended so far durable in the bucket: sealed packs below the active
    /// one uploaded whole, the active one's tail as a segment.
    fn barrier(&self, deadline: Instant) -> io::Result<()> {
        let active = {
            let st = self.state.lock();
            st.local
                .iter()
                .rev()
                .find(|(_, l)| !l.sealed)
                .map(|(p, _)| *p)
        };
        self.wait_uploads(active, deadline)?;
        match active {
            // Sealed since: its tail as a segment is as durable as its whole upload.
            Some(p) => self.persist_tail(p),
            None => Ok(()),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct Lease {
    host: String,
    pid: u32,
    cache: String,
    since: u64,
    /// Random: tells two takers apart where the lease is taken without a conditional PUT.
    #[serde(default)]
    token: String,
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

impl ObjectBackend {
    /// Connect (endpoint, region and credentials from the AWS_* environment), take the
    /// writer lease and bring the cache in step with the bucket.
    pub fn open(cfg: ObjectConfig) -> io::Result<ObjectBackend> {
        let (rt, store, prefix) = connect(&cfg)?;
        let packs_dir = cfg.cache_dir.join("packs");
        let chunks_dir = cfg.cache_dir.join("chunks");
        fs::create_dir_all(&packs_dir)?;
        // The read cache starts empty: chunks of packs deleted meanwhile must not survive.
        let _ = fs::remove_dir_all(&chunks_dir);
        fs::create_dir_all(&chunks_dir)?;
        let inner = Arc::new(Inner {
            store,
            prefix,
            packs_dir,
            chunks_dir,
            rt,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            tail: Mutex::new(()),
            chunks: Mutex::new(ChunkCache {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            prefetching: Mutex::new(HashSet::new()),
            fetching: std::array::from_fn(|_| Mutex::new(())),
            hot: Mutex::new(Default::default()),
            counters: Counters::default(),
            health: Mutex::new((true, None)),
            stop: AtomicBool::new(false),
            lease_held: AtomicBool::new(false),
            rate: Mutex::new(UploadRate {
                per_sec: INITIAL_UPLOAD_RATE,
                measured: false,
                warned: None,
                next: None,
            }),
            stall_at_seal: std::env::var("IDCFS_BACKLOG").is_ok_and(|v| v == "stall"),
            cfg,
        });
        Self::start(inner)
    }

    fn start(inner: Arc<Inner>) -> io::Result<ObjectBackend> {
        check_manifest(&inner)?;
        take_lease(&inner)?;
        if let Err(e) = adopt_cache(&inner) {
            let _ = inner.delete(&inner.path("lease"));
            return Err(e);
        }
        let b = ObjectBackend {
            inner: inner.clone(),
            uploader: Mutex::new(None),
            closed: AtomicBool::new(false),
        };
        if let Err(e) = b.load() {
            b.release_lease();
            return Err(e);
        }
        let me = inner.clone();
        *b.uploader.lock() = Some(
            std::thread::Builder::new()
                .name("idcfs-upload".into())
                .spawn(move || me.upload_loop())?,
        );
        Ok(b)
    }

    /// Bring the cache in step with the bucket: list both, rebuild segment-only packs
    /// locally, queue sealed local packs for upload.
    fn load(&self) -> io::Result<()> {
        let inner = &self.inner;
        let mut remote = BTreeMap::new();
        let mut segments: BTreeMap<PackId, Vec<(u64, u64)>> = BTreeMap::new();
        for (name, size) in inner.list_packs()? {
            if let Some(hex) = name.strip_suffix(".pack") {
                if let Ok(id) = u32::from_str_radix(hex, 16) {
                    remote.insert(id, size);
                }
            } else if let Some((hex, off)) = name.split_once(".seg/") {
                if let (Ok(id), Ok(off)) =
                    (u32::from_str_radix(hex, 16), u64::from_str_radix(off, 16))
                {
                    segments.entry(id).or_default().push((off, size));
                }
            }
        }
        let mut local_ids = Vec::new();
        for e in fs::read_dir(&inner.packs_dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name.strip_suffix(".pack") {
                if let Ok(id) = u32::from_str_radix(hex, 16) {
                    local_ids.push(id);
                }
            }
        }
        // Segment-only packs (fsynced, never uploaded whole): keep the contiguous run from 0.
        for (id, segs) in segments.iter_mut() {
            segs.sort_unstable();
            let mut end = 0;
            segs.retain(|&(o, n)| {
                if o == end {
                    end += n;
                    true
                } else {
                    false
                }
            });
            if remote.contains_key(id) {
                continue;
            }
            let local_len = fs::metadata(inner.local_path(*id)).map_or(0, |m| m.len());
            if local_len >= end {
                // The cache holds at least what the bucket has (it is written first).
                continue;
            }
            tracing::info!(pack = id, bytes = end, "restoring a pack from its segments");
            let mut data = Vec::with_capacity(end as usize);
            for &(o, _) in segs.iter() {
                data.extend_from_slice(&inner.get_all(&inner.seg_obj(*id, o))?);
            }
            let p = inner.local_path(*id);
            let tmp = p.with_extension("tmp");
            let mut f = File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            fs::rename(&tmp, &p)?;
            File::open(&inner.packs_dir)?.sync_all()?;
            if !local_ids.contains(id) {
                local_ids.push(*id);
            }
        }
        local_ids.sort_unstable();
        let newest = local_ids
            .iter()
            .chain(remote.keys())
            .copied()
            .max()
            .unwrap_or(0);
        let mut st = inner.state.lock();
        for id in local_ids {
            let p = inner.local_path(id);
            let file = OpenOptions::new().read(true).append(true).open(&p)?;
            let len = file.metadata()?.len();
            if let Some(&rlen) = remote.get(&id) {
                if rlen >= len {
                    // Uploaded already (a crash came between the upload and the cleanup).
                    drop(file);
                    let _ = fs::remove_file(&p);
                    continue;
                }
            }
            let sealed = id < newest;
            st.local.insert(
                id,
                LocalPack {
                    file: Arc::new(file),
                    sealed,
                    appended: Arc::new(AtomicU64::new(len)),
                },
            );
        }
        for (id, segs) in segments {
            if !remote.contains_key(&id) {
                st.segments.insert(id, segs);
            }
        }
        st.remote = remote;
        let queued = st.local.values().filter(|l| l.sealed).count();
        if queued > 0 {
            tracing::info!(
                packs = queued,
                "uploading packs that were sealed but not uploaded"
            );
        }
        Ok(())
    }

    fn release_lease(&self) {
        if self.inner.lease_held.swap(false, Ordering::Relaxed) {
            if let Err(e) = self.inner.delete(&self.inner.path("lease")) {
                tracing::warn!("releasing the writer lease failed: {e}");
            }
        }
    }

    /// The backend's location, e.g. for messages.
    pub fn location(&self) -> &str {
        &self.inner.cfg.url
    }
}

fn check_manifest(inner: &Inner) -> io::Result<()> {
    let m = inner.path("MANIFEST");
    match inner.get_all(&m) {
        Ok(b) if b.as_ref() == MANIFEST_TEXT.as_bytes() => Ok(()),
        Ok(b) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: MANIFEST says {:?}; this build reads {:?} (written by a newer idcfs?)",
                inner.cfg.url,
                String::from_utf8_lossy(&b).trim(),
                MANIFEST_TEXT.trim()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match inner.put(
                &m,
                MANIFEST_TEXT.as_bytes().to_vec(),
                PutMode::Create,
                inner.cfg.timeout,
            ) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether process `pid` of this host is running (a zombie is not: it was killed and only
/// waits to be reaped).
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether the server honours a conditional PUT (`If-None-Match: *`): a create of the
/// MANIFEST, which exists, must be refused. Garage 2.5.0, for one, ignores the header and
/// overwrites (harmless here: the same bytes).
fn conditional_put_works(inner: &Inner) -> io::Result<bool> {
    match inner.put(
        &inner.path("MANIFEST"),
        MANIFEST_TEXT.as_bytes().to_vec(),
        PutMode::Create,
        inner.cfg.timeout,
    ) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(true),
        Ok(()) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How long a lease taken without a conditional PUT is left before it is read back.
const LEASE_SETTLE: Duration = Duration::from_secs(2);

/// Take the lease on a server without conditional PUTs: only when there is none, then read
/// it back after `LEASE_SETTLE` to see that no other taker overwrote it meanwhile (of two
/// racing takers, the one whose PUT landed last keeps it; the other sees it and backs off).
/// Weaker than a conditional PUT: a taker whose GET and PUT are more than `LEASE_SETTLE`
/// apart can still overwrite a lease taken in between. Returns whether we hold it.
fn take_lease_unconditionally(inner: &Inner, obj: &ObjPath, body: &[u8]) -> io::Result<bool> {
    match inner.get_all(obj) {
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    inner.put(obj, body.to_vec(), PutMode::Overwrite, inner.cfg.timeout)?;
    std::thread::sleep(LEASE_SETTLE);
    match inner.get_all(obj) {
        Ok(b) => Ok(b.as_ref() == body),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// One writer at a time: create the lease object only if it does not exist (conditional PUT;
/// a check, put and read-back where the server ignores conditional PUTs).
fn take_lease(inner: &Inner) -> io::Result<()> {
    let obj = inner.path("lease");
    let mut token = [0u8; 16];
    getrandom::fill(&mut token).map_err(|e| other(e.to_string()))?;
    let me = Lease {
        host: hostname(),
        pid: std::process::id(),
        cache: inner.cfg.cache_dir.display().to_string(),
        since: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        token: hex::encode(token),
    };
    let body = serde_json::to_vec(&me).map_err(|e| other(e.to_string()))?;
    let taken = if conditional_put_works(inner)? {
        match inner.put(&obj, body.clone(), PutMode::Create, inner.cfg.timeout) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        }
    } else {
        tracing::warn!(
            "{}: the object store ignores conditional PUTs (If-None-Match); the writer lease is taken by a check, a PUT and a read-back {LEASE_SETTLE:?} later instead, which two mounts started at the same moment could still both pass",
            inner.cfg.url
        );
        take_lease_unconditionally(inner, &obj, &body)?
    };
    if taken {
        inner.lease_held.store(true, Ordering::Relaxed);
        return Ok(());
    }
    let held = inner.get_all(&obj)?;
    let holder: Option<Lease> = serde_json::from_slice(&held).ok();
    let desc = match &holder {
        Some(h) => format!(
            "host {} pid {} (cache {}, since unix time {})",
            h.host, h.pid, h.cache, h.since
        ),
        None => format!("an unreadable lease {:?}", String::from_utf8_lossy(&held)),
    };
    // Our own host's lease whose process is gone was left by a crash of this machine.
    let stale_here = holder
        .as_ref()
        .is_some_and(|h| h.host == me.host && !process_alive(h.pid));
    if !(inner.cfg.break_lease || stale_here) {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "{} is in use by another writer: {desc}; unmount it there, or if that mount is gone for good, mount with --break-lease",
                inner.cfg.url
            ),
        ));
    }
    tracing::warn!(
        "taking over the writer lease of {} from {desc}",
        inner.cfg.url
    );
    inner.put(&obj, body, PutMode::Overwrite, inner.cfg.timeout)?;
    inner.lease_held.store(true, Ordering::Relaxed);
    Ok(())
}

/// This cache directory's identity (random, made on first use).
fn cache_id(dir: &Path) -> io::Result<String> {
    let p = dir.join("cache-id");
    match fs::read_to_string(&p) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| other(e.to_string()))?;
    let id = hex::encode(b);
    let tmp = dir.join("cache-id.tmp");
    fs::write(&tmp, &id)?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, &p)?;
    Ok(id)
}

/// Make sure this cache is the one that wrote the bucket last (the `writer` object): a cache
/// that another cache has written after is stale (its local packs would collide with the
/// newer packs' ids), so its packs and index are set aside and everything is read again from
/// the bucket. Called with the lease held, before the cache is loaded.
fn adopt_cache(inner: &Inner) -> io::Result<()> {
    let dir = &inner.cfg.cache_dir;
    let me = cache_id(dir)?;
    let obj = inner.path("writer");
    let last = match inner.get_all(&obj) {
        Ok(b) => Some(String::from_utf8_lossy(&b).trim().to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let index = dir.join(super::manifest::INDEX_FILE);
    let has_state =
        index.exists() || fs::read_dir(&inner.packs_dir).is_ok_and(|mut d| d.next().is_some());
    if last.as_deref().is_some_and(|w| w != me) && has_state {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = dir.join(format!("stale-{t}"));
        fs::create_dir_all(&aside)?;
        tracing::warn!(
            "another cache wrote {} after this one: setting this cache's packs and index aside in {} and reading the bucket again (writes that were never fsynced to the object store are there)",
            inner.cfg.url,
            aside.display()
        );
        fs::rename(&inner.packs_dir, aside.join("packs"))?;
        fs::create_dir_all(&inner.packs_dir)?;
        if index.exists() {
            fs::rename(&index, aside.join(super::manifest::INDEX_FILE))?;
        }
        File::open(dir)?.sync_all()?;
    }
    if last.as_deref() != Some(me.as_str()) {
        inner.put(&obj, me.into_bytes(), PutMode::Overwrite, inner.cfg.timeout)?;
    }
    Ok(())
}

impl PackBackend for ObjectBackend {
    fn admit_delay(&self, n: u64) -> Duration {
        if self.inner.stall_at_seal {
            return Duration::ZERO;
        }
        self.inner.delay(n)
    }
    fn list(&self) -> io::Result<Vec<PackId>> {
        let st = self.inner.state.lock();
        let mut ids: Vec<PackId> = st.remote.keys().chain(st.local.keys()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    fn len(&self, pack: PackId) -> io::Result<u64> {
        let st = self.inner.state.lock();
        if let Some(l) = st.local.get(&pack) {
            return Ok(l.file.metadata()?.len());
        }
        st.remote.get(&pack).copied().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("pack {pack} not found"))
        })
    }

    fn read_at(&self, pack: PackId, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let (local, remote_len) = {
            let st = self.inner.state.lock();
            (
                st.local.get(&pack).map(|l| l.file.clone()),
                st.remote.get(&pack).copied(),
            )
        };
        if let Some(f) = local {
            return f.read_exact_at(buf, off);
        }
        let Some(len) = remote_len else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("pack {pack} not found"),
            ));
        };
        let end = off + buf.len() as u64;
        if end > len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("pack {pack}: read past its end"),
            ));
        }
        let mut pos = off;
        while pos < end {
            let idx = pos / CHUNK;
            let c_off = pos - idx * CHUNK;
            // Within this chunk (and the pack: `end <= len` was checked).
            let n = (end - pos).min(CHUNK - c_off) as usize;
            let b = (pos - off) as usize;
            self.inner
                .read_chunk(pack, idx, len, c_off as usize, &mut buf[b..b + n])?;
            pos += n as u64;
        }
        Ok(())
    }

    fn open_append(&self, pack: PackId) -> io::Result<Box<dyn PackAppender>> {
        let inner = &self.inner;
        let mut st = inner.state.lock();
        if st.remote.contains_key(&pack) {
            return Err(other(format!(
                "pack {pack} is sealed in the object store and cannot be appended to"
            )));
        }
        if let Some(l) = st.local.get(&pack) {
            return Ok(Box::new(ObjectAppender {
                file: l.file.clone(),
                appended: l.appended.clone(),
                inner: inner.clone(),
                pack,
            }));
        }
        let file = Arc::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(inner.local_path(pack))?,
        );
        let appended = Arc::new(AtomicU64::new(file.metadata()?.len()));
        st.local.insert(
            pack,
            LocalPack {
                file: file.clone(),
                sealed: false,
                appended: appended.clone(),
            },
        );
        Ok(Box::new(ObjectAppender {
            file,
            appended,
            inner: inner.clone(),
            pack,
        }))
    }

    fn remove(&self, pack: PackId) -> io::Result<()> {
        let inner = &self.inner;
        // Deleting is the last step of compaction, which made the new packs durable first
        // (`persist(true)`); the remote copy goes before the local one, so a crash in
        // between leaves at worst an unreferenced pack, never a lost one.
        let (segs, was_remote) = {
            let st = inner.state.lock();
            (
                st.segments.get(&pack).cloned().unwrap_or_default(),
                st.remote.contains_key(&pack),
            )
        };
        if was_remote {
            inner.delete(&inner.pack_obj(pack))?;
        }
        for (off, _) in segs {
            inner.delete(&inner.seg_obj(pack, off))?;
        }
        {
            let mut st = inner.state.lock();
            st.remote.remove(&pack);
            st.segments.remove(&pack);
            st.local.remove(&pack);
            st.retry_at.remove(&pack);
        }
        match fs::remove_file(inner.local_path(pack)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        inner.drop_chunks(pack);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.inner.packs_dir)?.sync_all()
    }

    fn seal(&self, pack: PackId, app: &dyn PackAppender) -> io::Result<()> {
        app.sync()?;
        let inner = &self.inner;
        {
            let mut st = inner.state.lock();
            if let Some(l) = st.local.get_mut(&pack) {
                l.sealed = true;
            }
        }
        inner.changed.notify_all();
        if inner.stall_at_seal {
            inner.stall_until_drained();
        }
        Ok(())
    }

    fn is_sealed(&self, pack: PackId) -> bool {
        let st = self.inner.state.lock();
        st.remote.contains_key(&pack) || st.local.get(&pack).is_some_and(|l| l.sealed)
    }

    fn persist(&self, strict: bool) -> io::Result<()> {
        if self.inner.cfg.fsync_local && !strict {
            return Ok(());
        }
        self.inner.barrier(Instant::now() + self.inner.cfg.timeout)
    }

    fn close(&self) -> io::Result<()> {
        if self.closed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        // Unmount waits for the uploads (with retries) much longer than one fsync would;
        // what still fails stays in the cache and goes up at the next mount.
        let deadline = Instant::now() + self.inner.cfg.timeout.max(Duration::from_secs(60)) * 10;
        let r = self.inner.barrier(deadline);
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.changed.notify_all();
        if let Some(h) = self.uploader.lock().take() {
            let _ = h.join();
        }
        if r.is_ok() {
            self.release_lease();
        } else {
            // Kept: the next mount from this cache takes it back (same host, process gone).
            tracing::error!("unmount: not everything reached the object store; the lease is kept and the next mount from {} uploads the rest", self.inner.cfg.cache_dir.display());
        }
        r
    }

    fn status(&self) -> Option<BackendStatus> {
        let inner = &self.inner;
        let (queue, queue_bytes) = inner.backlog();
        let unpersisted = {
            let st = inner.state.lock();
            st.local
                .iter()
                .filter(|(_, l)| !l.sealed)
                .map(|(p, l)| {
                    let done = st
                        .segments
                        .get(p)
                        .and_then(|s| s.last())
                        .map_or(0, |(o, n)| o + n);
                    l.appended.load(Ordering::Relaxed).saturating_sub(done)
                })
                .sum()
        };
        let (healthy, last_error) = inner.health.lock().clone();
        let c = &inner.counters;
        Some(BackendStatus {
            location: inner.cfg.url.clone(),
            upload_queue: queue,
            upload_queue_bytes: queue_bytes,
            unpersisted_bytes: unpersisted,
            cache_bytes: inner.chunks.lock().bytes,
            cache_limit: inner.cfg.cache_bytes,
            healthy,
            last_error,
            puts: c.puts.load(Ordering::Relaxed),
            gets: c.gets.load(Ordering::Relaxed),
            bytes_uploaded: c.up.load(Ordering::Relaxed),
            bytes_downloaded: c.down.load(Ordering::Relaxed),
        })
    }
}

impl Drop for ObjectBackend {
    fn drop(&mut self) {
        // Without `close` (a failed open, a test): stop the uploader; the lease stays, and
        // the next mount on this host takes it back.
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.changed.notify_all();
        if let Some(h) = self.uploader.lock().take() {
            let _ = h.join();
        }
    }
}

struct ObjectAppender {
    file: Arc<File>,
    appended: Arc<AtomicU64>,
    inner: Arc<Inner>,
    pack: PackId,
}

impl PackAppender for ObjectAppender {
    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        // O_APPEND, one write_all per record (as the local backend); the count moves only
        // after the whole record is in the file, so a segment never holds a partial one.
        (&*self.file).write_all(bytes)?;
        self.appended
            .fetch_add(bytes.len() as u64, Ordering::Release);
        if !self.inner.stall_at_seal {
            self.inner.throttle(bytes.len() as u64);
        }
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        // Segments reaching past the cut would no longer be a prefix of the pack: drop them
        // first (the next persist uploads the pack again from offset 0). Recovery cuts only
        // torn tails, which segments never reach, so this is a safeguard.
        let _t = self.inner.tail.lock();
        let segs = self
            .inner
            .state
            .lock()
            .segments
            .get(&self.pack)
            .cloned()
            .unwrap_or_default();
        if segs.last().is_some_and(|(o, n)| o + n > len) {
            for (off, _) in &segs {
                self.inner.delete(&self.inner.seg_obj(self.pack, *off))?;
            }
            self.inner.state.lock().segments.remove(&self.pack);
        }
        self.file.set_len(len)?;
        self.file.sync_all()?;
        self.appended.store(len, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("s3://b/p/q/").unwrap_or_else(|e| panic!("{e}")),
            ("b".to_string(), "p/q".to_string())
        );
        assert_eq!(
            parse_url("s3://b").unwrap_or_else(|e| panic!("{e}")),
            ("b".to_string(), String::new())
        );
        assert!(parse_url("s3:///x").is_err());
        assert!(parse_url("/data").is_err());
        assert!(is_url("s3://b") && !is_url("/s3://b"));
    }
}
