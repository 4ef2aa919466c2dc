//! What the operator never does, on a real kube-apiserver and
//! kube-controller-manager with the `qdrant-operator` binary running as its
//! own ServiceAccount: retention prunes only the backups its schedule object
//! made of its cluster; a QdrantCluster never takes over an object of the
//! same name it did not create; and no finalizer stays on a resource that
//! has nothing left to protect, so deleting it (or its namespace) never
//! waits for an operator that is gone.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::Api;
use qdrant_operator::crd::{QdrantBackup, QdrantBackupSchedule, QdrantCluster};
use test_support::stack::{World, eventually};

const NS: &str = "search";

/// Whether a TLS handshake with the webhook at `addr` completes.
async fn tls_handshake(addr: &str) -> bool {
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert))
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.is_ok()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A schedule `nightly` of `cluster` that fires once a year (not during the
/// test) and keeps its newest backup only.
fn schedule(cluster: &str) -> String {
    format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackupSchedule\nmetadata: {{name: nightly, namespace: {NS}}}\n\
         spec:\n  schedule: '0 0 1 1 *'\n  clusterRef: {{name: {cluster}}}\n  storage: {{s3: {{bucket: some-bucket}}}}\n\
         \x20 retentionPolicy: {{keepLast: 1}}\n"
    )
}

/// A QdrantBackup with the given labels, cluster, policy and finalizers.
fn backup(name: &str, labels: &str, cluster: &str, policy: &str, finalizers: &str) -> String {
    format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: {name}, namespace: {NS}, labels: {{{labels}}}, finalizers: [{finalizers}]}}\n\
         spec: {{clusterRef: {{name: {cluster}}}, storage: {{s3: {{bucket: some-bucket, credentialsSecretRef: {{name: s3}}}}}}, deletionPolicy: {policy}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_deletes_nothing_it_did_not_make_and_holds_no_needless_finalizer() {
    let w = World::start().await;
    w.kubectl(&["create", "namespace", NS]);
    let uid = |kind: &str, name: &str| {
        w.kubectl(&[
            "-n",
            NS,
            "get",
            kind,
            name,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
    };

    // Schedule `nightly` of cluster `old` is deleted, and a new `nightly`
    // made for `vectors`: the same name, another object.
    w.apply(&schedule("old"));
    let first = uid("qbs", "nightly");
    w.kubectl(&["-n", NS, "delete", "qbs", "nightly"]);
    w.apply(&schedule("vectors"));
    let second = uid("qbs", "nightly");
    assert_ne!(first, second);
    let mine = format!("qdrant.io/schedule: nightly, qdrant.io/schedule-uid: {second}");
    let theirs = format!("qdrant.io/schedule: nightly, qdrant.io/schedule-uid: {first}");
    let legacy = "qdrant.io/backup";
    let backups = [
        // The first schedule's backup: not the second one's to prune.
        (
            "nightly-20260101-000000",
            theirs.as_str(),
            "old",
            "2026-01-01",
        ),
        // The second schedule's own: keepLast 1 keeps the newer.
        ("nightly-20261201-000000", &mine, "vectors", "2026-12-01"),
        ("nightly-20261202-000000", &mine, "vectors", "2026-12-02"),
        // A copy of a scheduled backup under another name, labels and all.
        (
            "nightly-20261202-000000-copy",
            &mine,
            "vectors",
            "2026-12-03",
        ),
        // Made while the schedule backed up another cluster (its clusterRef
        // was edited since).
        ("nightly-20261130-000000", &mine, "other", "2026-11-30"),
        // By hand, with the schedule's name label only.
        (
            "before-migration",
            "qdrant.io/schedule: nightly",
            "vectors",
            "2026-11-29",
        ),
    ];
    for (name, labels, cluster, _) in backups {
        // Retain, with the finalizer earlier versions put on every backup.
        w.apply(&backup(name, labels, cluster, "Retain", legacy));
    }
    // A Completed backup whose objects go with it keeps its finalizer.
    w.apply(&backup("goes-with-objects", "", "vectors", "Delete", ""));
    let completed = |name: &str, day: &str| {
        let patch = format!(
            r#"{{"status": {{"phase": "Completed", "completionTime": "{day}T01:00:00Z"}}}}"#
        );
        w.kubectl(&[
            "-n",
            NS,
            "patch",
            "qb",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    };
    for (name, _, _, day) in backups {
        completed(name, day);
    }
    completed("goes-with-objects", "2026-12-01");
    // Waiting ones: a backup and a restore of clusters that do not exist.
    w.apply(&backup("waiting", "", "absent", "Delete", ""));
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantRestore\nmetadata: {{name: waiting, namespace: {NS}}}\n\
         spec: {{backupRef: {{name: before-migration}}, targetClusterRef: {{name: absent}}}}\n"
    ));

    // A Helm release named like the QdrantCluster about to be made: its
    // Service has the cluster's client Service's name.
    w.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: vectors\n  namespace: {NS}\n\
         \x20 labels: {{app.kubernetes.io/managed-by: Helm, app.kubernetes.io/instance: vectors}}\n\
         \x20 annotations: {{meta.helm.sh/release-name: vectors, meta.helm.sh/release-namespace: {NS}}}\n\
         spec:\n  selector: {{app: release}}\n  ports: [{{name: http, port: 6333}}]\n"
    ));

    // The operator as installed: no plain-http endpoints, no ambient
    // credentials. It is ready only once its webhook serves.
    let webhook_port = test_support::s3_server::free_port().unwrap();
    let webhook_addr = format!("127.0.0.1:{webhook_port}");
    let mut operator = w.operator_exactly(
        "qdrant-operator-0",
        &[
            "--webhook-listen",
            &webhook_addr,
            "--webhook-hosts",
            "127.0.0.1",
        ],
    );
    let readyz = format!("http://127.0.0.1:{}", operator.http_port);
    loop {
        let ready = test_support::real_qdrant::request("GET", &readyz, "/readyz", None, None)
            .is_ok_and(|(code, _)| code == 200);
        if ready {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        tls_handshake(&webhook_addr).await,
        "/readyz answered 200 before the webhook served"
    );
    let log = operator.log.clone();
    let diag = || {
        let objects =
            w.cp.kubectl(&["-n", NS, "get", "qb,qbs,qr,qc,svc,cm,sts", "-o", "wide"])
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
        format!(
            "operator log:\n{}\nobjects:\n{objects}",
            tail(&std::fs::read_to_string(&log).unwrap_or_default(), 40)
        )
    };

    // Retention pruned the schedule's older backup, and nothing else.
    let qb: Api<QdrantBackup> = Api::namespaced(w.admin.clone(), NS);
    let qbs: Api<QdrantBackupSchedule> = Api::namespaced(w.admin.clone(), NS);
    eventually(
        60,
        "retention prunes the schedule's older backup",
        &diag,
        || async {
            let kept = qbs.get("nightly").await.ok()?.status?.kept_backups;
            let gone = qb.get_opt("nightly-20261201-000000").await.ok()?.is_none();
            (gone && kept == ["nightly-20261202-000000"]).then_some(())
        },
    )
    .await;
    for (name, ..) in backups.iter().filter(|b| b.0 != "nightly-20261201-000000") {
        assert!(
            qb.get_opt(name).await.unwrap().is_some(),
            "retention deleted {name}, which schedule nightly did not make\n{}",
            diag()
        );
    }

    // Finalizers: none on what has nothing to protect; the earlier
    // versions' one is released.
    let finalizers = |name: String| {
        let qb = qb.clone();
        async move {
            qb.get(&name)
                .await
                .ok()
                .map(|b| b.metadata.finalizers.unwrap_or_default())
        }
    };
    eventually(60, "needless finalizers are released", &diag, || async {
        for (name, ..) in backups.iter().filter(|b| b.0 != "nightly-20261201-000000") {
            if !finalizers(name.to_string()).await?.is_empty() {
                return None;
            }
        }
        let kept = finalizers("goes-with-objects".into()).await?;
        (kept == ["qdrant.io/backup"]).then_some(())
    })
    .await;
    let waiting_reason = || async {
        let b = qb.get("waiting").await.ok()?;
        let reason = b.status?.conditions.first()?.reason.clone();
        (reason == "ClusterNotFound").then_some(b.metadata.finalizers.unwrap_or_default())
    };
    let held = eventually(
        30,
        "the backup waits for its cluster",
        &diag,
        waiting_reason,
    )
    .await;
    assert!(held.is_empty(), "a waiting backup holds {held:?}");
    let restore_finalizers = w.kubectl(&[
        "-n",
        NS,
        "get",
        "qr",
        "waiting",
        "-o",
        "jsonpath={.metadata.finalizers}",
    ]);
    assert_eq!(
        restore_finalizers, "",
        "a waiting restore holds a finalizer"
    );

    // Storage that puts other tenants at risk needs the administrator's
    // opt-in, and the refusal says how to give it.
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: ambient, namespace: {NS}}}\n\
         spec: {{clusterRef: {{name: vectors}}, storage: {{s3: {{bucket: some-bucket}}}}}}\n---\n\
         apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: plain-http, namespace: {NS}}}\n\
         spec: {{clusterRef: {{name: vectors}}, storage: {{s3: {{bucket: some-bucket, endpoint: 'http://minio.storage:9000', credentialsSecretRef: {{name: s3}}}}}}}}\n"
    ));
    for (name, reason, how) in [
        (
            "ambient",
            "AmbientCredentialsRefused",
            "--allow-ambient-credentials",
        ),
        (
            "plain-http",
            "InsecureEndpointRefused",
            "--allow-insecure-endpoints",
        ),
    ] {
        let (got, message) =
            eventually(30, &format!("backup {name} is refused"), &diag, || async {
                let st = qb.get(name).await.ok()?.status?;
                let c = st.conditions.first()?;
                (st.phase == Some(qdrant_operator::crd::OperationPhase::Failed))
                    .then(|| (c.reason.clone(), c.message.clone()))
            })
            .await;
        assert_eq!(got, reason);
        assert!(message.contains(how), "{message}");
    }

    // Idle connections to the webhook are closed, not kept: a client that
    // never finishes its handshake cannot hold the operator's memory.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::TcpStream::connect(&webhook_addr).await.unwrap());
    }
    let closed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        for mut c in idle {
            let mut buf = [0u8; 1];
            // EOF (0) or a reset: closed by the webhook.
            let _ = tokio::io::AsyncReadExt::read(&mut c, &mut buf).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the webhook kept idle connections open");
    assert!(
        tls_handshake(&webhook_addr).await,
        "the webhook still serves"
    );

    // The QdrantCluster named like the Helm release: refused, naming the
    // Service and its owner; nothing of its own is written either.
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {{name: vectors, namespace: {NS}}}\n\
         spec: {{replicas: 1, version: v1.18.3, persistence: {{size: 1Gi}}}}\n"
    ));
    let qc: Api<QdrantCluster> = Api::namespaced(w.admin.clone(), NS);
    let message = eventually(
        60,
        "the cluster says the Service is not its own",
        &diag,
        || async {
            let c = qc
                .get("vectors")
                .await
                .ok()?
                .status?
                .conditions
                .into_iter()
                .next()?;
            (c.reason == "ObjectNotOwned").then_some(c.message)
        },
    )
    .await;
    assert!(
        message.starts_with(
            "Service vectors exists and is not QdrantCluster vectors's (it belongs to Helm release vectors)"
        ),
        "{message}"
    );
    let events = w.kubectl(&[
        "-n",
        NS,
        "get",
        "events.events.k8s.io",
        "--field-selector",
        "reason=ObjectNotOwned",
        "-o",
        "jsonpath={.items[*].type}",
    ]);
    assert_eq!(events, "Warning", "one Warning Event");
    let svc: Api<Service> = Api::namespaced(w.admin.clone(), NS);
    let release = svc.get("vectors").await.unwrap();
    assert!(
        release.metadata.owner_references.is_none(),
        "the release's Service was adopted: {:?}",
        release.metadata.owner_references
    );
    assert!(
        release
            .metadata
            .managed_fields
            .unwrap_or_default()
            .iter()
            .all(|f| f.manager.as_deref() != Some("qdrant-operator")),
        "the operator wrote to the release's Service"
    );
    let cms: Api<ConfigMap> = Api::namespaced(w.admin.clone(), NS);
    let sts: Api<StatefulSet> = Api::namespaced(w.admin.clone(), NS);
    assert!(cms.get_opt("vectors-config").await.unwrap().is_none());
    assert!(sts.get_opt("vectors").await.unwrap().is_none());
    // Deleting the QdrantCluster leaves the release's Service alone.
    w.kubectl(&[
        "-n",
        NS,
        "delete",
        "qc",
        "vectors",
        "--wait=true",
        "--timeout=30s",
    ]);
    assert!(svc.get_opt("vectors").await.unwrap().is_some());

    // The backup sidecar never takes Qdrant's traffic down: an agent whose
    // token is unusable keeps running without serving tasks, and its pod
    // stays Ready on Qdrant's readiness alone.
    let kubelet = w.kubelet(NS);
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {{name: guarded, namespace: {NS}}}\n\
         spec: {{replicas: 1, version: v1.18.3, persistence: {{size: 1Gi}}}}\n"
    ));
    let pod_diag = || format!("{}\npods:\n{}", diag(), tail(&kubelet.all_logs(), 30));
    w.running(NS, "guarded", 1, 120, &pod_diag).await;
    w.merge_patch(
        NS,
        "secret",
        "guarded-agent-token",
        r#"{"data":{"token":""}}"#,
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(w.admin.clone(), NS);
    let before = pods.get("guarded-0").await.unwrap().metadata.uid;
    w.kubectl(&["-n", NS, "delete", "pod", "guarded-0", "--wait=false"]);
    eventually(
        120,
        "the new pod is Ready with an agent that cannot serve",
        &pod_diag,
        || async {
            let p = pods.get("guarded-0").await.ok()?;
            let ready = p
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let waiting = kubelet
                .logs("guarded-0", "agent")
                .contains("the agent's credentials did not load");
            (p.metadata.uid != before && ready && waiting).then_some(())
        },
    )
    .await;
    let agent = pods
        .get("guarded-0")
        .await
        .unwrap()
        .status
        .unwrap()
        .container_statuses
        .unwrap();
    assert!(
        agent.iter().all(|c| c.restart_count == 0),
        "a container restarted: {agent:?}"
    );

    // A second installation of the operator (another namespace, its own CA)
    // leaves the first one's resources alone: it re-issues no certificate
    // (its agents would then refuse the first installation), and says whose
    // they are.
    let tls_identity = || async {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(w.admin.clone(), NS);
        let s = secrets.get("guarded-agent-tls").await.unwrap();
        s.data.unwrap()["tls.crt"].0.clone()
    };
    let before_second = tls_identity().await;
    w.kubectl(&["create", "namespace", "second-operator"]);
    let mut second = w.operator_in(
        "second-operator",
        "second-operator-0",
        &["--no-leader-election"],
    );
    let second_log = second.log.clone();
    let note = eventually(
        60,
        "the second installation says whose the cluster is",
        &diag,
        || async {
            let events = w.kubectl(&[
                "-n",
                NS,
                "get",
                "events.events.k8s.io",
                "--field-selector",
                "reason=ManagedElsewhere,regarding.name=guarded",
                "-o",
                "jsonpath={.items[*].note}",
            ]);
            (!events.is_empty()).then_some(events)
        },
    )
    .await;
    assert!(
        note.contains(
            "managed by the operator installation qdrant-operator/qdrant-operator-leader"
        ),
        "{note}"
    );
    // Its reconciles of everything else have run by now as well.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        tls_identity().await,
        before_second,
        "the second installation re-issued the agents' certificate:\n{}",
        std::fs::read_to_string(&second_log).unwrap_or_default()
    );
    second.process().stop();

    // The operator is uninstalled: what holds no finalizer is deleted at
    // once; the one that protects objects says how to let it go.
    operator.process().stop();
    for (kind, name) in [
        ("qb", "before-migration"),
        ("qb", "waiting"),
        ("qr", "waiting"),
    ] {
        w.kubectl(&[
            "-n",
            NS,
            "delete",
            kind,
            name,
            "--wait=true",
            "--timeout=20s",
        ]);
    }
    let stuck =
        w.cp.kubectl(&[
            "-n",
            NS,
            "delete",
            "qb",
            "goes-with-objects",
            "--timeout=3s",
        ])
        .unwrap();
    assert!(
        !stuck.status.success(),
        "its finalizer protects its objects"
    );
    // The README's one command to release it.
    w.merge_patch(
        NS,
        "qb",
        "goes-with-objects",
        r#"{"metadata":{"finalizers":null}}"#,
    );
    eventually(20, "the released backup is gone", &diag, || async {
        qb.get_opt("goes-with-objects")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}
