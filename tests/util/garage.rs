//! Garage (<https://garagehq.deuxfleurs.fr>), a real S3-compatible server that keeps its
//! objects on disk, for the tests that stop and restart the server: a single node on
//! 127.0.0.1 (sqlite metadata engine, replication factor 1) in a temporary directory, set up
//! through the `garage` CLI (layout assign + apply, a key, buckets). `.ci/run` and the README's
//! test command install it (`cargo install garage --locked`, into `~/.cargo/bin`); found
//! through `IDCFS_GARAGE`, then `~/.cargo/bin/garage`, then `PATH`. A missing binary fails
//! the test; it is never skipped.
//!
//! Invariant: `kill` is a real crash (SIGKILL) and `restart` starts a new process on the
//! same directories and ports, so what the server acknowledged before must still be there.
//!
//! Garage 2.5.0 ignores `If-None-Match: *` on PUT (it overwrites): the lease tests that need
//! a conditional PUT run against moto (`s3.rs`).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Garage {
    child: Option<Child>,
    bin: PathBuf,
    config: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    key_id: String,
    secret: String,
    _dir: tempfile::TempDir,
}

fn find_bin() -> Option<PathBuf> {
    super::find_tool("IDCFS_GARAGE", ".cargo/bin/garage", "garage")
}

use super::free_port;

impl Garage {
    /// Start a fresh single-node server with a key; a missing binary fails the test.
    pub fn start() -> Garage {
        let Some(bin) = find_bin() else {
            panic!("no Garage for the object-store restart tests: `garage` not found (IDCFS_GARAGE, $HOME/.cargo/bin, PATH); the README's test command and `.ci/run` install it (cargo install garage --locked)");
        };
        let dir = tempfile::Builder::new()
            .prefix("idcfs-test-garage")
            .tempdir_in("/var/tmp")
            .unwrap_or_else(|e| panic!("{e}"));
        let (port, rpc) = (free_port(), free_port());
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = (port as usize * 31 + rpc as usize * 7 + i * 13) as u8;
        }
        let config = dir.path().join("garage.toml");
        let d = dir.path().display();
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{port}"
root_domain = ".s3.garage.localhost"
"#,
                hex::encode(secret)
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut g = Garage {
            child: None,
            bin,
            config,
            port,
            log: dir.path().join("garage.log"),
            key_id: String::new(),
            secret: String::new(),
            _dir: dir,
        };
        g.spawn();
        // The node serves S3 requests only once it is in an applied layout.
        let id = g.cli_retry(&["node", "id", "-q"]);
        let id = id.trim();
        let short = id.split('@').next().unwrap_or(id);
        g.cli_retry(&["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        g.cli_retry(&["layout", "apply", "--version", "1"]);
        let out = g.cli_retry(&["json-api", "CreateKey", r#"{"name":"idcfs-test"}"#]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("garage CreateKey: {e}: {out}"));
        g.key_id = v["accessKeyId"].as_str().unwrap_or_default().to_string();
        g.secret = v["secretAccessKey"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!g.key_id.is_empty() && !g.secret.is_empty(), "{out}");
        g
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "garage already running");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{e}"));
        let f2 = f.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("garage exited ({st}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "garage did not listen in 60 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `garage -c CONFIG ARGS`: (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("garage {args:?}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The CLI, retried for a while: right after a start or a layout change the node may not
    /// answer yet.
    fn cli_retry(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, out, err) = self.cli(args);
            if ok {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "garage {args:?} failed: {err}{out}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn create_bucket(&self, name: &str) {
        self.cli_retry(&["bucket", "create", name]);
        self.cli_retry(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            &self.key_id,
        ]);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The AWS_* environment of a client of this server.
    pub fn envs(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", "garage".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Crash the server (SIGKILL): connections are refused until `restart`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the server again on the same directories and ports.
    pub fn restart(&mut self) {
        self.spawn();
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}
