//! A real S3-compatible server for tests: moto's server, started on
//! 127.0.0.1. When `TEST_S3_ENDPOINT` is set (the test script starts one
//! shared server) that one is used; otherwise each caller starts its own.
//! Buckets are created with a plain HTTP PUT (moto does not check signatures).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct S3Server {
    pub endpoint: String,
    /// Its own moto, which dies with it (and with the test process, even
    /// one killed before Drop ran).
    _process: Option<crate::process::Guarded>,
}

impl S3Server {
    pub fn start() -> std::io::Result<Self> {
        if let Ok(e) = std::env::var("TEST_S3_ENDPOINT")
            && !e.is_empty()
        {
            return Ok(Self {
                endpoint: e.trim_end_matches('/').to_string(),
                _process: None,
            });
        }
        Self::start_on("127.0.0.1")
    }

    /// Its own moto on `host` (e.g. the real node's bridge address, which
    /// pods reach and the host owns), whatever `TEST_S3_ENDPOINT` says.
    pub fn start_on(host: &str) -> std::io::Result<Self> {
        let port = free_port()?;
        let process = crate::process::Guarded::spawn(
            "moto_server",
            Command::new(crate::bins::tool("moto_server"))
                .args(["-H", host, "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            Duration::from_secs(2),
        )
        .map_err(|e| std::io::Error::other(format!("{e}: run scripts/setup.sh")))?;
        let s = Self {
            endpoint: format!("http://{host}:{port}"),
            _process: Some(process),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if s.request("GET", "/")
                .map(|r| r.starts_with("HTTP/1.1 200"))
                .unwrap_or(false)
            {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(std::io::Error::other("moto_server did not come up in 30s"))
    }

    /// Creates a bucket with a name unique to this process and `tag`.
    pub fn bucket(&self, tag: &str) -> std::io::Result<String> {
        let name = format!("t-{}-{}-{}", tag, std::process::id(), rand::random::<u32>())
            .to_lowercase()
            .replace('_', "-");
        let r = self.request("PUT", &format!("/{name}"))?;
        if !r.starts_with("HTTP/1.1 200") {
            return Err(std::io::Error::other(format!(
                "create bucket: {}",
                r.lines().next().unwrap_or("")
            )));
        }
        Ok(name)
    }

    fn request(&self, method: &str, path: &str) -> std::io::Result<String> {
        let hostport = self.endpoint.trim_start_matches("http://");
        let mut s = TcpStream::connect(hostport)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }
}

pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// s3s-fs, a real S3 server that checks request signatures and does not
/// implement ListMultipartUploads (`cargo install s3s-fs@0.14.1 --features binary`).
/// Buckets are directories under its root.
pub struct S3sFs {
    pub endpoint: String,
    pub root: std::path::PathBuf,
    child: Child,
}

impl S3sFs {
    pub fn start(
        root: &std::path::Path,
        access_key: &str,
        secret_key: &str,
    ) -> std::io::Result<Self> {
        let port = free_port()?;
        let child = Command::new(crate::bins::tool("s3s-fs"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                access_key,
                "--secret-key",
                secret_key,
            ])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::other(format!("cannot start s3s-fs ({e}): run scripts/setup.sh"))
            })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other("s3s-fs did not come up in 30s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            root: root.to_path_buf(),
            child,
        })
    }

    pub fn bucket(&self, name: &str) -> std::io::Result<String> {
        std::fs::create_dir_all(self.root.join(name))?;
        Ok(name.to_string())
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// mitmproxy as a reverse proxy in front of an S3 server, injecting faults
/// on part uploads (see `test-support/s3_faults.py`). `mitmdump` is taken
/// from `MITMDUMP`, then the PATH, then `.tools/mitm/bin/` (scripts/setup.sh).
pub struct FaultProxy {
    pub endpoint: String,
    pub log: std::path::PathBuf,
    child: Child,
}

impl FaultProxy {
    pub fn start(upstream: &str, mode: &str, dir: &std::path::Path) -> std::io::Result<Self> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let bin = std::env::var("MITMDUMP")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| crate::bins::tool("mitmdump"));
        let port = free_port()?;
        let log = dir.join(format!("faults-{port}.log"));
        std::fs::write(&log, "")?;
        let child = Command::new(&bin)
            .args([
                "--mode",
                &format!("reverse:{upstream}"),
                "--listen-host",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .args([
                "--set",
                "keep_host_header=true",
                "--set",
                "connection_strategy=lazy",
                "-q",
                "-s",
            ])
            .arg(root.join("test-support/s3_faults.py"))
            .env("FAULT_MODE", mode)
            .env("FAULT_LOG", &log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::other(format!(
                    "cannot start {} ({e}): run scripts/setup.sh",
                    bin.display()
                ))
            })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other("mitmdump did not come up in 30s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            child,
        })
    }

    /// Faults injected so far.
    pub fn injected(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
