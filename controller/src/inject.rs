//! Which agent sidecar a Qdrant pod the operator did not render (Qdrant's
//! own Helm chart, a hand-written StatefulSet) gets from the injection
//! webhook, as a JSON patch. Pure: the webhook adds the I/O (the workload's
//! token and TLS Secrets) and answers the API server.

pub use crate::names::{CONTAINER, OPT_IN, PORT, SKIPPED, tls_secret, token_secret};
use crate::sidecar::{self, AgentWiring};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, SecurityContext, VolumeMount};
use serde_json::{Value, json};

/// The injected agent's memory budget (its container gets 64 MiB more).
pub const MEMORY_BUDGET_MIB: u32 = 256;
const TOKEN_VOLUME: &str = "qdrant-agent-token";
const TLS_VOLUME: &str = "qdrant-agent-tls";
const QDRANT_HTTP_PORT: i32 = 6333;

/// The agent a workload's pods get.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The StatefulSet the pod belongs to: its Secrets are named after it.
    pub workload: String,
    /// JSON patch operations (RFC 6902) that add the agent.
    pub patch: Vec<Value>,
}

/// Whether `q` is a quantity the agent reads: digits with an optional
/// binary suffix (Ki, Mi, Gi, Ti).
pub fn plain_quantity(q: &str) -> bool {
    let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &q[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && matches!(unit, "" | "Ki" | "Mi" | "Gi" | "Ti")
}

/// The patch that adds the agent to `pod`; `Ok(None)` when it has one;
/// `Err` says why this pod cannot get one (it is then admitted unchanged).
pub fn plan(pod: &Pod, image: &str, memory_budget_mib: u32) -> Result<Option<Plan>, String> {
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    if spec.containers.iter().any(|c| c.name == CONTAINER) {
        return Ok(None);
    }
    let workload = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "StatefulSet")
        .map(|o| o.name.clone())
        .ok_or("the pod belongs to no StatefulSet; the agent is injected into a StatefulSet's pods only")?;
    let (qdrant, snapshots) =
        spec.containers
            .iter()
            .find_map(|c| {
                let m =
                    c.volume_mounts.iter().flatten().find(|m| {
                        m.mount_path.trim_end_matches('/') == crate::names::SNAPSHOTS_PATH
                    })?;
                Some((c, m.clone()))
            })
            .ok_or_else(|| {
                format!(
                    "no container mounts Qdrant's snapshots directory {}; the agent shares it",
                    crate::names::SNAPSHOTS_PATH
                )
            })?;
    if serves_https(qdrant) {
        return Err("Qdrant serves HTTPS (service.enable_tls), and the agent speaks plain HTTP to the Qdrant beside it".into());
    }
    let (env, extra_mounts) = api_key(qdrant);
    let container = sidecar::agent_sidecar(&AgentWiring {
        image: image.to_string(),
        port: PORT,
        memory_budget_mib,
        resources: None,
        env,
        extra_mounts,
        qdrant_http_port: http_port(qdrant),
        // An emptyDir's sizeLimit (Qdrant's chart sets none by default).
        snapshots_size_limit: spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == snapshots.name)
            .and_then(|v| v.empty_dir.as_ref()?.size_limit.as_ref())
            .map(|q| q.0.clone())
            .filter(|q| crate::inject::plain_quantity(q)),
        snapshots: VolumeMount {
            read_only: None,
            ..snapshots
        },
        // The operator scales no StatefulSet it did not make.
        storage: None,
        metrics: true,
        token_volume: TOKEN_VOLUME.into(),
        tls_volume: TLS_VOLUME.into(),
        security_context: security_context(pod, qdrant),
    });
    let container = Container {
        name: CONTAINER.into(),
        ..container
    };
    // With the pod's fsGroup the kubelet makes the 0400 files readable by
    // that group, which the agent has. Without one they stay root's own,
    // and the agent (never root) reads them only if every user may: they
    // are mounted in the agent's container alone.
    let mode = if spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .is_some()
    {
        0o400
    } else {
        0o444
    };
    let volumes = [
        sidecar::secret_volume(TOKEN_VOLUME, token_secret(&workload), mode),
        sidecar::secret_volume(TLS_VOLUME, tls_secret(&workload), mode),
    ];
    let mut patch = vec![json!({"op": "add", "path": "/spec/containers/-", "value": container})];
    if spec.volumes.is_none() {
        patch.push(json!({"op": "add", "path": "/spec/volumes", "value": []}));
    }
    for v in volumes {
        patch.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
    }
    Ok(Some(Plan { workload, patch }))
}

/// The JSON patch that records on a pod why it got no agent.
pub fn skipped_patch(pod: &serde_json::Value, why: &str) -> Vec<Value> {
    if pod["metadata"]["annotations"].is_object() {
        vec![json!({"op": "add",
            "path": format!("/metadata/annotations/{}", SKIPPED.replace('~', "~0").replace('/', "~1")),
            "value": why})]
    } else {
        vec![json!({"op": "add", "path": "/metadata/annotations", "value": {SKIPPED: why}})]
    }
}

/// Whether Qdrant in `c` serves its REST API over TLS, as Qdrant's Helm
/// chart shows it (`config.service.enable_tls` sets its probes' scheme to
/// HTTPS) or its environment sets it.
fn serves_https(c: &Container) -> bool {
    let env_tls = c.env.iter().flatten().any(|e| {
        e.name == "QDRANT__SERVICE__ENABLE_TLS"
            && e.value
                .as_deref()
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    });
    let probe_tls = [&c.readiness_probe, &c.liveness_probe, &c.startup_probe]
        .into_iter()
        .flatten()
        .filter_map(|p| p.http_get.as_ref())
        .any(|g| g.scheme.as_deref() == Some("HTTPS"));
    env_tls || probe_tls
}

/// Qdrant's config folder in its image, where its Helm chart mounts
/// `production.yaml` (its `config:` values) and `local.yaml` (its API key).
pub const CONFIG_DIR: &str = "/qdrant/config";
/// Where Qdrant's Helm chart mounts the config file that holds the API key.
pub const LOCAL_CONFIG: &str = "/qdrant/config/local.yaml";

/// What the agent needs to read Qdrant's configuration the way Qdrant does
/// (`qdrant_agent::qdrant_config`): Qdrant's `QDRANT__*` variables and its
/// RUN_MODE, handed on as the same values or Secret references, and every
/// file Qdrant's container mounts into its config folder, read-only at the
/// same path (never copied out of its Secret or ConfigMap). Files baked
/// into Qdrant's image are not seen; its `config/config.yaml` sets no key.
fn api_key(qdrant: &Container) -> (Vec<EnvVar>, Vec<VolumeMount>) {
    let mut env = vec![EnvVar {
        name: "QDRANT_CONFIG_DIR".into(),
        value: Some(CONFIG_DIR.into()),
        ..Default::default()
    }];
    for e in qdrant.env.iter().flatten() {
        if e.name.starts_with("QDRANT__") {
            env.push(e.clone());
        } else if e.name == "RUN_MODE" {
            env.push(EnvVar {
                name: "QDRANT_RUN_MODE".into(),
                ..e.clone()
            });
        }
    }
    let mounts = qdrant
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| {
            let p = m.mount_path.trim_end_matches('/');
            p == CONFIG_DIR || p.starts_with(&format!("{CONFIG_DIR}/"))
        })
        .map(|m| VolumeMount {
            read_only: Some(true),
            ..m.clone()
        })
        .collect();
    (env, mounts)
}

fn http_port(qdrant: &Container) -> i32 {
    qdrant
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .map_or(QDRANT_HTTP_PORT, |p| p.container_port)
}

/// Qdrant's user and group (the container's, else the pod's), so the agent
/// reads and removes the snapshot files Qdrant writes; otherwise locked
/// down as the operator's own pods are.
fn security_context(pod: &Pod, qdrant: &Container) -> SecurityContext {
    let own = qdrant.security_context.as_ref();
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let user = own
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user));
    let group = own
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_sc.and_then(|s| s.run_as_group));
    sidecar::restricted_as(user, group)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as Qdrant's Helm chart renders it (container `qdrant`, the
    /// snapshots volume at /qdrant/snapshots, uid 1000), with the key in
    /// the environment.
    fn chart_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "qdrant-0", "namespace": "vectors",
                "labels": {OPT_IN: "true"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "name": "qdrant", "uid": "u-1", "controller": true}]},
            "spec": {
                "securityContext": {"fsGroup": 3000},
                "containers": [{
                    "name": "qdrant", "image": "qdrant/qdrant:v1.18.3",
                    "command": ["/bin/bash", "-c"], "args": ["./config/initialize.sh"],
                    "env": [{"name": "QDRANT__SERVICE__API_KEY",
                        "valueFrom": {"secretKeyRef": {"name": "qdrant-apikey", "key": "api-key"}}}],
                    "ports": [{"name": "http", "containerPort": 6333}, {"name": "grpc", "containerPort": 6334}],
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 2000, "runAsNonRoot": true},
                    "volumeMounts": [
                        {"name": "qdrant-storage", "mountPath": "/qdrant/storage"},
                        {"name": "qdrant-snapshots", "mountPath": "/qdrant/snapshots"}]
                }],
                "volumes": [{"name": "qdrant-snapshots", "emptyDir": {}}]
            }
        }))
        .unwrap()
    }

    fn patched(pod: &Pod, plan: &Plan) -> Pod {
        let mut v = serde_json::to_value(pod).unwrap();
        let ops: json_patch::Patch =
            serde_json::from_value(Value::Array(plan.patch.clone())).unwrap();
        json_patch::patch(&mut v, &ops).unwrap();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_chart_pod_gets_the_agent_wired_to_its_qdrant() {
        let pod = chart_pod();
        let plan = plan(&pod, "registry.example.com/qdrant-agent:0.1.0", 256)
            .unwrap()
            .unwrap();
        assert_eq!(plan.workload, "qdrant");
        let p = patched(&pod, &plan);
        let spec = p.spec.clone().unwrap();
        let agent = spec
            .containers
            .iter()
            .find(|c| c.name == CONTAINER)
            .unwrap();
        assert_eq!(
            agent.image.as_deref(),
            Some("registry.example.com/qdrant-agent:0.1.0")
        );
        let mounts: Vec<(&str, &str)> = agent
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert!(
            mounts.contains(&("qdrant-snapshots", "/qdrant/snapshots")),
            "{mounts:?}"
        );
        let key = agent
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "QDRANT__SERVICE__API_KEY")
            .unwrap();
        let r = key
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("qdrant-apikey", "api-key")
        );
        let sc = agent.security_context.as_ref().unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1000), Some(2000)));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        // The agent never gates the pod's readiness (no probe, no required
        // Secret), so Qdrant's traffic never depends on it.
        assert!(agent.readiness_probe.is_none() && agent.liveness_probe.is_none());
        let args = agent.args.as_ref().unwrap();
        assert!(args.contains(&"--wait-for-credentials".to_string()));
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--health-listen" && w[1] == format!("0.0.0.0:{}", PORT + 1))
        );
        let secrets: Vec<(String, Option<bool>)> = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| {
                let s = v.secret.as_ref()?;
                Some((s.secret_name.clone()?, s.optional))
            })
            .collect();
        assert_eq!(
            secrets,
            [
                ("qdrant-agent-token".to_string(), Some(true)),
                ("qdrant-agent-tls".to_string(), Some(true))
            ]
        );
        // Admitted again (a reinvocation), it gets nothing more.
        assert_eq!(plan_again(&p), None);
    }

    fn plan_again(pod: &Pod) -> Option<Plan> {
        plan(pod, "img", 256).unwrap()
    }

    #[test]
    fn pods_the_agent_cannot_serve_are_named_with_the_reason() {
        let mut pod = chart_pod();
        pod.metadata.owner_references = None;
        assert!(
            plan(&pod, "img", 256)
                .unwrap_err()
                .contains("no StatefulSet")
        );
        let mut pod = chart_pod();
        pod.spec.as_mut().unwrap().containers[0].volume_mounts = None;
        assert!(
            plan(&pod, "img", 256)
                .unwrap_err()
                .contains("/qdrant/snapshots")
        );
        // The chart's `config.service.enable_tls` turns its probes to HTTPS.
        let mut pod = chart_pod();
        pod.spec.as_mut().unwrap().containers[0].readiness_probe = Some(
            serde_json::from_value(
                json!({"httpGet": {"path": "/readyz", "port": 6333, "scheme": "HTTPS"}}),
            )
            .unwrap(),
        );
        assert!(plan(&pod, "img", 256).unwrap_err().contains("HTTPS"));
    }

    #[test]
    fn why_a_pod_got_no_agent_is_recorded_on_it() {
        let mut pod = serde_json::to_value(chart_pod()).unwrap();
        let ops: json_patch::Patch =
            serde_json::from_value(Value::Array(skipped_patch(&pod, "no snapshots"))).unwrap();
        json_patch::patch(&mut pod, &ops).unwrap();
        assert_eq!(pod["metadata"]["annotations"][SKIPPED], "no snapshots");
        // With annotations already there, they are kept.
        pod["metadata"]["annotations"] = json!({"a": "b"});
        let ops: json_patch::Patch =
            serde_json::from_value(Value::Array(skipped_patch(&pod, "why"))).unwrap();
        json_patch::patch(&mut pod, &ops).unwrap();
        assert_eq!(
            pod["metadata"]["annotations"],
            json!({"a": "b", SKIPPED: "why"})
        );
    }

    /// The chart's own ways: `apiKey` in a Secret mounted as local.yaml,
    /// `config:` values in a ConfigMap mounted as production.yaml. The
    /// agent mounts both where Qdrant does and reads them as Qdrant does.
    #[test]
    fn every_file_in_qdrants_config_folder_reaches_the_agent_through_the_same_mount() {
        let mut pod = chart_pod();
        let q = &mut pod.spec.as_mut().unwrap().containers[0];
        q.env = Some(vec![EnvVar {
            name: "RUN_MODE".into(),
            value: Some("staging".into()),
            ..Default::default()
        }]);
        q.volume_mounts.as_mut().unwrap().extend([
            VolumeMount {
                name: "qdrant-secret".into(),
                mount_path: LOCAL_CONFIG.into(),
                sub_path: Some("local.yaml".into()),
                ..Default::default()
            },
            VolumeMount {
                name: "qdrant-config".into(),
                mount_path: "/qdrant/config/production.yaml".into(),
                sub_path: Some("production.yaml".into()),
                ..Default::default()
            },
        ]);
        let p = patched(&pod, &plan(&pod, "img", 256).unwrap().unwrap());
        let spec = p.spec.unwrap();
        let agent = spec
            .containers
            .iter()
            .find(|c| c.name == CONTAINER)
            .unwrap();
        let file = agent
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == LOCAL_CONFIG)
            .unwrap();
        assert_eq!(
            (file.name.as_str(), file.sub_path.as_deref(), file.read_only),
            ("qdrant-secret", Some("local.yaml"), Some(true))
        );
        assert!(
            agent
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/qdrant/config/production.yaml"
                    && m.read_only == Some(true))
        );
        assert!(
            !agent
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/qdrant/storage"),
            "only the config folder's files"
        );
        let env: Vec<(&str, Option<&str>)> = agent
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert!(
            env.contains(&("QDRANT_CONFIG_DIR", Some(CONFIG_DIR))),
            "{env:?}"
        );
        assert!(
            env.contains(&("QDRANT_RUN_MODE", Some("staging"))),
            "{env:?}"
        );
    }

    /// Without the pod's fsGroup, Secret files are root's: the agent's own
    /// are then readable by every user, or it could never read them.
    #[test]
    fn without_an_fs_group_the_agents_secret_files_are_readable_by_its_user() {
        let modes = |pod: &Pod| -> Vec<Option<i32>> {
            patched(pod, &plan(pod, "img", 256).unwrap().unwrap())
                .spec
                .unwrap()
                .volumes
                .unwrap()
                .iter()
                .filter_map(|v| v.secret.as_ref().map(|s| s.default_mode))
                .collect()
        };
        assert_eq!(modes(&chart_pod()), [Some(0o400), Some(0o400)]);
        let mut pod = chart_pod();
        pod.spec.as_mut().unwrap().security_context = None;
        assert_eq!(modes(&pod), [Some(0o444), Some(0o444)]);
    }

    #[test]
    fn a_pod_without_volumes_gets_the_list_created() {
        let mut pod = chart_pod();
        pod.spec.as_mut().unwrap().volumes = None;
        let p = patched(&pod, &plan(&pod, "img", 256).unwrap().unwrap());
        assert_eq!(p.spec.unwrap().volumes.unwrap().len(), 2);
    }
}
