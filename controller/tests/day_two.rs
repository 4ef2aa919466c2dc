//! Day-2 operations on a QdrantCluster, on the real kube-apiserver and
//! kube-controller-manager, the `qdrant-operator` binary as its own
//! ServiceAccount, and a test kubelet running each pod with the real Qdrant
//! 1.18.3 and the real agent: a scale-in moves every shard replica off the
//! pods that leave before they go, while reads go on, and refuses what
//! cannot be done.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::Api;
use qdrant_operator::crd::QdrantCluster;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use test_support::real_qdrant::{all_points, call, request};
use test_support::stack::{World, cluster_yaml, eventually, need};

const NS: &str = "search";
const API_KEY: &str = "day-two-api-key-3c9a";
const POINTS: u64 = 300;

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Collection `name` of `shards` shards and replication factor `rf`, with
/// POINTS points.
fn seed(base: &str, name: &str, shards: u32, rf: u32) {
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
            json!({"id": i, "vector": [f, 1.0, f * 0.5, -f], "payload": {"n": i, "of": name}})
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

fn replicas(w: &World, n: i32) {
    w.merge_patch(
        NS,
        "qc",
        "vectors",
        &format!(r#"{{"spec":{{"replicas":{n}}}}}"#),
    );
}

/// Reads every collection in a loop (an exact count and a search each
/// round) until stopped: the failures, and how many rounds ran. Each
/// request goes to the first of `bases` that takes the connection, as a
/// Service sends it to a ready pod; an answer other than the right one is
/// a failure.
fn reader(
    bases: Vec<String>,
    key: &'static str,
    collections: &'static [&'static str],
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<String>, u64)> {
    std::thread::spawn(move || {
        let ask = |path: &str, body: Value| {
            let mut last = None;
            for b in &bases {
                match request("POST", b, path, Some(key), Some(&body)) {
                    Ok(answer) => return Ok(answer),
                    Err(e) => last = Some(e.to_string()),
                }
            }
            Err(last.unwrap_or_default())
        };
        let mut failures = vec![];
        let mut rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            for c in collections {
                match ask(
                    &format!("/collections/{c}/points/count"),
                    json!({"exact": true}),
                ) {
                    Ok((200, body)) => {
                        let n = serde_json::from_str::<Value>(&body)
                            .ok()
                            .and_then(|v| v["result"]["count"].as_u64());
                        if n != Some(POINTS) {
                            failures.push(format!("{c}: count {n:?}"));
                        }
                    }
                    Ok((code, body)) => failures.push(format!("{c}: count HTTP {code}: {body}")),
                    Err(e) => failures.push(format!("{c}: count {e}")),
                }
                let query = json!({"query": [1.0, 1.0, 0.5, -1.0], "limit": 3});
                match ask(&format!("/collections/{c}/points/query"), query) {
                    Ok((200, _)) => {}
                    Ok((code, body)) => failures.push(format!("{c}: search HTTP {code}: {body}")),
                    Err(e) => failures.push(format!("{c}: search {e}")),
                }
            }
            rounds += 1;
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        (failures, rounds)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_in_moves_every_shard_first_and_no_read_fails() {
    let w = World::start().await;
    let mut operator = w.operator("qdrant-operator-0");
    let operator_log = operator.log.clone();
    let kubelet = w.kubelet(NS);
    let diag = || {
        let objects =
            w.cp.kubectl(&["-n", NS, "get", "qc,sts,pods,pvc", "-o", "wide"])
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
        let status =
            w.cp.kubectl(&["-n", NS, "get", "qc", "vectors", "-o", "jsonpath={.status}"])
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
        format!(
            "operator log:\n{}\nobjects:\n{objects}\nstatus: {status}\npods (last lines):\n{}",
            tail(
                &std::fs::read_to_string(&operator_log).unwrap_or_default(),
                30
            ),
            tail(&kubelet.all_logs(), 30)
        )
    };
    w.kubectl(&["create", "namespace", NS]);
    w.secret(NS, "qdrant-api-key", &[("api-key", API_KEY)]);
    w.apply(&cluster_yaml(NS, "vectors", 3));
    w.running(NS, "vectors", 3, 240, &diag).await;
    let base = format!("http://{}:6333", kubelet.pod_ip("vectors-0").await.unwrap());
    // Replication 1: each shard lives on one node only.
    seed(&base, "single", 3, 1);
    // Replication 2: a node's replicas have copies elsewhere.
    seed(&base, "double", 3, 2);
    // Replication 3 cannot fit on 2 nodes: the scale-in is refused.
    seed(&base, "triple", 1, 3);
    let before: Vec<(String, Vec<Value>)> = ["single", "double"]
        .iter()
        .map(|c| (c.to_string(), need(all_points(&base, c, Some(API_KEY)))))
        .collect();

    let clusters: Api<QdrantCluster> = Api::namespaced(w.admin.clone(), NS);
    let sts: Api<StatefulSet> = Api::namespaced(w.admin.clone(), NS);
    let sts_replicas = || async { sts.get("vectors").await.ok()?.spec?.replicas };
    let ready_reason = || async {
        let c = clusters
            .get("vectors")
            .await
            .ok()?
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        Some((c.reason, c.message))
    };

    // What cannot be done is refused before anything moves: the cluster
    // keeps its three pods and says why.
    replicas(&w, 2);
    let message = eventually(90, "the scale-in is refused", &diag, || async {
        let (reason, message) = ready_reason().await?;
        (reason == "ScaleInRefused").then_some(message)
    })
    .await;
    assert!(
        message.contains("collection triple has replication factor 3, more than the 2 nodes"),
        "{message}"
    );
    assert_eq!(sts_replicas().await, Some(3));
    let events = w.kubectl(&[
        "-n",
        NS,
        "get",
        "events.events.k8s.io",
        "--field-selector",
        "reason=ScaleInRefused",
        "-o",
        "jsonpath={.items[*].type}",
    ]);
    assert_eq!(events, "Warning");

    // The collection in the way goes; the user asks again.
    need(call(
        "DELETE",
        &base,
        "/collections/triple",
        Some(API_KEY),
        None,
    ));
    replicas(&w, 3);
    eventually(60, "the refusal is cleared", &diag, || async {
        let st = clusters.get("vectors").await.ok()?.status?;
        st.scale_in.is_none().then_some(())
    })
    .await;

    // Scale in while a reader counts and searches every collection.
    let stop = Arc::new(AtomicBool::new(false));
    let reading = reader(
        vec![base.clone()],
        API_KEY,
        &["single", "double"],
        stop.clone(),
    );
    replicas(&w, 2);
    eventually(300, "vectors-2 is emptied and removed", &diag, || async {
        let c = clusters.get("vectors").await.ok()?;
        let st = c.status?;
        (sts_replicas().await == Some(2)
            && st.ready_replicas == 2
            && st.scale_in.is_none()
            && st.phase == Some(qdrant_operator::crd::ClusterPhase::Running))
        .then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (failures, rounds) = reading.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {rounds} rounds of reads failed, first: {:?}\n{}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>(),
        diag()
    );
    assert!(rounds > 5, "the reader ran {rounds} rounds");

    // Every point is there, and no dead peer is left in Qdrant's cluster.
    for (c, points) in &before {
        assert_eq!(
            &need(all_points(&base, c, Some(API_KEY))),
            points,
            "{c} after the scale-in"
        );
    }
    let cluster = need(call("GET", &base, "/cluster", Some(API_KEY), None));
    let peers = cluster["peers"].as_object().unwrap();
    assert_eq!(peers.len(), 2, "peers left in the cluster: {peers:?}");
    for c in ["single", "double"] {
        let info = need(call(
            "GET",
            &base,
            &format!("/collections/{c}/cluster"),
            Some(API_KEY),
            None,
        ));
        let states: Vec<&str> = info["local_shards"]
            .as_array()
            .unwrap()
            .iter()
            .chain(info["remote_shards"].as_array().unwrap())
            .filter_map(|s| s["state"].as_str())
            .collect();
        assert!(states.iter().all(|s| *s == "Active"), "{c}: {states:?}");
        assert!(
            info["remote_shards"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| peers.contains_key(&s["peer_id"].to_string())),
            "{c} has a replica on a removed peer: {info}"
        );
    }
    for (reason, kind) in [("MovingShards", "Normal"), ("ScaleInDrained", "Normal")] {
        let events = w.kubectl(&[
            "-n",
            NS,
            "get",
            "events.events.k8s.io",
            "--field-selector",
            &format!("reason={reason}"),
            "-o",
            "jsonpath={.items[*].type}",
        ]);
        assert!(events.contains(kind), "{reason}: {events:?}");
    }
    // The removed node's volume goes with it: a node added later starts
    // empty instead of as the removed peer.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(w.admin.clone(), NS);
    eventually(
        60,
        "the removed node's volume claim is deleted",
        &diag,
        || async {
            claims
                .get_opt("storage-vectors-2")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;

    // A new template rolls out one pod at a time, each only once its
    // shards are Active elsewhere. With singleReplica: Wait, a pod holding
    // a collection's only replica does not restart.
    let uids = || w.pod_uids(NS);
    let before_roll = uids().await;
    w.merge_patch(NS, "qc", "vectors", r#"{"spec":{"updateStrategy":{"singleReplica":"Wait"},"config":{"storage":{"performance":{"max_search_threads":2}}}}}"#);
    let why = eventually(
        60,
        "the roll waits for the only replicas",
        &diag,
        || async {
            let (reason, message) = ready_reason().await?;
            (reason == "WaitingForReplicas").then_some(message)
        },
    )
    .await;
    assert!(why.contains("of single"), "{why}");
    assert!(!why.contains("of double"), "{why}");
    assert_eq!(uids().await, before_roll, "a pod restarted");
    // Restart anyway: the replicated collection is served throughout.
    let mut bases = vec![];
    for i in 0..2 {
        let ip = kubelet.pod_ip(&format!("vectors-{i}")).await.unwrap();
        bases.push(format!("http://{ip}:6333"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reading = reader(bases, API_KEY, &["double"], stop.clone());
    w.merge_patch(
        NS,
        "qc",
        "vectors",
        r#"{"spec":{"updateStrategy":{"singleReplica":"Restart"}}}"#,
    );
    eventually(240, "every pod runs the new template", &diag, || async {
        let st = sts.get("vectors").await.ok()?.status?;
        let now = uids().await;
        (st.updated_replicas == Some(2)
            && st.ready_replicas == Some(2)
            && now.iter().all(|u| !before_roll.contains(u)))
        .then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (failures, rounds) = reading.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {rounds} rounds of reads of the replicated collection failed during the roll, first: {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
    let warned = w.kubectl(&[
        "-n",
        NS,
        "get",
        "events.events.k8s.io",
        "--field-selector",
        "reason=RestartingSingleReplica",
        "-o",
        "jsonpath={.items[*].type}",
    ]);
    assert!(warned.contains("Warning"), "{warned:?}");
    w.running(NS, "vectors", 2, 120, &diag).await;

    // A downgrade is refused, and the pods keep the version they run.
    let image = |container: &'static str| {
        let sts = sts.clone();
        async move {
            let s = sts.get("vectors").await.ok()?;
            s.spec?
                .template
                .spec?
                .containers
                .into_iter()
                .find(|c| c.name == container)?
                .image
        }
    };
    let template = || {
        let sts = sts.clone();
        async move {
            sts.get("vectors")
                .await
                .ok()?
                .spec?
                .template
                .metadata?
                .annotations
        }
    };
    w.merge_patch(NS, "qc", "vectors", r#"{"spec":{"version":"v1.17.6"}}"#);
    let why = eventually(60, "the downgrade is refused", &diag, || async {
        let (reason, message) = ready_reason().await?;
        (reason == "VersionRefused").then_some(message)
    })
    .await;
    assert!(why.contains("does not support downgrades"), "{why}");
    assert_eq!(
        image("qdrant").await.as_deref(),
        Some("qdrant/qdrant:v1.18.3")
    );
    w.merge_patch(NS, "qc", "vectors", r#"{"spec":{"version":"v1.18.3"}}"#);
    eventually(60, "the cluster is Running again", &diag, || async {
        (ready_reason().await?.0 == "AllReplicasReady").then_some(())
    })
    .await;

    // An operator upgrade (another default agent image) restarts nothing;
    // the annotation moves the cluster to the new agent.
    let before_upgrade = template().await;
    let old_agent = image("agent").await.unwrap();
    operator.process().stop();
    let upgraded = w.operator_with(
        "qdrant-operator-1",
        &[
            "--webhook-listen",
            "127.0.0.1:0",
            "--agent-image",
            "registry.example.com/qdrant-agent:9.9.9",
        ],
    );
    // A change wakes the new operator's reconcile of the cluster at once.
    w.annotate(NS, "qc", "vectors", "example.com/touched=1");
    eventually(
        60,
        "the new operator has reconciled the cluster",
        &diag,
        || async { upgraded.log_text().contains("reconciling").then_some(()) },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(
        image("agent").await.unwrap(),
        old_agent,
        "{}",
        upgraded.log_text()
    );
    assert_eq!(
        template().await,
        before_upgrade,
        "the operator upgrade rolled the pods"
    );
    w.annotate(NS, "qc", "vectors", "qdrant.io/upgrade-agent=true");
    eventually(
        60,
        "the pods move to the new agent image",
        &diag,
        || async {
            let st = clusters.get("vectors").await.ok()?.status?;
            (image("agent").await.as_deref() == Some("registry.example.com/qdrant-agent:9.9.9")
                && st.agent_image.as_deref() == Some("registry.example.com/qdrant-agent:9.9.9"))
            .then_some(())
        },
    )
    .await;

    // A new API key rolls the pods: Qdrant reads it only at start.
    let before_key = template().await.unwrap()["qdrant.io/api-key-sha256"].clone();
    let new_key = "day-two-rotated-key-81b0";
    w.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: qdrant-api-key, namespace: {NS}}}\nstringData: {{api-key: {new_key}}}\n"
    ));
    // A Secret's change wakes the cluster's reconcile; under a loaded
    // machine that one may queue behind others.
    eventually(
        180,
        "the pod template carries the new key's digest",
        &diag,
        || async {
            let now = template().await?["qdrant.io/api-key-sha256"].clone();
            (now != before_key).then_some(())
        },
    )
    .await;
    eventually(240, "every pod runs with the new key", &diag, || async {
        let st = sts.get("vectors").await.ok()?.status?;
        let rolled = st.updated_replicas == Some(2) && st.ready_replicas == Some(2);
        let (code, _) = request("GET", &base, "/collections", Some(new_key), None).ok()?;
        (rolled && code == 200).then_some(())
    })
    .await;
    let (code, _) = need(request("GET", &base, "/collections", Some(API_KEY), None));
    assert_eq!(code, 401, "the old key still works");

    // Scale out: the new node gets its fair share of the replicas, one move
    // at a time, while reads go on.
    let stop = Arc::new(AtomicBool::new(false));
    let reading = reader(
        vec![base.clone()],
        new_key,
        &["single", "double"],
        stop.clone(),
    );
    replicas(&w, 3);
    eventually(
        300,
        "the replicas are evened out over 3 nodes",
        &diag,
        || async {
            let st = clusters.get("vectors").await.ok()?.status?;
            let r = st.rebalance?;
            (st.ready_replicas == 3 && r.replicas == 3 && r.done).then_some(r.shards_moved)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (failures, rounds) = reading.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {rounds} rounds of reads failed while scaling out, first: {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
    let mut per_peer: std::collections::BTreeMap<String, usize> = Default::default();
    for c in ["single", "double"] {
        let info = need(call(
            "GET",
            &base,
            &format!("/collections/{c}/cluster"),
            Some(new_key),
            None,
        ));
        *per_peer.entry(info["peer_id"].to_string()).or_default() +=
            info["local_shards"].as_array().unwrap().len();
        for r in info["remote_shards"].as_array().unwrap() {
            *per_peer.entry(r["peer_id"].to_string()).or_default() += 1;
        }
    }
    // 3 + 6 replicas over 3 nodes: 3 each.
    assert_eq!(per_peer.len(), 3, "{per_peer:?}");
    assert!(per_peer.values().all(|n| *n == 3), "{per_peer:?}");
    for (c, points) in &before {
        assert_eq!(
            &need(all_points(&base, c, Some(new_key))),
            points,
            "{c} after the scale-out"
        );
    }
}
