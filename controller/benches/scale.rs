//! What many waiting backups cost the operator, on the real API server:
//! BENCH_BACKUPS (default "1000,5000") QdrantBackups whose cluster does not
//! exist are created at once; the bench reports, per count, the seconds
//! until every one has a status (Pending, ClusterNotFound), the operator's
//! peak RSS (VmHWM) and its RSS a while later, when all of them wait.
//!
//! cargo build --release -p qdrant-operator --bin qdrant-operator
//! cargo bench -p qdrant-operator --bench scale
//!
//! Goal: at 1,000 backups, peak RSS <= 64 MiB and all statused within 60 s.

use futures::{StreamExt, stream};
use kube::api::{Api, ListParams, PostParams};
use qdrant_operator::crd::QdrantBackup;
use std::time::{Duration, Instant};
use test_support::stack::World;

fn kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn backup(ns: &str, i: usize) -> QdrantBackup {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "qdrant.io/v1alpha1",
        "kind": "QdrantBackup",
        "metadata": {"name": format!("b-{i:05}"), "namespace": ns},
        "spec": {
            "clusterRef": {"name": "absent"},
            "storage": {"s3": {"bucket": "bkt", "endpoint": "http://127.0.0.1:1",
                               "credentialsSecretRef": {"name": "s3"}}}
        }
    }))
    .expect("a valid QdrantBackup")
}

async fn run(w: &World, n: usize) {
    let ns = format!("scale-{n}");
    w.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
    ));
    let mut operator = w.operator(&format!("qdrant-operator-{n}"));
    let pid = operator.process().pid().expect("operator running");
    // Let it settle (lease, informers) before the load arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = kib(pid, "VmRSS:");
    let api: Api<QdrantBackup> = Api::namespaced(w.admin.clone(), &ns);
    let started = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let api = api.clone();
            let b = backup(&ns, i);
            async move {
                api.create(&PostParams::default(), &b)
                    .await
                    .expect("create a QdrantBackup");
            }
        })
        .await;
    let created = started.elapsed();
    let mut statused = 0;
    let all = loop {
        let list = api.list(&ListParams::default()).await.expect("list");
        statused = list
            .items
            .iter()
            .filter(|b| b.status.as_ref().is_some_and(|s| s.phase.is_some()))
            .count()
            .max(statused);
        if statused == n {
            break Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(600) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // A while of waiting: what the operator holds once the burst is over.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let steady = kib(pid, "VmRSS:");
    let peak = kib(pid, "VmHWM:");
    println!(
        "backups={n} created_in={:.1}s all_statused_in={} peak_rss={:.1}MiB \
         rss_after_30s_waiting={:.1}MiB idle_rss={:.1}MiB",
        created.as_secs_f64(),
        all.map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_else(|| format!("never ({statused}/{n} after 600s)")),
        peak as f64 / 1024.0,
        steady as f64 / 1024.0,
        idle as f64 / 1024.0,
    );
    operator.process().stop();
    w.cp.kubectl(&["delete", "namespace", &ns, "--wait=false"])
        .expect("delete the namespace");
}

#[tokio::main]
async fn main() {
    let counts: Vec<usize> = std::env::var("BENCH_BACKUPS")
        .unwrap_or_else(|_| "1000,5000".into())
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .expect("BENCH_BACKUPS: counts like 1000,5000")
        })
        .collect();
    let w = World::start().await;
    for n in counts {
        run(&w, n).await;
    }
}
