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
pub fn run_foreground(mp: &Path, store: &Path, opts: Options) -> Result<(), String> {
    check_mountpoint(mp)?;
    let engine = Engine::open(store, opts)
        .map_err(|e| format!("cannot open store {}: {e}", store.display()))?;
    let r = &engine.recovery;
    if r.replayed > 0 || r.torn_tail.is_some() || r.rebuilt {
        tracing::info!(replayed = r.replayed, torn = ?r.torn_tail, rebuilt = r.rebuilt, "recovered store after an unclean stop");
    }
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName(format!("idcfs:{}", store.display())),
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
    let mut session = fuser::Session::new(IdcFuse::new(engine.clone()), mp, &cfg).map_err(|e| {
        format!(
            "cannot mount {}: {e} (is fuse3 installed and /dev/fuse present?)",
            mp.display()
        )
    })?;
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
    tracing::info!(
        "idcfs mounted on {} (store {})",
        mp.display(),
        store.display()
    );
    let res = session.run();
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
pub fn spawn_background(mp: &Path, store: &Path, extra_args: &[String]) -> Result<(), String> {
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
        .arg(store)
        .args(extra_args)
        .arg(mp)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if is_mounted(mp) {
            println!(
                "idcfs: mounted {} (store {}, log {}, pid {})",
                mp.display(),
                store.display(),
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
                "the mount did not come up within 60 s; see {}",
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
    let e = open_offline(store)?;
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

/// Open a store that is not mounted, for offline commands.
pub fn open_offline(store: &Path) -> Result<Arc<Engine>, String> {
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
    let opts = Options {
        workers: 1,
        background: false,
        ..Options::default()
    };
    Engine::open(store, opts).map_err(|e| format!("cannot open store {}: {e}", store.display()))
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
}
