//! The QdrantCluster reconciler against a mock API server (kube's
//! tower-test pattern): each scenario names the exact requests expected, in
//! order, answers them, and checks what was sent.

mod common;

use common::{ApiServer, with_status};
use kube::Resource;
use kube::runtime::controller::Action;
use qdrant_operator::cluster::{FINALIZER, reconcile};
use qdrant_operator::crd::QdrantCluster;
use qdrant_operator::runtime::Context;
use qdrant_operator::runtime::metrics::Metrics;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// Answers an apply with what was sent, plus a uid, as the API server would.
fn echo_uid(body: &Value) -> (u16, Value) {
    let mut b = body.clone();
    b["metadata"]["uid"] = json!("u-1");
    (200, b)
}

fn setup() -> (Arc<Context>, ApiServer) {
    let (client, api) = ApiServer::pair("search");
    let metrics = Arc::new(Metrics::new(
        &mut prometheus_client::registry::Registry::default(),
    ));
    let ca = Arc::new(qdrant_operator::pki::Ca::generate().unwrap());
    let tls = Arc::new(qdrant_operator::agent_client::ClientIdentity::issue(ca.clone()).unwrap());
    (Arc::new(Context::new(client, ca, tls, metrics)), api)
}

fn cluster(finalized: bool, api_key: bool) -> QdrantCluster {
    let key = if api_key {
        "\n  apiKey: {secretRef: {name: qdrant-api-key, key: api-key}}"
    } else {
        ""
    };
    let mut c: QdrantCluster = serde_yaml::from_str(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {{name: vectors, namespace: search, uid: c-1, generation: 1}}\n\
         spec:\n  version: v1.18.3\n  replicas: 3\n  cluster: {{enabled: true}}{key}\n"
    ))
    .unwrap();
    if finalized {
        c.meta_mut().finalizers = Some(vec![FINALIZER.into()]);
    }
    c
}

const NS: &str = "/api/v1/namespaces/search";

/// The reconcile records a Warning Event with `reason`.
async fn expect_warning(api: &mut ApiServer, reason: &str) {
    let (_, ev) = api
        .expect(
            "POST",
            "/apis/events.k8s.io/v1/namespaces/search/events",
            echo_uid,
        )
        .await;
    assert_eq!(
        (ev["type"].as_str(), ev["reason"].as_str()),
        (Some("Warning"), Some(reason))
    );
}

/// Before writing anything the reconciler reads each object's name: none
/// of them exists yet, or (the StatefulSet) `sts` answers.
async fn names_checked(api: &mut ApiServer, sts: impl FnOnce(&Value) -> (u16, Value)) {
    for path in [
        "serviceaccounts/vectors-qdrant",
        "configmaps/vectors-config",
        "services/vectors-headless",
        "services/vectors",
    ] {
        api.expect("GET", &format!("{NS}/{path}"), |_| not_found())
            .await;
    }
    api.expect(
        "GET",
        "/apis/policy/v1/namespaces/search/poddisruptionbudgets/vectors",
        |_| not_found(),
    )
    .await;
    api.expect(
        "GET",
        "/apis/apps/v1/namespaces/search/statefulsets/vectors",
        sts,
    )
    .await;
}

/// The agent's token and a current certificate exist; every object before
/// the StatefulSet is applied.
async fn agent_secrets_current_and_objects_applied(
    api: &mut ApiServer,
    fingerprint: &str,
    not_after: &str,
) {
    let owned = json!([{"apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantCluster", "name": "vectors", "uid": "c-1"}]);
    api.expect("GET", &format!("{NS}/secrets/vectors-agent-token"), |_| (200, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "vectors-agent-token", "ownerReferences": owned.clone()}}))).await;
    let current = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "vectors-agent-tls",
        "ownerReferences": owned,
        "annotations": {"qdrant.io/ca-sha256": fingerprint, "qdrant.io/not-after": not_after}}});
    api.expect("GET", &format!("{NS}/secrets/vectors-agent-tls"), |_| {
        (200, current)
    })
    .await;
    for path in [
        "serviceaccounts/vectors-qdrant",
        "configmaps/vectors-config",
        "services/vectors-headless",
        "services/vectors",
    ] {
        api.expect("PATCH", &format!("{NS}/{path}"), echo_uid).await;
    }
    api.expect(
        "PATCH",
        "/apis/policy/v1/namespaces/search/poddisruptionbudgets/vectors",
        echo_uid,
    )
    .await;
}
const CLUSTERS: &str = "/apis/qdrant.io/v1alpha1/namespaces/search/qdrantclusters";

/// The reconciler looks for each node's volume claim to grow it; the
/// StatefulSet controller has made none yet.
async fn no_claims_yet(api: &mut ApiServer) {
    for i in 0..3 {
        api.expect(
            "GET",
            &format!("{NS}/persistentvolumeclaims/storage-vectors-{i}"),
            |_| not_found(),
        )
        .await;
    }
}

#[tokio::test]
async fn a_cluster_left_with_the_old_finalizer_loses_it_before_anything_else() {
    let (ctx, mut api) = setup();
    let mut c = cluster(true, true);
    c.metadata.resource_version = Some("42".into());
    let answer = serde_json::to_value(cluster(false, true)).unwrap();
    let server = tokio::spawn(async move {
        let (_, patch) = api
            .expect("PATCH", &format!("{CLUSTERS}/vectors"), |_| (200, answer))
            .await;
        assert_eq!(
            patch,
            json!({"metadata": {"finalizers": [], "resourceVersion": "42"}}),
            "{patch}"
        );
        api.nothing_more().await;
    });
    let action = reconcile(Arc::new(c), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    server.await.unwrap();
}

#[tokio::test]
async fn a_cluster_applies_every_object_and_reports_its_phase() {
    let (ctx, mut api) = setup();
    let server = tokio::spawn(async move {
        api.expect("GET", &format!("{NS}/secrets/qdrant-api-key"), |_| (200, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "qdrant-api-key"}}))).await;
        names_checked(&mut api, |_| not_found()).await;
        api.expect("GET", &format!("{NS}/secrets/vectors-agent-token"), |_| {
            not_found()
        })
        .await;
        let (_, token) = api.expect("POST", &format!("{NS}/secrets"), echo_uid).await;
        assert_eq!(token["metadata"]["name"], "vectors-agent-token");
        assert_eq!(
            token["stringData"]["token"].as_str().unwrap().len(),
            64,
            "a 256-bit random token"
        );
        api.expect("GET", &format!("{NS}/secrets/vectors-agent-tls"), |_| {
            not_found()
        })
        .await;
        let (query, tls) = api
            .expect(
                "PATCH",
                &format!("{NS}/secrets/vectors-agent-tls"),
                echo_uid,
            )
            .await;
        assert!(query.contains("fieldManager=qdrant-operator"));
        assert_eq!(tls["type"], "kubernetes.io/tls");
        for k in ["tls.crt", "tls.key", "ca.crt"] {
            // base64 of "-----BEGIN": PEM material, in `data`.
            assert!(
                tls["data"][k]
                    .as_str()
                    .unwrap()
                    .starts_with("LS0tLS1CRUdJTi"),
                "{k}"
            );
        }
        assert!(tls["metadata"]["annotations"]["qdrant.io/ca-sha256"].is_string());
        for path in [
            format!("{NS}/serviceaccounts/vectors-qdrant"),
            format!("{NS}/configmaps/vectors-config"),
            format!("{NS}/services/vectors-headless"),
            format!("{NS}/services/vectors"),
            "/apis/policy/v1/namespaces/search/poddisruptionbudgets/vectors".into(),
        ] {
            let (query, body) = api.expect("PATCH", &path, echo_uid).await;
            assert!(
                query.contains("fieldManager=qdrant-operator") && query.contains("force=true"),
                "server-side apply: {query}"
            );
            assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "c-1");
        }
        let (_, sts) = api
            .expect(
                "PATCH",
                "/apis/apps/v1/namespaces/search/statefulsets/vectors",
                echo_uid,
            )
            .await;
        assert_eq!(sts["spec"]["replicas"], 3);
        // Distributed pods start together: ordered, they would wait on
        // peers that wait on them.
        assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
        no_claims_yet(&mut api).await;
        let (_, status) = api
            .expect(
                "PATCH",
                &format!("{CLUSTERS}/vectors/status"),
                with_status(&cluster(false, true)),
            )
            .await;
        assert_eq!(status["status"]["phase"], "Pending");
        assert_eq!(
            status["status"]["endpoint"],
            "http://vectors.search.svc:6333"
        );
        assert_eq!(status["status"]["observedGeneration"], 1);
        let ready = status["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("Starting"))
        );
        let (_, event) = api
            .expect(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/search/events",
                echo_uid,
            )
            .await;
        assert_eq!(event["reason"], "Pending");
        api.nothing_more().await;
    });
    let action = reconcile(Arc::new(cluster(false, true)), ctx)
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    server.await.unwrap();
}

#[tokio::test]
async fn a_missing_api_key_secret_fails_the_cluster_and_applies_nothing() {
    let (ctx, mut api) = setup();
    let server = tokio::spawn(async move {
        api.expect("GET", &format!("{NS}/secrets/qdrant-api-key"), |_| {
            not_found()
        })
        .await;
        let (_, status) = api
            .expect(
                "PATCH",
                &format!("{CLUSTERS}/vectors/status"),
                with_status(&cluster(false, true)),
            )
            .await;
        assert_eq!(status["status"]["phase"], "Failed");
        let ready = &status["status"]["conditions"][0];
        assert_eq!(ready["reason"], "SecretMissing");
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("Secret qdrant-api-key not found in namespace search")
        );
        expect_warning(&mut api, "Failed").await;
        api.nothing_more().await;
    });
    let action = reconcile(Arc::new(cluster(false, true)), ctx)
        .await
        .unwrap();
    // The Secret's watch wakes it; the requeue is only a safety net.
    assert_eq!(
        action,
        Action::requeue(qdrant_operator::runtime::operation::WATCHED_WAIT)
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_running_cluster_whose_status_is_current_writes_no_status() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use qdrant_operator::cluster::decide::{Observed, conditions, decide};
    let ready_sts = |body: &Value| {
        let mut b = body.clone();
        b["metadata"]["generation"] = json!(1);
        b["status"] = json!({"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3, "currentRevision": "r1", "updateRevision": "r1", "observedGeneration": 1});
        (200, b)
    };
    // The status a previous reconcile wrote for exactly this state.
    let mut c = cluster(false, false);
    let sts: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(
        ready_sts(
            &serde_json::to_value(qdrant_operator::cluster::render::statefulset(
                &c,
                &Default::default(),
            ))
            .unwrap(),
        )
        .1,
    )
    .unwrap();
    let d = decide(
        &c,
        &Observed {
            statefulset: Some(sts),
            ..Default::default()
        },
    );
    c.status = Some(qdrant_operator::crd::QdrantClusterStatus {
        phase: Some(d.phase),
        replicas: 3,
        ready_replicas: 3,
        version: Some("v1.18.3".into()),
        endpoint: Some("http://vectors.search.svc:6333".into()),
        last_backup_time: None,
        agent_wiring: Some(qdrant_operator::cluster::render::AGENT_WIRING),
        conditions: conditions(&[], &d, Some(1), Time(jiff::Timestamp::UNIX_EPOCH)),
        observed_generation: Some(1),
        scale_in: None,
        // Its shards were evened out for its 3 nodes already.
        rebalance: Some(qdrant_operator::crd::Rebalance {
            replicas: 3,
            done: true,
            task: None,
            shards_moved: 0,
            shards_to_move: 0,
            message: None,
            retry_after: None,
        }),
        agent_image: Some(qdrant_operator::cluster::render::default_agent_image()),
    });
    let (ctx, mut api) = setup();
    let fingerprint = ctx.ca.fingerprint();
    let not_after =
        (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 300)).to_string();
    let server = tokio::spawn(async move {
        // A StatefulSet made by an earlier version keeps its (immutable)
        // claim template: a larger persistence.size grows the claims instead.
        let earlier = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "vectors", "namespace": "search",
                "ownerReferences": [{"apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantCluster", "name": "vectors", "uid": "c-1"}]},
            "spec": {"podManagementPolicy": "Parallel", "serviceName": "vectors-headless",
                     "selector": {}, "template": {},
                     "volumeClaimTemplates": [{"metadata": {"name": "storage"},
                        "spec": {"resources": {"requests": {"storage": "5Gi"}}}}]}});
        names_checked(&mut api, |_| (200, earlier)).await;
        // A current certificate from this CA is left alone.
        agent_secrets_current_and_objects_applied(&mut api, &fingerprint, &not_after).await;
        let (_, sent) = api
            .expect(
                "PATCH",
                "/apis/apps/v1/namespaces/search/statefulsets/vectors",
                ready_sts,
            )
            .await;
        assert_eq!(sent["spec"]["podManagementPolicy"], "Parallel");
        // The operator restarts pods itself, each when it is safe.
        assert_eq!(sent["spec"]["updateStrategy"]["type"], "OnDelete");
        assert_eq!(
            sent["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "5Gi"
        );
        // Its pods all run the current template: nothing to restart.
        let (query, _) = api
            .expect("GET", &format!("{NS}/pods"), |_| {
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
                )
            })
            .await;
        assert!(query.contains("labelSelector="), "{query}");
        no_claims_yet(&mut api).await;
        // Agents read a renewed certificate without a restart: the pod
        // template does not change with it.
        let annotations = sent["spec"]["template"]["metadata"]["annotations"].to_string();
        assert!(!annotations.contains(&not_after), "{annotations}");
        // No status patch and no event: the controller does not loop on itself.
        api.nothing_more().await;
    });
    let action = reconcile(Arc::new(c), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    server.await.unwrap();
}

#[tokio::test]
async fn an_object_the_api_server_refuses_is_named_in_the_ready_condition_and_an_event() {
    let (ctx, mut api) = setup();
    let fingerprint = ctx.ca.fingerprint();
    let not_after =
        (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 300)).to_string();
    let c = cluster(false, false);
    let answer = with_status(&c);
    let server = tokio::spawn(async move {
        names_checked(&mut api, |_| not_found()).await;
        agent_secrets_current_and_objects_applied(&mut api, &fingerprint, &not_after).await;
        let why = "StatefulSet.apps \"vectors\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas' are forbidden";
        api.expect(
            "PATCH",
            "/apis/apps/v1/namespaces/search/statefulsets/vectors",
            |_| {
                (
                    422,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422, "message": why}),
                )
            },
        )
        .await;
        let (_, st) = api
            .expect("PATCH", &format!("{CLUSTERS}/vectors/status"), answer)
            .await;
        let cond = &st["status"]["conditions"][0];
        assert_eq!(
            (cond["status"].as_str(), cond["reason"].as_str()),
            (Some("False"), Some("ApplyRefused"))
        );
        assert!(
            cond["message"]
                .as_str()
                .unwrap()
                .contains("updates to statefulset spec"),
            "{cond}"
        );
        expect_warning(&mut api, "ApplyRefused").await;
        api.nothing_more().await;
    });
    assert!(
        reconcile(Arc::new(c), ctx).await.is_err(),
        "retried with backoff"
    );
    server.await.unwrap();
}

/// An OrderedReady StatefulSet (made by an earlier version, immutable) is
/// deleted without its pods and made again as Parallel, which adopts them.
#[tokio::test]
async fn an_ordered_ready_statefulset_is_made_again_as_parallel_keeping_its_pods() {
    let (ctx, mut api) = setup();
    let server = tokio::spawn(async move {
        let earlier = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "vectors", "namespace": "search", "uid": "s-1",
                "ownerReferences": [{"apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantCluster", "name": "vectors", "uid": "c-1"}]},
            "spec": {"podManagementPolicy": "OrderedReady", "serviceName": "vectors-headless",
                     "selector": {}, "template": {}}});
        names_checked(&mut api, |_| (200, earlier)).await;
        let (_, body) = api
            .expect(
                "DELETE",
                "/apis/apps/v1/namespaces/search/statefulsets/vectors",
                |_| {
                    (
                        200,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                    )
                },
            )
            .await;
        assert_eq!(body["propagationPolicy"], "Orphan", "its pods stay: {body}");
        assert_eq!(body["preconditions"]["uid"], "s-1");
        let (_, ev) = api
            .expect(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/search/events",
                echo_uid,
            )
            .await;
        assert_eq!(ev["reason"], "RecreatingStatefulSet");
        api.nothing_more().await;
    });
    let action = reconcile(Arc::new(cluster(false, false)), ctx)
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    server.await.unwrap();
}
