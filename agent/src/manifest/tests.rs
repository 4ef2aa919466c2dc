use super::*;
use qdrant_agent_proto::v1::{CollectionInfo, ShardResult, Task, TaskPhase};

fn task(node: &str, version: &str, shard: u32) -> Task {
    let mut t = Task {
        task_id: format!("t-{node}"),
        backup_name: "b".into(),
        qdrant_version: version.into(),
        node_name: node.into(),
        peer_id: 7,
        collections: vec![CollectionInfo {
            name: "c".into(),
            config_json: "{\"params\":{}}".into(),
            aliases: vec![],
        }],
        results: vec![ShardResult {
            collection: "c".into(),
            shard_id: Some(shard),
            key: format!("{node}/c/{shard}.snapshot"),
            size: 1,
            sha256: "a".repeat(64),
            mode: "stream".into(),
            done: true,
            taken_at: String::new(),
        }],
        ..Default::default()
    };
    t.set_phase(TaskPhase::Succeeded);
    t
}

#[test]
fn nodes_of_one_backup_must_agree_and_have_succeeded() {
    let m = assemble(
        "b",
        "s",
        "e",
        &[task("n1", "1.18.3", 0), task("n2", "1.18.3", 1)],
    )
    .unwrap();
    assert_eq!(m.objects().count(), 2);
    let err = assemble(
        "b",
        "s",
        "e",
        &[task("n1", "1.18.3", 0), task("n2", "1.18.2", 1)],
    )
    .unwrap_err();
    assert!(err.to_string().contains("different Qdrant versions"));
    let mut failed = task("n2", "1.18.3", 1);
    failed.set_phase(TaskPhase::Failed);
    assert!(assemble("b", "s", "e", &[task("n1", "1.18.3", 0), failed]).is_err());
    assert!(assemble("other", "s", "e", &[task("n1", "1.18.3", 0)]).is_err());
    assert!(assemble("b", "s", "e", &[]).is_err());
}

#[test]
fn placement_records_every_node_and_replica_and_gives_objects_their_shard_keys() {
    use qdrant_agent_proto::v1::{
        ClusterNode, CollectionPlacement, ReplicaPlacement, ShardPlacement,
    };
    let mut m = assemble(
        "b",
        "s",
        "e",
        &[task("n1", "1.18.3", 0), task("n2", "1.18.3", 1)],
    )
    .unwrap();
    let replica = |peer_id| ReplicaPlacement {
        peer_id,
        state: "Active".into(),
    };
    let placement = [CollectionPlacement {
        name: "c".into(),
        shards: vec![
            ShardPlacement {
                shard_id: 0,
                replicas: vec![replica(7), replica(8)],
                shard_key_json: "\"eu\"".into(),
            },
            ShardPlacement {
                shard_id: 1,
                replicas: vec![replica(8), replica(9)],
                shard_key_json: "2".into(),
            },
        ],
    }];
    let nodes: Vec<ClusterNode> = ["n1", "n2", "n3"]
        .iter()
        .zip(7..)
        .map(|(n, p)| ClusterNode {
            name: n.to_string(),
            peer_id: p,
        })
        .collect();
    add_placement(&mut m, &placement, &nodes).unwrap();
    let names: Vec<&str> = m.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(
        names,
        ["n1", "n2", "n3"],
        "the idle node is in the topology"
    );
    let c = &m.collections[0];
    assert_eq!(c.placement.len(), 2);
    assert_eq!(c.placement[1].replicas[1].peer_id, 9);
    let keys: Vec<_> = c.objects.iter().map(|o| o.shard_key.clone()).collect();
    assert_eq!(
        keys,
        [Some(serde_json::json!("eu")), Some(serde_json::json!(2))]
    );
    // The manifest reads back with its placement.
    let back: Manifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(back, m);
}

mod ownership {
    use super::super::*;
    use crate::store::LocalStore;

    fn empty(name: &str) -> Manifest {
        Manifest {
            format: 1,
            backup_name: name.into(),
            qdrant_version: "1.18.3".into(),
            agent_version: "0".into(),
            started_at: String::new(),
            completed_at: String::new(),
            nodes: vec![],
            collections: vec![],
        }
    }

    async fn put(s: &LocalStore, key: &str) {
        s.put(key, bytes::Bytes::from_static(b"data"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_name_is_claimed_once_and_a_complete_backup_is_never_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().into());
        claim(&s, "p", "b", "uid-1").await.unwrap();
        // The same owner again (another pod's task, a retry) is fine.
        claim(&s, "p", "b", "uid-1").await.unwrap();
        let e = claim(&s, "p", "b", "uid-2").await.unwrap_err();
        assert_eq!(e.reason(), "BackupExists");
        assert!(e.to_string().contains("another backup (uid-1)"), "{e}");
        write(&s, "p", &empty("done")).await.unwrap();
        let e = claim(&s, "p", "done", "uid-3").await.unwrap_err();
        assert_eq!(e.reason(), "BackupExists");
        assert!(e.to_string().contains("restore it"), "{e}");
        // manifest.json is written once: a second writer is refused.
        assert_eq!(
            write(&s, "p", &empty("done")).await.unwrap_err().reason(),
            "BackupExists"
        );
    }

    #[tokio::test]
    async fn only_the_owner_deletes_or_commits_and_another_writers_backup_stays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().into());
        claim(&s, "p", "b", "uid-1").await.unwrap();
        put(&s, "p/b/pod-0/docs/0.snapshot").await;
        // A re-applied resource (another UID) must not delete it.
        let e = delete_backup(&s, "p", "b", "uid-2").await.unwrap_err();
        assert_eq!(e.reason(), "BackupNotOwned");
        assert_eq!(s.head("p/b/pod-0/docs/0.snapshot").await.unwrap(), Some(4));
        let e = commit(&s, "p", &empty("b"), "uid-2").await.unwrap_err();
        assert_eq!(e.reason(), "BackupNotOwned");
        // The owner commits: the marker stays with the backup. A retry
        // of a commit whose answer was lost succeeds; another owner's
        // is still refused.
        commit(&s, "p", &empty("b"), "uid-1").await.unwrap();
        commit(&s, "p", &empty("b"), "uid-1").await.unwrap();
        let e = commit(&s, "p", &empty("b"), "uid-2").await.unwrap_err();
        assert_eq!(e.reason(), "BackupNotOwned");
        assert_eq!(
            owner_of(&s, "p", "b").await.unwrap().as_deref(),
            Some("uid-1")
        );
        delete_backup(&s, "p", "b", "uid-1").await.unwrap();
        assert!(s.list("p/b/").await.unwrap().is_empty());

        // A backup from before markers: refused to an owner, deleted
        // on an unconditional request (deletionPolicy Delete).
        write(&s, "p", &empty("old")).await.unwrap();
        put(&s, "p/old/pod-0/docs/0.snapshot").await;
        let e = delete_backup(&s, "p", "old", "uid-1").await.unwrap_err();
        assert_eq!(e.reason(), "BackupNotOwned");
        delete_backup(&s, "p", "old", "").await.unwrap();
        assert!(s.list("p/old/").await.unwrap().is_empty());
    }
}

mod completeness {
    use super::super::*;
    use serde_json::json;

    fn object(shard: u32, key: Option<Value>, mode: ObjectMode) -> ObjectEntry {
        ObjectEntry {
            key: format!("n/c/{shard}.snapshot"),
            size: 1,
            sha256: String::new(),
            mode,
            shard_id: Some(shard),
            shard_key: key,
            node: "n".into(),
            peer_id: None,
            taken_at: String::new(),
            taken_with: None,
        }
    }

    fn collection(config: Value, objects: Vec<ObjectEntry>) -> CollectionEntry {
        CollectionEntry {
            name: "c".into(),
            config,
            aliases: vec![],
            objects,
            placement: Default::default(),
        }
    }

    #[test]
    fn every_shard_the_config_counts_must_be_there() {
        let three = json!({"params": {"shard_number": 3}});
        let all = (0..3)
            .map(|s| object(s, None, ObjectMode::Stream))
            .collect();
        assert_eq!(missing_shards(&collection(three.clone(), all)), None);
        let some = vec![
            object(0, None, ObjectMode::Stream),
            object(2, None, ObjectMode::Stream),
        ];
        assert_eq!(
            missing_shards(&collection(three.clone(), some)).as_deref(),
            Some("shards 1 of its 3 are missing")
        );
        assert!(missing_shards(&collection(three, vec![])).is_some());
        // Collection snapshots hold shards under no id: not counted.
        let file = vec![object(0, None, ObjectMode::File)];
        assert_eq!(
            missing_shards(&collection(json!({"params": {"shard_number": 3}}), file)),
            None
        );
    }

    #[test]
    fn under_custom_sharding_each_key_has_all_its_shards() {
        let cfg = json!({"params": {"shard_number": 2, "sharding_method": "custom"}});
        let objects = vec![
            object(0, Some(json!("acme")), ObjectMode::Stream),
            object(1, Some(json!("acme")), ObjectMode::Stream),
            object(2, Some(json!("globex")), ObjectMode::Stream),
        ];
        assert_eq!(
            missing_shards(&collection(cfg, objects)).as_deref(),
            Some("shard key \"globex\" has 1 of 2 shards")
        );
    }
}
