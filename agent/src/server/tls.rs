//! The agent's TLS identity, read from its files and read again when they
//! change. Kubernetes replaces a mounted Secret's files in place when the
//! Secret changes (a renewed certificate, a rotated CA), so the agent serves
//! the new identity without a restart: every connection is accepted with the
//! configuration current at that moment, and calls in flight keep theirs.

use crate::error::Error;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// How often the files are compared with what is served. Kubernetes takes
/// up to a minute or so to deliver a changed Secret; this adds little.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the identity is read from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA(s) client certificates must chain to (mutual TLS); a bundle
    /// of several is how a CA rotation keeps both CAs trusted for a while.
    pub client_ca: Option<PathBuf>,
}

struct Served {
    acceptor: tokio_rustls::TlsAcceptor,
    /// sha256 over every file's content: a change of any one reloads.
    inputs: [u8; 32],
    cert_sha256: String,
}

/// The TLS configuration in use, and the files it came from.
pub struct ReloadingTls {
    files: TlsFiles,
    served: RwLock<Served>,
}

impl ReloadingTls {
    /// Reads and checks the files; the agent does not start with bad ones.
    pub async fn load(files: TlsFiles) -> Result<Self, Error> {
        let read = read_all(&files).await?;
        let served = build(&files, &read)?;
        Ok(Self {
            files,
            served: RwLock::new(served),
        })
    }

    pub fn client_certs(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The sha256 of the certificate file served now (logged, so anyone can
    /// tell which certificate a running agent serves).
    pub fn cert_sha256(&self) -> String {
        self.lock().cert_sha256.clone()
    }

    fn lock(&self) -> std::sync::RwLockReadGuard<'_, Served> {
        self.served.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the files again. `Ok(Some(sha))` when they changed and the new
    /// identity is served from now on; `Ok(None)` when nothing changed. On
    /// `Err` the previous identity stays in use.
    pub async fn reload(&self) -> Result<Option<String>, Error> {
        let read = read_all(&self.files).await?;
        if read.digest() == self.lock().inputs {
            return Ok(None);
        }
        let next = build(&self.files, &read)?;
        let sha = next.cert_sha256.clone();
        *self.served.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(Some(sha))
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.lock().acceptor.clone()
    }

    /// Compares the files with what is served every `every`, for as long
    /// as the agent runs. A set of files that does not load (a key that
    /// does not match its certificate) is reported once, not every time.
    pub fn watch(self: Arc<Self>, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut refused: Option<String> = None;
            loop {
                tokio::time::sleep(every).await;
                match self.reload().await {
                    Ok(Some(sha)) => {
                        refused = None;
                        tracing::info!(certificate_sha256 = %sha, "serving the TLS files as they are now (renewed certificate or CA)");
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let why = e.to_string();
                        if refused.as_ref() != Some(&why) {
                            tracing::warn!(error = %why, "the TLS files changed but do not load; serving the previous certificate until they do");
                            refused = Some(why);
                        }
                    }
                }
            }
        })
    }
}

struct Read {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

impl Read {
    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.ca.as_ref()] {
            let part = part.map(Vec::as_slice).unwrap_or_default();
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize().into()
    }
}

async fn read_all(f: &TlsFiles) -> Result<Read, Error> {
    Ok(Read {
        cert: read(&f.cert).await?,
        key: read(&f.key).await?,
        ca: match &f.client_ca {
            Some(p) => Some(read(p).await?),
            None => None,
        },
    })
}

async fn read(p: &Path) -> Result<Vec<u8>, Error> {
    tokio::fs::read(p).await.map_err(|e| Error::io(p, e))
}

fn build(f: &TlsFiles, r: &Read) -> Result<Served, Error> {
    let invalid = |p: &Path, what: &str| Error::Invalid(format!("{}: {what}", p.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&r.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&f.cert, &format!("not a PEM certificate ({e})")))?;
    if certs.is_empty() {
        return Err(invalid(&f.cert, "holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(&r.key)
        .map_err(|e| invalid(&f.key, &format!("not a PEM private key ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS versions: {e}")))?;
    let builder = match (&f.client_ca, &r.ca) {
        (Some(path), Some(pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| invalid(path, &format!("not a PEM certificate ({e})")))?;
                roots
                    .add(c)
                    .map_err(|e| invalid(path, &format!("not a CA certificate ({e})")))?;
            }
            if roots.is_empty() {
                return Err(invalid(path, "holds no CA certificate"));
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| invalid(path, &e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        Error::Invalid(format!("{} and {}: {e}", f.cert.display(), f.key.display()))
    })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Served {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        inputs: r.digest(),
        cert_sha256: hex::encode(Sha256::digest(&r.cert)),
    })
}

/// Connections on `listener` that finished their TLS handshake with the
/// identity current when they arrived. A client that does not finish its
/// handshake within [`super::HANDSHAKE_TIMEOUT`] is dropped, so idle
/// connections cannot pile up in the agent's memory. Accepting stops when
/// the server drops the stream.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(super::HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(names: &[&str]) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let names = names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (ca.pem(), leaf.pem(), key.serialize_pem())
    }

    #[tokio::test]
    async fn changed_files_are_served_and_files_that_do_not_load_keep_the_previous_ones() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: Some(dir.path().join("ca.crt")),
        };
        let write = |(ca, cert, key): &(String, String, String)| {
            std::fs::write(files.client_ca.clone().unwrap(), ca).unwrap();
            std::fs::write(&files.cert, cert).unwrap();
            std::fs::write(&files.key, key).unwrap();
        };
        let first = issue(&["localhost"]);
        write(&first);
        let tls = ReloadingTls::load(files.clone()).await.unwrap();
        let sha = |pem: &str| hex::encode(Sha256::digest(pem.as_bytes()));
        assert_eq!(tls.cert_sha256(), sha(&first.1));
        assert_eq!(tls.reload().await.unwrap(), None, "nothing changed");

        let second = issue(&["localhost"]);
        write(&second);
        assert_eq!(tls.reload().await.unwrap(), Some(sha(&second.1)));
        assert_eq!(tls.cert_sha256(), sha(&second.1));

        // A key that is not the certificate's (files caught mid-update):
        // refused, and the previous identity stays.
        std::fs::write(&files.key, &first.2).unwrap();
        let err = tls.reload().await.unwrap_err().to_string();
        assert!(err.contains("tls.crt and"), "{err}");
        assert_eq!(tls.cert_sha256(), sha(&second.1));
        std::fs::write(&files.key, "").unwrap();
        let err = tls.reload().await.unwrap_err().to_string();
        assert!(err.contains("tls.key"), "{err}");

        // A bundle of two CAs is taken whole.
        let third = issue(&["localhost"]);
        let bundle = format!("{}{}", first.0, third.0);
        write(&(bundle, third.1.clone(), third.2.clone()));
        assert_eq!(tls.reload().await.unwrap(), Some(sha(&third.1)));
    }

    #[tokio::test]
    async fn files_that_do_not_load_at_start_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, _) = issue(&["localhost"]);
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: None,
        };
        let err = ReloadingTls::load(files.clone())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tls.key"), "{err}");
        let missing = TlsFiles {
            client_ca: Some(dir.path().join("absent.crt")),
            ..files
        };
        let err = ReloadingTls::load(missing).await.err().unwrap().to_string();
        assert!(err.contains("absent.crt"), "{err}");
    }
}
