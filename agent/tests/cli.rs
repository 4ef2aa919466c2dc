//! End-to-end tests of the `qdrant-agent` CLI against a real S3 server
//! (moto) and the Qdrant test double.

mod common;

use common::*;
use qdrant_agent::manifest::{Manifest, ObjectMode};
use qdrant_agent::store::get_all;
use test_support::qdrant_double::{Content, Fault, generated_sha256, seed_for};

fn seed_source(d: &test_support::qdrant_double::Double) {
    // Shard sizes cover several parts, a short last part and an empty shard.
    d.add_collection("docs", 384, &[11 * MIB + 7, MIB, 0]);
    d.add_collection("imgs", 512, &[3 * MIB]);
    d.add_alias("docs-latest", "docs");
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_stores_every_shard_with_a_manifest_and_restore_brings_it_back() {
    let env = Env::new("roundtrip");
    let (_src, src_url) = double("1.18.3", seed_source).await;
    let url = env.url("prod/ns/c1");
    let out = env.run(&[
        "backup",
        "--qdrant-url",
        &src_url,
        "--to",
        &url,
        "--name",
        "nightly",
        "--node-name",
        "pod-0",
        "--part-size",
        "5242880",
        "--concurrency",
        "3",
    ]);
    assert_ok(&out);

    // Every shard is in the bucket under the documented layout, byte-exact.
    let store = env.store().await;
    let mut keys: Vec<String> = store
        .list("prod/ns/c1/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "prod/ns/c1/nightly/manifest.json",
            "prod/ns/c1/nightly/owner",
            "prod/ns/c1/nightly/pod-0/docs/0.snapshot",
            "prod/ns/c1/nightly/pod-0/docs/1.snapshot",
            "prod/ns/c1/nightly/pod-0/docs/2.snapshot",
            "prod/ns/c1/nightly/pod-0/imgs/0.snapshot",
        ]
    );
    for (c, s, size) in [
        ("docs", 0, 11 * MIB + 7),
        ("docs", 1, MIB),
        ("docs", 2, 0),
        ("imgs", 0, 3 * MIB),
    ] {
        let key = format!("prod/ns/c1/nightly/pod-0/{c}/{s}.snapshot");
        assert_eq!(store.head(&key).await.unwrap(), Some(size), "{key}");
        assert_eq!(
            sha_of(&*store, &key).await,
            generated_sha256(seed_for(c, s), size),
            "{key}"
        );
    }
    assert!(
        store.list_multipart("prod/").await.unwrap().is_empty(),
        "no upload left open"
    );

    // The manifest lists every object with its checksum, config and aliases.
    let m: Manifest = serde_json::from_slice(
        &get_all(&*store, "prod/ns/c1/nightly/manifest.json")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(m.qdrant_version, "1.18.3");
    assert_eq!(m.nodes[0].node, "pod-0");
    let docs = m.collections.iter().find(|c| c.name == "docs").unwrap();
    assert_eq!(docs.aliases, ["docs-latest"]);
    assert_eq!(docs.config["params"]["vectors"]["size"], 384);
    assert_eq!(docs.objects.len(), 3);
    for o in &docs.objects {
        assert_eq!(o.mode, ObjectMode::Stream);
        let size = store
            .head(&format!("prod/ns/c1/nightly/{}", o.key))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(o.size, size);
        assert_eq!(
            o.sha256,
            sha_of(&*store, &format!("prod/ns/c1/nightly/{}", o.key)).await
        );
    }

    let listed = env.run(&["list", "--from", &url]);
    assert_ok(&listed);
    let out = String::from_utf8_lossy(&listed.stdout).to_string();
    let mut lines = out.lines();
    assert!(
        lines.next().is_some_and(|h| h.starts_with("NAME\t")),
        "{out}"
    );
    assert!(
        lines.next().is_some_and(|l| l.starts_with("nightly\t")),
        "{out}"
    );

    // Restore into an empty Qdrant of the same minor version, renaming one.
    let (dst, dst_url) = double("1.18.0", |_| {}).await;
    let out = env.run(&[
        "restore",
        "--qdrant-url",
        &dst_url,
        "--from",
        &url,
        "--name",
        "nightly",
        "--rename",
        "imgs=pictures",
    ]);
    assert_ok(&out);
    assert_eq!(dst.collection_names(), ["docs", "pictures"]);
    let docs = dst.collection("docs").unwrap();
    assert_eq!(docs.config["params"]["vectors"]["size"], 384);
    for (s, size) in [(0, 11 * MIB + 7), (1, MIB), (2, 0)] {
        assert_eq!(
            docs.shards[&s].content,
            Content::Uploaded {
                sha256: generated_sha256(seed_for("docs", s), size),
                size
            },
            "shard {s}"
        );
    }
    assert_eq!(
        dst.collection("pictures").unwrap().shards[&0]
            .content
            .sha256(),
        generated_sha256(seed_for("imgs", 0), 3 * MIB)
    );
    assert_eq!(
        dst.aliases().get("docs-latest").map(String::as_str),
        Some("docs")
    );
    let uploads = dst.uploads();
    assert_eq!(uploads.len(), 4);
    for u in uploads {
        assert_eq!(
            u.query.get("priority").map(String::as_str),
            Some("snapshot"),
            "priority is sent explicitly"
        );
        assert_eq!(
            u.query.get("checksum"),
            Some(&u.sha256),
            "the manifest checksum is sent"
        );
    }
}

async fn make_backup(env: &Env, prefix: &str) -> String {
    let (_src, src_url) = double("1.18.3", seed_source).await;
    let url = env.url(prefix);
    assert_ok(&env.run(&[
        "backup",
        "--qdrant-url",
        &src_url,
        "--to",
        &url,
        "--name",
        "b1",
        "--node-name",
        "pod-0",
    ]));
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_refuses_a_tampered_object_and_touches_nothing() {
    let env = Env::new("tamper");
    let url = make_backup(&env, "p").await;
    let store = env.store().await;
    // Same size, different bytes: only the checksum can tell.
    store
        .put(
            "p/b1/pod-0/imgs/0.snapshot",
            vec![7u8; 3 * MIB as usize].into(),
        )
        .await
        .unwrap();

    let (dst, dst_url) = double("1.18.3", |_| {}).await;
    let out = env.run(&[
        "restore",
        "--qdrant-url",
        &dst_url,
        "--from",
        &url,
        "--name",
        "b1",
        "--verify-first",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("checksum mismatch for p/b1/pod-0/imgs/0.snapshot"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("[ChecksumMismatch]"));
    assert!(dst.collection_names().is_empty(), "nothing created");
    assert!(dst.uploads().is_empty(), "nothing uploaded");

    // By default (one pass), the bad shard is refused while it streams,
    // saying so, and the collections created for the restore are removed.
    let out = env.run(&[
        "restore",
        "--qdrant-url",
        &dst_url,
        "--from",
        &url,
        "--name",
        "b1",
        "--collection",
        "imgs",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("[ChecksumMismatch]"),
        "{}",
        stderr(&out)
    );
    assert!(
        dst.collection_names().is_empty(),
        "partial restore rolled back: {:?}",
        dst.collection_names()
    );
}

/// Downloads draw on the agent's memory budget as uploads do: a restore
/// asked for 8 objects at once under a 16 MiB budget has only as many
/// streaming into Qdrant as the budget holds (4 MiB each).
#[tokio::test(flavor = "multi_thread")]
async fn restore_downloads_stay_within_the_memory_budget() {
    let env = Env::new("restore-budget");
    let (_src, src_url) = double("1.18.3", |d| {
        d.add_collection("wide", 64, &[64 * 1024; 10]);
    })
    .await;
    let url = env.url("p");
    assert_ok(&env.run(&[
        "backup",
        "--qdrant-url",
        &src_url,
        "--to",
        &url,
        "--name",
        "b1",
    ]));
    let restore = |budget: &'static str| {
        let env = &env;
        let url = url.clone();
        async move {
            let (dst, dst_url) = double("1.18.3", |d| {
                d.hold_uploads(std::time::Duration::from_millis(400));
            })
            .await;
            assert_ok(&env.run(&[
                "restore",
                "--qdrant-url",
                &dst_url,
                "--from",
                &url,
                "--name",
                "b1",
                "--concurrency",
                "8",
                "--memory-budget",
                budget,
            ]));
            assert_eq!(dst.uploads().len(), 10);
            dst.most_uploads_at_once()
        }
    };
    assert_eq!(restore("16MiB").await, 4, "16 MiB holds four downloads");
    // The same restore with room for all: the limit above was the budget's.
    assert_eq!(restore("256MiB").await, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_refuses_another_minor_version_and_a_missing_manifest() {
    let env = Env::new("refuse");
    let url = make_backup(&env, "p").await;
    let (dst, dst_url) = double("1.17.4", |_| {}).await;
    let out = env.run(&[
        "restore",
        "--qdrant-url",
        &dst_url,
        "--from",
        &url,
        "--name",
        "b1",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("backup was taken on 1.18.3, target runs 1.17.4"),
        "{}",
        stderr(&out)
    );
    assert!(dst.collection_names().is_empty() && dst.uploads().is_empty());

    env.store()
        .await
        .delete("p/b1/manifest.json")
        .await
        .unwrap();
    let (dst, dst_url) = double("1.18.3", |_| {}).await;
    let out = env.run(&[
        "restore",
        "--qdrant-url",
        &dst_url,
        "--from",
        &url,
        "--name",
        "b1",
    ]);
    assert!(
        stderr(&out).contains("[ManifestMissing]"),
        "{}",
        stderr(&out)
    );
    assert!(dst.collection_names().is_empty());
    let listed = env.run(&["list", "--from", &url]);
    let out = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        out.starts_with("no backups under"),
        "an incomplete backup is not offered: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_shard_stream_fails_the_backup_and_leaves_nothing() {
    let env = Env::new("broken");
    let (_src, src_url) = double("1.18.3", |d| {
        seed_source(d);
        d.set_fault("docs", 0, Fault::BreakAfter(6 * MIB));
    })
    .await;
    let url = env.url("p");
    let out = env.run(&[
        "backup",
        "--qdrant-url",
        &src_url,
        "--to",
        &url,
        "--name",
        "b1",
        "--part-size",
        "5242880",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("broke off"), "{}", stderr(&out));
    env.assert_nothing_left("p/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_shard_stream_fails_clearly_instead_of_hanging() {
    let env = Env::new("stall");
    let (_src, src_url) = double("1.18.3", |d| {
        d.add_collection("docs", 8, &[4 * MIB]);
        d.set_fault("docs", 0, Fault::StallAfter(MIB));
    })
    .await;
    let out = env.run(&[
        "backup",
        "--qdrant-url",
        &src_url,
        "--to",
        &env.url("p"),
        "--name",
        "b1",
        "--stall-timeout",
        "2",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("[StreamStalled]"), "{}", stderr(&out));
    env.assert_nothing_left("p/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn file_mode_round_trip_through_a_local_directory_leaves_no_snapshot_file() {
    let env = Env::new("filemode");
    let dir = tempfile::tempdir().unwrap();
    let (snaps, store_dir, snaps2) = (
        dir.path().join("snaps"),
        dir.path().join("store"),
        dir.path().join("snaps2"),
    );
    std::fs::create_dir_all(&store_dir).unwrap();
    let (src, src_url) = double_with_snapshots("1.18.3", &snaps, |d| {
        d.add_collection("docs", 8, &[2 * MIB, MIB])
    })
    .await;
    let to = format!("file://{}", store_dir.display());
    let snaps_arg = snaps.display().to_string();
    assert_ok(&env.run(&[
        "backup",
        "--qdrant-url",
        &src_url,
        "--snapshots-dir",
        &snaps_arg,
        "--to",
        &to,
        "--name",
        "f1",
        "--mode",
        "file",
        "--node-name",
        "n0",
    ]));
    assert!(
        src.snapshot_files().is_empty(),
        "Qdrant's snapshot was deleted"
    );
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(store_dir.join("f1/manifest.json")).unwrap())
            .unwrap();
    let o = &m.collections[0].objects[0];
    assert_eq!(o.mode, ObjectMode::File);
    assert_eq!(o.size, 3 * MIB);
    assert!(o.key.starts_with("n0/docs/docs-"), "{}", o.key);

    let (dst, dst_url) = double_with_snapshots("1.18.3", &snaps2, |_| {}).await;
    let snaps2_arg = snaps2.display().to_string();
    assert_ok(&env.run(&[
        "restore",
        "--qdrant-url",
        &dst_url,
        "--snapshots-dir",
        &snaps2_arg,
        "--from",
        &to,
        "--name",
        "f1",
    ]));
    assert_eq!(
        dst.collection("docs").unwrap().shards[&0].content.sha256(),
        o.sha256
    );
    let left: Vec<_> = walk(&snaps2);
    assert!(
        left.is_empty(),
        "no snapshot file left on the node: {left:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_credentials_fail_clearly_without_printing_the_secret() {
    // A moto server that checks credentials: every request must be signed
    // with a key it knows, and ours is not one of them.
    let port = test_support::s3_server::free_port().unwrap();
    let mut moto = std::process::Command::new(test_support::bins::tool("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server");
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "moto did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_src, src_url) = double("1.18.3", |d| d.add_collection("docs", 8, &[MIB])).await;
    let secret = "SECRETMARKER0123456789abcdefSECRET";
    let out = std::process::Command::new(AGENT)
        .args([
            "backup",
            "--qdrant-url",
            &src_url,
            "--to",
            "s3://bkt/p",
            "--name",
            "b1",
            "--s3-endpoint",
            &endpoint,
        ])
        .env("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", "us-east-1")
        .env("QDRANT_AGENT_LOG", "debug")
        .output()
        .unwrap();
    let _ = moto.kill();
    let _ = moto.wait();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("[S3AccessDenied]"), "{err}");
    assert!(
        !err.contains(secret) && !String::from_utf8_lossy(&out.stdout).contains(secret),
        "secret leaked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_never_overwrites_a_collection_or_moves_a_live_alias() {
    let env = Env::new("nooverwrite");
    let url = make_backup(&env, "p").await;
    let (dst, dst_url) = double("1.18.3", |d| {
        d.add_collection("docs", 384, &[MIB]);
        d.add_collection("serving", 384, &[MIB]);
        d.add_alias("docs-latest", "serving");
    })
    .await;
    let before = dst.collection("docs").unwrap().shards[&0].content.clone();
    let out = env.run(&[
        "restore",
        "--qdrant-url",
        &dst_url,
        "--from",
        &url,
        "--name",
        "b1",
        "--collection",
        "docs",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "collection \"docs\" already exists in the target Qdrant; restore \"docs\" under another name (--rename docs=NEW)"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        dst.collection("docs").unwrap().shards[&0].content,
        before,
        "existing data untouched"
    );
    assert!(dst.uploads().is_empty());

    // Beside it under a new name: the alias that serves traffic stays put.
    assert_ok(&env.run(&[
        "restore",
        "--qdrant-url",
        &dst_url,
        "--from",
        &url,
        "--name",
        "b1",
        "--collection",
        "docs",
        "--rename",
        "docs=docs-restored",
    ]));
    assert!(dst.collection("docs-restored").is_some());
    assert_eq!(
        dst.aliases().get("docs-latest").map(String::as_str),
        Some("serving")
    );

    // Again under the same new name: the hint names the flag as given, for
    // the collection that was asked for.
    let again = env.run(&[
        "restore",
        "--qdrant-url",
        &dst_url,
        "--from",
        &url,
        "--name",
        "b1",
        "--collection",
        "docs",
        "--rename",
        "docs=docs-restored",
    ]);
    assert!(
        stderr(&again).contains(
            "collection \"docs-restored\" already exists in the target Qdrant; restore \"docs\" under another name (--rename docs=NEW) or delete \"docs-restored\" first"
        ),
        "{}",
        stderr(&again)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_sharded_collection_gets_its_shard_keys_before_its_shards() {
    use serde_json::json;
    let env = Env::new("custom");
    let (_src, src_url) = double("1.18.3", |d| {
        d.add_collection("tenants", 8, &[MIB, 2 * MIB, 3 * MIB]);
        d.set_custom_sharding("tenants", &[json!("eu"), json!("us"), json!(7)], 1);
    })
    .await;
    let url = env.url("p");
    assert_ok(&env.run(&[
        "backup",
        "--qdrant-url",
        &src_url,
        "--to",
        &url,
        "--name",
        "b1",
        "--node-name",
        "n0",
    ]));
    let (dst, dst_url) = double("1.18.3", |_| {}).await;
    assert_ok(&env.run(&[
        "restore",
        "--qdrant-url",
        &dst_url,
        "--from",
        &url,
        "--name",
        "b1",
    ]));
    let restored = dst.collection("tenants").unwrap();
    assert_eq!(restored.config["params"]["sharding_method"], "custom");
    for (s, key, size) in [
        (0, json!("eu"), MIB),
        (1, json!("us"), 2 * MIB),
        (2, json!(7), 3 * MIB),
    ] {
        let shard = &restored.shards[&s];
        assert_eq!(shard.shard_key.as_ref(), Some(&key));
        assert_eq!(
            shard.content.sha256(),
            generated_sha256(seed_for("tenants", s), size),
            "shard {s} ({key})"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn against_a_signature_checking_server_a_wrong_secret_is_refused_and_a_right_one_works() {
    use test_support::s3_server::S3sFs;
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3sFs::start(dir.path(), "agent-key", "agent-secret").unwrap();
    let bucket = s3.bucket("backups").unwrap();
    let (_src, src_url) = double("1.18.3", |d| d.add_collection("docs", 8, &[6 * MIB])).await;
    let run = |secret: &str, args: &[&str]| {
        std::process::Command::new(AGENT)
            .args(args)
            .args(["--s3-endpoint", &s3.endpoint])
            .env("AWS_ACCESS_KEY_ID", "agent-key")
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap()
    };
    let url = format!("s3://{bucket}/p");
    let wrong = "WRONGsecretMARKER0123456789";
    let out = run(
        wrong,
        &[
            "backup",
            "--qdrant-url",
            &src_url,
            "--to",
            &url,
            "--name",
            "b1",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("[S3AccessDenied]"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(wrong));
    let files: Vec<_> = walk(&dir.path().join(&bucket));
    assert!(
        files.is_empty(),
        "nothing written with a wrong secret: {files:?}"
    );

    // s3s-fs does not implement ListMultipartUploads: the stale-upload
    // cleanup warns and the backup goes on.
    let out = run(
        "agent-secret",
        &[
            "backup",
            "--qdrant-url",
            &src_url,
            "--to",
            &url,
            "--name",
            "b1",
            "--part-size",
            "5242880",
        ],
    );
    assert_ok(&out);
    assert!(
        stderr(&out).contains("does not list multipart uploads"),
        "{}",
        stderr(&out)
    );
    let (dst, dst_url) = double("1.18.3", |_| {}).await;
    assert_ok(&run(
        "agent-secret",
        &[
            "restore",
            "--qdrant-url",
            &dst_url,
            "--from",
            &url,
            "--name",
            "b1",
        ],
    ));
    assert_eq!(
        dst.collection("docs").unwrap().shards[&0].content.sha256(),
        generated_sha256(seed_for("docs", 0), 6 * MIB)
    );
}

/// Backs up one 12 MiB shard (three 5 MiB parts) through an S3 proxy.
fn backup_through(env: &Env, endpoint: &str, src_url: &str, name: &str) -> std::process::Output {
    std::process::Command::new(AGENT)
        .args([
            "backup",
            "--qdrant-url",
            src_url,
            "--to",
            &env.url("p"),
            "--name",
            name,
            "--part-size",
            "5242880",
        ])
        .args(["--s3-endpoint", endpoint])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn slowdowns_cut_connections_and_damaged_parts_are_retried() {
    use test_support::s3_server::FaultProxy;
    let env = Env::new("retry");
    let dir = tempfile::tempdir().unwrap();
    let (_src, src_url) = double("1.18.3", |d| d.add_collection("docs", 8, &[12 * MIB])).await;
    // A part damaged on the way is refused by the store (Content-MD5) and
    // sent again: what is stored is what Qdrant sent.
    for mode in ["slowdown-once", "cut-once", "corrupt-once"] {
        let proxy = FaultProxy::start(&env.s3.endpoint, mode, dir.path()).unwrap();
        let name = format!("b-{mode}");
        let out = backup_through(&env, &proxy.endpoint, &src_url, &name);
        assert_ok(&out);
        assert!(proxy.injected() >= 1, "{mode}: the fault was injected");
        let store = env.store().await;
        let node_key = store
            .list(&format!("p/{name}/"))
            .await
            .unwrap()
            .into_iter()
            .find(|o| o.key.ends_with("docs/0.snapshot"))
            .unwrap()
            .key;
        assert_eq!(
            sha_of(&*store, &node_key).await,
            generated_sha256(seed_for("docs", 0), 12 * MIB),
            "{mode}: bytes intact"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_part_that_keeps_failing_fails_the_backup_and_aborts_the_upload() {
    use test_support::s3_server::FaultProxy;
    let env = Env::new("always500");
    let dir = tempfile::tempdir().unwrap();
    let (_src, src_url) = double("1.18.3", |d| d.add_collection("docs", 8, &[12 * MIB])).await;
    let proxy = FaultProxy::start(&env.s3.endpoint, "always-500", dir.path()).unwrap();
    let out = backup_through(&env, &proxy.endpoint, &src_url, "b1");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("[S3Unavailable]"), "{}", stderr(&out));
    assert!(proxy.injected() >= 2, "the SDK retried before giving up");
    env.assert_nothing_left("p/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qdrant_without_live_shard_snapshots_gets_a_hint_and_file_mode_works() {
    let env = Env::new("old");
    let dir = tempfile::tempdir().unwrap();
    let snaps = dir.path().join("snaps");
    let (_src, src_url) = double_with_snapshots("1.18.3", &snaps, |d| {
        d.add_collection("docs", 8, &[MIB]);
        d.without_streaming();
    })
    .await;
    let out = env.run(&[
        "backup",
        "--qdrant-url",
        &src_url,
        "--to",
        &env.url("p"),
        "--name",
        "b1",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no live shard snapshot endpoint")
            && stderr(&out).contains("--mode file"),
        "{}",
        stderr(&out)
    );
    env.assert_nothing_left("p/").await;
    let snaps_arg = snaps.display().to_string();
    assert_ok(&env.run(&[
        "backup",
        "--qdrant-url",
        &src_url,
        "--to",
        &env.url("p"),
        "--name",
        "b2",
        "--mode",
        "file",
        "--snapshots-dir",
        &snaps_arg,
    ]));
}

/// Mistakes a new user makes get one line saying what to do, before
/// anything is read or written.
#[tokio::test(flavor = "multi_thread")]
async fn common_mistakes_get_one_line_that_names_the_fix() {
    let env = Env::new("mistakes");
    let dir = tempfile::tempdir().unwrap();
    let to = format!("file://{}", dir.path().display());
    let one_line = |o: &std::process::Output, want: &str| {
        assert!(!o.status.success());
        let err = stderr(o);
        let last = err.trim().lines().last().unwrap_or_default().to_string();
        assert!(
            last.starts_with("error: ") && last.contains(want),
            "want {want:?} in {err}"
        );
    };
    one_line(
        &env.run(&["backup", "--qdrant-url", "localhost:6333", "--to", &to]),
        "use http://localhost:6333",
    );
    // A part that the memory budget cannot hold is refused before Qdrant
    // or the store is touched (nothing answers on port 9).
    one_line(
        &env.run(&[
            "backup",
            "--qdrant-url",
            "http://127.0.0.1:9",
            "--to",
            &to,
            "--memory-budget",
            "32MiB",
            "--part-size",
            "64MiB",
        ]),
        "a part of 64.0 MiB does not fit the agent's memory budget of 32.0 MiB: raise --memory-budget or lower --part-size [InvalidRequest]",
    );
    one_line(
        &env.run(&[
            "backup",
            "--qdrant-url",
            "http://127.0.0.1:9",
            "--to",
            &to,
            "--qdrant-api-key-file",
            "/nonexistent/api-key",
        ]),
        "API key file /nonexistent/api-key",
    );
    one_line(
        &env.run(&[
            "restore",
            "--qdrant-url",
            "http://127.0.0.1:9",
            "--from",
            &to,
            "--name",
            "b",
            "--rename",
            "a=x",
            "--rename",
            "b=x",
        ]),
        "the same new name \"x\"",
    );
    // A bucket that does not exist is named as the problem, not the manifest.
    let o = env.run(&[
        "restore",
        "--qdrant-url",
        "http://127.0.0.1:9",
        "--from",
        "s3://no-such-bucket-here/prod",
        "--name",
        "b",
    ]);
    one_line(&o, "S3BucketNotFound");
    // An endpoint that does not answer, and no credentials anywhere: one
    // short line each, not an SDK debug dump.
    let bare = |endpoint: Option<&str>, creds: bool| {
        let mut c = std::process::Command::new(AGENT);
        c.args(["list", "--from", "s3://b/p"])
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env("HOME", dir.path())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        if let Some(e) = endpoint {
            c.args(["--s3-endpoint", e]);
        }
        if creds {
            c.env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test");
        }
        c.output().unwrap()
    };
    let o = bare(Some("127.0.0.1:9"), true);
    one_line(&o, "needs a scheme: use http://127.0.0.1:9");
    let o = bare(Some("http://127.0.0.1:9"), true);
    one_line(&o, "cannot reach the S3 endpoint");
    assert!(
        stderr(&o).contains("[S3Unreachable]") && stderr(&o).len() < 400,
        "{}",
        stderr(&o)
    );
    let o = bare(Some(&env.s3.endpoint), false);
    one_line(&o, "no S3 credentials found: set AWS_ACCESS_KEY_ID");
    assert!(
        stderr(&o).contains("[S3NoCredentials]") && stderr(&o).len() < 400,
        "{}",
        stderr(&o)
    );
    // Listing where there is nothing says so.
    let o = env.run(&["list", "--from", &to]);
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("no backups under"), "{out}");
    // Part sizes take units.
    let o = env.run(&["backup", "--help"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("8MiB"));
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_rereads_a_backup_without_qdrant_and_delete_removes_it() {
    let env = Env::new("verify");
    let (_src, src_url) = double("1.18.3", seed_source).await;
    let url = env.url("v");
    assert_ok(&env.run(&[
        "backup",
        "--qdrant-url",
        &src_url,
        "--to",
        &url,
        "--name",
        "b1",
        "--node-name",
        "pod-0",
    ]));
    let out = env.run(&["verify", "--from", &url, "--name", "b1"]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pod-0/docs/0.snapshot\t11.0 MiB\tok"),
        "{text}"
    );
    assert!(text.contains("verified: 4 objects"), "{text}");

    // A damaged object is named; the others still check out.
    let store = env.store().await;
    store
        .put(
            "v/b1/pod-0/imgs/0.snapshot",
            bytes::Bytes::from_static(b"rot"),
        )
        .await
        .unwrap();
    let out = env.run(&["verify", "--from", &url, "--name", "b1"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pod-0/imgs/0.snapshot\t3.0 MiB\tchecksum mismatch"),
        "{text}"
    );
    assert!(
        text.contains("pod-0/docs/1.snapshot\t1.0 MiB\tok"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("1 of 4 objects") && stderr(&out).contains("[ChecksumMismatch]"),
        "{}",
        stderr(&out)
    );

    // Scripts get JSON.
    let out = env.run(&["list", "--from", &url, "--output", "json"]);
    assert_ok(&out);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "b1", "{listed}");
    assert_eq!(listed[0]["objects"], 4, "{listed}");
    assert_eq!(
        listed[0]["collections"],
        serde_json::json!(["docs", "imgs"]),
        "{listed}"
    );
    // Reading commands do not offer the encryption flags; writing ones do.
    let help = |cmd: &str| String::from_utf8_lossy(&env.run(&[cmd, "--help"]).stdout).to_string();
    assert!(!help("list").contains("--s3-sse") && !help("verify").contains("--s3-sse"));
    assert!(help("backup").contains("--s3-sse"));

    // delete takes it all away, and says so when there is nothing.
    let out = env.run(&["delete", "--from", &url, "--name", "b1"]);
    assert_ok(&out);
    assert!(store.list("v/b1/").await.unwrap().is_empty());
    let out = env.run(&["list", "--from", &url]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no backups under"));
    let out = env.run(&["list", "--from", &url, "--output", "json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = env.run(&["delete", "--from", &url, "--name", "b1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no backup \"b1\" under")
            && stderr(&out).contains("[ManifestMissing]"),
        "{}",
        stderr(&out)
    );
}
