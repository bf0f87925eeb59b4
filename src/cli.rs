//! Command line: `mount`, `umount`, `stats`, `fsck`, `compact`, `init`, `passwd`, …
//!
//! Exit codes: 0 success, 1 problems found (fsck), 2 operational error.

use crate::daemon;
use crate::engine::{Options, Stats};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

pub const EXIT_OK: u8 = 0;
pub const EXIT_PROBLEMS: u8 = 1;
pub const EXIT_ERROR: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "idcfs",
    version,
    about = "Intelligent data compression filesystem"
)]
pub struct Cli {
    /// More log detail (debug level).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// How an encrypted store is unlocked, or a new one protected. Without either option the
/// passphrase comes from a systemd credential (`idcfs-passphrase` or `idcfs-key` in
/// `$CREDENTIALS_DIRECTORY`) or is asked for on the terminal.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// A key file: its bytes (at least 16, random) are the secret, e.g. from
    /// `head -c 32 /dev/urandom`.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Read the passphrase from the first line of this file instead of prompting.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

/// Where an object store's cache lives and how it behaves (with `--store s3://bucket/prefix`;
/// endpoint, region and credentials come from the AWS_* environment variables).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ObjectArgs {
    /// Local cache directory of an object store: packs not yet uploaded, the read cache and
    /// the metadata index (default: where a local store would be).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Bound of the read cache, and the upload backlog at which writers are slowed
    /// (e.g. 512M, 20G).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub cache_size: u64,
    /// When fsync returns: `remote` once the data is durable in the object store, `local`
    /// once it is on the local disk (weaker: a lost machine loses what was not uploaded).
    #[arg(long, default_value = "remote", value_parser = ["remote", "local"])]
    pub fsync: String,
    /// Seconds a read or an fsync waits for the object store before failing with EIO.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub store_timeout: u64,
    /// Concurrent pack uploads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub uploads: u64,
    /// Take the bucket's writer lease even though another mount holds it (only when that
    /// mount is gone for good: two writers corrupt the store).
    #[arg(long)]
    pub break_lease: bool,
}

impl ObjectArgs {
    /// The backend configuration for `url`, with the cache at `cache`.
    pub fn config(&self, url: &str, cache: &Path) -> crate::store::ObjectConfig {
        let mut c = crate::store::ObjectConfig::new(url, cache);
        c.cache_bytes = self.cache_size;
        c.fsync_local = self.fsync == "local";
        c.timeout = std::time::Duration::from_secs(self.store_timeout);
        c.uploads = self.uploads as usize;
        c.break_lease = self.break_lease;
        c
    }

    /// The same options as daemon arguments.
    fn to_args(&self, cache: &Path) -> Vec<String> {
        let mut v = vec![
            format!("--cache={}", cache.display()),
            format!("--cache-size={}", self.cache_size),
            format!("--fsync={}", self.fsync),
            format!("--store-timeout={}", self.store_timeout),
            format!("--uploads={}", self.uploads),
        ];
        if self.break_lease {
            v.push("--break-lease".into());
        }
        v
    }
}

/// `512M`, `20G`, `1048576`: bytes (K, M, G, T are powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s}: unknown size suffix (K, M, G, T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s}: not a size"))
}

/// A store given on the command line: a directory, or an object store with its cache.
pub struct StoreArg {
    /// The store directory, or the object store's cache directory (index, lock, log).
    pub dir: PathBuf,
    pub object: Option<crate::store::ObjectConfig>,
}

impl StoreArg {
    fn resolve(
        store: &Path,
        obj: &ObjectArgs,
        default_dir: impl FnOnce() -> PathBuf,
    ) -> Result<StoreArg, String> {
        match store.to_str() {
            Some(url) if crate::store::object::is_url(url) => {
                crate::store::object::parse_url(url).map_err(|e| e.to_string())?;
                let dir = match &obj.cache {
                    Some(c) => absolute(c)?,
                    None => default_dir(),
                };
                Ok(StoreArg {
                    object: Some(obj.config(url, &dir)),
                    dir,
                })
            }
            _ => Ok(StoreArg {
                dir: absolute(store)?,
                object: None,
            }),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Mount a compressed filesystem on MOUNTPOINT (an empty directory).
    Mount {
        mountpoint: PathBuf,
        /// Store directory (default: /var/lib/idcfs/<escaped mount point> for root,
        /// ~/.local/share/idcfs/<escaped mount point> otherwise), or an object store
        /// `s3://bucket/prefix` (see --cache).
        #[arg(long)]
        store: Option<PathBuf>,
        /// Stay in the foreground (for systemd); otherwise return once the mount is live.
        #[arg(long)]
        foreground: bool,
        /// zstd level of the write path (1..19).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
        zstd_level: i32,
        /// Decoded-block cache size in MiB (whole-file objects are kept to half of it).
        #[arg(long, default_value_t = 128)]
        cache_mib: usize,
        /// Dirty data held before writers wait, in MiB.
        #[arg(long, default_value_t = 64)]
        dirty_mib: usize,
        /// Configuration file (TOML; default /etc/idcfs/config.toml when it exists).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Size at which pack files are sealed, in MiB (compaction works on sealed packs;
        /// an object store uploads sealed packs). Default 256, or 64 with an object store.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
        pack_mib: Option<u64>,
        /// Create the store encrypted when it does not exist yet (see `idcfs init --encrypt`).
        #[arg(long)]
        encrypt: bool,
        #[command(flatten)]
        keys: KeyArgs,
        /// Internal: the background daemon receives the unlocked key on stdin.
        #[arg(long, hide = true)]
        key_stdin: bool,
        #[command(flatten)]
        object: ObjectArgs,
        /// Where neural codecs run: auto (CUDA when this build has the `cuda` feature and the
        /// runtime offers it, else the CPU), cpu, or cuda. Overrides `[neural] device`.
        #[arg(long, value_enum)]
        device: Option<crate::neural::Device>,
        /// The ONNX Runtime library (libonnxruntime.so) to load; overrides `[neural] library`,
        /// `$IDCFS_ORT_LIB` and the venv search.
        #[arg(long)]
        ort_lib: Option<PathBuf>,
    },
    /// Create an empty store; with --encrypt, an encrypted one (AES-256-GCM-SIV; the key is
    /// protected by a passphrase or a key file).
    Init {
        store: PathBuf,
        #[arg(long)]
        encrypt: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Change the passphrase (or key file) of an encrypted store; no data is rewritten.
    Passwd {
        store: PathBuf,
        /// The current secret.
        #[command(flatten)]
        keys: KeyArgs,
        /// The new secret: a key file.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
        /// The new secret: a passphrase from the first line of this file.
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Flush and unmount; returns after the daemon has written everything.
    #[command(alias = "unmount")]
    Umount { mountpoint: PathBuf },
    /// Logical and stored bytes, ratio and savings, per codec (PATH: a mount or a store).
    Stats {
        path: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        object: ObjectArgs,
    },
    /// Check every reference and checksum of an unmounted store; exit 1 when problems exist.
    Fsck {
        store: PathBuf,
        /// Recreate the metadata index from the pack files alone (the old index is kept
        /// aside as index.old-<time>).
        #[arg(long)]
        rebuild: bool,
        #[arg(long)]
        json: bool,
        /// On an encrypted store: check what can be checked without the key (record
        /// framing and checksums) instead of asking for it.
        #[arg(long)]
        locked: bool,
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        object: ObjectArgs,
    },
    /// Re-encode every file below PATH (on a mount) with the strongest choice its policy
    /// allows now, then reclaim pack space; with a progress line and a summary. PATH may
    /// also be an unmounted store (pack compaction only).
    Compact {
        path: PathBuf,
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        object: ObjectArgs,
    },
    /// Apply the current policies to existing files below PATH (re-encode them now).
    Recompress { path: PathBuf },
    /// Per-directory policies: set, unset, show.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Convert an unmounted store written by an older idcfs to the current on-disk format,
    /// in place and crash-safely (interrupted, it is finished by running it again).
    Upgrade { store: PathBuf },
    /// List idcfs mounts with their store, uptime, caches and background queue.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Set keys on a directory: level=off|fast|balanced|max|archive, lossy=none|image:q=N|image:psnr=N|audio:q=N[,…], dedup=on|off.
    Set { dir: PathBuf, pairs: Vec<String> },
    /// Remove keys from a directory's policy (they inherit again).
    Unset { dir: PathBuf, keys: Vec<String> },
    /// The effective policy of PATH, each key with the directory it comes from.
    Show { path: PathBuf },
}

pub fn run(cli: Cli) -> Result<u8, String> {
    match cli.cmd {
        Cmd::Mount {
            mountpoint,
            store,
            foreground,
            zstd_level,
            cache_mib,
            dirty_mib,
            pack_mib,
            config,
            encrypt,
            keys,
            key_stdin,
            object,
            device,
            ort_lib,
        } => {
            let conf = crate::config::load(config.as_deref())?;
            let mp = std::fs::canonicalize(&mountpoint)
                .map_err(|e| format!("mount point {}: {e}", mountpoint.display()))?;
            let target = match &store {
                Some(s) => StoreArg::resolve(s, &object, || daemon::default_store(&mp))?,
                None => StoreArg {
                    dir: daemon::default_store(&mp),
                    object: None,
                },
            };
            let store = target.dir.clone();
            let pack_mib = pack_mib.unwrap_or(if target.object.is_some() { 64 } else { 256 });
            // Refuse a store of another format here, with the reason, before any daemon starts.
            if target.object.is_none() {
                daemon::check_format(&store)?;
            }
            // Unlock (or create) an encrypted store here, where the terminal is: a wrong
            // passphrase is refused before anything is written or any daemon starts.
            let key = if key_stdin {
                let mut line = zeroize::Zeroizing::new(String::new());
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| format!("reading the key from the parent: {e}"))?;
                let key =
                    crate::crypto::StoreKey::from_master_line(&line).map_err(|e| e.to_string())?;
                daemon::protect_key_memory();
                Some(std::sync::Arc::new(key))
            } else if let Some(o) = &target.object {
                daemon::object_key(o, &keys, encrypt)?
            } else {
                daemon::unlock_or_create(&store, &keys, encrypt)?
            };
            if foreground {
                let opts = Options {
                    zstd_level,
                    cache_bytes: cache_mib << 20,
                    dirty_limit: dirty_mib << 20,
                    pack_max: pack_mib << 20,
                    default_policy: conf.policy.clone(),
                    idle_secs: conf.idle_secs.unwrap_or(60),
                    codecs_disabled: conf.codecs_disabled.clone(),
                    key,
                    neural: crate::neural::RuntimeOptions {
                        library: match &ort_lib {
                            Some(p) => Some(absolute(p)?),
                            None => conf.neural.library.clone(),
                        },
                        device: device.unwrap_or(conf.neural.device),
                        intra_threads: conf.neural.intra_threads,
                    },
                    ..Options::default()
                };
                daemon::run_foreground(&mp, &target, opts)?;
            } else {
                let extra = vec![
                    format!("--zstd-level={zstd_level}"),
                    format!("--cache-mib={cache_mib}"),
                    format!("--dirty-mib={dirty_mib}"),
                    format!("--pack-mib={pack_mib}"),
                ];
                let mut extra = extra;
                if let Some(c) = &config {
                    extra.push(format!("--config={}", absolute(c)?.display()));
                }
                if cli.verbose {
                    extra.push("--verbose".into());
                }
                if let Some(d) = device {
                    extra.push(format!("--device={}", d.name()));
                }
                if let Some(p) = &ort_lib {
                    extra.push(format!("--ort-lib={}", absolute(p)?.display()));
                }
                let store_arg = match &target.object {
                    Some(o) => {
                        extra.extend(object.to_args(&store));
                        std::ffi::OsString::from(&o.url)
                    }
                    None => store.clone().into_os_string(),
                };
                daemon::spawn_background(&mp, &store, &store_arg, &extra, key.as_deref())?;
            }
            Ok(EXIT_OK)
        }
        Cmd::Umount { mountpoint } => {
            daemon::unmount(&mountpoint)?;
            Ok(EXIT_OK)
        }
        Cmd::Init {
            store,
            encrypt,
            keys,
        } => {
            let store = absolute(&store)?;
            if encrypt {
                daemon::unlock_or_create(&store, &keys, true)?;
                println!("idcfs: created encrypted store {}", store.display());
                println!("idcfs: keep a copy of {} (and of your passphrase or key file): without them the data cannot be read", store.join(crate::crypto::KEYS_FILE).display());
            } else {
                crate::store::manifest::open(&store)
                    .map_err(|e| format!("cannot create store {}: {e}", store.display()))?;
                println!("idcfs: created store {}", store.display());
            }
            Ok(EXIT_OK)
        }
        Cmd::Passwd {
            store,
            keys,
            new_key_file,
            new_passphrase_file,
        } => {
            let old = daemon::secret(&keys, false)?;
            let new = daemon::secret(
                &KeyArgs {
                    key_file: new_key_file,
                    passphrase_file: new_passphrase_file,
                },
                true,
            )?;
            crate::crypto::change_secret(&store, &old, &new)
                .map_err(|e| format!("cannot change the secret of {}: {e}", store.display()))?;
            println!("idcfs: secret changed; the data keys are unchanged, nothing was rewritten");
            Ok(EXIT_OK)
        }
        Cmd::Stats {
            path,
            json,
            keys,
            object,
        } => {
            let mut stats: Stats = match daemon::control_get(&path, "stats") {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| format!("bad stats from the daemon: {e}"))?,
                Err(_) => {
                    let e = open_offline_any(&path, &keys, &object)?;
                    let st = e.stats_detailed().map_err(|e| e.to_string())?;
                    // An object store's lease is released here, not left to the next mount.
                    e.shutdown().map_err(|e| e.to_string())?;
                    st
                }
            };
            if let Some(s) = stats.subtree.as_mut() {
                *s = std::fs::canonicalize(&path)
                    .unwrap_or(path.clone())
                    .display()
                    .to_string();
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&stats).map_err(|e| e.to_string())?
                );
            } else {
                print!("{}", render_stats(&stats));
            }
            Ok(EXIT_OK)
        }
        Cmd::Fsck {
            store,
            rebuild,
            json,
            locked,
            keys,
            object,
        } => {
            let target = StoreArg::resolve(&store, &object, || store.clone())?;
            if target.object.is_some() && object.cache.is_none() {
                return Err("an object store is checked through a cache directory: give --cache DIR (an empty one rebuilds everything from the bucket with --rebuild)".into());
            }
            let store = target.dir.clone();
            if target.object.is_none() && (locked || daemon::no_secret_available(&store, &keys)) {
                if !locked {
                    eprintln!("idcfs: {} is encrypted and no key was given (--key-file, --passphrase-file, a credential or a terminal): checking what can be checked without it", store.display());
                }
                return daemon::fsck_locked(&store, json);
            }
            if rebuild {
                let idx = store.join(crate::store::manifest::INDEX_FILE);
                if idx.exists() {
                    let t = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let aside = store.join(format!("index.old-{t}"));
                    std::fs::rename(&idx, &aside)
                        .map_err(|e| format!("cannot move the index aside: {e}"))?;
                    eprintln!("idcfs: old index kept at {}", aside.display());
                }
            }
            let engine = match &target.object {
                Some(o) => {
                    let key = daemon::object_key(o, &keys, false)?;
                    daemon::open_object(&store, o, daemon::offline_options(key))?
                }
                None => daemon::open_offline(&store, &keys)?,
            };
            let report = engine.fsck().map_err(|e| e.to_string())?;
            engine.shutdown().map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
                );
            } else {
                println!(
                    "checked {} inodes, {} entries, {} blocks ({} verified)",
                    report.inodes,
                    report.dirents,
                    report.blocks,
                    human(report.bytes_verified)
                );
                for p in &report.problems {
                    println!("PROBLEM: {p}");
                }
                println!(
                    "{}",
                    if report.problems.is_empty() {
                        "clean".to_string()
                    } else {
                        format!("{} problem(s)", report.problems.len())
                    }
                );
            }
            Ok(if report.problems.is_empty() {
                EXIT_OK
            } else {
                EXIT_PROBLEMS
            })
        }
        Cmd::Compact { path, keys, object } => {
            if daemon::control_get(&path, "pid").is_ok() {
                recompress_with_progress(&path)?;
                daemon::control_set(&path, "compact")
                    .map_err(|e| format!("compaction failed: {e}"))?;
                let st: Stats = serde_json::from_slice(
                    &daemon::control_get(&path, "stats").map_err(|e| e.to_string())?,
                )
                .map_err(|e| e.to_string())?;
                println!(
                    "store now {} for {} of data ({:.2}x)",
                    human(st.stored_bytes),
                    human(st.logical_bytes),
                    st.ratio
                );
            } else {
                let e = open_offline_any(&path, &keys, &object)?;
                let r = e.compact(true).map_err(|e| e.to_string())?;
                e.shutdown().map_err(|e| e.to_string())?;
                println!(
                    "removed {} pack(s), moved {} block(s), reclaimed {}",
                    r.packs_removed,
                    r.blocks_moved,
                    human(r.bytes_reclaimed)
                );
            }
            Ok(EXIT_OK)
        }
        Cmd::Recompress { path } => {
            recompress_with_progress(&path)?;
            Ok(EXIT_OK)
        }
        Cmd::Policy { cmd } => policy_cmd(cmd),
        Cmd::Upgrade { store } => {
            let store = absolute(&store)?;
            let what = daemon::upgrade(&store)?;
            println!("{what}");
            Ok(EXIT_OK)
        }
        Cmd::Status { json } => {
            let mut rows = Vec::new();
            // Ask every mount at once, each on its own thread: a mount whose daemon hangs must
            // show as not answering, not hang the command.
            let (tx, rx) = std::sync::mpsc::channel();
            let mounts = idcfs_mounts();
            for (i, mp) in mounts.iter().enumerate() {
                let (tx, mp) = (tx.clone(), mp.clone());
                std::thread::spawn(move || {
                    let st = daemon::control_get(&mp, "status")
                        .ok()
                        .and_then(|b| serde_json::from_slice::<crate::engine::Status>(&b).ok());
                    let _ = tx.send((i, st));
                });
            }
            drop(tx);
            let mut answers: Vec<Option<crate::engine::Status>> = vec![None; mounts.len()];
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok((i, st)) => answers[i] = st,
                    Err(_) => break,
                }
            }
            for (mp, st) in mounts.into_iter().zip(answers) {
                rows.push((mp, st));
            }
            if json {
                let v: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(mp, st)| serde_json::json!({"mountpoint": mp, "status": st}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
                );
            } else if rows.is_empty() {
                println!("no idcfs mounts");
            } else {
                for (mp, st) in rows {
                    match st {
                        Some(s) => {
                            println!(
                                "{}  store {}{}  pid {}  up {}s  cache {}/{}  dirty {}/{}  live files {}  recompress queue {}",
                                mp.display(),
                                s.store,
                                if s.encrypted { " (encrypted)" } else { "" },
                                s.pid,
                                s.uptime_secs,
                                human(s.cache_bytes),
                                human(s.cache_limit),
                                human(s.dirty_bytes),
                                human(s.dirty_limit),
                                s.live_files,
                                s.recompress_queue
                            );
                            if let Some(b) = &s.backend {
                                println!(
                                    "  object store {}: {}  upload queue {} pack(s) {}  not yet uploaded {}  read cache {}/{}  PUT {} ({})  GET {} ({})",
                                    b.location,
                                    if b.healthy {
                                        "healthy".to_string()
                                    } else {
                                        format!("UNREACHABLE ({})", b.last_error.clone().unwrap_or_default())
                                    },
                                    b.upload_queue,
                                    human(b.upload_queue_bytes),
                                    human(b.unpersisted_bytes),
                                    human(b.cache_bytes),
                                    human(b.cache_limit),
                                    b.puts,
                                    human(b.bytes_uploaded),
                                    b.gets,
                                    human(b.bytes_downloaded)
                                );
                            }
                            if let Some(why) = &s.read_only {
                                println!("  READ-ONLY: {why} (reads work; fix the disk, then remount)");
                            }
                            if !s.onnx_runtime.is_empty() {
                                println!("  ONNX Runtime: {}", s.onnx_runtime);
                            }
                            for c in &s.unavailable_codecs {
                                println!("  codec unavailable: {c}");
                            }
                        }
                        None => println!(
                            "{}  (not answering within 3 s: daemon gone or hung? `idcfs umount` clears it)",
                            mp.display()
                        ),
                    }
                }
            }
            Ok(EXIT_OK)
        }
    }
}

/// Mount points of idcfs filesystems (source `idcfs:STORE`).
fn idcfs_mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let source = post.split(' ').nth(1)?;
            if !source.starts_with("idcfs:") {
                return None;
            }
            Some(PathBuf::from(pre.split(' ').nth(4)?.replace("\\040", " ")))
        })
        .collect()
}

fn policy_cmd(cmd: PolicyCmd) -> Result<u8, String> {
    use crate::policy::parse_policy;
    const NAME: &str = "user.idcfs.policy";
    let current = |dir: &Path| -> Result<crate::policy::Policy, String> {
        match daemon::get_xattr(dir, NAME) {
            Ok(v) => parse_policy(&String::from_utf8_lossy(&v)).map_err(|e| e.to_string()),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(Default::default()),
            Err(e) => Err(format!(
                "{}: {e} (is it a directory on an idcfs mount?)",
                dir.display()
            )),
        }
    };
    match cmd {
        PolicyCmd::Set { dir, pairs } => {
            let new = parse_policy(&pairs.join(" ")).map_err(|e| format!("policy refused: {e}"))?;
            if new.is_empty() {
                return Err(
                    "nothing to set (example: idcfs policy set /data/logs level=max)".into(),
                );
            }
            let mut p = current(&dir)?;
            p.merge(&new);
            daemon::set_xattr(&dir, NAME, p.to_string().as_bytes())
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            println!("{}: {p}", dir.display());
        }
        PolicyCmd::Unset { dir, keys } => {
            let mut p = current(&dir)?;
            for k in &keys {
                p.unset(k).map_err(|e| e.to_string())?;
            }
            daemon::set_xattr(&dir, NAME, p.to_string().as_bytes())
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            println!(
                "{}: {}",
                dir.display(),
                if p.is_empty() {
                    "(inherits everything)".to_string()
                } else {
                    p.to_string()
                }
            );
        }
        PolicyCmd::Show { path } => {
            let v = daemon::control_get(&path, "effective")
                .map_err(|e| format!("{}: {e} (not on an idcfs mount?)", path.display()))?;
            print!("{}", String::from_utf8_lossy(&v));
        }
    }
    Ok(EXIT_OK)
}

/// Re-encode every regular file below `root` through the daemon, one file at a time, with a
/// progress line (files, bytes, ratio so far, time left) and a summary.
fn recompress_with_progress(root: &Path) -> Result<(), String> {
    use std::io::Write;
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if md.is_dir() {
            for e in std::fs::read_dir(&p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .flatten()
            {
                stack.push(e.path());
            }
        } else if md.is_file() {
            files.push((p, md.len()));
        }
    }
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    let start = std::time::Instant::now();
    let (mut done, mut logical, mut before, mut after) = (0u64, 0u64, 0u64, 0u64);
    let info = |p: &Path| -> Option<crate::engine::FileInfo> {
        serde_json::from_slice(&daemon::control_get(p, "fileinfo").ok()?).ok()
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    for (i, (p, size)) in files.iter().enumerate() {
        let b = info(p);
        daemon::control_set(p, "recompress_now").map_err(|e| format!("{}: {e}", p.display()))?;
        let a = info(p);
        if let (Some(b), Some(a)) = (b, a) {
            before += b.stored;
            after += a.stored;
            logical += a.logical;
        }
        done += size;
        let secs = start.elapsed().as_secs_f64();
        let left = if done > 0 {
            secs * (total - done) as f64 / done as f64
        } else {
            0.0
        };
        let ratio = if after > 0 {
            logical as f64 / after as f64
        } else {
            0.0
        };
        if tty || i + 1 == files.len() || i % 100 == 0 {
            eprint!(
                "{}[files {}/{}] {} / {}  ratio {:.2}x  {:.0}s left   {}",
                if tty { "\r" } else { "" },
                i + 1,
                files.len(),
                human(done),
                human(total),
                ratio,
                left,
                if tty { "" } else { "\n" }
            );
            let _ = std::io::stderr().flush();
        }
    }
    if tty {
        eprintln!();
    }
    println!(
        "recompressed {} files ({}): stored {} -> {} ({:.2}x of the data) in {:.1}s",
        files.len(),
        human(total),
        human(before),
        human(after),
        if after > 0 {
            logical as f64 / after as f64
        } else {
            0.0
        },
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Open an unmounted store for an offline command: a directory, or an object store through
/// its cache directory (`--cache`).
fn open_offline_any(
    path: &Path,
    keys: &KeyArgs,
    object: &ObjectArgs,
) -> Result<std::sync::Arc<crate::engine::Engine>, String> {
    let target = StoreArg::resolve(path, object, || path.to_path_buf())?;
    match &target.object {
        Some(o) => {
            if object.cache.is_none() {
                return Err(
                    "an object store is opened through a cache directory: give --cache DIR".into(),
                );
            }
            let key = daemon::object_key(o, keys, false)?;
            daemon::open_object(&target.dir, o, daemon::offline_options(key))
        }
        None => daemon::open_offline(path, keys),
    }
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir().map_err(|e| e.to_string())?.join(p))
    }
}

pub fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}

fn render_stats(s: &Stats) -> String {
    let mut o = String::new();
    o.push_str(&format!("store         {}\n", s.store));
    if let Some(path) = &s.subtree {
        o.push_str(&format!("path          {path}  ({} files)\n", s.files));
    }
    o.push_str(&format!("logical       {}\n", human(s.logical_bytes)));
    if s.subtree.is_some() {
        o.push_str(&format!(
            "stored        {}  (block records of these files)\n",
            human(s.stored_bytes)
        ));
    } else {
        o.push_str(&format!(
            "stored        {}  (packs {}, index {}; {} journal/awaiting compaction)\n",
            human(s.stored_bytes),
            human(s.pack_bytes),
            human(s.index_bytes),
            human(s.unreferenced_bytes)
        ));
    }
    let saved = if s.saved_bytes >= 0 {
        human(s.saved_bytes as u64)
    } else {
        format!("-{}", human(s.saved_bytes.unsigned_abs()))
    };
    o.push_str(&format!("ratio         {:.2}x  saved {saved}\n", s.ratio));
    if s.corrupt_reads > 0 {
        o.push_str(&format!("corrupt reads {}\n", s.corrupt_reads));
    }
    if s.lossy_files > 0 {
        o.push_str(&format!(
            "lossy files   {} since mount (quality target met; see codecs image-avif, image-webp, image-learned, wav-opus and the log)\n",
            s.lossy_files
        ));
    }
    o.push_str(&format!(
        "\n{:<10} {:>10} {:>12} {:>12} {:>7}\n",
        "codec", "blocks", "logical", "stored", "ratio"
    ));
    for c in &s.codecs {
        let r = if c.stored_bytes > 0 {
            c.logical_bytes as f64 / c.stored_bytes as f64
        } else {
            0.0
        };
        o.push_str(&format!(
            "{:<10} {:>10} {:>12} {:>12} {:>6.2}x\n",
            c.codec,
            c.blocks,
            human(c.logical_bytes),
            human(c.stored_bytes),
            r
        ));
    }
    let below = if s.subtree.is_some() {
        "entry"
    } else {
        "directory"
    };
    for (title, rows) in [("class", &s.classes), (below, &s.top_dirs)] {
        if rows.is_empty() {
            continue;
        }
        o.push_str(&format!(
            "\n{:<24} {:>8} {:>12} {:>12} {:>7}\n",
            title, "files", "logical", "stored", "ratio"
        ));
        for r in rows.iter().take(20) {
            let ratio = if r.stored_bytes > 0 {
                r.logical_bytes as f64 / r.stored_bytes as f64
            } else {
                0.0
            };
            o.push_str(&format!(
                "{:<24} {:>8} {:>12} {:>12} {:>6.2}x\n",
                r.name,
                r.files,
                human(r.logical_bytes),
                human(r.stored_bytes),
                ratio
            ));
        }
    }
    o
}
