//! Snapshots: a shard streamed out live, a shard uploaded back, and the
//! snapshot files Qdrant writes and recovers from.

use super::*;

impl Qdrant {
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
}
