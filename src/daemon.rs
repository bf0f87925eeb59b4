//! Mounting and unmounting: the default store location, mount point checks, the background
//! daemon, signal handling and talking to a running daemon through its control attributes.
//!
//! A running mount answers `user.idcfs.*` extended attributes on any of its paths (stats,
//! pid, store, sync, compact); the CLI uses those instead of a socket.

use crate::engine::{Engine, Options};
use crate::fuse::IdcFuse;
use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where `idcfs mount MP` keeps its store when `--store` is not given:
/// `/var/lib/idcfs/<escaped MP>` for root, `$XDG_DATA_HOME/idcfs/<escaped MP>` (or
/// `~/.local/share/idcfs/...`) for other users.
pub fn default_store(mountpoint: &Path) -> PathBuf {
    let base = if crate::engine::current_uid() == 0 {
        PathBuf::from("/var/lib/idcfs")
    } else if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        PathBuf::from(x).join("idcfs")
    } else {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".local/share/idcfs")
    };
    base.join(escape_path(mountpoint))
}

/// systemd-style escaping of an absolute path into one file name.
pub fn escape_path(p: &Path) -> String {
    let s = p.as_os_str().as_bytes();
    let trimmed: &[u8] = {
        let mut t = s;
        while t.first() == Some(&b'/') {
            t = &t[1..];
        }
        while t.last() == Some(&b'/') {
            t = &t[..t.len() - 1];
        }
        t
    };
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, &b) in trimmed.iter().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Refuse mount points that would hide files or that are already mounted.
pub fn check_mountpoint(mp: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(mp).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTCONN) => format!(
            "{} is a dead FUSE mount (its daemon exited); clear it with `idcfs umount {}` first",
            mp.display(),
            mp.display()
        ),
        _ => format!("mount point {}: {e}", mp.display()),
    })?;
    if !meta.is_dir() {
        return Err(format!("mount point {} is not a directory", mp.display()));
    }
    if is_mounted(mp) {
        return Err(format!(
            "{} is already a mount point; unmount it first",
            mp.display()
        ));
    }
    let rd = std::fs::read_dir(mp)
        .map_err(|e| format!("cannot list mount point {}: {e}", mp.display()))?;
    let names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .take(3)
        .collect();
    if !names.is_empty() {
        let d = mp.display();
        return Err(format!(
            "mount point {d} is not empty (it holds {}{}): mounting would hide those files.\n\
             To bring them into idcfs, move them aside and copy them in after mounting:\n  \
             mv {d} {d}.pre-idcfs && mkdir {d} && idcfs mount {d} && cp -a {d}.pre-idcfs/. {d}/",
            names.join(", "),
            if names.len() == 3 { ", ..." } else { "" }
        ));
    }
    Ok(())
}

/// Whether `mp` appears in this process's mount table.
pub fn is_mounted(mp: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(mp).or_else(|_| Ok::<_, io::Error>(mp.to_path_buf()))
    else {
        return false;
    };
    let mut s = String::new();
    if std::fs::File::open("/proc/self/mountinfo")
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_err()
    {
        return false;
    }
    let want = canon.to_string_lossy().replace(' ', "\\040");
    s.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Mount and serve until unmounted (or SIGTERM/SIGINT), then flush and return.
pub fn run_foreground(
    mp: &Path,
    target: &crate::cli::StoreArg,
    opts: Options,
) -> Result<(), String> {
    check_mountpoint(mp)?;
    let store = target.dir.as_path();
    let engine = match &target.object {
        Some(o) => open_object(store, o, opts)?,
        None => Engine::open(store, opts)
            .map_err(|e| format!("cannot open store {}: {e}", store.display()))?,
    };
    let fsname = match &target.object {
        Some(o) => o.url.clone(),
        None => store.display().to_string(),
    };
    let r = &engine.recovery;
    if r.replayed > 0 || r.torn_tail.is_some() || r.rebuilt {
        tracing::info!(replayed = r.replayed, torn = ?r.torn_tail, rebuilt = r.rebuilt, "recovered store after an unclean stop");
    }
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName(format!("idcfs:{fsname}")),
        fuser::MountOption::Subtype("idcfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    if crate::engine::current_uid() == 0 {
        cfg.acl = fuser::SessionACL::All;
        cfg.mount_options.push(fuser::MountOption::Dev);
        cfg.mount_options.push(fuser::MountOption::Suid);
    }
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    cfg.n_threads = Some((cpus * 2).max(4));
    // Resolved before the mount: afterwards a path lookup through it would wait on this
    // daemon, which is not serving requests yet.
    let mp_real = mp.canonicalize().unwrap_or_else(|_| mp.to_path_buf());
    let fs = IdcFuse::new(engine.clone());
    let notifier_slot = fs.notifier_slot();
    let mut session = fuser::Session::new(fs, mp, &cfg).map_err(|e| {
        format!(
            "cannot mount {}: {e} (is fuse3 installed and /dev/fuse present?)",
            mp.display()
        )
    })?;
    if target.object.is_some() {
        limit_dirty_pages(&mp_real, OBJECT_DIRTY_BYTES);
    }
    // Lossy recompression changes a file's content and size by itself: the kernel must drop
    // what it cached of that inode (pages and attributes).
    let notifier = session.notifier();
    let _ = notifier_slot.set(session.notifier());
    engine.set_invalidator(Box::new(move |ino, names| {
        if let Err(e) = notifier.inval_inode(fuser::INodeNo(ino), 0, 0) {
            tracing::debug!(ino, "kernel cache invalidation: {e}");
        }
        for (parent, name) in names {
            let name = std::ffi::OsStr::from_bytes(name);
            if let Err(e) = notifier.inval_entry(fuser::INodeNo(*parent), name) {
                tracing::debug!(ino, "kernel entry invalidation: {e}");
            }
        }
    }));
    let mut unmounter = session.unmount_callable();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let sig_handle = signals.handle();
    let mp_owned = mp.to_path_buf();
    let sig_thread = std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(sig, "signal received: unmounting {}", mp_owned.display());
            if let Err(e) = unmounter.unmount() {
                tracing::warn!("unmount failed ({e}); trying a lazy unmount");
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&mp_owned)
                    .status();
            }
        }
    });
    tracing::info!("idcfs mounted on {} (store {fsname})", mp.display(),);
    let res = session.run();
    // The channel is gone: nothing to notify any more (and the closure holds its sender).
    engine.set_invalidator(Box::new(|_, _| {}));
    sig_handle.close();
    let _ = sig_thread.join();
    let flushed = engine.shutdown();
    drop(engine);
    res.map_err(|e| format!("FUSE session ended with an error: {e}"))?;
    flushed.map_err(|e| format!("final flush failed: {e}"))?;
    tracing::info!("unmounted {}", mp.display());
    Ok(())
}

/// Start the daemon in the background and return once the mount is live.
pub fn spawn_background(
    mp: &Path,
    store: &Path,
    store_arg: &std::ffi::OsStr,
    extra_args: &[String],
    key: Option<&crate::crypto::StoreKey>,
) -> Result<(), String> {
    check_mountpoint(mp)?;
    std::fs::create_dir_all(store)
        .map_err(|e| format!("cannot create store {}: {e}", store.display()))?;
    let log_path = store.join("idcfs.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open log {}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let start_len = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(exe)
        .arg("mount")
        .arg("--foreground")
        .arg("--store")
        .arg(store_arg)
        .args(extra_args)
        .args(key.map(|_| "--key-stdin"))
        .arg(mp)
        .stdin(if key.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    if let Some(k) = key {
        // The unlocked key goes to the daemon over a pipe: never an argument or a file that
        // another user could read.
        use std::io::Write;
        let sent = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no pipe"))
            .and_then(|mut p| p.write_all(k.master_line().as_bytes()));
        if let Err(e) = sent {
            let _ = child.kill();
            return Err(format!("cannot hand the key to the daemon: {e}"));
        }
    }
    // A first mount of an object store on an empty cache rebuilds the index from the whole
    // bucket before the mount comes up: allow it far longer.
    let limit = if crate::store::object::is_url(&store_arg.to_string_lossy()) {
        900
    } else {
        60
    };
    let deadline = Instant::now() + Duration::from_secs(limit);
    loop {
        if is_mounted(mp) {
            println!(
                "idcfs: mounted {} (store {}, log {}, pid {})",
                mp.display(),
                store_arg.to_string_lossy(),
                log_path.display(),
                child.id()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = log_tail(&log_path, start_len);
            return Err(format!(
                "the daemon exited ({status}) before the mount was live:\n{tail}"
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "the mount did not come up within {limit} s; see {}",
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_tail(path: &Path, from: u64) -> String {
    let s = std::fs::read(path).unwrap_or_default();
    let s = &s[(from as usize).min(s.len())..];
    String::from_utf8_lossy(s)
        .lines()
        .rev()
        .take(20)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Read a control attribute of a running mount.
pub fn control_get(path: &Path, key: &str) -> io::Result<Vec<u8>> {
    get_xattr(path, &format!("user.idcfs.{key}"))
}

/// Read an extended attribute (any size).
pub fn get_xattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let p = cpath(path)?;
    let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        #[allow(unsafe_code)]
        // SAFETY: valid C strings and a writable buffer of the given length.
        let n = unsafe {
            libc::getxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < (64 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return Err(e);
    }
}

/// Trigger a control action of a running mount.
pub fn control_set(path: &Path, key: &str) -> io::Result<()> {
    set_xattr(path, &format!("user.idcfs.{key}"), b"")
}

/// Set an extended attribute.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = cpath(path)?;
    let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    #[allow(unsafe_code)]
    // SAFETY: valid C strings and a readable value buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Flush a mount, unmount it and wait for its daemon to finish writing.
pub fn unmount(mp: &Path) -> Result<(), String> {
    let pid = control_get(mp, "pid")
        .ok()
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.trim().parse::<i32>().ok());
    if pid.is_some() {
        if let Err(e) = control_set(mp, "sync") {
            tracing::warn!("flush before unmount failed: {e}");
        }
    }
    let ok = Command::new("fusermount3")
        .arg("-u")
        .arg(mp)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        || Command::new("umount")
            .arg(mp)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !ok {
        if pid.is_none() && is_mounted(mp) {
            // A dead daemon leaves an unreachable mount; a lazy unmount clears it.
            let lazy = Command::new("fusermount3")
                .arg("-uz")
                .arg(mp)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if lazy {
                return Ok(());
            }
        }
        return Err(format!(
            "cannot unmount {} (busy? see `fuser -vm {}`)",
            mp.display(),
            mp.display()
        ));
    }
    if let Some(pid) = pid {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
            if Instant::now() > deadline {
                return Err(format!("daemon {pid} is still flushing after 10 minutes"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
}

/// Refuse a store this build cannot open as it is (an older format that needs `idcfs
/// upgrade`, or a newer one), with the message saying why; a new or current store passes.
pub fn check_format(store: &Path) -> Result<(), String> {
    use crate::store::manifest::{inspect, Found, FORMAT};
    match inspect(store) {
        Ok(Found::Format(FORMAT) | Found::Empty | Found::Unfinished) => Ok(()),
        Ok(_) => crate::store::manifest::open(store)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        // A store directory that cannot be read yet (e.g. created by the daemon as another
        // user) is reported when the daemon opens it.
        Err(_) => Ok(()),
    }
}

/// `idcfs upgrade STORE`: convert in place under the store lock, then open the store once
/// (replaying its journal) to show it reads.
pub fn upgrade(store: &Path) -> Result<String, String> {
    use crate::store::manifest::{upgrade, Upgraded, FORMAT};
    let lock = crate::engine::lock_store(store).map_err(|e| e.to_string())?;
    let what = upgrade(store).map_err(|e| format!("cannot upgrade {}: {e}", store.display()))?;
    drop(lock);
    let e = open_offline(store, &crate::cli::KeyArgs::default())?;
    e.shutdown().map_err(|e| e.to_string())?;
    Ok(match what {
        Upgraded::From(v) => format!(
            "store {} upgraded from on-disk format {v} to {FORMAT}",
            store.display()
        ),
        Upgraded::AlreadyCurrent => format!(
            "store {} is already in on-disk format {FORMAT}",
            store.display()
        ),
    })
}

/// The secret the user gives: a key file, a passphrase file, a systemd credential, or the
/// terminal (asked twice when `confirm`, for a new secret).
pub fn secret(keys: &crate::cli::KeyArgs, confirm: bool) -> Result<crate::crypto::Secret, String> {
    use crate::crypto::Secret;
    if let Some(p) = &keys.key_file {
        return Secret::from_key_file(p);
    }
    if let Some(p) = &keys.passphrase_file {
        return Secret::from_passphrase_file(p);
    }
    // systemd `LoadCredential=idcfs-passphrase:…` or `idcfs-key:…` (see systemd/).
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let dir = PathBuf::from(dir);
        if dir.join("idcfs-key").is_file() {
            return Secret::from_key_file(&dir.join("idcfs-key"));
        }
        if dir.join("idcfs-passphrase").is_file() {
            return Secret::from_passphrase_file(&dir.join("idcfs-passphrase"));
        }
    }
    let no_tty = |e: io::Error| {
        format!("no passphrase given and none can be asked for ({e}): use --passphrase-file, --key-file or a systemd credential")
    };
    let p = zeroize::Zeroizing::new(
        rpassword::prompt_password(if confirm {
            "New passphrase: "
        } else {
            "Passphrase: "
        })
        .map_err(no_tty)?,
    );
    if p.is_empty() {
        return Err("empty passphrase refused".into());
    }
    if confirm {
        let again = zeroize::Zeroizing::new(
            rpassword::prompt_password("Repeat the passphrase: ").map_err(no_tty)?,
        );
        if *again != *p {
            return Err("the passphrases differ; nothing was changed".into());
        }
    }
    Ok(Secret::Passphrase(zeroize::Zeroizing::new(p.to_string())))
}

/// The key of `store`: unlocked when it is encrypted, created when `create` and the store does
/// not exist yet; None for a plain store. Once a key is held, the process stops producing
/// core dumps and refuses ptrace by other processes of the user (key memory must not leak).
pub fn unlock_or_create(
    store: &Path,
    keys: &crate::cli::KeyArgs,
    create: bool,
) -> Result<Option<Arc<crate::crypto::StoreKey>>, String> {
    use crate::store::manifest::{inspect, Found, FORMAT_ENCRYPTED};
    let found = inspect(store).unwrap_or(Found::Empty);
    let encrypted = match found {
        Found::Format(FORMAT_ENCRYPTED) => true,
        Found::Unfinished => crate::crypto::has_keys(store),
        Found::Empty if create => {
            let secret = secret(keys, true)?;
            std::fs::create_dir_all(store)
                .map_err(|e| format!("cannot create store {}: {e}", store.display()))?;
            let mut made = None;
            crate::store::manifest::create_encrypted(store, |dir| {
                made = Some(
                    crate::crypto::create(dir, &secret).map_err(|e| io::Error::other(e.to_string()))?,
                );
                Ok(())
            })
            .map_err(|e| format!("cannot create encrypted store {}: {e}", store.display()))?;
            protect_key_memory();
            return Ok(made.map(Arc::new));
        }
        _ if create => {
            return Err(format!(
                "{} already holds a store, which is not encrypted: encryption is chosen when a store is created",
                store.display()
            ))
        }
        _ => false,
    };
    if !encrypted {
        if keys.key_file.is_some() || keys.passphrase_file.is_some() {
            return Err(format!(
                "store {} is not encrypted; --key-file/--passphrase-file apply only to encrypted stores",
                store.display()
            ));
        }
        return Ok(None);
    }
    let secret = secret(keys, false)?;
    let key = crate::crypto::unlock(store, &secret)
        .map_err(|e| format!("cannot unlock store {}: {e}", store.display()))?;
    protect_key_memory();
    Ok(Some(Arc::new(key)))
}

/// No core dumps (`RLIMIT_CORE` 0, not dumpable: also refuses ptrace by the same user) once
/// key material is in memory. The systemd unit sets `LimitCORE=0` as well.
pub fn protect_key_memory() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid arguments; failure only leaves dumps possible,
    // which is logged.
    let (a, b) = unsafe {
        (
            libc::setrlimit(libc::RLIMIT_CORE, &zero),
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
        )
    };
    if a != 0 || b != 0 {
        tracing::warn!("could not disable core dumps of key memory");
    }
}

/// An encrypted store and no way to get its secret: no key or passphrase file, no systemd
/// credential, no terminal to ask on.
pub fn no_secret_available(store: &Path, keys: &crate::cli::KeyArgs) -> bool {
    use std::io::IsTerminal;
    let encrypted = matches!(
        crate::store::manifest::inspect(store),
        Ok(crate::store::manifest::Found::Format(
            crate::store::manifest::FORMAT_ENCRYPTED
        ))
    );
    encrypted
        && keys.key_file.is_none()
        && keys.passphrase_file.is_none()
        && std::env::var_os("CREDENTIALS_DIRECTORY").is_none()
        && !std::io::stdin().is_terminal()
}

/// `fsck --locked`: what can be checked of an encrypted store without its key.
pub fn fsck_locked(store: &Path, json: bool) -> Result<u8, String> {
    let layout = crate::store::manifest::open(store).map_err(|e| e.to_string())?;
    let backend: Arc<dyn crate::store::PackBackend> =
        Arc::new(crate::store::LocalDir::open(&layout.packs).map_err(|e| e.to_string())?);
    let log =
        crate::store::PackLog::open(backend.clone(), u64::MAX, None).map_err(|e| e.to_string())?;
    let (mut records, mut sealed, mut bytes) = (0u64, 0u64, 0u64);
    let mut problems = Vec::new();
    let packs = backend.list().map_err(|e| e.to_string())?;
    let newest = packs.last().copied();
    for p in packs {
        let end = log
            .scan_framing(p, |loc, r| {
                records += 1;
                bytes += loc.len as u64;
                sealed += u64::from(r.seal.key_id != 0);
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        if let crate::store::ScanEnd::Torn { off, reason, .. } = end {
            if Some(p) != newest {
                problems.push(format!("pack {p} is damaged at offset {off}: {reason}"));
            } else {
                problems.push(format!(
                    "pack {p} (the newest) ends in an incomplete record at offset {off}: {reason} (cut at the next mount)"
                ));
            }
        }
    }
    let plain = records - sealed;
    if layout.encrypted && plain > 0 {
        problems.push(format!(
            "{plain} record(s) of an encrypted store are not sealed"
        ));
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"locked": true, "records": records, "sealed": sealed, "bytes": bytes, "problems": problems})
        );
    } else {
        println!(
            "locked check (no key): {records} records ({sealed} sealed), {} of packs: framing and checksums only",
            bytes
        );
        println!("not checked without the key: authentication of each record, the index, references and decoded data (run `idcfs fsck` with the key)");
        for p in &problems {
            println!("PROBLEM: {p}");
        }
        println!(
            "{}",
            if problems.is_empty() {
                "clean (as far as checked)".to_string()
            } else {
                format!("{} problem(s)", problems.len())
            }
        );
    }
    Ok(if problems.is_empty() {
        crate::cli::EXIT_OK
    } else {
        crate::cli::EXIT_PROBLEMS
    })
}

/// Open a store that is not mounted, for offline commands.
pub fn open_offline(store: &Path, keys: &crate::cli::KeyArgs) -> Result<Arc<Engine>, String> {
    use crate::store::manifest::{inspect, Found};
    match inspect(store) {
        Ok(Found::Empty) => {
            return Err(format!(
                "{} is not an idcfs store (no MANIFEST, journal/ or packs/)",
                store.display()
            ))
        }
        Err(e) => return Err(format!("cannot read store {}: {e}", store.display())),
        Ok(_) => check_format(store)?,
    }
    let key = unlock_or_create(store, keys, false)?;
    Engine::open(store, offline_options(key))
        .map_err(|e| format!("cannot open store {}: {e}", store.display()))
}

/// Engine options of offline commands (fsck, compact, stats).
pub fn offline_options(key: Option<Arc<crate::crypto::StoreKey>>) -> Options {
    Options {
        workers: 1,
        background: false,
        key,
        ..Options::default()
    }
}

/// Unlock (or, with `create`, make) the key of an encrypted store in an object store: its
/// `keys.json` lives in the bucket and is copied into the cache directory. None for a plain
/// store.
pub fn object_key(
    cfg: &crate::store::ObjectConfig,
    keys: &crate::cli::KeyArgs,
    create: bool,
) -> Result<Option<Arc<crate::crypto::StoreKey>>, String> {
    use crate::crypto::KEYS_FILE;
    let in_bucket = crate::store::object::fetch_keys(cfg, KEYS_FILE)
        .map_err(|e| format!("cannot read {}: {e}", cfg.url))?;
    let dir = &cfg.cache_dir;
    if in_bucket {
        if create {
            tracing::info!("{} is already encrypted: unlocking it", cfg.url);
        }
        let secret = secret(keys, false)?;
        let key = crate::crypto::unlock(dir, &secret)
            .map_err(|e| format!("cannot unlock {}: {e}", cfg.url))?;
        protect_key_memory();
        return Ok(Some(Arc::new(key)));
    }
    if create {
        let secret = secret(keys, true)?;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create cache {}: {e}", dir.display()))?;
        let key = crate::crypto::create(dir, &secret)
            .map_err(|e| format!("cannot create the key of {}: {e}", cfg.url))?;
        crate::store::object::publish_keys(cfg, KEYS_FILE)
            .map_err(|e| format!("cannot store the key file in {}: {e}", cfg.url))?;
        protect_key_memory();
        return Ok(Some(Arc::new(key)));
    }
    if keys.key_file.is_some() || keys.passphrase_file.is_some() {
        return Err(format!(
            "{} is not encrypted; --key-file/--passphrase-file apply only to encrypted stores",
            cfg.url
        ));
    }
    if dir.join(KEYS_FILE).exists() {
        return Err(format!(
            "the cache {} holds a key file but {} has none: is this the cache of another store?",
            dir.display(),
            cfg.url
        ));
    }
    Ok(None)
}

/// Open a store whose packs live in an object store, with its cache (index, lock, packs
/// not yet uploaded) in `cache`.
pub fn open_object(
    cache: &Path,
    cfg: &crate::store::ObjectConfig,
    opts: Options,
) -> Result<Arc<Engine>, String> {
    std::fs::create_dir_all(cache)
        .map_err(|e| format!("cannot create cache {}: {e}", cache.display()))?;
    // The cache directory's lock first: a second mount from the same cache must not touch
    // the first one's packs (the bucket lease covers other caches and machines).
    let lock = crate::engine::lock_store(cache).map_err(|e| e.to_string())?;
    let backend = crate::store::ObjectBackend::open(cfg.clone())
        .map_err(|e| format!("cannot open object store {}: {e}", cfg.url))?;
    drop(lock);
    Engine::open_with_backend(cache, opts, Arc::new(backend))
        .map_err(|e| format!("cannot open store {}: {e}", cfg.url))
}

/// Dirty page cache the kernel lets writers build up in an object-store mount.
const OBJECT_DIRTY_BYTES: u64 = 8 << 20;

/// Lower the kernel's dirty-page limit of the FUSE mount at `mp` to `bytes`. By default a
/// writer may dirty 1% of the machine's dirty budget in a FUSE mount (48 MB on this 24 GiB
/// machine) before it is throttled. Behind an object store, where writes are paced to the
/// upload rate, that buffer fills at once and then drains in bursts, so a writer sees stops
/// of seconds; with 8 MiB the pacing reaches it smoothly, at no cost to throughput
/// (BENCHMARKS.md 10.2). Best effort: needs root and a kernel with `max_bytes` (6.2+).
fn limit_dirty_pages(mp: &Path, bytes: u64) {
    let Some(dev) = mount_device(mp) else {
        tracing::debug!("no device number found for {} in mountinfo", mp.display());
        return;
    };
    let knob = format!("/sys/class/bdi/{dev}/max_bytes");
    match std::fs::write(&knob, bytes.to_string()) {
        Ok(()) => tracing::info!(
            bytes,
            "kernel dirty-page limit of the mount lowered ({knob})"
        ),
        Err(e) => tracing::debug!("cannot lower the kernel dirty-page limit ({knob}): {e}"),
    }
}

/// The `major:minor` device of the newest mount at `mp`, from `/proc/self/mountinfo`
/// (no request to the mount itself).
fn mount_device(mp: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // mountinfo escapes these characters in paths as octal.
    let want: String = mp
        .to_string_lossy()
        .chars()
        .map(|c| match c {
            ' ' => "\\040".to_string(),
            '\t' => "\\011".to_string(),
            '\n' => "\\012".to_string(),
            '\\' => "\\134".to_string(),
            c => c.to_string(),
        })
        .collect();
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&want.as_str())).then(|| f.get(2).map(|d| d.to_string()))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape_path(Path::new("/data")), "data");
        assert_eq!(escape_path(Path::new("/mnt/a b/")), "mnt-a\\x20b");
        assert_eq!(escape_path(Path::new("/")), "-");
        assert_eq!(escape_path(Path::new("/.x")), "\\x2ex");
    }

    #[test]
    fn mount_devices_come_from_mountinfo() {
        let root = mount_device(Path::new("/")).unwrap_or_default();
        let (maj, min) = root.split_once(':').unwrap_or_default();
        assert!(
            maj.parse::<u32>().is_ok() && min.parse::<u32>().is_ok(),
            "{root:?}"
        );
        assert_eq!(mount_device(Path::new("/no/such/mount point")), None);
    }
}
