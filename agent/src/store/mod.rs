//! The object-store port: S3 (aws-sdk-s3) and a local directory, behind one
//! small trait. Multipart upload is part of the trait so that the streaming
//! uploader (`crate::upload`) works the same against both.

mod local;
mod s3;

pub use local::LocalStore;
pub use s3::{S3Config, S3Store};

use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::sync::Arc;

pub type ByteStream = BoxStream<'static, Result<Bytes>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
}

#[derive(Debug, Clone)]
pub struct CompletedPart {
    pub number: i32,
    pub etag: String,
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Human-readable location for messages, never with credentials.
    fn describe(&self) -> String;
    async fn create_multipart(&self, key: &str) -> Result<String>;
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        data: Bytes,
    ) -> Result<CompletedPart>;
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<()>;
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()>;
    /// Unfinished multipart uploads under `prefix`. `Error::Unsupported`
    /// where the server does not implement ListMultipartUploads.
    async fn list_multipart(&self, prefix: &str) -> Result<Vec<PendingUpload>>;
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;
    /// Writes the object only if no object `key` exists: `false` when one
    /// did (nothing written). Stores without conditional writes get a
    /// read-then-write check, which narrows the race without closing it.
    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool>;
    /// The object's bytes, or `[start, end)` of them.
    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> Result<ByteStream>;
    /// Size of the object, `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<u64>>;
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    async fn delete(&self, key: &str) -> Result<()>;
}

/// Reads a whole (small) object, such as a manifest.
pub async fn get_all(store: &dyn ObjectStore, key: &str) -> Result<Bytes> {
    use futures::TryStreamExt;
    let chunks: Vec<Bytes> = store.get(key, None).await?.try_collect().await?;
    Ok(chunks.concat().into())
}

/// A parsed `s3://bucket/prefix` or `file:///dir` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, prefix: String },
    Local { root: std::path::PathBuf },
}

impl Location {
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || bucket.contains('@') {
                return Err(Error::Invalid(format!(
                    "storage URL needs a bucket: s3://BUCKET/PREFIX (got s3://{bucket}/...)"
                )));
            }
            let prefix = prefix.trim_matches('/').to_string();
            crate::keys::validate_prefix(&prefix)?;
            Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix,
            })
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(Error::Invalid(format!(
                    "file URLs need an absolute path: file:///DIR (got {url:?})"
                )));
            }
            if path.split('/').any(|s| s == "..") {
                return Err(Error::Invalid(format!("{url:?} contains '..'")));
            }
            Ok(Location::Local { root: path.into() })
        } else {
            Err(Error::Invalid(format!(
                "unsupported storage URL {url:?}: use s3://BUCKET/PREFIX or file:///DIR"
            )))
        }
    }

    /// The key prefix inside the store under which backups are laid out.
    pub fn prefix(&self) -> &str {
        match self {
            Location::S3 { prefix, .. } => prefix,
            Location::Local { .. } => "",
        }
    }
}

/// Opens the store a location names. S3 settings are ignored for local dirs.
pub async fn open(loc: &Location, s3: &S3Config) -> Result<Arc<dyn ObjectStore>> {
    Ok(match loc {
        Location::S3 { bucket, .. } => Arc::new(S3Store::new(bucket.clone(), s3).await?),
        Location::Local { root } => Arc::new(LocalStore::new(root.clone())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_storage_urls() {
        assert_eq!(
            Location::parse("s3://bkt/a/b/").unwrap(),
            Location::S3 {
                bucket: "bkt".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(Location::parse("s3://bkt").unwrap().prefix(), "");
        assert_eq!(
            Location::parse("file:///var/backups").unwrap(),
            Location::Local {
                root: "/var/backups".into()
            }
        );
        for bad in [
            "s3://",
            "s3:///x",
            "file://relative",
            "file:///a/../b",
            "http://x",
            "s3://k:s@bkt/x",
            "s3://bkt/a/../b",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }
}
