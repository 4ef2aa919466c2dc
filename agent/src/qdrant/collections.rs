//! The server, its collections, aliases, shard keys and cluster
//! operations.

use super::*;

impl Qdrant {
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
