//! Test helpers: a real FUSE mount of the built `idcfs` binary in a temp dir, with readable
//! failures (the daemon log is printed when a test panics).

#![allow(dead_code)]

pub mod garage;
pub mod s3;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_idcfs");

/// A server the tests start: `$env` if set, else `$HOME/home_rel` if it is a file, else
/// `name` on `PATH`.
pub fn find_tool(env: &str, home_rel: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(home_rel);
        if p.is_file() {
            return Some(p);
        }
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    l.local_addr().unwrap_or_else(|e| panic!("{e}")).port()
}

pub struct Mounted {
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    pub store: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    /// Environment of the daemon (an object store's endpoint and credentials).
    envs: Vec<(String, String)>,
}

/// Whether `mp` is in the mount table.
pub fn is_mounted(mp: &Path) -> bool {
    let mut s = String::new();
    if std::fs::File::open("/proc/self/mountinfo")
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_err()
    {
        return false;
    }
    let want = mp.to_string_lossy().replace(' ', "\\040");
    s.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

impl Mounted {
    pub fn new() -> Mounted {
        Self::with_args(&[])
    }

    /// A test directory whose store is a copy of `src` (e.g. a golden store), not mounted yet.
    pub fn from_store_copy(src: &Path) -> Mounted {
        let m = Self::unmounted(&[]);
        let out = Command::new("cp")
            .arg("-a")
            .arg(src)
            .arg(&m.store)
            .output()
            .unwrap_or_else(|e| panic!("cp: {e}"));
        assert!(out.status.success(), "cp -a {} failed", src.display());
        m
    }

    /// The directories of a mount, without mounting.
    pub fn unmounted(extra: &[&str]) -> Mounted {
        Self::layout(None, None, extra)
    }

    /// The same directories with other extra `mount` arguments (e.g. a key file made in
    /// the test directory).
    pub fn with_extra(mut self, extra: &[&str]) -> Mounted {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn with_args(extra: &[&str]) -> Mounted {
        Self::build(None, None, extra)
    }

    /// A mount whose store lives at `store` (e.g. on a small tmpfs); the mount point and the
    /// daemon log stay in a temp dir of their own.
    pub fn with_store(store: &Path, extra: &[&str]) -> Mounted {
        Self::build(Some(store.to_path_buf()), None, extra)
    }

    /// `with_store`, with the daemon log at `log` too (as `idcfs mount` keeps it in the store).
    pub fn with_store_and_log(store: &Path, log: &Path, extra: &[&str]) -> Mounted {
        Self::build(Some(store.to_path_buf()), Some(log.to_path_buf()), extra)
    }

    fn build(store: Option<PathBuf>, log: Option<PathBuf>, extra: &[&str]) -> Mounted {
        let mut m = Self::layout(store, log, extra);
        m.mount();
        m
    }

    /// A temp dir with the mount point (and, unless given, the store and log paths).
    fn layout(store: Option<PathBuf>, log: Option<PathBuf>, extra: &[&str]) -> Mounted {
        let dir = tempfile::Builder::new()
            .prefix("idcfs-test")
            .tempdir_in("/var/tmp")
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mnt = dir.path().join("mnt");
        let store = store.unwrap_or_else(|| dir.path().join("store"));
        std::fs::create_dir_all(&mnt).unwrap_or_else(|e| panic!("{e}"));
        let log = log.unwrap_or_else(|| dir.path().join("daemon.log"));
        Mounted {
            dir,
            mnt,
            store,
            log,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            envs: Vec::new(),
        }
    }

    /// A mount of the object store `url` (`s3://bucket/prefix`) with its cache at `cache`,
    /// the daemon run with `envs` (endpoint, credentials); not mounted yet.
    pub fn object(url: &str, cache: &Path, envs: &[(String, String)], extra: &[&str]) -> Mounted {
        let mut all = vec!["--cache".to_string(), cache.display().to_string()];
        all.extend(extra.iter().map(|s| s.to_string()));
        let mut m = Self::layout(Some(PathBuf::from(url)), None, &[]);
        m.extra = all;
        m.envs = envs.to_vec();
        m
    }

    /// Start the daemon in the foreground as a child and wait until the mount is live.
    pub fn mount(&mut self) {
        assert!(self.child.is_none(), "already mounted");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{e}"));
        let log2 = log.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(BIN)
            .arg("mount")
            .arg("--foreground")
            .arg("--store")
            .arg(&self.store)
            .args(&self.extra)
            .arg(&self.mnt)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn idcfs: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_mounted(&self.mnt) {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("daemon exited ({st}) before mounting:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("mount did not come up in 60 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Clean unmount through the CLI; asserts the daemon exits successfully.
    pub fn unmount(&mut self) {
        let out = Command::new(BIN)
            .arg("umount")
            .arg(&self.mnt)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "umount failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        if let Some(mut c) = self.child.take() {
            let st = wait_timeout(&mut c, Duration::from_secs(120));
            assert!(
                st.is_some_and(|s| s.success()),
                "daemon did not exit cleanly ({st:?}):\n{}",
                self.log_text()
            );
        }
        assert!(!is_mounted(&self.mnt), "still mounted after umount");
    }

    /// The daemon's pid, while mounted.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Start the daemon and return what it printed when it exits before mounting (None when
    /// the mount came up: it then stays mounted).
    pub fn try_mount(&mut self) -> Option<String> {
        let out = Command::new(BIN)
            .arg("mount")
            .arg("--foreground")
            .arg("--store")
            .arg(&self.store)
            .args(&self.extra)
            .arg(&self.mnt)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn idcfs: {e}"));
        let mut child = out;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if is_mounted(&self.mnt) {
                self.child = Some(child);
                return None;
            }
            if let Ok(Some(_)) = child.try_wait() {
                let mut s = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut s);
                }
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("mount neither came up nor failed in 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// SIGKILL the daemon (a crash) and clear the dead mount.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.mnt)
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_mounted(&self.mnt) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!is_mounted(&self.mnt), "dead mount could not be cleared");
    }

    /// Run `idcfs ARGS` and return its output.
    pub fn idcfs(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// fsck the (unmounted) store; returns (exit code, stdout).
    pub fn fsck(&self) -> (i32, String) {
        let out = Command::new(BIN)
            .arg("fsck")
            .arg(&self.store)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    pub fn stats_json(&self) -> serde_json::Value {
        let out = self.idcfs(&["stats", "--json", self.mnt.to_str().unwrap_or_default()]);
        assert!(
            out.status.success(),
            "stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stats json: {e}"))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- daemon log ({}) ----\n{}",
                self.log.display(),
                tail(&self.log_text(), 60)
            );
        }
        if let Some(mut c) = self.child.take() {
            if std::thread::panicking() {
                // A failed test may have left the daemon hung: kill it first (that aborts
                // the requests blocked on it), then clear the dead mount.
                let _ = c.kill();
                let _ = c.wait();
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&self.mnt)
                    .status();
                return;
            }
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .status();
            if wait_timeout(&mut c, Duration::from_secs(60)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&self.mnt)
                    .status();
            }
        }
    }
}

/// Run `idcfs ARGS`: its exit code and what it printed (stdout, then stderr).
pub fn idcfs(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn wait_timeout(c: &mut Child, t: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + t;
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run a shell command in `dir`, asserting success; returns stdout.
pub fn sh(dir: &Path, cmd: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "command failed ({}): {cmd}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stdout), 40),
        tail(&String::from_utf8_lossy(&out.stderr), 40)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift), mixed with text so they compress somewhat.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let words: [&[u8]; 8] = [
        b"alpha ",
        b"beta ",
        b"gamma ",
        b"delta\n",
        b"epsilon ",
        b"zeta ",
        b"eta ",
        b"theta\n",
    ];
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(4) {
            v.push(x as u8);
        } else {
            v.extend_from_slice(words[(x >> 8) as usize % 8]);
        }
    }
    v.truncate(len);
    v
}

/// sha256 of a file through the system tool.
pub fn sha(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Incompressible pseudo-random bytes (xorshift), so sizes on disk are predictable.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
