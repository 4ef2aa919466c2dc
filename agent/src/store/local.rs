//! A local directory as an object store: keys are relative paths under the
//! root. Multipart uploads stage parts under `<root>/.uploads/<id>/` and are
//! assembled on completion, so an unfinished upload never looks like an object.

use super::{ByteStream, CompletedPart, ObjectInfo, ObjectStore, PendingUpload};
use crate::error::{Error, Result};
use crate::keys::validate_rel_key;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use tokio::fs;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const UPLOADS: &str = ".uploads";

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_rel_key(key)?;
        Ok(self.root.join(key))
    }

    fn upload_dir(&self, upload_id: &str) -> Result<PathBuf> {
        crate::keys::validate_segment("upload id", upload_id)?;
        Ok(self.root.join(UPLOADS).join(upload_id))
    }
}

async fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)
            .await
            .map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", rand::random::<u32>()));
    fs::write(&tmp, data)
        .await
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).await.map_err(|e| Error::io(path, e))
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn create_multipart(&self, key: &str) -> Result<String> {
        self.path(key)?;
        let id = format!("{:016x}", rand::random::<u64>());
        let dir = self.upload_dir(&id)?;
        fs::create_dir_all(&dir)
            .await
            .map_err(|e| Error::io(&dir, e))?;
        write_atomic(&dir.join("key"), key.as_bytes()).await?;
        Ok(id)
    }

    async fn upload_part(&self, key: &str, id: &str, n: i32, data: Bytes) -> Result<CompletedPart> {
        self.path(key)?;
        let file = self.upload_dir(id)?.join(format!("{n:05}"));
        write_atomic(&file, &data).await?;
        Ok(CompletedPart {
            number: n,
            etag: format!("{n}"),
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        mut parts: Vec<CompletedPart>,
    ) -> Result<()> {
        let dest = self.path(key)?;
        let dir = self.upload_dir(id)?;
        parts.sort_by_key(|p| p.number);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .await
                .map_err(|e| Error::io(parent, e))?;
        }
        let tmp = dir.join("assembled");
        let mut out = fs::File::create(&tmp)
            .await
            .map_err(|e| Error::io(&tmp, e))?;
        for p in &parts {
            let src = dir.join(format!("{:05}", p.number));
            let mut f = fs::File::open(&src).await.map_err(|e| Error::io(&src, e))?;
            tokio::io::copy(&mut f, &mut out)
                .await
                .map_err(|e| Error::io(&tmp, e))?;
        }
        out.sync_all().await.map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &dest)
            .await
            .map_err(|e| Error::io(&dest, e))?;
        fs::remove_dir_all(&dir)
            .await
            .map_err(|e| Error::io(&dir, e))
    }

    async fn abort_multipart(&self, _key: &str, id: &str) -> Result<()> {
        let dir = self.upload_dir(id)?;
        match fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&dir, e)),
            _ => Ok(()),
        }
    }

    async fn list_multipart(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let dir = self.root.join(UPLOADS);
        let mut out = Vec::new();
        let Ok(mut rd) = fs::read_dir(&dir).await else {
            return Ok(out);
        };
        while let Some(e) = rd.next_entry().await.map_err(|e| Error::io(&dir, e))? {
            let id = e.file_name().to_string_lossy().into_owned();
            if let Ok(key) = fs::read_to_string(e.path().join("key")).await
                && key.starts_with(prefix)
            {
                out.push(PendingUpload { key, upload_id: id });
            }
        }
        Ok(out)
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        write_atomic(&self.path(key)?, &data).await
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)
                .await
                .map_err(|e| Error::io(dir, e))?;
        }
        let tmp = path.with_extension(format!("tmp-{}", rand::random::<u32>()));
        fs::write(&tmp, &data)
            .await
            .map_err(|e| Error::io(&tmp, e))?;
        // A hard link fails when the name exists: an atomic create-if-absent
        // that never leaves a half-written object.
        let linked = fs::hard_link(&tmp, &path).await;
        let _ = fs::remove_file(&tmp).await;
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> Result<ByteStream> {
        let path = self.path(key)?;
        let mut f = fs::File::open(&path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Store {
                op: "get",
                key: key.to_string(),
                detail: "no such object".into(),
                reason: "ObjectNotFound",
            },
            _ => Error::io(&path, e),
        })?;
        let reader: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match range {
            Some((start, end)) => {
                f.seek(std::io::SeekFrom::Start(start))
                    .await
                    .map_err(|e| Error::io(&path, e))?;
                Box::new(f.take(end.saturating_sub(start)))
            }
            None => Box::new(f),
        };
        let p = path.clone();
        Ok(tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20)
            .map(move |r| r.map_err(|e| Error::io(&p, e)))
            .boxed())
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        match fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(mut rd) = fs::read_dir(&dir).await else {
                continue;
            };
            while let Some(e) = rd.next_entry().await.map_err(|e| Error::io(&dir, e))? {
                let path = e.path();
                let ft = e.file_type().await.map_err(|e| Error::io(&path, e))?;
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let rel = rel.to_string_lossy().into_owned();
                if rel == UPLOADS {
                    continue;
                }
                if ft.is_dir() {
                    stack.push(path);
                } else if rel.starts_with(prefix) {
                    let size = e.metadata().await.map_err(|e| Error::io(&path, e))?.len();
                    out.push(ObjectInfo { key: rel, size });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::get_all;

    #[tokio::test]
    async fn multipart_assembles_in_part_order_and_abort_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().to_path_buf());
        let id = s.create_multipart("b/x.snapshot").await.unwrap();
        let p2 = s
            .upload_part("b/x.snapshot", &id, 2, Bytes::from_static(b"world"))
            .await
            .unwrap();
        let p1 = s
            .upload_part("b/x.snapshot", &id, 1, Bytes::from_static(b"hello "))
            .await
            .unwrap();
        assert_eq!(s.list_multipart("b/").await.unwrap().len(), 1);
        assert!(
            s.list("").await.unwrap().is_empty(),
            "unfinished upload is no object"
        );
        s.complete_multipart("b/x.snapshot", &id, vec![p2, p1])
            .await
            .unwrap();
        assert_eq!(
            &get_all(&s, "b/x.snapshot").await.unwrap()[..],
            b"hello world"
        );
        assert_eq!(
            s.list("b/").await.unwrap(),
            vec![ObjectInfo {
                key: "b/x.snapshot".into(),
                size: 11
            }]
        );

        let id = s.create_multipart("b/y").await.unwrap();
        s.upload_part("b/y", &id, 1, Bytes::from_static(b"zz"))
            .await
            .unwrap();
        s.abort_multipart("b/y", &id).await.unwrap();
        assert!(s.list_multipart("").await.unwrap().is_empty());
        assert_eq!(s.head("b/y").await.unwrap(), None);
        assert!(s.put("../escape", Bytes::new()).await.is_err());
    }
}
