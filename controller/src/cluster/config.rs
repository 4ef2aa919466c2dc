//! Qdrant's configuration file and start script, as the cluster's
//! ConfigMap carries them, and their digest that rolls the pods. Pure.

use super::render::{GRPC_PORT, HTTP_PORT, Names, SNAPSHOTS_PATH, STORAGE_PATH, meta};
use crate::crd::QdrantCluster;
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Qdrant's config: the user's `spec.config` deep-merged under the keys the
/// operator owns (paths, ports, distributed mode), which always win.
pub fn qdrant_config(c: &QdrantCluster) -> Value {
    let mut cfg = c
        .spec
        .config
        .clone()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let owned = json!({
        "storage": {"storage_path": STORAGE_PATH, "snapshots_path": SNAPSHOTS_PATH},
        "service": {"http_port": HTTP_PORT, "grpc_port": GRPC_PORT},
        "cluster": {"enabled": c.spec.cluster.enabled, "p2p": {"port": c.spec.cluster.p2p_port}},
    });
    merge(&mut cfg, &owned);
    cfg
}

fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// Starts Qdrant: pod 0 founds the cluster, the others join it through
/// pod 0's peer address. Plain Qdrant when distributed mode is off.
pub fn start_script(c: &QdrantCluster) -> String {
    let n = Names::of(c);
    if !c.spec.cluster.enabled {
        return "#!/bin/bash\nexec ./entrypoint.sh\n".into();
    }
    let p2p = c.spec.cluster.p2p_port;
    format!(
        "#!/bin/bash\n\
         # Pod 0 founds the cluster; every other pod bootstraps from it.\n\
         SELF=\"http://${{HOSTNAME}}.{svc}:{p2p}\"\n\
         if [ \"${{HOSTNAME##*-}}\" = \"0\" ]; then\n  exec ./entrypoint.sh --uri \"$SELF\"\nfi\n\
         exec ./entrypoint.sh --bootstrap \"http://{sts}-0.{svc}:{p2p}\" --uri \"$SELF\"\n",
        svc = n.headless(),
        sts = n.statefulset(),
    )
}

/// Pod template annotation: the sha256 of the rendered config and start
/// script (as Qdrant's chart does with `checksum/config`).
pub const ANN_CONFIG: &str = "qdrant.io/config-sha256";

pub fn config_hash(c: &QdrantCluster) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in config_map(c).data.unwrap_or_default() {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

pub fn config_map(c: &QdrantCluster) -> ConfigMap {
    let yaml = serde_yaml::to_string(&qdrant_config(c)).unwrap_or_default();
    ConfigMap {
        metadata: meta(c, Names::of(c).config()),
        data: Some(BTreeMap::from([
            ("production.yaml".into(), yaml),
            ("start.sh".into(), start_script(c)),
        ])),
        ..Default::default()
    }
}
