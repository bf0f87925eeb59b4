//! A real S3-compatible server for the object-store tests: moto's server (`moto_server`,
//! from PyPI `moto[server]`; `.ci/run` installs it in `$HOME/.cache/idcfs-ci/venv`), started
//! on 127.0.0.1 on a free port, one per test. Found through `IDCFS_MOTO_SERVER`, then the CI
//! venv, then `PATH`. Missing: the test fails (it is never skipped).
//!
//! moto keeps its objects in memory, so an outage is simulated by freezing the process
//! (SIGSTOP: every request hangs, the harder case for timeouts) and thawing it (SIGCONT).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct S3Server {
    child: Child,
    bin: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

fn find_bin() -> Option<PathBuf> {
    super::find_tool(
        "IDCFS_MOTO_SERVER",
        ".cache/idcfs-ci/venv/bin/moto_server",
        "moto_server",
    )
}

use super::free_port;

impl S3Server {
    /// Start a server; a missing one fails the test (the README's test command and `.ci/run`
    /// install it), it is never skipped.
    pub fn start() -> S3Server {
        let Some(bin) = find_bin() else {
            panic!("no S3 server for the object-store tests: moto_server not found (IDCFS_MOTO_SERVER, $HOME/.cache/idcfs-ci/venv/bin, PATH); the README's test command and `.ci/run` install it");
        };
        let dir = tempfile::Builder::new()
            .prefix("idcfs-test-s3")
            .tempdir_in("/var/tmp")
            .unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("moto.log");
        // A port taken between our probe and the server's bind: try a few.
        for _ in 0..5 {
            let port = free_port();
            let f = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
            let f2 = f.try_clone().unwrap_or_else(|e| panic!("{e}"));
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(f)
                .stderr(f2)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server {
                        child,
                        bin: bin.clone(),
                        port,
                        log,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "moto_server did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The AWS_* environment of a client of this server.
    pub fn envs(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// One plain HTTP request (moto does not check signatures); returns (status, body).
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap_or_else(|e| panic!("{e}"));
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap_or_else(|e| panic!("{e}"));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        s.write_all(body).unwrap_or_else(|e| panic!("{e}"));
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }

    pub fn create_bucket(&self, name: &str) {
        let (code, body) = self.http("PUT", &format!("/{name}"), b"");
        assert_eq!(code, 200, "creating bucket {name}: {body}");
    }

    /// Keys under `prefix` in `bucket`, with their sizes.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let (code, body) = self.http(
            "GET",
            &format!("/{bucket}?list-type=2&prefix={prefix}&max-keys=10000"),
            b"",
        );
        assert_eq!(code, 200, "listing {bucket}: {body}");
        let mut out = Vec::new();
        for part in body.split("<Contents>").skip(1) {
            let field = |tag: &str| {
                part.split(&format!("<{tag}>"))
                    .nth(1)
                    .and_then(|r| r.split(&format!("</{tag}>")).next())
                    .unwrap_or_default()
                    .to_string()
            };
            out.push((field("Key"), field("Size").parse().unwrap_or(0)));
        }
        out
    }

    /// An object's bytes, through boto3 (signed: moto refuses anonymous reads of objects);
    /// the python beside `moto_server` has it.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let py = self
            .bin
            .parent()
            .map(|d| d.join("python"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("python3"));
        let out = Command::new(py)
            .args([
                "-c",
                "import boto3,sys; c=boto3.client('s3',endpoint_url=sys.argv[1],aws_access_key_id='testing',aws_secret_access_key='testing',region_name='us-east-1'); sys.stdout.buffer.write(c.get_object(Bucket=sys.argv[2],Key=sys.argv[3])['Body'].read())",
                &self.endpoint(),
                bucket,
                key,
            ])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "GET {bucket}/{key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Freeze the server: requests hang until `resume`.
    pub fn pause(&self) {
        // SAFETY-free: kill(2) through the system tool.
        let ok = Command::new("kill")
            .args(["-STOP", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not stop the S3 server");
    }

    pub fn resume(&self) {
        let ok = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not resume the S3 server");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
