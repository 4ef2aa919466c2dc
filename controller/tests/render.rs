//! The objects rendered from a QdrantCluster: a golden file of the whole
//! StatefulSet (run with UPDATE_SNAPSHOTS=1 to rewrite it on purpose) and
//! the properties that matter, asserted one by one.

use qdrant_operator::cluster::render::*;
use qdrant_operator::crd::QdrantCluster;
use std::path::PathBuf;

fn cluster(yaml: &str) -> QdrantCluster {
    let mut c: QdrantCluster = serde_yaml::from_str(yaml).unwrap();
    c.metadata.uid = Some("0d9c1b4e-0000-4000-8000-000000000001".into());
    c
}

/// The pod template's spec of the StatefulSet rendered for `c`.
fn pod(c: &QdrantCluster, images: &Images) -> k8s_openapi::api::core::v1::PodSpec {
    statefulset(c, images).spec.unwrap().template.spec.unwrap()
}

fn example() -> QdrantCluster {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/qdrantcluster.yaml");
    cluster(&std::fs::read_to_string(path).unwrap())
}

#[test]
fn statefulset_matches_its_golden_file() {
    let rendered = serde_yaml::to_string(&statefulset(&example(), &Images::default())).unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/statefulset.yaml");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        golden == rendered,
        "rendered StatefulSet differs from {}; review and rerun with UPDATE_SNAPSHOTS=1\n{rendered}",
        path.display()
    );
}

#[test]
fn the_agent_sidecar_shares_snapshots_runs_as_qdrant_and_needs_no_api_access() {
    let sts = statefulset(&example(), &Images::default());
    let pod = sts.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.service_account_name.as_deref(), Some("vectors-qdrant"));
    let [qdrant, agent] = &pod.containers[..] else {
        panic!("two containers")
    };
    assert_eq!(qdrant.image.as_deref(), Some("qdrant/qdrant:v1.18.3"));
    let mounts = |c: &k8s_openapi::api::core::v1::Container| -> Vec<(String, String)> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect()
    };
    assert!(mounts(qdrant).contains(&("snapshots".into(), SNAPSHOTS_PATH.into())));
    assert!(mounts(agent).contains(&("snapshots".into(), SNAPSHOTS_PATH.into())));
    // With a read-only root filesystem Qdrant needs a writable place for its init marker.
    assert!(mounts(qdrant).contains(&("init".into(), "/qdrant/init".into())));
    assert!(
        qdrant
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "QDRANT_INIT_FILE_PATH"
                && e.value.as_deref() == Some("/qdrant/init/.qdrant-initialized"))
    );
    for c in [qdrant, agent] {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            (sc.run_as_user, sc.run_as_group),
            (Some(QDRANT_UID), Some(QDRANT_GID)),
            "{}",
            c.name
        );
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
    }
    let args = agent.args.clone().unwrap().join(" ");
    assert!(
        args.starts_with("serve --listen 0.0.0.0:50051 --qdrant-url http://127.0.0.1:6333"),
        "{args}"
    );
    assert!(
        args.contains("--token-file /var/run/qdrant-agent/token") && !args.contains("--insecure")
    );
    // Mutual TLS with the operator's CA; plaintext health on its own port
    // for grpcurl.
    assert!(args.contains("--tls-cert /var/run/qdrant-agent-tls/tls.crt --tls-key /var/run/qdrant-agent-tls/tls.key --tls-client-ca /var/run/qdrant-agent-tls/ca.crt"), "{args}");
    assert!(args.contains("--health-listen 0.0.0.0:50052"));
    // The sidecar never gates the pod's readiness: no probe, and its
    // Secrets are optional (it waits for them instead of failing).
    assert!(agent.readiness_probe.is_none() && agent.liveness_probe.is_none());
    assert!(args.contains("--wait-for-credentials"), "{args}");
    let optional: Vec<Option<bool>> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref().map(|s| s.optional))
        .collect();
    assert_eq!(optional, [Some(true), Some(true)]);
    assert!(mounts(agent).contains(&("agent-tls".into(), "/var/run/qdrant-agent-tls".into())));
    // The API key reaches both containers from its Secret, never as a literal.
    for (c, var) in [
        (qdrant, "QDRANT__SERVICE__API_KEY"),
        (agent, "QDRANT_API_KEY"),
    ] {
        let e = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == var)
            .unwrap_or_else(|| panic!("{var}"));
        assert!(e.value.is_none());
        assert_eq!(
            e.value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "qdrant-api-key"
        );
    }
}

#[test]
fn operator_wide_images_apply_unless_the_cluster_names_its_own() {
    let images = Images {
        qdrant: "registry.example.com/mirror/qdrant".into(),
        agent: "registry.example.com/mirror/qdrant-agent:0.1.0".into(),
    };
    let image_of = |c: &QdrantCluster| -> Vec<String> {
        pod(c, &images)
            .containers
            .into_iter()
            .map(|c| c.image.unwrap())
            .collect()
    };
    let plain = cluster(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {name: q, namespace: ns}\nspec: {version: v1.18.3}\n",
    );
    assert_eq!(
        image_of(&plain),
        [
            "registry.example.com/mirror/qdrant:v1.18.3",
            "registry.example.com/mirror/qdrant-agent:0.1.0"
        ]
    );
    let own = cluster(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {name: q, namespace: ns}\n\
         spec: {version: v1.18.3, image: own/qdrant, agent: {image: own/agent:1}}\n",
    );
    assert_eq!(image_of(&own), ["own/qdrant:v1.18.3", "own/agent:1"]);
}

#[test]
fn the_agents_memory_follows_its_budget_unless_resources_are_given() {
    let agent = |spec: &str| {
        let c = cluster(&format!(
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {{name: q, namespace: ns}}\n\
             spec: {{version: v1.18.3, agent: {{{spec}}}}}\n"
        ));
        pod(&c, &Images::default())
            .containers
            .into_iter()
            .find(|c| c.name == "agent")
            .unwrap()
    };
    let memory = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.clone().unwrap();
        let of = |m: Option<std::collections::BTreeMap<String, _>>| {
            m.and_then(|m| m.get("memory").cloned())
                .map(|q: k8s_openapi::apimachinery::pkg::api::resource::Quantity| q.0)
        };
        (of(r.requests), of(r.limits))
    };
    let budget = |c: &k8s_openapi::api::core::v1::Container| {
        c.env
            .clone()
            .unwrap()
            .into_iter()
            .find(|e| e.name == "QDRANT_AGENT_MEMORY_BUDGET")
            .and_then(|e| e.value)
    };
    let default = agent("enabled: true");
    assert_eq!(budget(&default).as_deref(), Some("256MiB"));
    assert_eq!(
        memory(&default),
        (Some("320Mi".into()), Some("320Mi".into()))
    );
    let small = agent("memoryBudgetMiB: 64");
    assert_eq!(budget(&small).as_deref(), Some("64MiB"));
    assert_eq!(memory(&small), (Some("128Mi".into()), Some("128Mi".into())));
    let own = agent("resources: {limits: {memory: 1Gi}}");
    assert_eq!(memory(&own), (None, Some("1Gi".into())));
}

#[test]
fn agent_off_means_no_sidecar_and_no_token_volume() {
    let c = cluster(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {name: q, namespace: ns}\nspec: {version: v1.18.3, agent: {enabled: false}}\n",
    );
    let pod = pod(&c, &Images::default());
    assert_eq!(pod.containers.len(), 1);
    assert!(!pod.volumes.unwrap().iter().any(|v| v.name == "agent-token"));
}

#[test]
fn distributed_mode_bootstraps_from_pod_zero_and_exposes_p2p() {
    let c = example();
    let script = start_script(&c);
    assert!(script.contains("exec ./entrypoint.sh --uri \"$SELF\""));
    assert!(script.contains("--bootstrap \"http://vectors-0.vectors-headless:6335\""));
    let headless = headless_service(&c).spec.unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.publish_not_ready_addresses, Some(true));
    assert!(headless.ports.unwrap().iter().any(|p| p.port == 6335));
    let client = client_service(&c).spec.unwrap();
    let ports: Vec<i32> = client.ports.unwrap().iter().map(|p| p.port).collect();
    assert_eq!(ports, [6333, 6334]);

    let single = cluster(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {name: q, namespace: ns}\nspec: {version: v1.18.3}\n",
    );
    assert_eq!(start_script(&single), "#!/bin/bash\nexec ./entrypoint.sh\n");
    assert!(
        !headless_service(&single)
            .spec
            .unwrap()
            .ports
            .unwrap()
            .iter()
            .any(|p| p.name.as_deref() == Some("p2p"))
    );
}

#[test]
fn user_config_is_merged_but_cannot_move_paths_or_ports() {
    let c = cluster(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {name: q, namespace: ns}\n\
         spec:\n  version: v1.18.3\n  config:\n    storage: {storage_path: /elsewhere, performance: {max_search_threads: 4}}\n    service: {http_port: 1, max_request_size_mb: 64}\n    log_level: DEBUG\n",
    );
    let cfg = qdrant_config(&c);
    assert_eq!(cfg["storage"]["storage_path"], STORAGE_PATH);
    assert_eq!(cfg["storage"]["snapshots_path"], SNAPSHOTS_PATH);
    assert_eq!(cfg["storage"]["performance"]["max_search_threads"], 4);
    assert_eq!(cfg["service"]["http_port"], 6333);
    assert_eq!(cfg["service"]["max_request_size_mb"], 64);
    assert_eq!(cfg["log_level"], "DEBUG");
    assert_eq!(cfg["cluster"]["enabled"], false);
}

#[test]
fn every_object_is_owned_by_the_cluster_and_labelled() {
    let c = example();
    let metas = [
        statefulset(&c, &Images::default()).metadata,
        headless_service(&c).metadata,
        client_service(&c).metadata,
        config_map(&c).metadata,
        service_account(&c).metadata,
        pod_disruption_budget(&c).metadata,
        agent_token_secret(owned_meta(&c, Names::of(&c).agent_token()), "t").metadata,
    ];
    for m in metas {
        let owners = m.owner_references.unwrap();
        assert_eq!(owners.len(), 1, "{:?}", m.name);
        assert_eq!(
            (
                owners[0].kind.as_str(),
                owners[0].name.as_str(),
                owners[0].controller
            ),
            ("QdrantCluster", "vectors", Some(true))
        );
        assert_eq!(m.namespace.as_deref(), Some("search"));
        assert_eq!(
            m.labels.unwrap()["app.kubernetes.io/managed-by"],
            "qdrant-operator"
        );
    }
    assert_eq!(
        service_account(&c).automount_service_account_token,
        Some(false)
    );
    assert_eq!(endpoint(&c), "http://vectors.search.svc:6333");
}

#[test]
fn a_config_change_changes_the_pod_template_so_pods_roll() {
    let c = example();
    let ann = |c: &QdrantCluster| {
        statefulset(c, &Images::default())
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[ANN_CONFIG]
            .clone()
    };
    assert_eq!(ann(&c), ann(&example()), "stable for the same spec");
    let mut changed = example();
    changed.spec.config =
        Some(serde_json::json!({"storage": {"performance": {"max_search_threads": 2}}}));
    assert_ne!(ann(&c), ann(&changed));
}

#[test]
fn pods_spread_over_machines_pull_with_secrets_and_evict_when_unhealthy() {
    let mut c = cluster(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {name: one, namespace: search}\n\
         spec: {version: v1.18.3, imagePullSecrets: [{name: registry}], snapshotsSizeLimit: 20Gi}\n",
    );
    // The snapshots emptyDir has its limit, and the agent counts under it.
    let sts = statefulset(&c, &Images::default());
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let snapshots = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "snapshots")
        .unwrap();
    assert_eq!(
        snapshots
            .empty_dir
            .as_ref()
            .unwrap()
            .size_limit
            .as_ref()
            .map(|q| q.0.as_str()),
        Some("20Gi")
    );
    let agent = pod.containers.iter().find(|c| c.name == "agent").unwrap();
    let args = agent.args.as_ref().unwrap().join(" ");
    assert!(args.contains("--snapshots-size-limit 20Gi"), "{args}");
    let sts = statefulset(&c, &Images::default());
    let spec = sts.spec.unwrap();
    // Parallel even for one node: the field is immutable, and the cluster
    // may become distributed later.
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let pod = spec.template.spec.unwrap();
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    let soft = &anti
        .preferred_during_scheduling_ignored_during_execution
        .unwrap()[0];
    assert_eq!(
        soft.pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    assert!(
        anti.required_during_scheduling_ignored_during_execution
            .is_none(),
        "never left Pending for it"
    );
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "registry");
    let pdb = qdrant_operator::cluster::render::pod_disruption_budget(&c);
    assert_eq!(
        pdb.spec.unwrap().unhealthy_pod_eviction_policy.as_deref(),
        Some("AlwaysAllow")
    );
    // A user's own affinity replaces the default.
    c.spec.affinity = Some(Default::default());
    let sts = statefulset(&c, &Images::default());
    assert_eq!(
        sts.spec.unwrap().template.spec.unwrap().affinity,
        Some(Default::default())
    );
}

#[test]
fn an_operator_upgrade_keeps_the_agent_image_a_cluster_runs() {
    use qdrant_operator::cluster::render::agent_image;
    let mut c = example();
    let old = Images {
        agent: "registry.example.com/qdrant-agent:0.1.0".into(),
        ..Default::default()
    };
    let new = Images {
        agent: "registry.example.com/qdrant-agent:0.2.0".into(),
        ..Default::default()
    };
    assert_eq!(
        agent_image(&c, &old),
        old.agent,
        "a new cluster runs the operator's"
    );
    c.status = Some(qdrant_operator::crd::QdrantClusterStatus {
        agent_image: Some(old.agent.clone()),
        ..Default::default()
    });
    assert_eq!(
        agent_image(&c, &new),
        old.agent,
        "the operator was upgraded: no roll"
    );
    c.metadata.annotations =
        Some([("qdrant.io/upgrade-agent".to_string(), "true".to_string())].into());
    assert_eq!(agent_image(&c, &new), new.agent, "asked for");
    c.metadata.annotations = None;
    c.spec.agent.image = Some("mine/agent:1".into());
    assert_eq!(agent_image(&c, &new), "mine/agent:1");
}

#[test]
fn an_operator_upgrade_leaves_a_running_clusters_sidecar_as_it_is() {
    let wired = |c: &QdrantCluster| {
        let p = pod(c, &Images::default());
        let agent = p
            .containers
            .iter()
            .find(|c| c.name == AGENT_CONTAINER)
            .unwrap();
        let env = |n: &str| agent.env.iter().flatten().any(|e| e.name == n);
        let port = agent
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some("agent-metrics"));
        let mount = agent
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "storage" && m.read_only == Some(true));
        assert_eq!(env("QDRANT_STORAGE_DIR"), mount);
        assert_eq!(env("QDRANT_AGENT_METRICS_LISTEN"), port);
        assert_eq!(wiring_of(agent), u32::from(mount));
        mount && port
    };
    // A new cluster gets this version's sidecar.
    assert!(wired(&example()));
    // One an earlier version made (its status records the agent image its
    // pods run, and no wiring) keeps its sidecar: no pod restarts.
    let mut earlier = example();
    earlier.status = Some(qdrant_operator::crd::QdrantClusterStatus {
        agent_image: Some("ghcr.io/qdrant-operator/qdrant-agent:0.0.9".into()),
        ..Default::default()
    });
    assert!(!wired(&earlier));
    // ... until it moves to the operator's agent, or names another image.
    let mut upgraded = earlier.clone();
    upgraded.metadata.annotations =
        Some([("qdrant.io/upgrade-agent".to_string(), "true".to_string())].into());
    assert!(wired(&upgraded));
    let mut named = earlier.clone();
    named.spec.agent.image = Some("registry.example.com/qdrant-agent:1.0.0".into());
    assert!(wired(&named));
    // A cluster whose pods run the wiring keeps it, whatever its image.
    let mut recorded = earlier;
    recorded.status.as_mut().unwrap().agent_wiring = Some(AGENT_WIRING);
    assert!(wired(&recorded));
}
