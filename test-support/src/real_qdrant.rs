//! The real Qdrant server for tests: one node, or a distributed cluster of
//! N nodes on loopback, each with its own storage and snapshots directory.
//! Node i listens on 127.0.0.1 with its own HTTP, gRPC and peer ports; the
//! first node founds the cluster and the others bootstrap from it.

use crate::bins;
use crate::process::Guarded;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Node {
    /// `http://127.0.0.1:<http port>`.
    pub url: String,
    pub http_port: u16,
    pub p2p_port: u16,
    pub storage: PathBuf,
    pub snapshots: PathBuf,
    pub log: PathBuf,
    process: Option<Guarded>,
    args: Vec<String>,
    config: PathBuf,
}

pub struct RealQdrant {
    pub nodes: Vec<Node>,
    pub api_key: Option<String>,
    /// Qdrant's `service.read_only_api_key`.
    pub read_only_api_key: Option<String>,
    _dir: tempfile::TempDir,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl RealQdrant {
    /// Starts `n` nodes (distributed mode when `n > 1`) and waits until each
    /// answers `/readyz` and, in a cluster, node 0 lists all `n` peers.
    pub fn start(n: usize, api_key: Option<&str>) -> Result<Self, BoxError> {
        Self::start_with(n, n > 1, api_key)
    }

    /// As `start`, with distributed mode chosen (a one-node cluster is
    /// what custom sharding needs).
    pub fn start_with(
        n: usize,
        distributed: bool,
        api_key: Option<&str>,
    ) -> Result<Self, BoxError> {
        Self::start_keys(n, distributed, api_key, None)
    }

    /// As `start_with`, with a read-only API key besides the full one.
    pub fn start_keys(
        n: usize,
        distributed: bool,
        api_key: Option<&str>,
        read_only_api_key: Option<&str>,
    ) -> Result<Self, BoxError> {
        bins::qdrant()?; // fail early, with the set-up hint
        let dir = tempfile::Builder::new().prefix("qdrant-").tempdir()?;
        let mut nodes = Vec::new();
        let mut first_p2p = None;
        for i in 0..n {
            let root = dir.path().join(format!("node-{i}"));
            let (storage, snapshots) = (root.join("storage"), root.join("snapshots"));
            std::fs::create_dir_all(&storage)?;
            std::fs::create_dir_all(&snapshots)?;
            let free = crate::s3_server::free_port;
            let (http_port, grpc_port, p2p_port) = (free()?, free()?, free()?);
            let config = root.join("config.yaml");
            std::fs::write(
                &config,
                format!(
                    "storage:\n  storage_path: {}\n  snapshots_path: {}\n\
                     service:\n  host: 127.0.0.1\n  http_port: {http_port}\n  grpc_port: {grpc_port}\n\
                     cluster:\n  enabled: {}\n  p2p:\n    port: {p2p_port}\n\
                     telemetry_disabled: true\n",
                    storage.display(),
                    snapshots.display(),
                    distributed
                ),
            )?;
            let mut args = Vec::new();
            if distributed {
                args.push("--uri".into());
                args.push(format!("http://127.0.0.1:{p2p_port}"));
                if let Some(p) = first_p2p {
                    args.push("--bootstrap".into());
                    args.push(format!("http://127.0.0.1:{p}"));
                }
            }
            first_p2p.get_or_insert(p2p_port);
            nodes.push(Node {
                url: format!("http://127.0.0.1:{http_port}"),
                http_port,
                p2p_port,
                storage,
                snapshots,
                log: root.join("qdrant.log"),
                process: None,
                args,
                config,
            });
        }
        let mut q = RealQdrant {
            nodes,
            api_key: api_key.map(str::to_string),
            read_only_api_key: read_only_api_key.map(str::to_string),
            _dir: dir,
        };
        for i in 0..n {
            q.start_node(i)?;
        }
        if distributed {
            q.wait_for_peers(n)?;
        }
        Ok(q)
    }

    /// Starts (or restarts after `stop_node`) node `i`; waits for `/readyz`.
    pub fn start_node(&mut self, i: usize) -> Result<(), BoxError> {
        let bin = bins::qdrant()?;
        let api_key = self.api_key.clone();
        let read_only = self.read_only_api_key.clone();
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--config-path")
            .arg(&node.config)
            .args(&node.args)
            .current_dir(node.config.parent().unwrap_or(&node.storage))
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(k) = &api_key {
            cmd.env("QDRANT__SERVICE__API_KEY", k);
        }
        if let Some(k) = &read_only {
            cmd.env("QDRANT__SERVICE__READ_ONLY_API_KEY", k);
        }
        node.process = Some(Guarded::spawn(
            format!("qdrant node {i}"),
            &mut cmd,
            Duration::from_secs(10),
        )?);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = get(&node.url, "/readyz", None) {
                return Ok(());
            }
            let alive = node.process.as_mut().is_some_and(Guarded::running);
            if !alive || Instant::now() > deadline {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                return Err(format!(
                    "Qdrant node {i} did not become ready: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM (then SIGKILL) node `i`; its storage stays.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].process.take() {
            p.stop();
        }
    }

    fn wait_for_peers(&self, n: usize) -> Result<(), BoxError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, body) = get(&self.nodes[0].url, "/cluster", self.api_key.as_deref())?;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let peers = v["result"]["peers"].as_object().map_or(0, |p| p.len());
            if peers == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("Qdrant cluster has {peers} of {n} peers: {body}").into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }
}

/// A plain HTTP/1.1 GET (enough for readiness and cluster checks): the
/// status code and the body.
pub fn get(base: &str, path: &str, api_key: Option<&str>) -> Result<(u16, String), BoxError> {
    request("GET", base, path, api_key, None)
}

/// One HTTP/1.1 request with an optional JSON body: the status code and the
/// body (chunked bodies decoded).
pub fn request(
    method: &str,
    base: &str,
    path: &str,
    api_key: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<(u16, String), BoxError> {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let key = api_key
        .map(|k| format!("api-key: {k}\r\n"))
        .unwrap_or_default();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\n{key}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, raw) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        code,
        if chunked {
            dechunk(raw)
        } else {
            raw.to_string()
        },
    ))
}

fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = raw.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        raw = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A JSON call to Qdrant that must succeed: the reply's `result`.
pub fn call(
    method: &str,
    base: &str,
    path: &str,
    api_key: Option<&str>,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, BoxError> {
    let (code, text) = request(method, base, path, api_key, body.as_ref())?;
    if !(200..300).contains(&code) {
        return Err(format!("{method} {path}: HTTP {code}: {text}").into());
    }
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["result"].clone())
}

/// Every point of `collection` (id, vector, payload), sorted by id: what
/// a restore must give back.
pub fn all_points(
    base: &str,
    collection: &str,
    api_key: Option<&str>,
) -> Result<Vec<serde_json::Value>, BoxError> {
    let mut points = Vec::new();
    let mut offset = serde_json::Value::Null;
    loop {
        let r = call(
            "POST",
            base,
            &format!("/collections/{collection}/points/scroll"),
            api_key,
            Some(
                serde_json::json!({"limit": 1000, "with_vector": true, "with_payload": true, "offset": offset}),
            ),
        )?;
        points.extend(r["points"].as_array().cloned().unwrap_or_default());
        offset = r["next_page_offset"].clone();
        if offset.is_null() {
            break;
        }
    }
    points.sort_by_key(|p| p["id"].as_u64());
    Ok(points)
}

/// Creates collection `name` (4-dim Cosine vectors, `shards` shards,
/// replication factor `rf`) with points 1..=`points`, each with a vector
/// and a payload naming it, and waits until they are written.
pub fn seed_collection(
    base: &str,
    api_key: Option<&str>,
    name: &str,
    shards: u32,
    rf: u32,
    points: u64,
) -> Result<(), BoxError> {
    call(
        "PUT",
        base,
        &format!("/collections/{name}?wait=true"),
        api_key,
        Some(
            serde_json::json!({"vectors": {"size": 4, "distance": "Cosine"},
                                "shard_number": shards, "replication_factor": rf}),
        ),
    )?;
    let points: Vec<serde_json::Value> = (1..=points)
        .map(|i| {
            let f = i as f32;
            serde_json::json!({"id": i, "vector": [f, f * 0.5 + 1.0, 3.0, -f],
                               "payload": {"n": i, "collection": name}})
        })
        .collect();
    call(
        "PUT",
        base,
        &format!("/collections/{name}/points?wait=true"),
        api_key,
        Some(serde_json::json!({"points": points})),
    )?;
    Ok(())
}
