//! The slice of Qdrant's REST API the agent uses. Every reply is
//! `{result, status, time}`; errors carry `status.error`. Long operations
//! are called with `wait=true` and a long timeout.

use crate::error::{Error, Result};
use crate::store::ByteStream;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::time::Duration;

mod collections;
mod snapshots;

#[derive(Clone)]
pub struct Qdrant {
    http: reqwest::Client,
    base: url::Url,
    api_key: Option<String>,
}

impl std::fmt::Debug for Qdrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Qdrant({})", self.base)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ShardInfo {
    pub shard_id: u32,
    #[serde(default)]
    pub shard_key: Option<Value>,
    #[serde(default)]
    pub state: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RemoteShardInfo {
    pub shard_id: u32,
    pub peer_id: u64,
    #[serde(default)]
    pub shard_key: Option<Value>,
    #[serde(default)]
    pub state: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Placement {
    pub peer_id: u64,
    #[serde(default)]
    pub local_shards: Vec<ShardInfo>,
    /// Replicas on other peers (distributed mode).
    #[serde(default)]
    pub remote_shards: Vec<RemoteShardInfo>,
    #[serde(default)]
    pub shard_transfers: Vec<ShardTransfer>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ShardTransfer {
    pub shard_id: u32,
    pub from: u64,
    pub to: u64,
}

impl Placement {
    /// Peers other than this one holding an Active replica of `shard`.
    pub fn other_active(&self, shard: u32) -> Vec<u64> {
        self.remote_shards
            .iter()
            .filter(|r| r.shard_id == shard && r.state == "Active")
            .map(|r| r.peer_id)
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Alias {
    pub alias_name: String,
    pub collection_name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotDescription {
    pub name: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub checksum: Option<String>,
}

const SHORT: Duration = Duration::from_secs(60);
const LONG: Duration = Duration::from_secs(6 * 3600);

impl Qdrant {
    pub fn new(url: &str, api_key: Option<String>) -> Result<Self> {
        // "localhost:6333" parses as scheme "localhost": say what was meant.
        if !url.contains("://") {
            return Err(Error::Invalid(format!(
                "Qdrant URL {url:?} has no scheme: use http://{url} (or https://)"
            )));
        }
        let mut base =
            url::Url::parse(url).map_err(|e| Error::Invalid(format!("Qdrant URL {url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::Invalid(format!(
                "Qdrant URL {url:?} must be http(s)://HOST:PORT"
            )));
        }
        // Credentials in the URL would end up in error messages.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        // https Qdrant (e.g. a managed one) uses rustls with ring, as the
        // rest of the agent does; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            api_key,
        })
    }

    pub fn url(&self) -> &url::Url {
        &self.base
    }

    fn endpoint(&self, segs: &[&str]) -> url::Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(segs);
        }
        u
    }

    fn req(&self, method: reqwest::Method, segs: &[&str]) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, self.endpoint(segs))
            .timeout(SHORT);
        if let Some(k) = &self.api_key {
            r = r.header("api-key", k);
        }
        r
    }

    async fn send(&self, what: &str, r: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = r.send().await.map_err(|e| self.transport_err(what, e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| {
                v.pointer("/status/error")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| body.chars().take(300).collect());
        // Qdrant's messages span lines; errors are read one per line.
        let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
        if status.is_server_error()
            && let Some(peer) = unreachable_peer(&detail)
        {
            return Err(Error::QdrantPeerUnavailable {
                what: what.to_string(),
                peer,
                detail,
            });
        }
        let what = what.to_string();
        Err(match status.as_u16() {
            401 => Error::QdrantUnauthorized { what, detail },
            403 => Error::QdrantForbidden { what, detail },
            status => Error::Qdrant {
                what,
                status,
                detail,
            },
        })
    }

    /// An answer that is not Qdrant's: the URL points at another server.
    fn not_qdrant(&self, what: &str) -> Error {
        Error::Invalid(format!(
            "the server at {} does not look like Qdrant ({what} did not answer as Qdrant does): check the Qdrant URL",
            self.base
        ))
    }

    fn transport_err(&self, what: &str, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            return Error::Timeout(format!("Qdrant did not answer {what} in time"));
        }
        // The whole cause chain: "client error (Connect)" alone says nothing;
        // its causes say "connection refused" or "invalid peer certificate".
        let e = e.without_url();
        let mut detail = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            detail.push_str(": ");
            detail.push_str(&c.to_string());
            cause = c.source();
        }
        Error::QdrantUnreachable {
            url: self.base.to_string(),
            detail: format!("{what}: {detail}"),
        }
    }

    async fn call<T: DeserializeOwned>(&self, what: &str, r: reqwest::RequestBuilder) -> Result<T> {
        #[derive(Deserialize)]
        struct Envelope<T> {
            result: T,
        }
        let resp = self.send(what, r).await?;
        let json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        if !json {
            return Err(self.not_qdrant(what));
        }
        let env: Envelope<T> = resp.json().await.map_err(|e| Error::Qdrant {
            what: what.to_string(),
            status: 200,
            detail: format!("unexpected reply: {}", e.without_url()),
        })?;
        Ok(env.result)
    }
}

/// Turns a collection's saved `config` (from `GET /collections/{c}`) into the
/// body of `PUT /collections/{c}`. Field names differ between the two
/// (`optimizer_config` vs `optimizers_config`); nulls are dropped so Qdrant
/// applies its defaults rather than refusing them.
pub fn create_body_from_config(config: &Value) -> Result<Value> {
    let params = config
        .get("params")
        .ok_or_else(|| Error::Invalid("saved collection config has no params".into()))?;
    let mut body = serde_json::Map::new();
    for k in [
        "vectors",
        "shard_number",
        "sharding_method",
        "replication_factor",
        "write_consistency_factor",
        "on_disk_payload",
        "sparse_vectors",
    ] {
        if let Some(v) = params.get(k) {
            body.insert(k.into(), v.clone());
        }
    }
    for (from, to) in [
        ("hnsw_config", "hnsw_config"),
        ("wal_config", "wal_config"),
        ("optimizer_config", "optimizers_config"),
        ("quantization_config", "quantization_config"),
        ("strict_mode_config", "strict_mode_config"),
        ("metadata", "metadata"),
    ] {
        if let Some(v) = config.get(from) {
            body.insert(to.into(), v.clone());
        }
    }
    let mut body = Value::Object(body);
    drop_nulls(&mut body);
    Ok(body)
}

fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// "1.18.3" -> (1, 18). Snapshots restore only within one minor version.
/// The peer named in a Qdrant error that came from failing to reach it, as
/// Qdrant 1.x words it ("Failed to connect to http://…/", "tcp connect
/// error", "The service is currently unavailable"); `None` otherwise.
fn unreachable_peer(detail: &str) -> Option<String> {
    const SIGNS: [&str; 3] = [
        "Failed to connect to ",
        "tcp connect error",
        "service is currently unavailable",
    ];
    if !SIGNS.iter().any(|s| detail.contains(s)) {
        return None;
    }
    let url = detail.split("Failed to connect to ").nth(1).map(|rest| {
        rest.split([',', '"', ' '])
            .next()
            .unwrap_or_default()
            .to_string()
    });
    let addr = || {
        detail.split("(\"tcp connect error\", ").nth(1).map(|rest| {
            rest.split([',', ')', ' '])
                .next()
                .unwrap_or_default()
                .to_string()
        })
    };
    Some(
        url.or_else(addr)
            .filter(|p| !p.is_empty())
            .map_or_else(|| "a peer node".to_string(), |p| format!("peer {p}")),
    )
}

pub fn minor_version(v: &str) -> Option<(u64, u64)> {
    let mut it = v.trim_start_matches('v').split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests;
