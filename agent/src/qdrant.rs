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

    /// `GET /`: the server's version, e.g. "1.18.3" (not wrapped in `result`).
    pub async fn version(&self) -> Result<String> {
        let v: Value = self
            .send("GET /", self.req(reqwest::Method::GET, &[]))
            .await?
            .json()
            .await
            .map_err(|_| self.not_qdrant("GET /"))?;
        v.get("version")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.not_qdrant("GET /"))
    }

    /// This node's peer id, `None` when clustering is disabled.
    pub async fn peer_id(&self) -> Result<Option<u64>> {
        let v: Value = self
            .call("GET /cluster", self.req(reqwest::Method::GET, &["cluster"]))
            .await?;
        Ok(v.get("peer_id").and_then(Value::as_u64))
    }

    pub async fn collections(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct C {
            name: String,
        }
        #[derive(Deserialize)]
        struct L {
            collections: Vec<C>,
        }
        let l: L = self
            .call(
                "GET /collections",
                self.req(reqwest::Method::GET, &["collections"]),
            )
            .await?;
        Ok(l.collections.into_iter().map(|c| c.name).collect())
    }

    /// `GET /collections/{c}` result (status, config, counts), `None` if absent.
    pub async fn collection(&self, c: &str) -> Result<Option<Value>> {
        match self
            .call(
                &format!("GET /collections/{c}"),
                self.req(reqwest::Method::GET, &["collections", c]),
            )
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(Error::Qdrant { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn placement(&self, c: &str) -> Result<Placement> {
        self.call(
            &format!("GET /collections/{c}/cluster"),
            self.req(reqwest::Method::GET, &["collections", c, "cluster"]),
        )
        .await
    }

    pub async fn aliases(&self) -> Result<Vec<Alias>> {
        #[derive(Deserialize)]
        struct A {
            aliases: Vec<Alias>,
        }
        let a: A = self
            .call("GET /aliases", self.req(reqwest::Method::GET, &["aliases"]))
            .await?;
        Ok(a.aliases)
    }

    /// The live snapshot of one shard, built by Qdrant as it is read.
    pub async fn stream_shard(&self, c: &str, shard: u32) -> Result<ByteStream> {
        let s = shard.to_string();
        let what = format!("GET /collections/{c}/shards/{shard}/snapshot");
        let resp = self
            .send(
                &what,
                self.req(
                    reqwest::Method::GET,
                    &["collections", c, "shards", &s, "snapshot"],
                )
                .timeout(LONG),
            )
            .await?;
        Ok(resp
            .bytes_stream()
            .map(move |r| {
                r.map_err(|e| Error::QdrantUnreachable {
                    url: String::new(),
                    detail: format!("{what} broke off: {}", e.without_url()),
                })
            })
            .boxed())
    }

    pub async fn create_collection(&self, c: &str, body: &Value) -> Result<()> {
        let _: Value = self
            .call(
                &format!("PUT /collections/{c}"),
                self.req(reqwest::Method::PUT, &["collections", c])
                    .query(&[("timeout", "300")])
                    .timeout(Duration::from_secs(330))
                    .json(body),
            )
            .await?;
        Ok(())
    }

    /// `POST /collections/{c}/cluster`: a shard move, replication or drop,
    /// committed through consensus (not waited for: the placement shows
    /// when it is done).
    pub async fn cluster_operation(&self, c: &str, op: Value) -> Result<()> {
        let _: Value = self
            .call(
                &format!("POST /collections/{c}/cluster"),
                self.req(reqwest::Method::POST, &["collections", c, "cluster"])
                    .query(&[("timeout", "60")])
                    .timeout(Duration::from_secs(90))
                    .json(&op),
            )
            .await?;
        Ok(())
    }

    /// `DELETE /cluster/peer/{id}`: removes a peer from consensus; Qdrant
    /// refuses while the peer holds shards (no `force`). One already gone
    /// counts as removed.
    pub async fn remove_peer(&self, peer: u64) -> Result<()> {
        let id = peer.to_string();
        let r: Result<Value> = self
            .call(
                &format!("DELETE /cluster/peer/{id}"),
                self.req(reqwest::Method::DELETE, &["cluster", "peer", &id])
                    .query(&[("timeout", "60")])
                    .timeout(Duration::from_secs(90)),
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(Error::Qdrant { status: 404, .. }) => Ok(()),
            Err(Error::Qdrant { detail, .. })
                if detail.contains("not found") || detail.contains("does not exist") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Merges `metadata` into the collection's metadata (`PATCH
    /// /collections/{c}`); a key set to null is removed.
    pub async fn patch_metadata(&self, c: &str, metadata: Value) -> Result<()> {
        let _: Value = self
            .call(
                &format!("PATCH /collections/{c}"),
                self.req(reqwest::Method::PATCH, &["collections", c])
                    .query(&[("timeout", "60")])
                    .timeout(Duration::from_secs(90))
                    .json(&json!({ "metadata": metadata })),
            )
            .await?;
        Ok(())
    }

    /// Deletes a collection; one already gone counts as deleted, so a
    /// rollback can be repeated. Qdrant commits the delete through
    /// consensus, which times out while the cluster is busy (e.g. syncing
    /// replicas after an upload): such answers are retried a few times.
    pub async fn delete_collection(&self, c: &str) -> Result<()> {
        let mut delay = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            let r: Result<Value> = self
                .call(
                    &format!("DELETE /collections/{c}"),
                    self.req(reqwest::Method::DELETE, &["collections", c])
                        .query(&[("timeout", "30")]),
                )
                .await;
            match r {
                Ok(_) | Err(Error::Qdrant { status: 404, .. }) => return Ok(()),
                Err(Error::Qdrant { status, .. }) if status >= 500 && attempt < 4 => {}
                Err(Error::QdrantUnreachable { .. }) if attempt < 4 => {}
                Err(e) => return Err(e),
            }
            tracing::warn!(collection = %c, attempt, "deleting a collection failed; retrying");
            tokio::time::sleep(delay).await;
            delay *= 2;
            attempt += 1;
        }
    }

    pub async fn create_shard_key(&self, c: &str, key: &Value) -> Result<()> {
        let _: Value = self
            .call(
                &format!("PUT /collections/{c}/shards"),
                self.req(reqwest::Method::PUT, &["collections", c, "shards"])
                    .json(&json!({ "shard_key": key })),
            )
            .await?;
        Ok(())
    }

    /// Recovers one shard from a snapshot streamed in the request body.
    /// `priority=snapshot` makes the snapshot the source of truth; Qdrant
    /// checks `checksum` before it recovers.
    pub async fn upload_shard<S>(
        &self,
        c: &str,
        shard: u32,
        body: S,
        len: u64,
        sha256: &str,
    ) -> Result<()>
    where
        S: Stream<Item = Result<Bytes>> + Send + Sync + 'static,
    {
        let s = shard.to_string();
        let part =
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(body), len)
                .file_name(format!("{shard}.snapshot"))
                .mime_str("application/octet-stream")
                .map_err(|e| Error::Internal(e.to_string()))?;
        let form = reqwest::multipart::Form::new().part("snapshot", part);
        let _: Value = self
            .call(
                &format!("POST /collections/{c}/shards/{shard}/snapshots/upload"),
                self.req(
                    reqwest::Method::POST,
                    &["collections", c, "shards", &s, "snapshots", "upload"],
                )
                .query(&[
                    ("wait", "true"),
                    ("priority", "snapshot"),
                    ("checksum", sha256),
                ])
                .timeout(LONG)
                .multipart(form),
            )
            .await?;
        Ok(())
    }

    /// Writes a collection snapshot (this node's shards) to the snapshots dir.
    pub async fn create_collection_snapshot(&self, c: &str) -> Result<SnapshotDescription> {
        self.call(
            &format!("POST /collections/{c}/snapshots"),
            self.req(reqwest::Method::POST, &["collections", c, "snapshots"])
                .query(&[("wait", "true")])
                .timeout(LONG),
        )
        .await
    }

    /// A snapshot of one shard written to the snapshots volume
    /// (`<snapshots>/<c>/shards/<shard>/<name>`); it restores like a live
    /// shard snapshot.
    pub async fn create_shard_snapshot(&self, c: &str, shard: u32) -> Result<SnapshotDescription> {
        let s = shard.to_string();
        self.call(
            &format!("POST /collections/{c}/shards/{shard}/snapshots"),
            self.req(
                reqwest::Method::POST,
                &["collections", c, "shards", &s, "snapshots"],
            )
            .query(&[("wait", "true")])
            .timeout(LONG),
        )
        .await
    }

    pub async fn delete_shard_snapshot(&self, c: &str, shard: u32, name: &str) -> Result<()> {
        let s = shard.to_string();
        let _: Value = self
            .call(
                &format!("DELETE /collections/{c}/shards/{shard}/snapshots/{name}"),
                self.req(
                    reqwest::Method::DELETE,
                    &["collections", c, "shards", &s, "snapshots", name],
                )
                .query(&[("wait", "true")]),
            )
            .await?;
        Ok(())
    }

    pub async fn list_collection_snapshots(&self, c: &str) -> Result<Vec<SnapshotDescription>> {
        self.call(
            &format!("GET /collections/{c}/snapshots"),
            self.req(reqwest::Method::GET, &["collections", c, "snapshots"]),
        )
        .await
    }

    pub async fn delete_collection_snapshot(&self, c: &str, name: &str) -> Result<()> {
        let _: Value = self
            .call(
                &format!("DELETE /collections/{c}/snapshots/{name}"),
                self.req(
                    reqwest::Method::DELETE,
                    &["collections", c, "snapshots", name],
                )
                .query(&[("wait", "true")]),
            )
            .await?;
        Ok(())
    }

    /// Recovers a collection from a snapshot file Qdrant can read itself.
    pub async fn recover_collection(&self, c: &str, location: &str, sha256: &str) -> Result<()> {
        let _: Value = self
            .call(
                &format!("PUT /collections/{c}/snapshots/recover"),
                self.req(
                    reqwest::Method::PUT,
                    &["collections", c, "snapshots", "recover"],
                )
                .query(&[("wait", "true")])
                .timeout(LONG)
                .json(&json!({ "location": location, "priority": "snapshot", "checksum": sha256 })),
            )
            .await?;
        Ok(())
    }

    pub async fn create_alias(&self, alias: &str, collection: &str) -> Result<()> {
        let _: Value = self
            .call(
                "POST /collections/aliases",
                self.req(reqwest::Method::POST, &["collections", "aliases"]).json(&json!({
                    "actions": [{ "create_alias": { "collection_name": collection, "alias_name": alias } }]
                })),
            )
            .await?;
        Ok(())
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
mod tests {
    use super::*;

    #[test]
    fn create_body_keeps_the_collection_shape_and_renames_optimizer_config() {
        let config = json!({
            "params": {
                "vectors": {"size": 384, "distance": "Cosine", "on_disk": true},
                "shard_number": 6, "sharding_method": "custom", "replication_factor": 2,
                "write_consistency_factor": 1, "on_disk_payload": true,
                "sparse_vectors": {"text": {"modifier": "idf"}}
            },
            "hnsw_config": {"m": 32, "ef_construct": 200, "full_scan_threshold": 10000, "on_disk": false},
            "optimizer_config": {"deleted_threshold": 0.2, "indexing_threshold": 20000, "max_segment_size": null},
            "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
            "quantization_config": {"scalar": {"type": "int8", "always_ram": true}}
        });
        let body = create_body_from_config(&config).unwrap();
        assert_eq!(body["vectors"]["size"], 384);
        assert_eq!(body["shard_number"], 6);
        assert_eq!(body["sharding_method"], "custom");
        assert_eq!(body["replication_factor"], 2);
        assert_eq!(body["sparse_vectors"]["text"]["modifier"], "idf");
        assert_eq!(body["hnsw_config"]["m"], 32);
        assert_eq!(body["optimizers_config"]["indexing_threshold"], 20000);
        assert!(body["optimizers_config"].get("max_segment_size").is_none());
        assert!(body.get("optimizer_config").is_none());
        assert_eq!(body["quantization_config"]["scalar"]["type"], "int8");
        assert!(create_body_from_config(&json!({})).is_err());
    }

    #[test]
    fn a_peer_qdrant_could_not_reach_is_named() {
        // Two answers of Qdrant 1.18.3 to GET /collections/{c} with a peer down.
        let refused = "Service internal error: 1 of 1 read operations failed: Service internal error: Tonic status error: code: 'The service is currently unavailable', message: \"tcp connect error\", source: tonic::transport::Error(Transport, ConnectError(ConnectError(\"tcp connect error\", 127.0.0.1:16351, Os { code: 111 })))";
        let failed = "Service internal error: 1 of 1 read operations failed: Service internal error: Tonic status error: code: 'The service is currently unavailable', message: \"Failed to connect to http://127.0.0.1:16351/, error: transport error\"";
        assert_eq!(
            unreachable_peer(refused).as_deref(),
            Some("peer 127.0.0.1:16351")
        );
        assert_eq!(
            unreachable_peer(failed).as_deref(),
            Some("peer http://127.0.0.1:16351/")
        );
        assert_eq!(
            unreachable_peer("Service internal error: service is currently unavailable").as_deref(),
            Some("a peer node")
        );
        assert_eq!(unreachable_peer("Wrong input: bad vector size"), None);
    }

    #[test]
    fn minor_versions_compare() {
        assert_eq!(minor_version("1.18.3"), Some((1, 18)));
        assert_eq!(minor_version("v1.18.0-rc1"), Some((1, 18)));
        assert_eq!(minor_version("garbage"), None);
    }

    #[tokio::test]
    async fn https_qdrant_urls_are_spoken_to_over_tls() {
        // A TLS server with a self-signed certificate: the agent must get as
        // far as the TLS handshake (an agent without TLS would stop at the
        // URL scheme instead).
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let tls = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(cert.pem(), key.serialize_pem()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (_, health) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let q = Qdrant::new(&format!("https://localhost:{port}"), None).unwrap();
        let err = q.version().await.unwrap_err().to_string();
        // A TLS-level refusal (this server speaks only HTTP/2, so it may end
        // the handshake with an alert before the certificate is judged).
        assert!(
            err.contains("certificate") || err.contains("fatal alert"),
            "{err}"
        );
        assert!(!err.contains("scheme"), "{err}");
    }

    #[tokio::test]
    async fn connection_errors_say_why() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let q = Qdrant::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let err = q.version().await.unwrap_err();
        assert_eq!(err.reason(), "QdrantUnreachable");
        assert!(
            err.to_string()
                .to_lowercase()
                .contains("connection refused"),
            "{err}"
        );
    }

    #[test]
    fn url_credentials_are_dropped_and_segments_escaped() {
        let q = Qdrant::new("http://user:pw@localhost:6333/", None).unwrap();
        assert!(!q.url().as_str().contains("pw"));
        let u = q.endpoint(&["collections", "a b/c"]);
        assert_eq!(u.as_str(), "http://localhost:6333/collections/a%20b%2Fc");
        assert!(Qdrant::new("ftp://x", None).is_err());
    }
}
