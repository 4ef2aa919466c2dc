//! A real Prometheus server (Debian's `prometheus` package, installed by
//! scripts/setup.sh) scraping the targets a test gives it, every second,
//! and asked through its HTTP API. Stopped on drop like every server here.

use crate::process::Guarded;
use serde_json::{Value, json};
use std::time::Duration;

pub struct Prometheus {
    pub url: String,
    _server: Guarded,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with these `scrape_configs` (Prometheus' own
    /// configuration format, as JSON, which is YAML too).
    pub fn start(scrape_configs: Value) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": scrape_configs,
        });
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config.to_string()).map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let log =
            std::fs::File::create(dir.path().join("prometheus.log")).map_err(|e| e.to_string())?;
        let server = Guarded::spawn(
            "prometheus",
            std::process::Command::new("prometheus")
                .arg(format!("--config.file={}", file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log),
            Duration::from_secs(5),
        )
        .map_err(|e| format!("{e} (apt-get install prometheus, or scripts/setup.sh)"))?;
        let p = Self {
            url: format!("http://127.0.0.1:{port}"),
            _server: server,
            _dir: dir,
        };
        for _ in 0..300 {
            if matches!(
                crate::real_qdrant::get(&p.url, "/-/ready", None),
                Ok((200, _))
            ) {
                return Ok(p);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("prometheus did not get ready:\n{}", p.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The active targets: labels, `health` (`up`, `down`) and `lastError`.
    pub fn targets(&self) -> Vec<Value> {
        self.api("/api/v1/targets?state=active")["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// An instant query's result vector.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={}", encode(expr)))["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn api(&self, path: &str) -> Value {
        match crate::real_qdrant::get(&self.url, path, None) {
            Ok((200, body)) => serde_json::from_str::<Value>(&body)
                .map(|v| v["data"].clone())
                .unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

/// Percent-encodes a query parameter (everything but unreserved bytes).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
