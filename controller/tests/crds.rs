//! The checked-in CRDs match the Rust types, and the manifests a user
//! applies parse as the kinds they claim to be.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use qdrant_operator::crd::*;
use std::path::PathBuf;

fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// Both installs, kustomize's and the Helm chart's, carry the CRDs the Rust
/// types generate.
#[test]
fn checked_in_crds_match_the_rust_types() {
    let chart = manifests().join("../charts/qdrant-operator/crds");
    for dir in [manifests().join("crds"), chart] {
        for (file, yaml) in rendered().unwrap() {
            let path = dir.join(&file);
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == yaml,
                "{} is out of date: run `cargo run -p qdrant-operator --bin crdgen`",
                path.display()
            );
        }
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(
            files,
            4,
            "{} holds exactly the generated CRDs",
            dir.display()
        );
    }
}

#[test]
fn every_crd_has_status_short_names_category_and_printer_columns() {
    let want = [
        ("QdrantCluster", "qc"),
        ("QdrantBackup", "qb"),
        ("QdrantBackupSchedule", "qbs"),
        ("QdrantRestore", "qr"),
    ];
    for (crd, (kind, short)) in all().iter().zip(want) {
        let path = manifests()
            .join("crds")
            .join(format!("{}.yaml", crd.spec.names.plural));
        let parsed: CustomResourceDefinition =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(parsed.spec.group, GROUP);
        assert_eq!(parsed.spec.names.kind, kind);
        assert_eq!(
            parsed.spec.names.short_names.as_deref(),
            Some(&[short.to_string()][..])
        );
        assert_eq!(
            parsed.spec.names.categories.as_deref(),
            Some(&["qdrant".to_string()][..])
        );
        let v = &parsed.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind} has a status subresource"
        );
        let cols: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(cols.contains(&"Age"), "{kind}: {cols:?}");
        assert!(
            cols.contains(&"Phase") || kind == "QdrantBackupSchedule",
            "{kind}: {cols:?}"
        );
    }
}

#[test]
fn cel_rules_guard_invalid_field_combinations() {
    let json = |crd: &CustomResourceDefinition| serde_json::to_string(crd).unwrap();
    assert!(json(&all()[0]).contains("self.replicas <= 1 || self.cluster.enabled"));
    assert!(json(&all()[3]).contains("has(self.backupRef) != has(self.source)"));
}

#[test]
fn examples_parse_as_their_kinds() {
    let read = |f: &str| std::fs::read_to_string(manifests().join("examples").join(f)).unwrap();
    let c: QdrantCluster = serde_yaml::from_str(&read("qdrantcluster.yaml")).unwrap();
    assert_eq!(c.spec.replicas, 3);
    assert!(c.spec.cluster.enabled);
    assert_eq!(
        c.spec.config.unwrap()["storage"]["performance"]["max_search_threads"],
        4
    );
    let b: QdrantBackup = serde_yaml::from_str(&read("qdrantbackup.yaml")).unwrap();
    assert_eq!(b.spec.deletion_policy, DeletionPolicy::Retain);
    assert_eq!(
        b.spec.storage.s3.credentials_secret_ref.unwrap().name,
        "backup-s3-credentials"
    );
    let s: QdrantBackupSchedule = serde_yaml::from_str(&read("qdrantbackupschedule.yaml")).unwrap();
    assert_eq!(s.spec.retention_policy.keep_daily, Some(7));
    assert_eq!(
        s.spec.backup_template.deletion_policy,
        DeletionPolicy::Delete,
        "scheduled backups default to Delete"
    );
    let r: QdrantRestore = serde_yaml::from_str(&read("qdrantrestore.yaml")).unwrap();
    assert_eq!(r.spec.collection_mapping["docs"], "docs-restored");
}

#[test]
fn a_minimal_cluster_gets_safe_defaults() {
    let c: QdrantCluster = serde_yaml::from_str(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {name: q}\nspec: {version: v1.18.3}\n",
    )
    .unwrap();
    assert_eq!(c.spec.replicas, 1);
    assert!(!c.spec.cluster.enabled);
    assert_eq!(c.spec.cluster.p2p_port, 6335);
    assert_eq!(c.spec.persistence.size, "10Gi");
    assert!(
        !c.spec.persistence.delete_claims_on_delete,
        "volumes are kept by default"
    );
    assert!(c.spec.agent.enabled);
    assert_eq!(c.spec.agent.port, 50051);
    // A hand-made backup keeps its data when the resource is deleted.
    let b: QdrantBackup = serde_yaml::from_str(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {name: b}\nspec: {clusterRef: {name: q}, storage: {s3: {bucket: bkt}}}\n",
    )
    .unwrap();
    assert_eq!(b.spec.deletion_policy, DeletionPolicy::Retain);
}

/// Every document under manifests/ parses as the Kubernetes type its
/// `kind` names; an unknown kind fails the test.
#[test]
fn every_manifest_parses_as_the_kind_it_claims() {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, rbac::v1 as rbac};
    use serde::Deserialize;
    fn check<T: serde::de::DeserializeOwned>(doc: &serde_yaml::Value, file: &std::path::Path) {
        if let Err(e) = serde_yaml::from_value::<T>(doc.clone()) {
            panic!(
                "{}: {} does not parse: {e}",
                file.display(),
                doc["kind"].as_str().unwrap_or("?")
            );
        }
    }
    let mut files = vec![];
    let mut dirs = vec![manifests()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    let mut kinds = std::collections::BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_yaml::Value::deserialize(doc).unwrap();
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no kind", file.display()))
                .to_string();
            match kind.as_str() {
                "Kustomization" => assert!(
                    doc["resources"]
                        .as_sequence()
                        .is_some_and(|r| !r.is_empty())
                ),
                "CustomResourceDefinition" => check::<CustomResourceDefinition>(&doc, file),
                "Namespace" => check::<core::Namespace>(&doc, file),
                "ServiceAccount" => check::<core::ServiceAccount>(&doc, file),
                "ClusterRole" => check::<rbac::ClusterRole>(&doc, file),
                "ClusterRoleBinding" => check::<rbac::ClusterRoleBinding>(&doc, file),
                "Role" => check::<rbac::Role>(&doc, file),
                "RoleBinding" => check::<rbac::RoleBinding>(&doc, file),
                "Deployment" => check::<apps::Deployment>(&doc, file),
                "Service" => check::<core::Service>(&doc, file),
                "MutatingWebhookConfiguration" => check::<
                    k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
                >(&doc, file),
                "QdrantCluster" => check::<QdrantCluster>(&doc, file),
                "QdrantBackup" => check::<QdrantBackup>(&doc, file),
                "QdrantBackupSchedule" => check::<QdrantBackupSchedule>(&doc, file),
                "QdrantRestore" => check::<QdrantRestore>(&doc, file),
                // The Prometheus Operator's kinds (manifests/monitoring): no
                // Rust type here, so their shape is checked by hand.
                "PodMonitor" => {
                    assert_eq!(doc["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
                    assert!(doc["spec"]["selector"]["matchLabels"].is_mapping());
                    let endpoints = doc["spec"]["podMetricsEndpoints"].as_sequence().unwrap();
                    assert!(endpoints.iter().all(|e| e["port"].is_string()));
                }
                "PrometheusRule" => {
                    assert_eq!(doc["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
                    assert!(
                        doc["spec"]["groups"]
                            .as_sequence()
                            .is_some_and(|g| !g.is_empty())
                    );
                }
                other => panic!("{}: unexpected kind {other}", file.display()),
            }
            kinds.insert(kind);
        }
    }
    for k in [
        "CustomResourceDefinition",
        "Deployment",
        "ClusterRole",
        "QdrantCluster",
        "QdrantRestore",
    ] {
        assert!(kinds.contains(k), "no {k} under manifests/");
    }
}

/// The operator's Deployment runs non-root with a read-only root
/// filesystem and probes on the endpoints the binary serves.
#[test]
fn the_operator_deployment_is_locked_down() {
    let text = std::fs::read_to_string(manifests().join("operator/deployment.yaml")).unwrap();
    let d: k8s_openapi::api::apps::v1::Deployment = serde_yaml::from_str(&text).unwrap();
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        c.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    assert!(c.resources.as_ref().unwrap().requests.is_some());
}

/// Every variable the Deployment sets is one the binary reads, and the
/// image variables hold the binary's own defaults, so an edit to either
/// side cannot drift silently.
#[test]
fn the_deployment_sets_only_variables_the_operator_reads() {
    let text = std::fs::read_to_string(manifests().join("operator/deployment.yaml")).unwrap();
    let d: k8s_openapi::api::apps::v1::Deployment = serde_yaml::from_str(&text).unwrap();
    let env = d.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let help = std::process::Command::new(test_support::stack::workspace_bin("qdrant-operator"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).replace('\n', " ");
    for e in &env {
        assert!(
            help.contains(&format!("[env: {}", e.name)),
            "the operator reads no {}: {help}",
            e.name
        );
    }
    let value = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    let images = qdrant_operator::cluster::render::Images::default();
    assert_eq!(value("QDRANT_IMAGE"), Some(images.qdrant));
    assert_eq!(value("AGENT_IMAGE"), Some(images.agent));
}
