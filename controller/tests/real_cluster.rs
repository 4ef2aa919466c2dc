//! The operator on real systems: a real kube-apiserver (RBAC on) and
//! kube-controller-manager, the `qdrant-operator` binary as its own
//! ServiceAccount, and a test kubelet running each pod with the real Qdrant
//! 1.18.3 and the real `qdrant-agent`.

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::Api;
use qdrant_agent::store::ObjectStore;
use qdrant_operator::crd::{
    AgentTaskState, ClusterPhase, OperationPhase, QdrantBackup, QdrantBackupStatus, QdrantCluster,
    QdrantRestore, QdrantRestoreStatus,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use test_support::real_qdrant::{all_points, call};
use test_support::s3_server::S3Server;
use test_support::stack::{World, cluster_yaml, eventually, need, repo};

const NS: &str = "search";
const API_KEY: &str = "real-cluster-api-key-7f3e";

/// The README's first cluster, as written: the example QdrantCluster (3
/// nodes, distributed) in namespace `search` with its API key Secret.
fn first_cluster(w: &World) {
    w.kubectl(&["create", "namespace", NS]);
    w.secret(NS, "qdrant-api-key", &[("api-key", API_KEY)]);
    apply_example_cluster(w);
}

fn apply_example_cluster(w: &World) {
    let example =
        std::fs::read_to_string(repo().join("manifests/examples/qdrantcluster.yaml")).unwrap();
    // As an earlier operator version left it: with a finalizer that only
    // blocked deletion. The operator removes it.
    let example = example.replacen(
        "  namespace: search\n",
        "  namespace: search\n  finalizers: [qdrant.io/cluster]\n",
        1,
    );
    assert!(example.contains("finalizers"));
    w.apply(&example);
}

/// Volumes as a cloud's storage provides them: a default StorageClass that
/// allows expansion, and a PersistentVolume reserved for each node's claim,
/// so the claims bind (growing a claim needs it bound).
fn expandable_volumes(cluster: &str, nodes: usize, size: &str) -> String {
    let mut yaml = "apiVersion: storage.k8s.io/v1\nkind: StorageClass\n\
         metadata: {name: expandable, annotations: {storageclass.kubernetes.io/is-default-class: \"true\"}}\n\
         provisioner: kubernetes.io/no-provisioner\nallowVolumeExpansion: true\nvolumeBindingMode: Immediate\n"
        .to_string();
    for i in 0..nodes {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {cluster}-{i}}}\n\
             spec:\n  capacity: {{storage: {size}}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: expandable\n\
             \x20 hostPath: {{path: /nonexistent/{cluster}-{i}}}\n\
             \x20 claimRef: {{namespace: {NS}, name: storage-{cluster}-{i}}}\n"
        ));
    }
    yaml
}

/// The value of `series` (name and labels, as exported) in a scrape.
fn scraped(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{metrics}"))
}

/// The status of restore `name` once it is Completed or Failed.
async fn restore_ended(
    restores: &Api<QdrantRestore>,
    name: &str,
    diag: &impl Fn() -> String,
) -> QdrantRestoreStatus {
    eventually(120, &format!("restore {name} ends"), diag, || async {
        let st = restores.get(name).await.ok()?.status?;
        matches!(
            st.phase?,
            OperationPhase::Completed | OperationPhase::Failed
        )
        .then_some(st)
    })
    .await
}

fn volumes_sized(c: &QdrantCluster) -> Option<(String, String, String)> {
    let st = c.status.as_ref()?;
    let v = st.conditions.iter().find(|c| c.type_ == "VolumesSized")?;
    Some((v.status.clone(), v.reason.clone(), v.message.clone()))
}

async fn grows_its_volumes(w: &World, clusters: &Api<QdrantCluster>, diag: &impl Fn() -> String) {
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(w.admin.clone(), NS);
    let request = |pvc: &k8s_openapi::api::core::v1::PersistentVolumeClaim| {
        let r = pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?;
        r.get("storage").map(|q| q.0.clone())
    };
    eventually(
        60,
        "every claim is bound and sized as asked",
        diag,
        || async {
            let c = clusters.get("vectors").await.ok()?;
            let (ok, reason, _) = volumes_sized(&c)?;
            let bound = (0..3).all(|i| {
                w.kubectl(&[
                    "-n",
                    NS,
                    "get",
                    "pvc",
                    &format!("storage-vectors-{i}"),
                    "-o",
                    "jsonpath={.status.phase}",
                ]) == "Bound"
            });
            (bound && ok == "True" && reason == "AsRequested").then_some(())
        },
    )
    .await;
    w.merge_patch(
        NS,
        "qc",
        "vectors",
        r#"{"spec":{"persistence":{"size":"20Gi"}}}"#,
    );
    let (_, _, msg) = eventually(
        60,
        "the claims ask for 20Gi and the cluster waits for them",
        diag,
        || async {
            for i in 0..3 {
                let pvc = claims.get(&format!("storage-vectors-{i}")).await.ok()?;
                (request(&pvc)?.as_str() == "20Gi").then_some(())?;
            }
            let c = clusters.get("vectors").await.ok()?;
            volumes_sized(&c).filter(|(ok, reason, _)| ok == "False" && reason == "Resizing")
        },
    )
    .await;
    assert!(msg.contains("storage-vectors-2 (10Gi)"), "{msg}");
    let sts: Api<StatefulSet> = Api::namespaced(w.admin.clone(), NS);
    let template = sts
        .get("vectors")
        .await
        .unwrap()
        .spec
        .unwrap()
        .volume_claim_templates
        .unwrap();
    assert_eq!(
        request(&template[0]).as_deref(),
        Some("10Gi"),
        "the template is kept"
    );
    let notes = w.kubectl(&[
        "-n",
        NS,
        "get",
        "events",
        "--field-selector",
        "reason=ExpandingVolumes",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    for i in 0..3 {
        assert!(
            notes.contains(&format!("storage-vectors-{i} (was 10Gi)")),
            "an Event names each claim: {notes}"
        );
    }
    // What the storage provider's resizer does when it has grown a volume.
    for i in 0..3 {
        w.kubectl(&[
            "patch",
            "pv",
            &format!("vectors-{i}"),
            "-p",
            r#"{"spec":{"capacity":{"storage":"20Gi"}}}"#,
        ]);
        w.kubectl(&[
            "-n",
            NS,
            "patch",
            "pvc",
            &format!("storage-vectors-{i}"),
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"capacity":{"storage":"20Gi"}}}"#,
        ]);
    }
    eventually(90, "the cluster sees every volume grown", diag, || async {
        let c = clusters.get("vectors").await.ok()?;
        volumes_sized(&c).filter(|(ok, reason, _)| ok == "True" && reason == "AsRequested")
    })
    .await;
    // Volumes never shrink: the API server refuses it, saying what to do.
    let shrink = w.cp.kubectl(&[
        "-n",
        NS,
        "patch",
        "qc",
        "vectors",
        "--type=merge",
        "-p",
        r#"{"spec":{"persistence":{"size":"15Gi"}}}"#,
    ]);
    let shrink = need(shrink);
    assert!(!shrink.status.success());
    assert!(
        String::from_utf8_lossy(&shrink.stderr).contains("persistence.size cannot shrink"),
        "{}",
        String::from_utf8_lossy(&shrink.stderr)
    );
}

/// Collections of several shard counts and replication factors, with
/// points (vector and payload) and an alias: (name, shards, replication).
const COLLECTIONS: [(&str, u32, u32); 3] = [("docs", 3, 2), ("images", 2, 1), ("logs", 1, 3)];
const POINTS: u64 = 300;

fn seed(base: &str) {
    for (name, shards, rf) in COLLECTIONS {
        need(call(
            "PUT",
            base,
            &format!("/collections/{name}?wait=true"),
            Some(API_KEY),
            Some(json!({"vectors": {"size": 4, "distance": "Cosine"},
                        "shard_number": shards, "replication_factor": rf})),
        ));
        let points: Vec<Value> = (1..=POINTS)
            .map(|i| {
                let f = i as f32;
                json!({"id": i, "vector": [f, f * 0.5 + 1.0, 3.0, -f],
                       "payload": {"n": i, "collection": name, "tag": format!("t{}", i % 7)}})
            })
            .collect();
        need(call(
            "PUT",
            base,
            &format!("/collections/{name}/points?wait=true"),
            Some(API_KEY),
            Some(json!({"points": points})),
        ));
    }
    need(call(
        "POST",
        base,
        "/collections/aliases",
        Some(API_KEY),
        Some(
            json!({"actions": [{"create_alias": {"collection_name": "docs", "alias_name": "docs-current"}}]}),
        ),
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_runs_backs_up_and_restores_real_qdrant_with_only_its_rbac() {
    let w = World::start().await;
    let operator = w.operator("qdrant-operator-0");
    let kubelet = w.kubelet(NS);
    let diag = || {
        let objects =
            w.cp.kubectl(&[
                "-n",
                NS,
                "get",
                "qdrantclusters,statefulsets,pods,pvc",
                "-o",
                "wide",
            ])
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let operations = w
            .cp
            .kubectl(&["-n", NS, "get", "qb,qr", "-o", "jsonpath={range .items[*]}{.kind} {.metadata.name}: {.status.phase} {.status.stage} {.status.conditions[0].reason}: {.status.conditions[0].message}{\"\\n\"}{end}"])
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        format!(
            "operator log:\n{}\nkube-controller-manager:\n{}\nobjects:\n{objects}\nbackups and restores:\n{operations}\npods (last lines):\n{}",
            tail(&operator.log_text(), 30),
            w.cp.log_tail("kube-controller-manager.log"),
            tail(&kubelet.all_logs(), 40)
        )
    };
    // The cluster before its API key Secret: it says which Secret it waits
    // for, and the Secret's watch wakes it (it would look again only in 5
    // minutes).
    w.kubectl(&["create", "namespace", NS]);
    w.apply(&expandable_volumes("vectors", 3, "10Gi"));
    apply_example_cluster(&w);
    let clusters: Api<QdrantCluster> = Api::namespaced(w.admin.clone(), NS);
    eventually(30, "the cluster waits for its Secret", &diag, || async {
        let st = clusters.get("vectors").await.ok()?.status?;
        st.conditions
            .iter()
            .any(|c| c.reason == "SecretMissing")
            .then_some(())
    })
    .await;
    w.secret(NS, "qdrant-api-key", &[("api-key", API_KEY)]);
    // The StatefulSet exists: every object before it was applied as the
    // operator's ServiceAccount.
    let sts: Api<StatefulSet> = Api::namespaced(w.admin.clone(), NS);
    eventually(
        60,
        "the operator creates the StatefulSet",
        &diag,
        || async { sts.get_opt("vectors").await.ok().flatten() },
    )
    .await;
    // Pods come from the real StatefulSet controller, all at once
    // (Parallel), each Ready only once its Qdrant and agent answer.
    let c = w.running(NS, "vectors", 3, 240, &diag).await;
    assert_eq!(
        c["status"]["observedGeneration"],
        c["metadata"]["generation"]
    );
    let finalizers = w.kubectl(&[
        "-n",
        NS,
        "get",
        "qc",
        "vectors",
        "-o",
        "jsonpath={.metadata.finalizers}",
    ]);
    assert_eq!(finalizers.trim(), "", "the old finalizer is removed");

    // The three Qdrant nodes formed one cluster through the rendered start
    // script and headless-Service names.
    let ip = kubelet.pod_ip("vectors-0").await.unwrap();
    let (code, body) = need(test_support::real_qdrant::get(
        &format!("http://{ip}:6333"),
        "/cluster",
        Some(API_KEY),
    ));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["result"]["peers"].as_object().map(|p| p.len()),
        Some(3),
        "{body}"
    );
    // The API key from the Secret is enforced.
    let (code, _) = need(test_support::real_qdrant::get(
        &format!("http://{ip}:6333"),
        "/cluster",
        None,
    ));
    assert_eq!(code, 401);
    monitored_by_a_real_prometheus(&w, &clusters, &diag).await;

    // A StatefulSet as earlier versions made it, OrderedReady (immutable):
    // the operator makes it again as Parallel, and the pods go on running.
    let uids = || w.pod_uids(NS);
    // Settled: every pod runs the StatefulSet's current template.
    eventually(60, "the StatefulSet has settled", &diag, || async {
        let s = sts.get("vectors").await.ok()?;
        let st = s.status?;
        (st.observed_generation == s.metadata.generation
            && st.current_revision.is_some()
            && st.current_revision == st.update_revision
            && st.updated_replicas == Some(3)
            && st.ready_replicas == Some(3))
        .then_some(())
    })
    .await;
    let before = uids().await;
    let pid = operator.pid().expect("running").to_string();
    let kill = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    // Paused (well within its lease) so it does not re-create it first.
    kill("-STOP");
    let mut legacy: Value =
        serde_json::from_str(&w.kubectl(&["-n", NS, "get", "sts", "vectors", "-o", "json"]))
            .unwrap();
    w.kubectl(&["-n", NS, "delete", "sts", "vectors", "--cascade=orphan"]);
    legacy["spec"]["podManagementPolicy"] = json!("OrderedReady");
    for f in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
        "generation",
    ] {
        legacy["metadata"].as_object_mut().unwrap().remove(f);
    }
    legacy.as_object_mut().unwrap().remove("status");
    let out = need(w.cp.kubectl_stdin(&["create", "-f", "-"], Some(&legacy.to_string())));
    // As a StatefulSet that has run for a while: its pods adopted.
    for _ in 0..50 {
        let adopted = sts
            .get_opt("vectors")
            .await
            .ok()
            .flatten()
            .is_some_and(|s| {
                s.status.and_then(|st| st.observed_generation) == s.metadata.generation
            });
        if adopted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    kill("-CONT");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        60,
        "the StatefulSet is made again as Parallel",
        &diag,
        || async {
            let s = sts.get_opt("vectors").await.ok()??;
            (s.spec?.pod_management_policy.as_deref() == Some("Parallel")).then_some(())
        },
    )
    .await;
    w.running(NS, "vectors", 3, 120, &diag).await;
    let revisions = w.kubectl(&["-n", NS, "get", "pods,sts,controllerrevisions", "-o", "custom-columns=NAME:.metadata.name,REV:.metadata.labels.controller-revision-hash,CUR:.status.currentRevision,UPD:.status.updateRevision,UID:.metadata.uid,OWNER:.metadata.ownerReferences[0].uid"]);
    let events = w.kubectl(&[
        "-n",
        NS,
        "get",
        "events",
        "-o",
        "custom-columns=T:.lastTimestamp,OBJ:.involvedObject.name,REASON:.reason,MSG:.message",
    ]);
    assert_eq!(
        uids().await,
        before,
        "no pod was restarted\n{revisions}\n{events}"
    );

    // A change of the pod template (here Qdrant's config) restarts the pods
    // one at a time, each evicted only once the one before is Ready again.
    w.merge_patch(
        NS,
        "qc",
        "vectors",
        r#"{"spec":{"config":{"storage":{"performance":{"max_search_threads":2}}}}}"#,
    );
    eventually(240, "every pod runs the new template", &diag, || async {
        let s = sts.get("vectors").await.ok()?;
        let st = s.status?;
        let now = uids().await;
        (st.update_revision.is_some()
            && st.updated_replicas == Some(3)
            && st.ready_replicas == Some(3)
            && now.iter().all(|u| !before.contains(u)))
        .then_some(())
    })
    .await;
    let restarts = w.kubectl(&[
        "-n",
        NS,
        "get",
        "events.events.k8s.io",
        "--field-selector",
        "reason=RestartingPod",
        "-o",
        "jsonpath={.items[*].note}",
    ]);
    assert!(restarts.contains("restarting pod vectors-2"), "{restarts}");
    w.running(NS, "vectors", 3, 120, &diag).await;

    // A larger persistence.size grows each node's volume claim (the
    // StatefulSet's claim template cannot change), and the cluster says so
    // until the storage provider has grown them.
    grows_its_volumes(&w, &clusters, &diag).await;

    // A backup of real distributed collections: each shard stored once.
    let source = format!("http://{ip}:6333");
    seed(&source);
    let s3 = need(S3Server::start());
    let bucket = need(s3.bucket("real"));
    s3_secret(&w, "backup-s3-credentials");
    // Read back and checked by an agent before it counts as Completed.
    let before_migration = format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: before-migration, namespace: {NS}}}\n\
         spec:\n  clusterRef: {{name: vectors}}\n  verify: true\n  storage:\n    s3: {{bucket: {bucket}, prefix: prod, region: us-east-1, \
         endpoint: \"{}\", credentialsSecretRef: {{name: backup-s3-credentials}}}}\n",
        s3.endpoint
    );
    w.apply(&before_migration);
    // A schedule firing every minute, keeping the last one: it queues
    // behind the backup above (one backup per cluster) and prunes by
    // retention, resource and objects.
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackupSchedule\nmetadata: {{name: minutely, namespace: {NS}}}\n\
         spec:\n  schedule: \"* * * * *\"\n  clusterRef: {{name: vectors}}\n  retentionPolicy: {{keepLast: 1}}\n\
         \x20 storage:\n    s3: {{bucket: {bucket}, prefix: sched, region: us-east-1, \
         endpoint: \"{}\", credentialsSecretRef: {{name: backup-s3-credentials}}}}\n",
        s3.endpoint
    ));
    let backups: Api<QdrantBackup> = Api::namespaced(w.admin.clone(), NS);
    let st = w
        .completed::<QdrantBackupStatus>(NS, "qdrantbackups", "before-migration", 180, &diag)
        .await;
    let v = st.verification.clone().expect("spec.verify ran");
    let objects: usize = st.collections.iter().map(|c| c.shards.len()).sum();
    assert_eq!(
        (v.task.state, v.objects as usize, v.bytes),
        (AgentTaskState::Succeeded, objects, st.size_bytes.unwrap()),
        "every object was read back and matched: {v:#?}"
    );
    assert!(
        v.completion_time.is_some() && !v.task.pod.is_empty(),
        "{v:#?}"
    );
    for (name, shards, _) in COLLECTIONS {
        let c = st
            .collections
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} in {st:#?}"));
        let ids: Vec<u32> = c.shards.iter().filter_map(|s| s.shard_id).collect();
        assert_eq!(
            ids.len(),
            shards as usize,
            "{name}: each shard once: {c:#?}"
        );
        assert_eq!(
            ids.iter().collect::<BTreeSet<_>>().len(),
            shards as usize,
            "{name}: {c:#?}"
        );
    }

    // A restore into a 2-node cluster brings every point back.
    w.apply(&cluster_yaml(NS, "vectors-staging", 2));
    w.running(NS, "vectors-staging", 2, 240, &diag).await;
    // Its claims have no volumes to bind to, so the API server refuses to
    // grow them: the cluster says why and what to do, in its status and an
    // Event, and keeps running.
    w.merge_patch(
        NS,
        "qc",
        "vectors-staging",
        r#"{"spec":{"persistence":{"size":"2Gi"}}}"#,
    );
    let (_, _, why) = eventually(60, "the refused expansion is reported", &diag, || async {
        let c = clusters.get("vectors-staging").await.ok()?;
        volumes_sized(&c).filter(|(ok, reason, _)| ok == "False" && reason == "ExpansionRefused")
    })
    .await;
    assert!(
        why.contains("storage-vectors-staging-0")
            && why.contains("bound claims")
            && why.contains("allowVolumeExpansion"),
        "{why}"
    );
    let warned = w.kubectl(&[
        "-n",
        NS,
        "get",
        "events",
        "--field-selector",
        "reason=ExpansionRefused,type=Warning",
        "-o",
        "name",
    ]);
    assert_eq!(warned.lines().count(), 1, "{warned}");
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantRestore\nmetadata: {{name: restore-all, namespace: {NS}}}\n\
         spec:\n  backupRef: {{name: before-migration}}\n  targetClusterRef: {{name: vectors-staging}}\n"
    ));
    let _ = w
        .completed::<QdrantRestoreStatus>(NS, "qdrantrestores", "restore-all", 240, &diag)
        .await;
    let staging_ip = kubelet.pod_ip("vectors-staging-0").await.unwrap();
    let target = format!("http://{staging_ip}:6333");
    for (name, shards, rf) in COLLECTIONS {
        let want = need(all_points(&source, name, Some(API_KEY)));
        assert_eq!(want.len() as u64, POINTS);
        let got = need(all_points(&target, name, Some(API_KEY)));
        assert_eq!(got, want, "{name}: restored points differ");
        let info = need(call(
            "GET",
            &target,
            &format!("/collections/{name}"),
            Some(API_KEY),
            None,
        ));
        let params = &info["config"]["params"];
        assert_eq!(params["shard_number"], json!(shards), "{name}: {info}");
        assert_eq!(params["replication_factor"], json!(rf), "{name}: {info}");
        let placement = need(call(
            "GET",
            &target,
            &format!("/collections/{name}/cluster"),
            Some(API_KEY),
            None,
        ));
        let states: Vec<Value> = placement["local_shards"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(placement["remote_shards"].as_array().into_iter().flatten())
            .map(|s| s["state"].clone())
            .collect();
        assert!(
            states.iter().all(|s| s == "Active"),
            "{name}: every replica Active: {placement}"
        );
    }
    let aliases = need(call("GET", &target, "/aliases", Some(API_KEY), None));
    assert!(
        aliases["aliases"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["alias_name"] == "docs-current" && a["collection_name"] == "docs"),
        "alias back: {aliases}"
    );

    // Every kind's reconciles are counted.
    let metrics = operator.metrics();
    for kind in [
        "QdrantCluster",
        "QdrantBackup",
        "QdrantRestore",
        "QdrantBackupSchedule",
    ] {
        assert!(
            metrics.contains(&format!(
                "qdrant_operator_reconciles_total{{kind=\"{kind}\"}}"
            )),
            "{kind} reconciles in /metrics:\n{metrics}"
        );
    }

    // The schedule fired twice and retention removed the older backup,
    // its resource and its objects.
    let store = store(&s3, &bucket).await;
    let scheduled = || async {
        let lp = kube::api::ListParams::default().labels("qdrant.io/schedule=minutely");
        let list = backups.list(&lp).await.ok()?;
        Some(list.items)
    };
    let first = eventually(
        150,
        "the schedule's first backup Completed",
        &diag,
        || async {
            let items = scheduled().await?;
            let b = items.into_iter().find(|b| {
                b.status.as_ref().and_then(|s| s.phase) == Some(OperationPhase::Completed)
            })?;
            Some(b.metadata.name.unwrap())
        },
    )
    .await;
    eventually(
        150,
        "retention prunes the first scheduled backup",
        &diag,
        || async {
            let items = scheduled().await?;
            let completed = items
                .iter()
                .filter(|b| {
                    b.status.as_ref().and_then(|s| s.phase) == Some(OperationPhase::Completed)
                })
                .count();
            (!items
                .iter()
                .any(|b| b.metadata.name.as_deref() == Some(&first))
                && completed == 1)
                .then_some(())
        },
    )
    .await;
    let left = store
        .list(&format!("sched/{NS}/vectors/{first}/"))
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "objects of the pruned backup are left: {left:?}"
    );
    // /metrics tells when it fires next, every how long, and its last success.
    let metrics = operator.metrics();
    let value = |series: &str| scraped(&metrics, series);
    let schedule = format!("namespace=\"{NS}\",schedule=\"minutely\",cluster=\"vectors\"");
    assert_eq!(
        value(&format!(
            "qdrant_operator_schedule_interval_seconds{{{schedule}}}"
        )),
        60.0
    );
    assert!(
        value(&format!(
            "qdrant_operator_schedule_last_success_timestamp_seconds{{{schedule}}}"
        )) > 0.0
    );

    w.merge_patch(NS, "qbs", "minutely", r#"{"spec":{"suspend":true}}"#);

    // Deleting a backup resource (Retain) and applying it again, as a
    // GitOps re-sync does, keeps the backup: the new resource is refused
    // with a reason of its own and deletes nothing.
    let before = store
        .list(&format!("prod/{NS}/vectors/before-migration/"))
        .await
        .unwrap();
    w.kubectl(&["-n", NS, "delete", "qb", "before-migration", "--wait=true"]);
    w.apply(&before_migration);
    let again = w
        .ended(NS, "qdrantbackups", "before-migration", 180, &diag)
        .await;
    assert_eq!(again["status"]["phase"], "Failed", "{again:#}");
    assert_eq!(
        again["status"]["conditions"][0]["reason"], "BackupExists",
        "{again:#}"
    );
    let after = store
        .list(&format!("prod/{NS}/vectors/before-migration/"))
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|o| &o.key).collect::<Vec<_>>(),
        before.iter().map(|o| &o.key).collect::<Vec<_>>(),
        "the retained backup is whole"
    );

    // /metrics tells the latest good backup of the cluster, its size and
    // duration, and the latest failure with its reason, as the resources say.
    let all = backups.list(&Default::default()).await.unwrap().items;
    let secs = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
        t.0.as_millisecond() as f64 / 1000.0
    };
    let good = all
        .iter()
        .filter_map(|b| {
            let st = b.status.as_ref()?;
            (st.phase == Some(OperationPhase::Completed)).then_some(st)
        })
        .max_by_key(|st| st.completion_time.as_ref().map(|t| t.0))
        .expect("a Completed backup");
    let failed_at = secs(
        again["status"]["completionTime"]
            .as_str()
            .map(|t| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.parse().unwrap()))
            .as_ref()
            .expect("the failed backup's completionTime"),
    );
    let metrics = operator.metrics();
    let value = |series: &str| scraped(&metrics, series);
    let here = format!("namespace=\"{NS}\",cluster=\"vectors\"");
    let done = secs(good.completion_time.as_ref().unwrap());
    assert_eq!(
        value(&format!(
            "qdrant_operator_backup_last_success_timestamp_seconds{{{here}}}"
        )),
        done
    );
    assert_eq!(
        value(&format!("qdrant_operator_backup_last_size_bytes{{{here}}}")),
        good.size_bytes.unwrap() as f64
    );
    assert_eq!(
        value(&format!(
            "qdrant_operator_backup_last_duration_seconds{{{here}}}"
        )),
        done - secs(good.start_time.as_ref().unwrap())
    );
    assert_eq!(
        value(&format!(
            "qdrant_operator_backup_last_failure_timestamp_seconds{{{here},reason=\"BackupExists\"}}"
        )),
        failed_at
    );
    assert!(
        value(&format!(
            "qdrant_operator_backups{{{here},phase=\"Failed\"}}"
        )) >= 1.0
    );
    // `kubectl get qb` shows how long it took, `kubectl get qc` when the
    // cluster's latest backup finished (written at its next reconcile).
    let (start, end) = (
        good.start_time.as_ref().unwrap().0,
        good.completion_time.as_ref().unwrap().0,
    );
    // (The operator measures from its own clock; the status keeps whole
    // seconds.)
    let took = |extra| {
        qdrant_operator::runtime::operation::human_duration(
            end.duration_since(start) + jiff::SignedDuration::from_secs(extra),
        )
    };
    let shown = good.duration.clone().unwrap_or_default();
    assert!(
        shown == took(0) || shown == took(1),
        "{shown} for {start}..{end}"
    );
    w.annotate(NS, "qc", "vectors", "example.com/looked=1");
    let want = good.completion_time.clone();
    eventually(60, "the cluster shows its latest backup", &diag, || async {
        let st = clusters.get("vectors").await.ok()?.status?;
        (st.last_backup_time == want).then_some(())
    })
    .await;
    // Nothing the operator asked for was refused.
    let refused: BTreeSet<String> =
        w.cp.operator_requests()
            .iter()
            .filter(|e| e.code() == 403)
            .map(|e| format!("{} {}", e.verb, e.request_u_r_i))
            .collect();
    assert!(
        refused.is_empty(),
        "the API server refused the operator: {refused:#?}"
    );
    // And everything rbac.yaml grants was used: least privilege.
    let used: BTreeSet<(String, String, String)> =
        w.cp.operator_requests()
            .iter()
            .filter_map(|e| Some((e.rbac_verbs(), e.resource()?)))
            .flat_map(|(verbs, (g, r))| verbs.into_iter().map(move |v| (v, g.clone(), r.clone())))
            .collect();
    let unused: Vec<String> = granted()
        .into_iter()
        .filter(|g| !used.contains(g))
        .map(|(v, g, r)| format!("{v} {g}/{r}"))
        .collect();
    assert!(
        unused.is_empty(),
        "rbac.yaml grants what the operator never used: {unused:#?}\nused: {used:#?}"
    );
}

/// `spec.metrics.podMonitor`: without the PodMonitor kind the cluster says
/// what to install and runs on; a PodMonitor of that name made by someone
/// else is left alone; then the operator's PodMonitor, turned into scrape
/// jobs as the Prometheus Operator would (pods by its selector, ports by
/// name, the key from the Secret it names), lets a real Prometheus scrape
/// every Qdrant node (which refuses the same scrape without the key) and
/// every agent; turned off, it is deleted.
async fn monitored_by_a_real_prometheus(
    w: &World,
    clusters: &Api<QdrantCluster>,
    diag: &impl Fn() -> String,
) {
    let monitored = |reason: &'static str| async move {
        let st = clusters.get("vectors").await.ok()?.status?;
        let c = st.conditions.iter().find(|c| c.type_ == "Monitored")?;
        (c.reason == reason && st.phase == Some(ClusterPhase::Running)).then(|| c.message.clone())
    };
    let touch = |n: u32| w.annotate(NS, "qc", "vectors", &format!("example.com/touch={n}"));
    let monitor = |on: bool| {
        let patch = if on {
            r#"{"spec":{"metrics":{"podMonitor":{"enabled":true,"interval":"5s","labels":{"release":"prom"}}}}}"#
        } else {
            r#"{"spec":{"metrics":{"podMonitor":{"enabled":false}}}}"#
        };
        w.merge_patch(NS, "qc", "vectors", patch)
    };
    let unmonitored = || async {
        let st = clusters.get("vectors").await.ok()?.status?;
        (!st.conditions.iter().any(|c| c.type_ == "Monitored")).then_some(())
    };
    monitor(true);
    let said = eventually(60, "no PodMonitor kind: the cluster says so", diag, || {
        monitored("PodMonitorUnavailable")
    })
    .await;
    assert!(said.contains("Prometheus Operator"), "{said}");
    let crd = std::fs::read_to_string(repo().join("controller/tests/fixtures/podmonitor-crd.yaml"))
        .unwrap();
    w.apply(&crd);
    w.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/podmonitors.monitoring.coreos.com",
        "--timeout=60s",
    ]);
    let foreign = "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\n\
         metadata: {name: vectors, namespace: search}\n\
         spec: {selector: {matchLabels: {team: other}}, podMetricsEndpoints: [{port: web}]}\n";
    w.apply(foreign);
    touch(1);
    let said = eventually(60, "someone else's PodMonitor is refused", diag, || {
        monitored("PodMonitorNotOwned")
    })
    .await;
    assert!(said.contains("never takes over"), "{said}");
    let pm = || -> Value {
        serde_json::from_str(&w.kubectl(&["-n", NS, "get", "podmonitor", "vectors", "-o", "json"]))
            .unwrap()
    };
    assert_eq!(pm()["spec"]["selector"]["matchLabels"]["team"], "other");
    // Turned off, the operator deletes only a PodMonitor it made: someone
    // else's of that name stays as it was.
    monitor(false);
    eventually(60, "monitoring off: the condition goes", diag, unmonitored).await;
    assert_eq!(pm()["spec"]["selector"]["matchLabels"]["team"], "other");
    monitor(true);
    w.kubectl(&["-n", NS, "delete", "podmonitor", "vectors"]);
    touch(2);
    let said = eventually(60, "the PodMonitor is applied", diag, || {
        monitored("PodMonitorApplied")
    })
    .await;
    assert!(said.contains("with the API key and the agents"), "{said}");
    let pm = pm();
    let cluster_uid = clusters.get("vectors").await.unwrap().metadata.uid.unwrap();
    assert_eq!(
        pm["metadata"]["ownerReferences"][0]["uid"],
        cluster_uid.as_str()
    );
    assert_eq!(pm["metadata"]["labels"]["release"], "prom");
    let endpoints = pm["spec"]["podMetricsEndpoints"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        endpoints[0]["authorization"],
        json!({"type": "Bearer", "credentials": {"name": "qdrant-api-key", "key": "api-key"}})
    );
    assert_eq!(endpoints[1]["port"], "agent-metrics");
    // What the Prometheus Operator makes of it, minus service discovery.
    let selector = pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Value =
        serde_json::from_str(&w.kubectl(&["-n", NS, "get", "pods", "-l", &selector, "-o", "json"]))
            .unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(w.admin.clone(), NS);
    let mut jobs = vec![];
    for (i, e) in endpoints.iter().enumerate() {
        let targets: Vec<String> = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| {
                let ip = p["status"]["podIP"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let ports: Vec<i64> = p["spec"]["containers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                    .filter(|port| port["name"] == e["port"])
                    .filter_map(|port| port["containerPort"].as_i64())
                    .collect();
                ports.into_iter().map(move |port| format!("{ip}:{port}"))
            })
            .collect();
        assert_eq!(targets.len(), 3, "{e}: {pods}");
        let mut job = json!({
            "job_name": format!("podMonitor/{NS}/vectors/{i}"),
            "metrics_path": e["path"],
            "scheme": e["scheme"],
            "static_configs": [{"targets": targets, "labels": {"endpoint": e["port"]}}],
        });
        if let Some(a) = e.get("authorization") {
            let c = &a["credentials"];
            let secret = secrets.get(c["name"].as_str().unwrap()).await.unwrap();
            let key = &secret.data.unwrap()[c["key"].as_str().unwrap()];
            let mut anonymous = job.clone();
            anonymous["job_name"] = json!("without-key");
            anonymous["static_configs"][0]["labels"]["endpoint"] = json!("without-key");
            jobs.push(anonymous);
            job["authorization"] = json!({
                "type": a["type"],
                "credentials": String::from_utf8(key.0.clone()).unwrap(),
            });
        }
        jobs.push(job);
    }
    let prometheus = need(test_support::prometheus::Prometheus::start(json!(jobs)));
    let scraped = |expr: &'static str| {
        let p = &prometheus;
        async move { Some(p.query(expr).len()).filter(|n| *n == 3) }
    };
    let why = || format!("{:#?}\n{}", prometheus.targets(), diag());
    eventually(
        60,
        "Prometheus scrapes every Qdrant node with the key",
        &why,
        || scraped(r#"up{endpoint="http"} == 1"#),
    )
    .await;
    eventually(30, "and every agent", &why, || {
        scraped(r#"up{endpoint="agent-metrics"} == 1"#)
    })
    .await;
    eventually(30, "Qdrant's and the agents' own series", &why, || async {
        scraped(r#"app_info{endpoint="http"}"#).await?;
        scraped("qdrant_agent_memory_budget_bytes").await
    })
    .await;
    // (Each target is scraped on its own schedule: the keyless ones may
    // come last.)
    eventually(
        30,
        "Qdrant refuses the same scrape without the key",
        &why,
        || async {
            let refused = prometheus
                .targets()
                .into_iter()
                .filter(|t| t["labels"]["endpoint"] == "without-key")
                .filter(|t| {
                    t["health"] == "down"
                        && t["lastError"].as_str().is_some_and(|e| e.contains("401"))
                })
                .count();
            (refused == 3).then_some(())
        },
    )
    .await;
    // Turned off: the PodMonitor goes, and so does the condition.
    monitor(false);
    eventually(60, "the PodMonitor is deleted", diag, || async {
        let gone =
            w.cp.kubectl(&[
                "-n",
                NS,
                "get",
                "podmonitor",
                "vectors",
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .map(|o| o.stdout.is_empty())
            .unwrap_or(false);
        unmonitored().await.filter(|_| gone)
    })
    .await;
}

/// Every (verb, group, resource) that manifests/operator/rbac.yaml grants.
fn granted() -> BTreeSet<(String, String, String)> {
    let text = std::fs::read_to_string(repo().join("manifests/operator/rbac.yaml")).unwrap();
    let mut out = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        for rule in v["rules"].as_array().into_iter().flatten() {
            let strs = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            };
            for g in strs("apiGroups") {
                for r in strs("resources") {
                    for v in strs("verbs") {
                        out.insert((v, g.clone(), r.clone()));
                    }
                }
            }
        }
    }
    out
}

async fn store(s3: &S3Server, bucket: &str) -> qdrant_agent::store::S3Store {
    let cfg = qdrant_agent::store::S3Config {
        endpoint: Some(s3.endpoint.clone()),
        region: Some("us-east-1".into()),
        static_credentials: Some(("test".into(), "test".into(), None)),
        ..Default::default()
    };
    qdrant_agent::store::S3Store::new(bucket.to_string(), &cfg)
        .await
        .unwrap()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The S3 credentials Secret `name`; its secret key is distinctive, so a
/// test can tell it appears in no log.
fn s3_secret(w: &World, name: &str) {
    w.secret(
        NS,
        name,
        &[
            ("AWS_ACCESS_KEY_ID", "AKIAREALE2E"),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        ],
    );
}

const S3_SECRET: &str = "real-e2e-secret-Zq81";

fn backup_yaml(name: &str, bucket: &str, endpoint: &str) -> String {
    backup_yaml_with(name, bucket, endpoint, "backup-s3-credentials", "")
}

/// A QdrantBackup of `vectors` with the credentials Secret `secret` and
/// `extra` spec lines.
fn backup_yaml_with(name: &str, bucket: &str, endpoint: &str, secret: &str, extra: &str) -> String {
    format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  clusterRef: {{name: vectors}}\n{extra}  storage:\n    s3: {{bucket: {bucket}, prefix: int, region: us-east-1, \
         endpoint: \"{endpoint}\", credentialsSecretRef: {{name: {secret}}}}}\n"
    )
}

/// Waits until backup `name` is InProgress with its tasks started.
async fn in_progress(
    backups: &Api<QdrantBackup>,
    name: &str,
    diag: impl Fn() -> String,
) -> QdrantBackup {
    eventually(
        90,
        &format!("backup {name} InProgress with tasks"),
        diag,
        || async {
            let b = backups.get(name).await.ok()?;
            let st = b.status.as_ref()?;
            (st.phase == Some(OperationPhase::InProgress)
                && !st.tasks.is_empty()
                && st.tasks.iter().all(|t| !t.instance_id.is_empty()))
            .then_some(b)
        },
    )
    .await
}

/// The README's promises for a backup in flight, on the real systems: the
/// operator replaced mid-backup picks it up, an agent that restarts loses
/// its task and the shards are taken again, and a deleted running backup
/// leaves no object and no open upload. S3 is held still by a gate (a TCP
/// proxy that stops moving bytes on request) so "mid-backup" is certain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_survives_a_lost_agent_and_an_operator_restart_and_a_deleted_one_leaves_nothing() {
    let w = World::start().await;
    let mut first = w.operator("qdrant-operator-a");
    let kubelet = w.kubelet(NS);
    first_cluster(&w);
    let log = std::cell::RefCell::new(first.log.clone());
    let diag = || {
        tail(
            &std::fs::read_to_string(&*log.borrow()).unwrap_or_default(),
            40,
        )
    };
    w.running(NS, "vectors", 3, 240, &diag).await;
    let ip = kubelet.pod_ip("vectors-0").await.unwrap();
    seed(&format!("http://{ip}:6333"));
    let s3 = need(S3Server::start());
    let bucket = need(s3.bucket("interrupted"));
    let store = store(&s3, &bucket).await;
    let gate = need(test_support::gate::Gate::start(&s3.endpoint).await);
    s3_secret(&w, "backup-s3-credentials");
    let backups: Api<QdrantBackup> = Api::namespaced(w.admin.clone(), NS);

    gate.close();
    w.apply(&backup_yaml("interrupted", &bucket, &gate.url));
    let b = in_progress(&backups, "interrupted", &diag).await;
    // The operator's pod is replaced (a new name: it waits for the lease).
    first.process().kill();
    let second = w.operator("qdrant-operator-b");
    *log.borrow_mut() = second.log.clone();
    // And one agent restarts: its task is gone.
    let victim = b.status.as_ref().unwrap().tasks[0].pod.clone();
    kubelet.kill_container(&victim, "agent").await;
    gate.open();
    let st = w
        .completed::<QdrantBackupStatus>(NS, "qdrantbackups", "interrupted", 180, &diag)
        .await;
    assert!(
        st.tasks
            .iter()
            .any(|t| t.pod == victim && t.state == qdrant_operator::crd::AgentTaskState::Lost),
        "the restarted agent's task is Lost: {:#?}",
        st.tasks
    );
    for (name, shards, _) in COLLECTIONS {
        let c = st.collections.iter().find(|c| c.name == name).unwrap();
        let ids: BTreeSet<u32> = c.shards.iter().filter_map(|s| s.shard_id).collect();
        assert_eq!(
            (ids.len(), c.shards.len()),
            (shards as usize, shards as usize),
            "{name}: {c:#?}"
        );
    }
    assert!(
        store
            .head("int/search/vectors/interrupted/manifest.json")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store.list_multipart("").await.unwrap().is_empty(),
        "an upload is left open"
    );

    // A running backup that is deleted leaves nothing behind.
    gate.close();
    w.apply(&backup_yaml("doomed", &bucket, &gate.url));
    in_progress(&backups, "doomed", &diag).await;
    w.kubectl(&["-n", NS, "delete", "qb", "doomed", "--wait=false"]);
    gate.open();
    eventually(120, "the deleted backup is gone", &diag, || async {
        backups
            .get_opt("doomed")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let left = store.list("int/search/vectors/doomed/").await.unwrap();
    assert!(left.is_empty(), "objects left: {left:?}");
    assert!(
        store.list_multipart("").await.unwrap().is_empty(),
        "an upload is left open"
    );

    // A node lost mid-backup holding the only replica of a shard: the
    // backup fails, naming the shard and the pod, and leaves nothing.
    gate.close();
    w.apply(&backup_yaml("orphaned", &bucket, &gate.url));
    let b = in_progress(&backups, "orphaned", &diag).await;
    let (pod, shard) = b
        .status
        .unwrap()
        .tasks
        .iter()
        .find_map(|t| {
            let s = t.shards.iter().find(|s| s.collection == "images")?;
            Some((t.pod.clone(), s.shard_id))
        })
        .expect("a task with an images shard");
    kubelet.fail_node(&pod).await;
    gate.open();
    let b = eventually(120, "backup orphaned ends", &diag, || async {
        let b = backups.get("orphaned").await.ok()?;
        matches!(
            b.status.as_ref()?.phase?,
            OperationPhase::Completed | OperationPhase::Failed
        )
        .then_some(b)
    })
    .await;
    let st = b.status.unwrap();
    assert_eq!(st.phase, Some(OperationPhase::Failed));
    // The surviving nodes' Qdrant cannot read the collection either (its
    // GET /collections/{c} answers 500 while a peer holding a shard is
    // down), so either the agents fail on it, naming the peer, or the lost
    // task finds no replica; both end the backup with the cause.
    let error = st.error.clone().unwrap_or_default();
    match st.conditions[0].reason.as_str() {
        "NoActiveReplica" => {
            assert!(
                error.contains(&format!("shard {shard} of collection \"images\"")),
                "{error}"
            );
            assert!(error.contains(&pod), "{error}");
        }
        "QdrantPeerUnavailable" => {
            assert!(
                error.contains("could not reach peer") && error.contains("start that node"),
                "{error}"
            )
        }
        other => panic!("unexpected reason {other}: {st:#?}"),
    }
    let left = store.list("int/search/vectors/orphaned/").await.unwrap();
    assert!(left.is_empty(), "objects left: {left:?}");
    assert!(
        store.list_multipart("").await.unwrap().is_empty(),
        "an upload is left open"
    );
    kubelet.recover_node(&pod).await;
    w.running(NS, "vectors", 3, 180, &diag).await;

    // A restore whose agent is lost after the collections exist deletes
    // them again on every node.
    w.apply(&cluster_yaml(NS, "target", 2));
    w.running(NS, "target", 2, 180, &diag).await;
    let target0 = format!("http://{}:6333", kubelet.pod_ip("target-0").await.unwrap());
    let collections = |base: &str| {
        need(call("GET", base, "/collections", Some(API_KEY), None))["collections"]
            .as_array()
            .map_or(0, Vec::len)
    };
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantRestore\nmetadata: {{name: rolled-back, namespace: {NS}}}\n\
         spec:\n  targetClusterRef: {{name: target}}\n  source:\n    s3: {{bucket: {bucket}, region: us-east-1, \
         endpoint: \"{}\", credentialsSecretRef: {{name: backup-s3-credentials}}, path: int/{NS}/vectors/interrupted}}\n",
        gate.url
    ));
    // The Verify stage reads every object, then creates the collections:
    // once they appear, holding S3 still keeps the uploads from finishing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while collections(&target0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no collection created\n{}",
            diag()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    gate.close();
    let restores: Api<QdrantRestore> = Api::namespaced(w.admin.clone(), NS);
    let restore_diag = || {
        format!(
            "{}\nrestore status: {}",
            diag(),
            w.kubectl(&[
                "-n",
                NS,
                "get",
                "qr",
                "rolled-back",
                "-o",
                "jsonpath={.status}"
            ])
        )
    };
    let r = eventually(
        120,
        "restore rolled-back uploading",
        &restore_diag,
        || async {
            let r = restores.get("rolled-back").await.ok()?;
            let st = r.status.as_ref()?;
            (st.stage == Some(qdrant_operator::crd::RestoreStage::Upload)
                && !st.tasks.is_empty()
                && st.tasks.iter().all(|t| !t.instance_id.is_empty()))
            .then_some(r)
        },
    )
    .await;
    let victim = r.status.unwrap().tasks[0].pod.clone();
    kubelet.kill_container(&victim, "agent").await;
    gate.open();
    let st = restore_ended(&restores, "rolled-back", &restore_diag).await;
    assert_eq!(st.phase, Some(OperationPhase::Failed), "{st:#?}");
    assert_eq!(st.conditions[0].reason, "AgentLost", "{st:#?}");
    assert!(
        st.error.clone().unwrap_or_default().contains("rolled back"),
        "{st:#?}"
    );
    for pod in ["target-0", "target-1"] {
        let base = format!("http://{}:6333", kubelet.pod_ip(pod).await.unwrap());
        assert_eq!(
            collections(&base),
            0,
            "{pod} keeps a half-restored collection"
        );
    }

    // Lost in the first stage (reading every object before touching
    // Qdrant, verifyFirst; reads held still): the restore fails as promptly,
    // rolls back whatever it may have created, and hangs nowhere.
    w.running(NS, "target", 2, 180, &diag).await;
    let faults = tempfile::tempdir().unwrap();
    let slow = need(test_support::s3_server::FaultProxy::start(
        &s3.endpoint,
        "slow-reads",
        faults.path(),
    ));
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantRestore\nmetadata: {{name: lost-verifying, namespace: {NS}}}\n\
         spec:\n  targetClusterRef: {{name: target}}\n  verifyFirst: true\n  source:\n    s3: {{bucket: {bucket}, region: us-east-1, \
         endpoint: \"{}\", credentialsSecretRef: {{name: backup-s3-credentials}}, path: int/{NS}/vectors/interrupted}}\n",
        slow.endpoint
    ));
    let r = eventually(120, "restore lost-verifying verifying", &diag, || async {
        let r = restores.get("lost-verifying").await.ok()?;
        let st = r.status.as_ref()?;
        (st.stage == Some(qdrant_operator::crd::RestoreStage::Verify)
            && !st.tasks.is_empty()
            && st.tasks.iter().all(|t| !t.instance_id.is_empty()))
        .then_some(r)
    })
    .await;
    let victim = r.status.unwrap().tasks[0].pod.clone();
    kubelet.kill_container(&victim, "agent").await;
    let st = restore_ended(&restores, "lost-verifying", &diag).await;
    assert_eq!(st.phase, Some(OperationPhase::Failed), "{st:#?}");
    assert_eq!(st.conditions[0].reason, "AgentLost", "{st:#?}");
    assert!(
        st.error.clone().unwrap_or_default().contains(&victim),
        "{st:#?}"
    );
    for pod in ["target-0", "target-1"] {
        let base = format!("http://{}:6333", kubelet.pod_ip(pod).await.unwrap());
        assert_eq!(collections(&base), 0, "{pod} keeps a collection");
    }

    // Bad input: an unknown collection fails, naming it.
    let ended = |name: &'static str| {
        let backups = backups.clone();
        async move {
            let b = backups.get(name).await.ok()?;
            matches!(
                b.status.as_ref()?.phase?,
                OperationPhase::Completed | OperationPhase::Failed
            )
            .then_some(b)
        }
    };
    w.apply(&backup_yaml_with(
        "typo",
        &bucket,
        &s3.endpoint,
        "backup-s3-credentials",
        "  collections: [docs, dcos]\n",
    ));
    let st = eventually(60, "backup typo ends", &diag, || ended("typo"))
        .await
        .status
        .unwrap();
    assert_eq!(st.phase, Some(OperationPhase::Failed));
    assert_eq!(st.conditions[0].reason, "QdrantNotFound", "{st:#?}");
    assert!(st.error.unwrap_or_default().contains("dcos"));
    // A missing credentials Secret keeps the backup Pending, saying which,
    // and a newer backup waits behind it; both run once the Secret exists.
    w.apply(&backup_yaml_with(
        "waiting",
        &bucket,
        &s3.endpoint,
        "not-yet",
        "",
    ));
    let reason = |name: &'static str, want: &'static str| {
        let backups = backups.clone();
        async move {
            let st = backups.get(name).await.ok()?.status?;
            (st.phase == Some(OperationPhase::Pending)
                && st.conditions.iter().any(|c| c.reason == want))
            .then_some(st)
        }
    };
    let st = eventually(60, "waiting is Pending: SecretNotFound", &diag, || {
        reason("waiting", "SecretNotFound")
    })
    .await;
    assert!(st.conditions[0].message.contains("not-yet"), "{st:#?}");
    w.apply(&backup_yaml("x-later", &bucket, &s3.endpoint));
    eventually(60, "x-later is Pending: WaitingForBackup", &diag, || {
        reason("x-later", "WaitingForBackup")
    })
    .await;
    s3_secret(&w, "not-yet");
    // The Secret's watch wakes it: a waiting backup polls only every five
    // minutes.
    eventually(15, "waiting starts once its Secret exists", &diag, || {
        let backups = backups.clone();
        async move {
            let st = backups.get("waiting").await.ok()?.status?;
            (st.phase != Some(OperationPhase::Pending)).then_some(())
        }
    })
    .await;
    for name in ["waiting", "x-later"] {
        let st = eventually(120, &format!("backup {name} ends"), &diag, || ended(name))
            .await
            .status
            .unwrap();
        assert_eq!(st.phase, Some(OperationPhase::Completed), "{name}: {st:#?}");
    }
    let events = w.kubectl(&[
        "-n",
        NS,
        "get",
        "events",
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ]);
    for r in ["SecretNotFound", "WaitingForBackup", "Failed", "Completed"] {
        assert!(events.lines().any(|l| l == r), "no {r} event in {events}");
    }
    // Neither the S3 secret nor Qdrant's API key appears in any log of any
    // pod's containers or the operator, nor in any status, error or Event.
    let logs = kubelet.all_logs() + &std::fs::read_to_string(&*log.borrow()).unwrap_or_default();
    let said = w.kubectl(&["-n", NS, "get", "qc,qb,qbs,qr,events", "-o", "json"]);
    assert!(
        said.contains("SecretNotFound"),
        "statuses and Events were read: {said}"
    );
    for (what, secret) in [
        ("the S3 secret", S3_SECRET),
        ("the Qdrant API key", API_KEY),
    ] {
        assert!(!logs.contains(secret), "{what} is in a log");
        assert!(!said.contains(secret), "{what} is in a status or an Event");
    }
}

/// Two operator replicas (the Deployment runs two): one holds the Lease and
/// reconciles, the other waits; when the leader dies the other takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_operator_replicas_one_reconciles_and_the_other_takes_over_when_it_dies() {
    let w = World::start().await;
    let mut a = w.operator("qdrant-operator-a");
    let mut b = w.operator("qdrant-operator-b");
    let _kubelet = w.kubelet(NS);
    w.kubectl(&["create", "namespace", NS]);
    let clusters: Api<QdrantCluster> = Api::namespaced(w.admin.clone(), NS);
    let single = |name: &str| {
        format!(
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {{name: {name}, namespace: {NS}}}\n\
             spec: {{replicas: 1, version: v1.18.3, persistence: {{size: 1Gi}}}}\n"
        )
    };
    let running = |name: &'static str| {
        let clusters = clusters.clone();
        async move {
            let st = clusters.get(name).await.ok()?.status?;
            (st.phase == Some(ClusterPhase::Running)).then_some(())
        }
    };
    let leads = |o: &test_support::stack::Operator| o.log_text().contains("became leader");
    let diag = || {
        format!(
            "a:\n{}\nb:\n{}",
            tail(&a.log_text(), 15),
            tail(&b.log_text(), 15)
        )
    };
    w.apply(&single("first"));
    eventually(120, "QdrantCluster first Running", &diag, || {
        running("first")
    })
    .await;
    let (leader, standby) = match (leads(&a), leads(&b)) {
        (true, false) => (&mut a, &mut b),
        (false, true) => (&mut b, &mut a),
        other => panic!("exactly one replica must lead, got {other:?}\n{}", diag()),
    };
    assert!(
        !standby.log_text().contains("reconciling"),
        "the standby reconciles: {}",
        standby.log_text()
    );
    // The leader is paused (SIGSTOP: a frozen node, a long GC pause):
    // past the lease the standby takes over.
    let signal = |pid: Option<u32>, sig: &str| {
        let pid = pid.expect("running").to_string();
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal(leader.process().pid(), "-STOP");
    w.apply(&single("second"));
    let standby_log = standby.log.clone();
    eventually(
        90,
        "the standby takes over and runs QdrantCluster second",
        || {
            tail(
                &std::fs::read_to_string(&standby_log).unwrap_or_default(),
                20,
            )
        },
        || running("second"),
    )
    .await;
    assert!(leads(standby));
    // Resumed, the old leader finds it lost the lease and stops before it
    // reconciles anything: two never lead at once.
    signal(leader.process().pid(), "-CONT");
    let old_log = leader.log.clone();
    eventually(
        20,
        "the resumed leader stops",
        || tail(&std::fs::read_to_string(&old_log).unwrap_or_default(), 10),
        || {
            let stopped = !leader.process().running();
            async move { stopped.then_some(()) }
        },
    )
    .await;
    let said = leader.log_text();
    assert!(
        said.contains("lost the leader lease")
            || said.contains("may be lost")
            || said.contains("in time; exiting"),
        "{said}"
    );
    // With no operator running at all, a cluster can still be deleted: no
    // finalizer waits for one.
    standby.process().kill();
    let out = w.kubectl(&["-n", NS, "delete", "qc", "second", "--timeout=30s"]);
    assert!(out.contains("deleted"), "{out}");
}

/// All pods of a distributed cluster restart at once (a node pool upgrade,
/// a namespace-wide rollout): they come back with their volumes, form the
/// cluster again and hold every point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_cluster_whose_pods_all_restart_together_comes_back() {
    let w = World::start().await;
    let operator = w.operator("qdrant-operator-0");
    let kubelet = w.kubelet(NS);
    first_cluster(&w);
    let clusters: Api<QdrantCluster> = Api::namespaced(w.admin.clone(), NS);
    let diag = || {
        let objects =
            w.cp.kubectl(&["-n", NS, "get", "qc,sts,pods", "-o", "wide"])
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
        format!(
            "operator log:\n{}\nobjects:\n{objects}\npods (last lines):\n{}",
            tail(&operator.log_text(), 20),
            tail(&kubelet.all_logs(), 60)
        )
    };
    let running = || async {
        let st = clusters.get("vectors").await.ok()?.status?;
        (st.phase == Some(ClusterPhase::Running) && st.ready_replicas == 3).then_some(())
    };
    eventually(240, "QdrantCluster vectors Running", &diag, running).await;
    let ip = kubelet.pod_ip("vectors-0").await.unwrap();
    seed(&format!("http://{ip}:6333"));
    w.kubectl(&[
        "-n",
        NS,
        "delete",
        "pods",
        "-l",
        "app.kubernetes.io/instance=vectors",
        "--wait=false",
    ]);
    eventually(30, "the pods are replaced", &diag, || async {
        let st = clusters.get("vectors").await.ok()?.status?;
        (st.ready_replicas < 3).then_some(())
    })
    .await;
    eventually(180, "QdrantCluster vectors Running again", &diag, running).await;
    let ip = kubelet.pod_ip("vectors-0").await.unwrap();
    for (name, ..) in COLLECTIONS {
        let n = need(all_points(
            &format!("http://{ip}:6333"),
            name,
            Some(API_KEY),
        ))
        .len();
        assert_eq!(n as u64, POINTS, "{name} after the restart");
    }

    // A renewed agent certificate reaches the running agents without a
    // restart: each agent serves it, and no pod is replaced.
    let uids = || w.pod_uids(NS);
    let before = uids().await;
    use sha2::{Digest, Sha256};
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(w.admin.clone(), NS);
    let cert_sha = |s: &k8s_openapi::api::core::v1::Secret| {
        let pem = &s.data.as_ref().unwrap()["tls.crt"].0;
        hex::encode(Sha256::digest(pem))
    };
    let old = cert_sha(&secrets.get("vectors-agent-tls").await.unwrap());
    secrets
        .delete("vectors-agent-tls", &Default::default())
        .await
        .unwrap();
    // Secrets are not watched: a touch of the cluster makes it look now.
    w.annotate(NS, "qc", "vectors", "example.com/touched=1");
    let new = eventually(60, "a new agent certificate is issued", &diag, || async {
        let s = secrets.get_opt("vectors-agent-tls").await.ok()??;
        Some(cert_sha(&s)).filter(|n| *n != old)
    })
    .await;
    eventually(
        300,
        "every agent serves the new certificate, read from its files",
        &diag,
        || async {
            (0..3)
                .all(|i| {
                    kubelet
                        .logs(&format!("vectors-{i}"), "agent")
                        .contains(&new)
                })
                .then_some(())
        },
    )
    .await;
    assert_eq!(uids().await, before, "a pod was replaced for a certificate");
    eventually(
        60,
        "QdrantCluster vectors Running with the new certificate",
        &diag,
        running,
    )
    .await;
}
