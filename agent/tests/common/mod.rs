//! Shared helpers for the end-to-end tests: the real `qdrant-agent` binary,
//! the real S3 server (moto) and the Qdrant test double.
#![allow(dead_code)]

use qdrant_agent::store::{ObjectStore, S3Config, S3Store, get_all};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::qdrant_double::Double;
use test_support::s3_server::S3Server;

pub const AGENT: &str = env!("CARGO_BIN_EXE_qdrant-agent");
pub const MIB: u64 = 1 << 20;

pub struct Env {
    pub s3: S3Server,
    pub bucket: String,
}

impl Env {
    pub fn new(tag: &str) -> Self {
        let s3 = S3Server::start().expect("S3 server");
        let bucket = s3.bucket(tag).expect("bucket");
        Self { s3, bucket }
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    pub async fn store(&self) -> Arc<dyn ObjectStore> {
        let cfg = S3Config {
            endpoint: Some(self.s3.endpoint.clone()),
            region: Some("us-east-1".into()),
            static_credentials: Some(("test".into(), "test".into(), None)),
            ..Default::default()
        };
        Arc::new(
            S3Store::new(self.bucket.clone(), &cfg)
                .await
                .expect("store"),
        )
    }

    /// The agent binary with S3 pointed at the test server.
    pub fn agent(&self, args: &[&str]) -> Command {
        let mut c = Command::new(AGENT);
        c.args(args)
            .args(["--s3-endpoint", &self.s3.endpoint])
            .env_remove("AWS_PROFILE")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        c
    }

    /// A failed or cancelled task left no open multipart upload in the
    /// bucket and no object under `prefix`.
    pub async fn assert_nothing_left(&self, prefix: &str) {
        let store = self.store().await;
        let open = store.list_multipart("").await.unwrap();
        assert!(open.is_empty(), "open multipart uploads: {open:?}");
        let left = store.list(prefix).await.unwrap();
        assert!(left.is_empty(), "objects left under {prefix}: {left:?}");
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.agent(args).output().expect("run agent")
    }
}

pub async fn double(version: &str, setup: impl FnOnce(&Double)) -> (Double, String) {
    let d = Double::new(version);
    setup(&d);
    let url = d.clone().start().await.expect("double");
    (d, url)
}

pub async fn double_with_snapshots(
    version: &str,
    dir: &std::path::Path,
    setup: impl FnOnce(&Double),
) -> (Double, String) {
    let mut d = Double::new(version);
    d.snapshots_dir = Some(dir.to_path_buf());
    setup(&d);
    let url = d.clone().start().await.expect("double");
    (d, url)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "agent failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(o)
    );
}

pub async fn sha_of(store: &dyn ObjectStore, key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        get_all(store, key).await.expect("get"),
    ))
}

/// A running `qdrant-agent serve`, killed on drop.
pub struct Served {
    pub child: Child,
    pub addr: String,
    pub log: std::path::PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client of this agent over plaintext (an `--insecure` one).
    #[allow(dead_code)]
    pub async fn plain_client(
        &self,
    ) -> qdrant_agent_proto::v1::agent_client::AgentClient<tonic::transport::Channel> {
        qdrant_agent_proto::v1::agent_client::AgentClient::new(
            tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    }
}

pub fn serve(env: &Env, qdrant: &str, node: &str, extra: &[&str], dir: &std::path::Path) -> Served {
    let port = test_support::s3_server::free_port().expect("port");
    let addr = format!("127.0.0.1:{port}");
    let log = dir.join(format!("agent-{port}.log"));
    let child = env
        .agent(&[
            "serve",
            "--listen",
            &addr,
            "--qdrant-url",
            qdrant,
            "--node-name",
            node,
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "agent did not listen: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Served { child, addr, log }
}

/// Polls `f` until it returns true or `secs` pass.
pub async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
