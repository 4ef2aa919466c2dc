//! S3 through aws-sdk-s3. TLS is rustls with ring (no aws-lc C build).
//! With a custom endpoint, path-style addressing is the default, as s5cmd
//! and rclone do, since most S3-compatible servers expect it.

use super::{ByteStream, CompletedPart, ObjectInfo, ObjectStore, PendingUpload};
use crate::error::{Error, Result};
use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{CompletedMultipartUpload, ServerSideEncryption};
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;

/// How long CompleteMultipartUpload may take to answer.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(3600);

/// S3 settings beside the URL. `Debug` never prints the secret.
#[derive(Clone, Default)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// (access key id, secret access key, session token)
    pub static_credentials: Option<(String, String, Option<String>)>,
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub virtual_hosted_style: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "static_credentials",
                &self.static_credentials.as_ref().map(|_| "<redacted>"),
            )
            .field("sse", &self.sse)
            .finish()
    }
}

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    endpoint: Option<String>,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
}

impl S3Store {
    pub async fn new(bucket: String, cfg: &S3Config) -> Result<Self> {
        if let Some(e) = &cfg.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(Error::Invalid(format!(
                "the S3 endpoint {e:?} needs a scheme: use http://{e} or https://{e}"
            )));
        }
        use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
        use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(5))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(r) = &cfg.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(e) = &cfg.endpoint {
            loader = loader.endpoint_url(e.clone());
        }
        if let Some((ak, sk, token)) = &cfg.static_credentials {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                ak.clone(),
                sk.clone(),
                token.clone(),
                None,
                "qdrant-agent-static",
            ));
        }
        let shared = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .interceptor(crate::metrics::S3Attempts)
            .force_path_style(cfg.endpoint.is_some() && !cfg.virtual_hosted_style)
            // sha256 is computed by the agent itself; CRC32 on every part
            // would cost CPU and is refused by some S3-compatible servers.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        if shared.region().is_none() {
            b = b.region(Region::new("us-east-1"));
        }
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            bucket,
            endpoint: cfg.endpoint.clone(),
            sse: cfg.sse.as_deref().map(ServerSideEncryption::from),
            sse_kms_key_id: cfg.sse_kms_key_id.clone(),
        })
    }
}

/// Reduces an SDK error to a reason and a one-line detail that carries the
/// service's code and message but nothing from the request itself.
/// A request that never got an answer, in one line: no credentials (with
/// where they come from), or the root cause of the connection failure (no
/// SDK debug dump).
fn dispatch_failure<E: std::error::Error + 'static>(e: &E) -> (&'static str, String) {
    let full = DisplayErrorContext(e).to_string();
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    let mut no_credentials = false;
    while let Some(c) = cause {
        no_credentials |= c
            .downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
            .is_some();
        cause = c.source();
    }
    if no_credentials
        || full.contains("no credentials found")
        || full.contains("credential provider was not enabled")
    {
        return (
            "S3NoCredentials",
            "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile, or a web identity such as IRSA); a QdrantBackup names them in storage.s3.credentialsSecretRef".into(),
        );
    }
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let cause = root.to_string();
    let cause = cause.lines().next().unwrap_or_default().trim();
    if full.contains("timeout") || full.contains("timed out") {
        (
            "S3Unreachable",
            format!("no answer from the S3 endpoint in time: {cause}"),
        )
    } else {
        (
            "S3Unreachable",
            format!("cannot reach the S3 endpoint: {cause}"),
        )
    }
}

fn map_err<E>(
    op: &'static str,
    key: &str,
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    tracing::debug!(op, key, error = %DisplayErrorContext(&e), "S3 call failed");
    let (reason, detail) = match &e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let status = se.raw().status().as_u16();
            // HEAD answers have no body, hence no code: derive it from the status.
            let code = err
                .code()
                .unwrap_or(match status {
                    401 | 403 => "AccessDenied",
                    404 => "NotFound",
                    503 => "ServiceUnavailable",
                    500..=599 => "InternalError",
                    _ => "Unknown",
                })
                .to_string();
            let reason = match code.as_str() {
                "AccessDenied"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "AllAccessDisabled" => "S3AccessDenied",
                "NoSuchBucket" => "S3BucketNotFound",
                "NoSuchKey" | "NotFound" => "ObjectNotFound",
                "NoSuchUpload" => "S3UploadGone",
                "BadDigest" | "InvalidDigest" => "ChecksumMismatch",
                "NotImplemented" => "StoreUnsupported",
                "SlowDown" | "ServiceUnavailable" | "InternalError" => "S3Unavailable",
                _ => "S3Error",
            };
            let msg = err.message().unwrap_or("");
            (
                reason,
                format!("HTTP {status} {code}: {msg}")
                    .trim_end_matches(": ")
                    .to_string(),
            )
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => dispatch_failure(&e),
        _ => ("S3Error", DisplayErrorContext(&e).to_string()),
    };
    if reason == "StoreUnsupported" {
        return Error::Unsupported(op);
    }
    Error::Store {
        op,
        key: key.to_string(),
        detail,
        reason,
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("s3://{} at {e}", self.bucket),
            None => format!("s3://{}", self.bucket),
        }
    }

    async fn create_multipart(&self, key: &str) -> Result<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone())
            .send()
            .await
            .map_err(|e| map_err("create multipart upload", key, e))?;
        out.upload_id.ok_or_else(|| Error::Store {
            op: "create multipart upload",
            key: key.into(),
            detail: "no upload id in the answer".into(),
            reason: "S3Error",
        })
    }

    async fn upload_part(&self, key: &str, id: &str, n: i32, data: Bytes) -> Result<CompletedPart> {
        let md5 = {
            use md5::Digest;
            md5::Md5::digest(&data)
        };
        let content_md5 = aws_smithy_types::base64::encode(md5.as_slice());
        // A part's ETag is its MD5 unless SSE-KMS encrypts it (AWS, MinIO,
        // Ceph, moto and s3s-fs alike): compared where that holds.
        let etag_is_md5 = !matches!(self.sse, Some(ServerSideEncryption::AwsKms));
        let mut attempt = 1;
        loop {
            let sent = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .part_number(n)
                .content_length(data.len() as i64)
                // Stores that check Content-MD5 refuse a part that arrives
                // damaged (BadDigest); the ETag check below catches the rest.
                .content_md5(&content_md5)
                .body(data.clone().into())
                .send()
                .await;
            let damaged = match sent {
                Ok(out) => {
                    let etag = out.e_tag.unwrap_or_default();
                    let stored = etag.trim_matches('"').to_ascii_lowercase();
                    if !etag_is_md5 || stored.len() != 32 || stored == hex::encode(md5) {
                        crate::metrics::get()
                            .uploaded_bytes
                            .inc_by(data.len() as u64);
                        return Ok(CompletedPart { number: n, etag });
                    }
                    format!(
                        "the store holds MD5 {stored}, the part has {}",
                        hex::encode(md5)
                    )
                }
                Err(SdkError::ServiceError(se))
                    if matches!(se.err().code(), Some("BadDigest" | "InvalidDigest")) =>
                {
                    "the store refused it (BadDigest)".to_string()
                }
                Err(e) => return Err(map_err("upload part", key, e)),
            };
            // Damaged on the way: the bytes here are good, send them again
            // (a part re-uploaded under its number replaces the old one).
            if attempt >= 3 {
                return Err(Error::Store {
                    op: "upload part",
                    key: key.to_string(),
                    detail: format!("part {n} arrived damaged {attempt} times: {damaged}"),
                    reason: "ChecksumMismatch",
                });
            }
            tracing::warn!(
                key,
                part = n,
                attempt,
                damaged,
                "a part arrived damaged; sending it again"
            );
            crate::metrics::get().s3_retries.inc();
            attempt += 1;
        }
    }

    async fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        mut parts: Vec<CompletedPart>,
    ) -> Result<()> {
        parts.sort_by_key(|p| p.number);
        let parts = parts
            .into_iter()
            .map(|p| {
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(p.etag)
                    .build()
            })
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            // Assembling a large object takes a while. S3 and MinIO keep the
            // connection alive meanwhile, other stores stay silent: do not
            // give up (and retry against an upload that is being completed).
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::default().timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .read_timeout(COMPLETE_TIMEOUT)
                        .build(),
                ),
            )
            .send()
            .await
            .map_err(|e| map_err("complete multipart upload", key, e))?;
        crate::metrics::get().objects_uploaded.inc();
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, id: &str) -> Result<()> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match map_err("abort multipart upload", key, e) {
                // Already gone: aborting is idempotent.
                Error::Store {
                    reason: "S3UploadGone",
                    ..
                } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list_multipart(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| map_err("list multipart uploads", prefix, e))?;
            for u in page.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    out.push(PendingUpload {
                        key: k.to_string(),
                        upload_id: id.to_string(),
                    });
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() {
                return Ok(out);
            }
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let len = data.len() as u64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(data.len() as i64)
            .body(data.into())
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone())
            .send()
            .await
            .map_err(|e| map_err("put object", key, e))?;
        put_counted(len);
        Ok(())
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool> {
        // Stores that ignore If-None-Match still see an existing object here.
        if self.head(key).await?.is_some() {
            return Ok(false);
        }
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .content_length(data.len() as i64)
            .body(data.clone().into())
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone())
            .send()
            .await;
        match sent {
            Ok(_) => {
                put_counted(data.len() as u64);
                Ok(true)
            }
            // 412: it exists; 409: another conditional write of it is under way.
            Err(SdkError::ServiceError(se)) if matches!(se.raw().status().as_u16(), 409 | 412) => {
                Ok(false)
            }
            Err(e) => match map_err("put object", key, e) {
                e if e.reason() == "StoreUnsupported" => {
                    self.put(key, data).await?;
                    Ok(true)
                }
                e => Err(e),
            },
        }
    }

    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> Result<ByteStream> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(range.map(|(s, e)| format!("bytes={s}-{}", e.saturating_sub(1))))
            .send()
            .await
            .map_err(|e| map_err("get object", key, e))?;
        // An object read in ranges counts once, at its first.
        if range.is_none_or(|(start, _)| start == 0) {
            crate::metrics::get().objects_downloaded.inc();
        }
        let key = key.to_string();
        let body = out.body;
        Ok(futures::stream::unfold(Some(body), move |state| {
            let key = key.clone();
            async move {
                let mut body = state?;
                match body.next().await {
                    Some(Ok(b)) => {
                        crate::metrics::get()
                            .downloaded_bytes
                            .inc_by(b.len() as u64);
                        Some((Ok(b), Some(body)))
                    }
                    Some(Err(e)) => Some((
                        Err(Error::Store {
                            op: "read object",
                            key,
                            detail: DisplayErrorContext(&e).to_string(),
                            reason: "S3Unreachable",
                        }),
                        None,
                    )),
                    None => None,
                }
            }
        })
        .boxed())
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length.unwrap_or(0).max(0) as u64)),
            Err(e) => {
                if let SdkError::ServiceError(se) = &e
                    && se.err().is_not_found()
                {
                    return Ok(None);
                }
                Err(map_err("head object", key, e))
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| map_err("list objects", prefix, e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push(ObjectInfo {
                        key: k.to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| map_err("delete object", key, e))?;
        Ok(())
    }
}

/// Counts an object written whole.
fn put_counted(len: u64) {
    let m = crate::metrics::get();
    m.uploaded_bytes.inc_by(len);
    m.objects_uploaded.inc();
}
