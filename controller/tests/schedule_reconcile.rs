//! The QdrantBackupSchedule reconciler against a mock API server, on a
//! fixed clock: each scenario names the exact requests expected, in order.

mod common;

use common::{ApiServer, echo, with_status};
use kube::runtime::controller::Action;
use qdrant_operator::crd::QdrantBackupSchedule;
use qdrant_operator::runtime::Context;
use qdrant_operator::schedule::reconcile;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const BACKUPS: &str = "/apis/qdrant.io/v1alpha1/namespaces/search/qdrantbackups";
const SCHEDULE: &str =
    "/apis/qdrant.io/v1alpha1/namespaces/search/qdrantbackupschedules/nightly/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/search/events";
const RESTORES: &str = "/apis/qdrant.io/v1alpha1/namespaces/search/qdrantrestores";

fn now_1100() -> jiff::Timestamp {
    "2026-11-23T11:00:05Z".parse().unwrap()
}
fn now_1130() -> jiff::Timestamp {
    "2026-11-23T11:30:00Z".parse().unwrap()
}

fn setup(now: fn() -> jiff::Timestamp) -> (Arc<Context>, ApiServer) {
    let (client, api) = ApiServer::pair("search");
    let ca = Arc::new(qdrant_operator::pki::Ca::generate().unwrap());
    let tls = Arc::new(qdrant_operator::agent_client::ClientIdentity::issue(ca.clone()).unwrap());
    let metrics = Arc::new(qdrant_operator::runtime::metrics::Metrics::new(
        &mut prometheus_client::registry::Registry::default(),
    ));
    let mut ctx = Context::new(client, ca, tls, metrics);
    ctx.now = now;
    (Arc::new(ctx), api)
}

fn schedule(extra: &str, last: Option<&str>) -> QdrantBackupSchedule {
    let mut s: QdrantBackupSchedule = serde_yaml::from_str(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackupSchedule\n\
         metadata: {{name: nightly, namespace: search, uid: s-1, generation: 1, creationTimestamp: '2026-11-23T10:30:00Z'}}\n\
         spec:\n  schedule: '0 * * * *'\n  clusterRef: {{name: vectors}}\n  storage: {{s3: {{bucket: bkt}}}}\n{extra}"
    ))
    .unwrap();
    if let Some(l) = last {
        s.status = Some(qdrant_operator::crd::QdrantBackupScheduleStatus {
            last_schedule_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                l.parse().unwrap(),
            )),
            ..Default::default()
        });
    }
    s
}

fn backup(name: &str, phase: &str, completed: &str) -> Value {
    json!({"apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantBackup",
        "metadata": {"name": name, "namespace": "search", "labels": {"qdrant.io/schedule": "nightly", "qdrant.io/schedule-uid": "s-1"}, "creationTimestamp": completed},
        "spec": {"clusterRef": {"name": "vectors"}, "storage": {"s3": {"bucket": "bkt"}}},
        "status": {"phase": phase, "completionTime": completed}})
}

fn restore_of(backup: &str, phase: Option<&str>) -> Value {
    json!({"apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantRestore",
        "metadata": {"name": format!("from-{backup}"), "namespace": "search"},
        "spec": {"backupRef": {"name": backup}, "targetClusterRef": {"name": "vectors"}},
        "status": {"phase": phase}})
}

fn list(items: Vec<Value>) -> (u16, Value) {
    (
        200,
        json!({"apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantBackupList", "metadata": {}, "items": items}),
    )
}

#[tokio::test]
async fn a_due_fire_creates_a_labelled_backup_named_by_its_time_and_requeues_for_the_next() {
    let s = schedule("", None);
    let (ctx, mut api) = setup(now_1100);
    let answer = with_status(&s);
    let server = tokio::spawn(async move {
        let (q, _) = api.expect("GET", BACKUPS, |_| list(vec![])).await;
        assert!(
            q.contains("labelSelector=qdrant.io%2Fschedule-uid%3Ds-1"),
            "{q}"
        );
        let (_, b) = api.expect("POST", BACKUPS, echo).await;
        assert_eq!(b["metadata"]["name"], "nightly-20261123-110000");
        assert_eq!(b["metadata"]["labels"]["qdrant.io/schedule"], "nightly");
        assert_eq!(b["metadata"]["labels"]["qdrant.io/schedule-uid"], "s-1");
        assert!(
            b["metadata"]["ownerReferences"].is_null(),
            "not owned: deleting the schedule keeps its backups"
        );
        assert_eq!(b["spec"]["deletionPolicy"], "Delete");
        assert_eq!(b["spec"]["clusterRef"]["name"], "vectors");
        api.expect("POST", EVENTS, echo).await;
        let (_, st) = api.expect("PATCH", SCHEDULE, answer).await;
        assert_eq!(st["status"]["lastScheduleTime"], "2026-11-23T11:00:00Z");
        assert_eq!(st["status"]["lastBackupName"], "nightly-20261123-110000");
        assert_eq!(st["status"]["nextBackupTime"], "2026-11-23T12:00:00Z");
        assert_eq!(st["status"]["phase"], "Active");
        api.nothing_more().await;
    });
    let action = reconcile(Arc::new(s), ctx).await.unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(3595)),
        "requeued exactly for the next fire"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn forbid_skips_a_fire_while_a_backup_of_the_schedule_runs() {
    let s = schedule("", Some("2026-11-23T10:00:00Z"));
    let (ctx, mut api) = setup(now_1100);
    let answer = with_status(&s);
    let server = tokio::spawn(async move {
        api.expect("GET", BACKUPS, |_| {
            list(vec![backup(
                "nightly-20261123-100000",
                "InProgress",
                "2026-11-23T10:00:00Z",
            )])
        })
        .await;
        let (_, ev) = api.expect("POST", EVENTS, echo).await;
        assert_eq!(ev["reason"], "Skipped");
        assert!(
            ev["note"]
                .as_str()
                .unwrap()
                .contains("nightly-20261123-100000 still runs")
        );
        let (_, st) = api.expect("PATCH", SCHEDULE, answer).await;
        assert_eq!(
            st["status"]["lastScheduleTime"], "2026-11-23T11:00:00Z",
            "the skipped fire is not retried"
        );
        assert!(st["status"]["lastBackupName"].is_null());
        api.nothing_more().await;
    });
    reconcile(Arc::new(s), ctx).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn retention_deletes_old_completed_backups_but_never_a_running_or_the_newest_one() {
    let s = schedule(
        "  retentionPolicy: {keepLast: 2}\n",
        Some("2026-11-23T11:00:00Z"),
    );
    let (ctx, mut api) = setup(now_1130);
    let answer = with_status(&s);
    let server = tokio::spawn(async move {
        api.expect("GET", BACKUPS, |_| {
            list(vec![
                backup(
                    "nightly-20261123-073000",
                    "Completed",
                    "2026-11-23T07:30:00Z",
                ),
                backup(
                    "nightly-20261123-080000",
                    "Completed",
                    "2026-11-23T08:00:00Z",
                ),
                backup(
                    "nightly-20261123-090000",
                    "Completed",
                    "2026-11-23T09:00:00Z",
                ),
                backup(
                    "nightly-20261123-100000",
                    "Completed",
                    "2026-11-23T10:00:00Z",
                ),
                backup(
                    "nightly-20261123-110000",
                    "InProgress",
                    "2026-11-23T11:00:00Z",
                ),
                backup("nightly-20261123-070000", "Failed", "2026-11-23T07:00:00Z"),
            ])
        })
        .await;
        // Nothing is due at 11:30; keepLast 2 keeps 10:00 and 09:00; 08:00
        // and 07:30 would go, but a restore still reads 07:30. The running
        // and the failed one stay.
        api.expect("GET", RESTORES, |_| {
            list(vec![
                restore_of("nightly-20261123-073000", None),
                restore_of("nightly-20261123-080000", Some("Completed")),
            ])
        })
        .await;
        api.expect(
            "DELETE",
            &format!("{BACKUPS}/nightly-20261123-080000"),
            |_| {
                (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )
            },
        )
        .await;
        let (_, ev) = api.expect("POST", EVENTS, echo).await;
        assert_eq!(ev["reason"], "Pruned");
        let (_, st) = api.expect("PATCH", SCHEDULE, answer).await;
        assert_eq!(
            st["status"]["keptBackups"],
            json!(["nightly-20261123-090000", "nightly-20261123-100000"])
        );
        assert_eq!(
            st["status"]["lastSuccessfulBackupTime"],
            "2026-11-23T10:00:00Z"
        );
        api.nothing_more().await;
    });
    let action = reconcile(Arc::new(s), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1800)));
    server.await.unwrap();
}

#[tokio::test]
async fn an_invalid_schedule_says_which_field_is_wrong_and_does_nothing_else() {
    let mut s = schedule("", None);
    s.spec.schedule = "0 25 * * *".into();
    let (ctx, mut api) = setup(now_1100);
    let answer = with_status(&s);
    let server = tokio::spawn(async move {
        let (_, st) = api.expect("PATCH", SCHEDULE, answer).await;
        let c = &st["status"]["conditions"][0];
        assert_eq!(
            (
                c["type"].as_str(),
                c["status"].as_str(),
                c["reason"].as_str()
            ),
            (Some("Ready"), Some("False"), Some("InvalidSchedule"))
        );
        assert!(
            c["message"]
                .as_str()
                .unwrap()
                .contains("spec.schedule: hour field has 25")
        );
        let (_, ev) = api.expect("POST", EVENTS, echo).await;
        assert_eq!(ev["type"], "Warning");
        api.nothing_more().await;
    });
    assert_eq!(
        reconcile(Arc::new(s), ctx).await.unwrap(),
        Action::await_change()
    );
    server.await.unwrap();
}
