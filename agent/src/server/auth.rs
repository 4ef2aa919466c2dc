//! How callers prove they are the controller: a bearer token (compared in
//! constant time) and/or mutual TLS. Serving with neither is refused unless
//! `--insecure` says it is a local diagnostic.

use crate::error::Error;
use std::path::Path;
use std::sync::Arc;
use tonic::{Request, Status};

/// How callers prove they are the controller.
#[derive(Default)]
pub struct Auth {
    pub token: Option<String>,
    /// TLS, verifying client certificates when it has a client CA (mutual
    /// TLS). TLS alone encrypts but authenticates nobody.
    pub tls: Option<Arc<super::tls::ReloadingTls>>,
    pub insecure: bool,
}

impl Auth {
    /// Refuses to serve when no caller would have to prove anything.
    pub fn check(&self) -> Result<(), Error> {
        let mutual = self.tls.as_ref().is_some_and(|t| t.client_certs());
        let authenticated = self.token.is_some() || mutual;
        if authenticated || self.insecure {
            return Ok(());
        }
        let why = if self.tls.is_some() {
            "TLS without --tls-client-ca lets any caller in"
        } else {
            "no authentication given"
        };
        Err(Error::Invalid(format!(
            "refusing to serve: {why}; give --tls-client-ca (mutual TLS) and/or --token-file, or --insecure for local use"
        )))
    }
}

#[derive(Clone)]
pub(super) struct TokenCheck(pub(super) Option<Arc<str>>);

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.0 else { return Ok(req) };
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Constant-time compare: the token is the only secret here.
        let same = got.len() == want.len()
            && got
                .bytes()
                .zip(want.bytes())
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0;
        if same {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    }
}

/// The bearer token from its file: UTF-8, trimmed, not empty.
pub async fn token_from_file(p: &Path) -> Result<String, Error> {
    let s = String::from_utf8(read(p).await?)
        .map_err(|_| Error::Invalid(format!("{} is not UTF-8", p.display())))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(Error::Invalid(format!("{} is empty", p.display())));
    }
    Ok(s)
}

async fn read(p: &Path) -> Result<Vec<u8>, Error> {
    tokio::fs::read(p).await.map_err(|e| Error::io(p, e))
}
