//! The agent CLI against the real Qdrant 1.18.3 (single node and a 3-node
//! cluster) and the real S3 server: backups in every mode, restores with
//! renames, aliases and custom sharding, compared point by point.

mod common;

use common::{Env, assert_ok, serve, stderr};
use serde_json::{Value, json};
use test_support::real_qdrant::{RealQdrant, all_points, call, get};

fn need<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn create(base: &str, name: &str, body: Value) {
    need(call(
        "PUT",
        base,
        &format!("/collections/{name}?wait=true"),
        None,
        Some(body),
    ));
}

fn upsert(base: &str, name: &str, n: u64, shard_key: Option<&str>) {
    let points: Vec<Value> = (1..=n)
        .map(|i| {
            let f = i as f32;
            json!({"id": i, "vector": [f, 1.0, -f, 0.5], "payload": {"n": i, "of": name}})
        })
        .collect();
    let mut body = json!({"points": points});
    if let Some(k) = shard_key {
        body["shard_key"] = json!(k);
    }
    need(call(
        "PUT",
        base,
        &format!("/collections/{name}/points?wait=true"),
        None,
        Some(body),
    ));
}

const VECTORS: &str = r#"{"size": 4, "distance": "Dot"}"#;

/// Two plain collections (two shards and one), one custom-sharded with two
/// shard keys, and an alias.
fn seed(base: &str) {
    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    create(base, "docs", json!({"vectors": vectors, "shard_number": 2}));
    upsert(base, "docs", 500, None);
    create(base, "notes", json!({"vectors": vectors}));
    upsert(base, "notes", 50, None);
    create(
        base,
        "tenants",
        json!({"vectors": vectors, "sharding_method": "custom"}),
    );
    for key in ["acme", "globex"] {
        need(call(
            "PUT",
            base,
            "/collections/tenants/shards?wait=true",
            None,
            Some(json!({"shard_key": key})),
        ));
    }
    upsert(base, "tenants", 40, Some("acme"));
    need(call(
        "PUT",
        base,
        "/collections/tenants/points?wait=true",
        None,
        Some(
            json!({"points": [{"id": 1000, "vector": [1.0, 2.0, 3.0, 4.0], "payload": {"t": "g"}}],
                    "shard_key": "globex"}),
        ),
    ));
    need(call(
        "POST",
        base,
        "/collections/aliases",
        None,
        Some(
            json!({"actions": [{"create_alias": {"collection_name": "docs", "alias_name": "docs-current"}}]}),
        ),
    ));
}

fn same_points(source: &str, from: &str, target: &str, to: &str) {
    let want = need(all_points(source, from, None));
    assert!(!want.is_empty());
    let got = need(all_points(target, to, None));
    assert_eq!(
        got, want,
        "{to} on {target} differs from {from} on {source}"
    );
}

fn alias_of(base: &str, alias: &str) -> Option<String> {
    let r = need(call("GET", base, "/aliases", None, None));
    r["aliases"]
        .as_array()?
        .iter()
        .find(|a| a["alias_name"] == alias)
        .and_then(|a| a["collection_name"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_in_every_mode_of_real_qdrant_restore_every_point() {
    let env = Env::new("real-modes");
    // One-node clusters: custom sharding needs distributed mode.
    let source = need(RealQdrant::start_with(1, true, None));
    let target = need(RealQdrant::start_with(1, true, None));
    let (src, dst) = (source.nodes[0].url.clone(), target.nodes[0].url.clone());
    seed(&src);
    let to = env.url("cli");
    let src_snaps = source.nodes[0].snapshots.display().to_string();
    let dst_snaps = target.nodes[0].snapshots.display().to_string();

    // A collection snapshot cannot bring back custom shard keys: file mode
    // refuses such a collection, naming the mode that works.
    let o = env.run(&[
        "backup",
        "--qdrant-url",
        &src,
        "--to",
        &to,
        "--name",
        "refused",
        "--mode",
        "file",
        "--snapshots-dir",
        &src_snaps,
        "--collection",
        "tenants",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--mode stream"), "{}", stderr(&o));

    for (i, mode) in ["stream", "shard-file", "file", "auto"]
        .into_iter()
        .enumerate()
    {
        let name = format!("b-{mode}");
        let wanted: &[&str] = if mode == "file" {
            &["docs", "notes"]
        } else {
            &["docs", "notes", "tenants"]
        };
        let mut args = vec![
            "backup",
            "--qdrant-url",
            &src,
            "--to",
            &to,
            "--name",
            &name,
            "--mode",
            mode,
            "--snapshots-dir",
            &src_snaps,
            "--node-name",
            "node-0",
        ];
        for c in wanted {
            args.extend(["--collection", c]);
        }
        let o = env.run(&args);
        assert_ok(&o);
        // The mode that read each collection is said, and recorded (auto
        // chooses shard files here: the snapshots directory has room).
        let taken = if mode == "auto" { "shard-file" } else { mode };
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            stdout.contains(&format!("mode: {taken} ({})", wanted.join(", "))),
            "{stdout}"
        );
        let m = qdrant_agent::manifest::read(&*env.store().await, "cli", &name)
            .await
            .unwrap();
        assert!(
            m.objects()
                .all(|(_, o)| o.taken_with.as_deref() == Some(taken)),
            "{:?}",
            m.objects().map(|(_, o)| &o.taken_with).collect::<Vec<_>>()
        );
        // The first restore goes in under the original names (and gets the
        // alias back); the others under new names beside it.
        let mut args = vec![
            "restore".to_string(),
            "--qdrant-url".into(),
            dst.clone(),
            "--from".into(),
            to.clone(),
            "--name".into(),
            name.clone(),
            "--snapshots-dir".into(),
            dst_snaps.clone(),
        ];
        let renamed = |c: &str| {
            if i == 0 {
                c.to_string()
            } else {
                format!("{c}-{mode}")
            }
        };
        if i > 0 {
            for c in wanted {
                args.push("--rename".into());
                args.push(format!("{c}={}", renamed(c)));
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = env.run(&args);
        assert_ok(&o);
        for c in wanted {
            same_points(&src, c, &dst, &renamed(c));
        }
        if mode == "file" {
            continue;
        }
        // Custom sharding: the shard keys come back and route as before.
        let info = need(call(
            "GET",
            &dst,
            &format!("/collections/{}/cluster", renamed("tenants")),
            None,
            None,
        ));
        let keys: Vec<&Value> = info["local_shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["shard_key"])
            .collect();
        assert!(
            keys.contains(&&json!("acme")) && keys.contains(&&json!("globex")),
            "{info}"
        );
    }
    // The alias came back with the first restore and was never moved.
    assert_eq!(alias_of(&dst, "docs-current").as_deref(), Some("docs"));
    // The file modes leave no snapshot file behind on either side.
    for dir in [&source.nodes[0].snapshots, &target.nodes[0].snapshots] {
        let left: Vec<_> = walk(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "snapshot"))
            .collect();
        assert!(left.is_empty(), "snapshot files left: {left:?}");
    }
    // Restoring over an existing collection is refused, naming the fix.
    let o = env.run(&[
        "restore",
        "--qdrant-url",
        &dst,
        "--from",
        &to,
        "--name",
        "b-stream",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--rename"), "{}", stderr(&o));

    // A shard object of two ranges or more is read with parallel ranged
    // GETs (16 KiB ranges here, 8 MiB by default), handed to Qdrant in
    // order, and every point comes back.
    let m = qdrant_agent::manifest::read(&*env.store().await, "cli", "b-stream")
        .await
        .unwrap();
    let largest = m.objects().map(|(_, o)| o.size).max().unwrap();
    assert!(
        largest >= 4 * 16384,
        "the largest shard object is {largest} bytes"
    );
    let o = env
        .agent(&[
            "restore",
            "--qdrant-url",
            &dst,
            "--from",
            &to,
            "--name",
            "b-stream",
            "--rename",
            "docs=docs-ranged",
            "--rename",
            "notes=notes-ranged",
            "--rename",
            "tenants=tenants-ranged",
        ])
        .env("QDRANT_AGENT_RANGE_SIZE", "16KiB")
        .env("QDRANT_AGENT_LOG", "qdrant_agent=debug")
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(stderr(&o).contains("in ranges"), "{}", stderr(&o));
    for c in ["docs", "notes", "tenants"] {
        same_points(&src, c, &dst, &format!("{c}-ranged"));
    }

    // A backup of one of docs' two shards is partial: restoring the whole
    // collection from it is refused before Qdrant is touched (it would turn
    // green with half the points); asked for by id, the shard restores.
    let o = env.run(&[
        "backup",
        "--qdrant-url",
        &src,
        "--to",
        &to,
        "--name",
        "half",
        "--collection",
        "docs:1",
    ]);
    assert_ok(&o);
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--qdrant-url",
            &dst,
            "--from",
            &to,
            "--name",
            "half",
            "--rename",
            "docs=docs-half",
        ];
        args.extend(extra);
        env.run(&args)
    };
    let o = restore(&[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("shards 0 of its 2 are missing")
            && stderr(&o).contains("[BackupIncomplete]"),
        "{}",
        stderr(&o)
    );
    let (code, _) = need(test_support::real_qdrant::get(
        &dst,
        "/collections/docs-half",
        None,
    ));
    assert_eq!(code, 404, "nothing was created");
    assert_ok(&restore(&["--collection", "docs:1"]));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_node_cluster_backs_up_from_one_node_and_restores_with_every_replica_active() {
    let env = Env::new("real-cluster");
    let mut q = need(RealQdrant::start(3, None));
    let base = q.nodes[0].url.clone();
    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    // Replication factor 3: node 0 holds a replica of every shard. Writes
    // wait for all three replicas, or node 0's may lag the points read back.
    create(
        &base,
        "docs",
        json!({"vectors": vectors, "shard_number": 3, "replication_factor": 3,
                    "write_consistency_factor": 3}),
    );
    upsert(&base, "docs", 600, None);
    let to = env.url("cluster");
    assert_ok(&env.run(&[
        "backup",
        "--qdrant-url",
        &base,
        "--to",
        &to,
        "--name",
        "nightly",
        "--node-name",
        "node-0",
    ]));
    // Into the same cluster, under a new name, through another node.
    let other = q.nodes[1].url.clone();
    assert_ok(&env.run(&[
        "restore",
        "--qdrant-url",
        &other,
        "--from",
        &to,
        "--name",
        "nightly",
        "--rename",
        "docs=docs-restored",
    ]));
    same_points(&base, "docs", &base, "docs-restored");
    let info = need(call("GET", &base, "/collections/docs-restored", None, None));
    assert_eq!(info["config"]["params"]["shard_number"], json!(3));
    assert_eq!(info["config"]["params"]["replication_factor"], json!(3));
    for node in &q.nodes {
        let placement = need(call(
            "GET",
            &node.url,
            "/collections/docs-restored/cluster",
            None,
            None,
        ));
        let local = placement["local_shards"].as_array().unwrap();
        assert_eq!(local.len(), 3, "{placement}");
        assert!(local.iter().all(|s| s["state"] == "Active"), "{placement}");
    }

    // One shard per node, then a node down: Qdrant answers 500 for the
    // collection, and the user is told which peer and what to do, in a line.
    create(
        &base,
        "spread",
        json!({"vectors": vectors, "shard_number": 3, "replication_factor": 1}),
    );
    q.stop_node(2);
    let o = env.run(&[
        "backup",
        "--qdrant-url",
        &base,
        "--to",
        &env.url("peer-down"),
        "--name",
        "nightly",
    ]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: Qdrant could not reach peer ")
            && last.contains(&format!("127.0.0.1:{}", q.nodes[2].p2p_port))
            && last.contains("start that node")
            && last.ends_with("[QdrantPeerUnavailable]"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// A collection whose optimizer has work pending is `grey` after a restart
/// (checked on Qdrant 1.18.3), and so is a restore of it: the restore ends
/// with every point back instead of waiting for a green that never comes.
#[tokio::test(flavor = "multi_thread")]
async fn a_grey_collection_backs_up_and_restores() {
    let env = Env::new("real-grey");
    let mut source = need(RealQdrant::start(1, None));
    let target = need(RealQdrant::start(1, None));
    let src = source.nodes[0].url.clone();
    // No optimizer thread: indexing stays pending, as on a busy node.
    create(
        &src,
        "pending",
        json!({"vectors": {"size": 4, "distance": "Dot"},
               "optimizers_config": {"indexing_threshold": 10, "max_optimization_threads": 0}}),
    );
    upsert(&src, "pending", 3000, None);
    source.stop_node(0);
    need(source.start_node(0));
    let status = |base: &str, c: &str| {
        need(call("GET", base, &format!("/collections/{c}"), None, None))["status"].clone()
    };
    assert_eq!(status(&src, "pending"), json!("grey"));

    let to = env.url("grey");
    assert_ok(&env.run(&["backup", "--qdrant-url", &src, "--to", &to, "--name", "g"]));
    let dst = target.nodes[0].url.clone();
    let o = env.run(&[
        "restore",
        "--qdrant-url",
        &dst,
        "--from",
        &to,
        "--name",
        "g",
        "--green-timeout",
        "60",
    ]);
    assert_ok(&o);
    same_points(&src, "pending", &dst, "pending");
    assert_eq!(status(&dst, "pending"), json!("grey"));
}

/// Two restores of one backup into the same new collection at once (two
/// people, two scripts): one creates and fills it, the other is refused in
/// one line and removes nothing of it; every point is there afterwards.
/// Several rounds, so both orders of the race come up.
#[tokio::test(flavor = "multi_thread")]
async fn two_restores_into_the_same_collection_at_once_leave_it_whole() {
    let env = Env::new("real-race");
    let source = need(RealQdrant::start(1, None));
    let target = need(RealQdrant::start(1, None));
    let (src, dst) = (source.nodes[0].url.clone(), target.nodes[0].url.clone());
    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    create(&src, "docs", json!({"vectors": vectors, "shard_number": 2}));
    upsert(&src, "docs", 2000, None);
    let to = env.url("race");
    assert_ok(&env.run(&["backup", "--qdrant-url", &src, "--to", &to, "--name", "r"]));
    for round in 0..3 {
        let name = format!("docs-{round}");
        let rename = format!("docs={name}");
        let restore = || {
            env.agent(&[
                "restore",
                "--qdrant-url",
                &dst,
                "--from",
                &to,
                "--name",
                "r",
                "--rename",
                &rename,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        };
        let (a, b) = (restore(), restore());
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let won: Vec<bool> = outs.iter().map(|o| o.status.success()).collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "exactly one wins: {:?}",
            outs.iter().map(stderr).collect::<Vec<_>>()
        );
        let lost = outs.iter().find(|o| !o.status.success()).unwrap();
        let err = stderr(lost);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.contains(&format!("collection \"{name}\" already exists"))
                && last.ends_with("[InvalidRequest]"),
            "{err}"
        );
        same_points(&src, "docs", &dst, &name);
    }
}

/// The agent takes the API key from the config file Qdrant's Helm chart
/// mounts (`/qdrant/config/local.yaml`, `service.api_key`), as an injected
/// sidecar does; a file it cannot read is named in one line. A backup that
/// Qdrant refused (401) releases its name: the next try of it succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_key_comes_from_qdrants_own_config_file() {
    let env = Env::new("real-config-key");
    let q = need(RealQdrant::start(1, Some("chart-key-5e2a")));
    let base = q.nodes[0].url.clone();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.yaml");
    std::fs::write(&local, "service:\n  api_key: chart-key-5e2a\n").unwrap();
    let to = env.url("cfg");
    let backup = |config: &std::path::Path| {
        env.agent(&["backup", "--qdrant-url", &base, "--to", &to, "--name", "k"])
            .env("QDRANT_CONFIG_FILE", config)
            .output()
            .unwrap()
    };
    let denied = dir.path().join("other.yaml");
    std::fs::write(&denied, "storage:\n  storage_path: /qdrant/storage\n").unwrap();
    let o = backup(&denied);
    assert!(!o.status.success());
    assert!(
        stderr(&o).trim_end().ends_with("[QdrantUnauthorized]"),
        "{}",
        stderr(&o)
    );
    assert_ok(&backup(&local));
    let o = backup(&dir.path().join("missing.yaml"));
    let err = stderr(&o);
    assert!(
        err.trim_end().ends_with("[InvalidRequest]") && err.contains("missing.yaml"),
        "{err}"
    );
}

/// A restore driven over gRPC marks each collection it creates with its
/// owner until it finishes; a rollback deletes only collections carrying
/// that marker. A collection of the same name that someone else created
/// (an application's "create if missing", another restore) is never
/// deleted, and a finished restore leaves no marker behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_deletes_only_the_collections_its_own_restore_created() {
    use qdrant_agent_proto::v1::agent_client::AgentClient;
    use qdrant_agent_proto::v1::*;
    let env = Env::new("real-owner");
    let dir = tempfile::tempdir().unwrap();
    let q = need(RealQdrant::start_with(1, false, None));
    let base = q.nodes[0].url.clone();
    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    create(
        &base,
        "docs",
        json!({"vectors": vectors, "shard_number": 2, "metadata": {"team": "search"}}),
    );
    upsert(&base, "docs", 300, None);
    assert_ok(&env.run(&[
        "backup",
        "--qdrant-url",
        &base,
        "--to",
        &env.url("owned"),
        "--name",
        "b1",
    ]));
    let agent = serve(&env, &base, "node-0", &["--insecure"], dir.path());
    let mut c = agent.plain_client().await;
    let storage = StorageTarget {
        url: env.url("owned"),
        s3_endpoint: env.s3.endpoint.clone(),
        s3_region: "us-east-1".into(),
        credentials: Some(S3Credentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: String::new(),
        }),
        ..Default::default()
    };
    let restore = |id: &str, stage: RestoreStage, owner: &str, to: &[&str]| StartRestoreRequest {
        task_id: id.into(),
        storage: Some(storage.clone()),
        backup_name: "b1".into(),
        collections: to
            .iter()
            .map(|c| CollectionSelection {
                collection: c.to_string(),
                shard_ids: vec![],
            })
            .collect(),
        stage: stage as i32,
        owner: owner.into(),
        ..Default::default()
    };
    async fn finish(c: &mut AgentClient<tonic::transport::Channel>, id: &str) -> Task {
        let mut s = c
            .watch_task(TaskRef { task_id: id.into() })
            .await
            .unwrap()
            .into_inner();
        let mut last = None;
        while let Some(t) = s.message().await.unwrap() {
            last = Some(t);
        }
        last.expect("a task state")
    }
    let metadata = |name: &str| -> Value {
        let info = need(call(
            "GET",
            &base,
            &format!("/collections/{name}"),
            None,
            None,
        ));
        info["config"]["metadata"].clone()
    };

    // Restore r-1 creates docs-copy: it says so, and the collection carries it.
    let mut create_req = restore("create", RestoreStage::Create, "r-1", &["docs"]);
    create_req.rename = [("docs".to_string(), "docs-copy".to_string())].into();
    c.start_restore(create_req).await.unwrap();
    let t = finish(&mut c, "create").await;
    assert_eq!(t.phase(), TaskPhase::Succeeded, "{}", t.error);
    assert_eq!(t.created_collections, ["docs-copy"]);
    assert_eq!(metadata("docs-copy")["qdrant-agent/restore"], "r-1");
    assert_eq!(
        metadata("docs-copy")["team"],
        "search",
        "the saved metadata is kept"
    );

    // Meanwhile an application creates "docs-app", which restore r-1 was
    // also asked about (say it lost the race to create it).
    create(&base, "docs-app", json!({"vectors": vectors}));
    upsert(&base, "docs-app", 20, None);

    // A rollback needs its owner, and another owner's rollback touches
    // nothing of r-1's.
    let mut rollback = restore("rb-0", RestoreStage::Rollback, "", &["docs-copy"]);
    c.start_restore(rollback.clone()).await.unwrap();
    assert_eq!(finish(&mut c, "rb-0").await.phase(), TaskPhase::Failed);
    rollback = restore("rb-1", RestoreStage::Rollback, "r-2", &["docs-copy"]);
    c.start_restore(rollback).await.unwrap();
    assert_eq!(finish(&mut c, "rb-1").await.phase(), TaskPhase::Succeeded);
    assert!(
        need(get(&base, "/collections/docs-copy", None)).0 == 200,
        "another restore's rollback deleted r-1's collection"
    );

    // r-1 rolls back: its own collection goes, the application's stays whole.
    let rollback = restore(
        "rb-2",
        RestoreStage::Rollback,
        "r-1",
        &["docs-copy", "docs-app", "never-made"],
    );
    c.start_restore(rollback).await.unwrap();
    let t = finish(&mut c, "rb-2").await;
    assert_eq!(t.phase(), TaskPhase::Succeeded, "{}", t.error);
    assert_eq!(need(get(&base, "/collections/docs-copy", None)).0, 404);
    assert_eq!(
        need(all_points(&base, "docs-app", None)).len(),
        20,
        "the rollback deleted a collection it never created"
    );

    // A whole restore ends with no marker on what it created.
    let mut all = restore("all", RestoreStage::Unspecified, "r-3", &["docs"]);
    all.rename = [("docs".to_string(), "docs-back".to_string())].into();
    c.start_restore(all).await.unwrap();
    let t = finish(&mut c, "all").await;
    assert_eq!(t.phase(), TaskPhase::Succeeded, "{}", t.error);
    assert_eq!(t.created_collections, ["docs-back"]);
    assert_eq!(metadata("docs-back"), json!({"team": "search"}));
    same_points(&base, "docs", &base, "docs-back");
}

/// What a newcomer gets wrong first, against the real Qdrant: the
/// read-only key (Qdrant refuses snapshots and collection creation to it),
/// a wrong key, a URL that is not Qdrant, and no S3 credentials at all. Each
/// ends in one line that says what access is needed or what to check, with
/// no SDK dump, and a refused backup leaves nothing in the bucket.
#[tokio::test(flavor = "multi_thread")]
async fn a_newcomers_mistakes_each_get_one_line_that_says_what_is_needed() {
    let env = Env::new("real-mistakes");
    let q = need(RealQdrant::start_keys(
        1,
        false,
        Some("full-key-81d0"),
        Some("read-only-key-81d0"),
    ));
    let base = q.nodes[0].url.clone();
    need(call(
        "PUT",
        &base,
        "/collections/docs?wait=true",
        Some("full-key-81d0"),
        Some(json!({"vectors": {"size": 4, "distance": "Cosine"}})),
    ));
    let to = env.url("mistakes");
    let one_line = |o: &std::process::Output, reason: &str, says: &[&str]| {
        let err = stderr(o);
        assert!(!o.status.success(), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line:\n{err}");
        assert!(err.trim_end().ends_with(&format!("[{reason}]")), "{err}");
        for s in says {
            assert!(err.contains(s), "{s:?} in {err}");
        }
    };
    let with_key =
        |key: &str, args: &[&str]| env.agent(args).env("QDRANT_API_KEY", key).output().unwrap();
    let backup = ["backup", "--qdrant-url", &base, "--to", &to, "--name"];

    let needs_full_key = [
        "service.api_key",
        "not the read-only one",
        "{\"access\": \"m\"}",
    ];
    let o = with_key("read-only-key-81d0", &[&backup[..], &["ro"]].concat());
    one_line(&o, "QdrantForbidden", &needs_full_key);
    env.assert_nothing_left("mistakes/ro").await;

    let o = with_key("full-key-81d0", &[&backup[..], &["full"]].concat());
    assert_ok(&o);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("backup full complete: 1 object,"), "{said}");
    // Into a name that is taken: the hint names the flag as it was given.
    let o = with_key(
        "full-key-81d0",
        &[
            "restore",
            "--qdrant-url",
            &base,
            "--from",
            &to,
            "--name",
            "full",
            "--rename",
            "docs=docs",
        ],
    );
    one_line(
        &o,
        "InvalidRequest",
        &["restore \"docs\" under another name (--rename docs=NEW)"],
    );
    let o = with_key(
        "read-only-key-81d0",
        &[
            "restore",
            "--qdrant-url",
            &base,
            "--from",
            &to,
            "--name",
            "full",
            "--rename",
            "docs=docs-copy",
        ],
    );
    one_line(&o, "QdrantForbidden", &needs_full_key);
    assert_eq!(
        get(&base, "/collections/docs-copy", Some("full-key-81d0"))
            .unwrap()
            .0,
        404
    );

    // A misspelled name points at the nearest one and at `list`; a `list`
    // one level too high says where the backups are.
    let o = with_key(
        "full-key-81d0",
        &[
            "restore",
            "--qdrant-url",
            &base,
            "--from",
            &to,
            "--name",
            "ful",
        ],
    );
    one_line(
        &o,
        "ManifestMissing",
        &[
            "no backup \"ful\" under",
            "did you mean full?",
            &format!("`qdrant-agent list --from {to}` shows the 1 backup there"),
        ],
    );
    let o = env.run(&["list", "--from", &env.url("")]);
    assert_ok(&o);
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(
        listed.contains("backups are under:") && listed.contains(&format!("{to}\t(1 backup)")),
        "{listed}"
    );

    let o = with_key("wrong-key", &[&backup[..], &["wrong"]].concat());
    one_line(&o, "QdrantUnauthorized", &["service.api_key"]);

    // A snapshots directory that does not exist: auto mode streams (and
    // says so), without creating it; shard-file mode refuses, saying which
    // directory it must be. One that exists but is not Qdrant's is found out
    // once Qdrant has written a snapshot elsewhere.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("snapshots");
    let missing = missing.to_str().unwrap();
    let o = with_key(
        "full-key-81d0",
        &[&backup[..], &["auto-missing", "--snapshots-dir", missing]].concat(),
    );
    assert_ok(&o);
    assert!(
        stderr(&o).contains("does not exist: streaming every shard instead"),
        "{}",
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("mode: stream (docs)"));
    assert!(
        !std::path::Path::new(missing).exists(),
        "{missing} was made"
    );
    let where_ = ["storage.snapshots_path", "--mode stream needs none"];
    let o = with_key(
        "full-key-81d0",
        &[
            &backup[..],
            &[
                "sf-missing",
                "--mode",
                "shard-file",
                "--snapshots-dir",
                missing,
            ],
        ]
        .concat(),
    );
    one_line(
        &o,
        "InvalidRequest",
        &[&[missing, "does not exist"][..], &where_].concat(),
    );
    let wrong = dir.path().to_str().unwrap();
    let o = with_key(
        "full-key-81d0",
        &[
            &backup[..],
            &["sf-wrong", "--mode", "shard-file", "--snapshots-dir", wrong],
        ]
        .concat(),
    );
    one_line(
        &o,
        "InvalidRequest",
        &[
            &["the snapshots directory given is not Qdrant's"][..],
            &where_,
        ]
        .concat(),
    );
    env.assert_nothing_left("mistakes/sf-wrong").await;

    // The S3 endpoint where Qdrant should be.
    let o = with_key(
        "full-key-81d0",
        &[
            "backup",
            "--qdrant-url",
            &env.s3.endpoint,
            "--to",
            &to,
            "--name",
            "x",
        ],
    );
    one_line(&o, "InvalidRequest", &["does not look like Qdrant"]);

    // No credentials anywhere; the SDK's instance-metadata source is tried
    // (on a closed port) and its warnings stay out of the terminal.
    let o = env
        .agent(&["list", "--from", &to])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    one_line(&o, "S3NoCredentials", &["AWS_ACCESS_KEY_ID"]);
}

/// Ctrl-C during a restore says that it was cancelled and what was cleaned
/// up (not the interrupted request's "body stream cancelled"), and the
/// collection it had created is gone. S3 is held still by a gate (a TCP
/// proxy) so the interrupt lands while objects are in flight.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_during_a_restore_says_what_was_cleaned_up() {
    let env = Env::new("real-interrupt");
    let q = need(RealQdrant::start(1, None));
    let base = q.nodes[0].url.clone();
    create(
        &base,
        "docs",
        json!({"vectors": {"size": 4, "distance": "Dot"}, "shard_number": 2}),
    );
    upsert(&base, "docs", 500, None);
    let to = env.url("int");
    assert_ok(&env.run(&["backup", "--qdrant-url", &base, "--to", &to, "--name", "b"]));
    let gate = need(test_support::gate::Gate::start(&env.s3.endpoint).await);
    let child = std::process::Command::new(common::AGENT)
        .args([
            "restore",
            "--qdrant-url",
            &base,
            "--from",
            &to,
            "--name",
            "b",
            "--rename",
            "docs=docs-copy",
            "--s3-endpoint",
            &gate.url,
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The collection is created before any object is read: then S3 stops.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while get(&base, "/collections/docs-copy", None).unwrap().0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "no collection created"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    gate.close();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Acted on at once, not after the S3 client's timeouts and retries
    // (minutes): the in-flight GETs are dropped.
    let mut child = child;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the restore did not stop within 60 s of Ctrl-C");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "error: restore of b cancelled; removed the collection it had created: \"docs-copy\" [Cancelled]",
        "{err}"
    );
    assert_eq!(get(&base, "/collections/docs-copy", None).unwrap().0, 404);
    assert_eq!(get(&base, "/collections/docs", None).unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_tells_its_qdrants_free_disk_and_what_the_collections_take() {
    use qdrant_agent_proto::v1::GetDiskRequest;
    let env = Env::new("real-disk");
    let dir = tempfile::tempdir().unwrap();
    let q = need(RealQdrant::start(1, None));
    let base = q.nodes[0].url.clone();
    let storage = q.nodes[0].storage.display().to_string();
    let ask = |args: Vec<String>| {
        let (env, base, dir) = (&env, base.clone(), dir.path().to_path_buf());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let agent = serve(env, &base, "node-0", &args, &dir);
            let mut c = agent.plain_client().await;
            c.get_disk(GetDiskRequest {}).await.unwrap().into_inner()
        }
    };
    // Without the storage directory the agent says it cannot tell.
    let unseen = ask(vec!["--insecure".into()]).await;
    assert!(!unseen.seen);

    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    create(
        &base,
        "docs",
        json!({"vectors": vectors, "shard_number": 2}),
    );
    let with_storage = || vec!["--insecure".into(), "--storage-dir".into(), storage.clone()];
    let empty = ask(with_storage()).await;
    upsert(&base, "docs", 2000, None);
    let full = ask(with_storage()).await;
    assert!(empty.seen && full.seen);
    // The filesystem's figures, as statvfs gives them (df's "Avail").
    let df = std::process::Command::new("df")
        .args(["-B1", "--output=size", &storage])
        .output()
        .unwrap();
    let size: u64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(full.total_bytes, size);
    assert!(full.free_bytes > 0 && full.free_bytes < full.total_bytes);
    // 2,000 points take room on disk, counted in allocated blocks, as du does.
    assert!(
        full.collections_bytes > empty.collections_bytes,
        "{empty:?} {full:?}"
    );
    let du = std::process::Command::new("du")
        .args(["-s", "-B1", &format!("{storage}/collections")])
        .output()
        .unwrap();
    let du: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // du counts the directories' own blocks too; Qdrant may write between.
    let (lo, hi) = (du / 2, du * 2);
    assert!(
        (lo..=hi).contains(&full.collections_bytes),
        "du says {du}, the agent {}",
        full.collections_bytes
    );
}
