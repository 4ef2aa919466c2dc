//! Which backups and restores a change to another object may unblock. A
//! backup or restore that waits for its cluster, a Secret, a pod or another
//! backup is woken by the watch on that object, so waiting costs nothing
//! between changes: no polling of the API server per waiting object.

use crate::crd::{
    ClusterKind, ClusterReference, OperationPhase, QdrantBackup, QdrantCluster, QdrantRestore,
};
use crate::runtime::Kind;
use crate::runtime::Wait;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

/// The label of a cluster's pods that names their QdrantCluster.
const INSTANCE: &str = "app.kubernetes.io/instance";

/// What the wake-ups need to know of a backup or a restore.
pub trait Waiting: Kind {
    /// The QdrantCluster or StatefulSet it works on.
    fn cluster(&self) -> &ClusterReference;
    fn phase(&self) -> Option<OperationPhase>;
    /// The reason of its `Ready` condition.
    fn reason(&self) -> Option<&str>;
    /// Whether `b` changing may unblock it.
    fn waits_for(&self, b: &QdrantBackup) -> bool;

    fn terminal(&self) -> bool {
        matches!(
            self.phase(),
            Some(OperationPhase::Completed | OperationPhase::Failed)
        )
    }
}

fn ready_reason(c: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> Option<&str> {
    c.iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.as_str())
}

impl Waiting for QdrantBackup {
    fn cluster(&self) -> &ClusterReference {
        &self.spec.cluster_ref
    }
    fn phase(&self) -> Option<OperationPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }
    fn reason(&self) -> Option<&str> {
        ready_reason(&self.status.as_ref()?.conditions)
    }
    /// One backup runs per cluster: one that ends lets the next start.
    fn waits_for(&self, b: &QdrantBackup) -> bool {
        b.terminal() && b.cluster() == self.cluster() && b.name_any() != self.name_any()
    }
}

impl Waiting for QdrantRestore {
    fn cluster(&self) -> &ClusterReference {
        &self.spec.target_cluster_ref
    }
    fn phase(&self) -> Option<OperationPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }
    fn reason(&self) -> Option<&str> {
        ready_reason(&self.status.as_ref()?.conditions)
    }
    /// A restore of a backup waits for it to complete.
    fn waits_for(&self, b: &QdrantBackup) -> bool {
        self.spec
            .backup_ref
            .as_ref()
            .is_some_and(|r| r.name == b.name_any())
    }
}

/// The objects of `store` in namespace `ns` that are not finished and
/// match `keep`.
fn select<K: Waiting>(
    store: &Store<K>,
    ns: Option<String>,
    keep: impl Fn(&K) -> bool,
) -> Vec<ObjectRef<K>> {
    store
        .state()
        .iter()
        .filter(|o| o.namespace() == ns && !o.terminal() && keep(o))
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

fn refers(kind: ClusterKind, name: String) -> impl Fn(&ClusterReference) -> bool {
    move |r| r.kind == kind && r.name == name
}

/// A cluster that appears, becomes Running or goes away.
pub fn on_cluster<K: Waiting>(store: &Store<K>, c: &QdrantCluster) -> Vec<ObjectRef<K>> {
    let is = refers(ClusterKind::QdrantCluster, c.name_any());
    select(store, c.namespace(), |o| is(o.cluster()))
}

/// A pod of a cluster that starts, becomes ready or goes away.
pub fn on_pod<K: Waiting>(store: &Store<K>, p: &PartialObjectMeta<Pod>) -> Vec<ObjectRef<K>> {
    let Some(cluster) = p.labels().get(INSTANCE) else {
        return vec![];
    };
    let is = refers(ClusterKind::QdrantCluster, cluster.clone());
    select(store, p.namespace(), |o| is(o.cluster()))
}

/// A StatefulSet that appears, goes away or changes, its status too (as
/// its pods become ready): the operations on it. Pods the operator does
/// not run carry no label of its own, so their StatefulSet stands for them.
pub fn on_statefulset<K: Waiting>(
    store: &Store<K>,
    s: &PartialObjectMeta<StatefulSet>,
) -> Vec<ObjectRef<K>> {
    let is = refers(ClusterKind::StatefulSet, s.name_any());
    select(store, s.namespace(), |o| is(o.cluster()))
}

/// A Secret that appears or changes: the objects waiting for one.
pub fn on_secret<K: Waiting>(store: &Store<K>, s: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<K>> {
    select(store, s.namespace(), |o| {
        o.reason()
            .and_then(Wait::parse)
            .is_some_and(Wait::on_secret)
    })
}

/// A Secret that appears or changes: the clusters whose API key it holds.
pub fn clusters_using(
    store: &Store<QdrantCluster>,
    s: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<QdrantCluster>> {
    let name = s.name_any();
    store
        .state()
        .iter()
        .filter(|c| c.namespace() == s.namespace())
        .filter(|c| {
            c.spec.api_key.as_ref().is_some_and(|k| {
                k.secret_ref.name == name
                    || k.read_only_secret_ref
                        .as_ref()
                        .is_some_and(|r| r.name == name)
            })
        })
        .map(|c| ObjectRef::from_obj(&**c))
        .collect()
}

/// A QdrantBackup that changes: the backups and restores waiting for it.
pub fn on_backup<K: Waiting>(store: &Store<K>, b: &QdrantBackup) -> Vec<ObjectRef<K>> {
    select(store, b.namespace(), |o| o.waits_for(b))
}

/// `controller` woken by every change that may unblock one of its
/// objects: clusters, QdrantBackups, and the metadata of Secrets and of the
/// clusters' pods (metadata only: a Secret's data never reaches the
/// operator this way, and a pod's readiness changes its resourceVersion).
pub fn woken<K: Waiting>(controller: Controller<K>, client: &kube::Client) -> Controller<K> {
    let store = controller.store();
    let (s1, s2, s3, s4, s5) = (
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        store,
    );
    let all = watcher::Config::default;
    controller
        .watches(Api::<QdrantCluster>::all(client.clone()), all(), move |c| {
            on_cluster(&s1, &c)
        })
        .watches(Api::<QdrantBackup>::all(client.clone()), all(), move |b| {
            on_backup(&s2, &b)
        })
        // `PartialObjectMeta` makes these metadata-only requests.
        .watches(
            Api::<PartialObjectMeta<Pod>>::all(client.clone()),
            all().labels("app.kubernetes.io/managed-by=qdrant-operator"),
            move |p| on_pod(&s3, &p),
        )
        .watches(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            all(),
            move |s| on_secret(&s4, &s),
        )
        .watches(
            Api::<PartialObjectMeta<StatefulSet>>::all(client.clone()),
            all(),
            move |s| on_statefulset(&s5, &s),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    /// A backup of QdrantCluster `cluster`, or of StatefulSet `sts/<name>`.
    fn backup(ns: &str, name: &str, cluster: &str, phase: &str, reason: &str) -> QdrantBackup {
        let cluster_ref = match cluster.strip_prefix("sts/") {
            Some(sts) => serde_json::json!({"kind": "StatefulSet", "name": sts}),
            None => serde_json::json!({"name": cluster}),
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantBackup",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterRef": cluster_ref, "storage": {"s3": {"bucket": "b"}}},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "False",
                "reason": reason, "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    fn store<K: Kind>(objs: Vec<K>) -> Store<K> {
        let (reader, mut writer) = reflector::store::<K>();
        for o in objs {
            writer.apply_watcher_event(&Event::Apply(o));
        }
        reader
    }

    fn names<K: Kind>(mut refs: Vec<ObjectRef<K>>) -> Vec<String> {
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        refs.into_iter().map(|r| r.name).collect()
    }

    fn meta<K>(ns: &str, name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<K>
    where
        K: kube::Resource<DynamicType = ()> + Default,
    {
        let mut m = PartialObjectMeta::<K>::default();
        m.metadata.name = Some(name.into());
        m.metadata.namespace = Some(ns.into());
        m.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        m
    }

    #[test]
    fn a_change_wakes_only_the_unfinished_objects_waiting_on_it() {
        let s = store(vec![
            backup("ns", "waits-cluster", "q", "Pending", "ClusterNotFound"),
            backup("ns", "waits-secret", "q", "Pending", "SecretNotFound"),
            backup("ns", "other-cluster", "r", "Pending", "ClusterNotReady"),
            backup("ns", "done", "q", "Completed", "Completed"),
            backup("other", "elsewhere", "q", "Pending", "SecretNotFound"),
            backup("ns", "waits-sts", "sts/q", "Pending", "ClusterNotReady"),
        ]);
        let cluster: QdrantCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantCluster",
            "metadata": {"name": "q", "namespace": "ns"}, "spec": {"version": "v1.18.3"}
        }))
        .unwrap();
        assert_eq!(
            names(on_cluster(&s, &cluster)),
            ["waits-cluster", "waits-secret"]
        );
        assert_eq!(
            names(on_pod(&s, &meta::<Pod>("ns", "q-0", &[(INSTANCE, "r")]))),
            ["other-cluster"]
        );
        assert!(on_pod(&s, &meta::<Pod>("ns", "x", &[])).is_empty());
        // A StatefulSet of the same name wakes only what refers to it.
        assert_eq!(
            names(on_statefulset(&s, &meta::<StatefulSet>("ns", "q", &[]))),
            ["waits-sts"]
        );
        assert!(on_statefulset(&s, &meta::<StatefulSet>("other", "q", &[])).is_empty());
        assert_eq!(
            names(on_secret(&s, &meta::<Secret>("ns", "s3", &[]))),
            ["waits-secret"]
        );
        // A backup that ends lets the next one of its cluster start; one
        // that is still running wakes nobody.
        let running = backup("ns", "running", "q", "InProgress", "Running");
        assert!(on_backup(&s, &running).is_empty());
        let ended = backup("ns", "ended", "q", "Failed", "Failed");
        assert_eq!(
            names(on_backup(&s, &ended)),
            ["waits-cluster", "waits-secret"]
        );
    }

    #[test]
    fn a_secret_wakes_the_clusters_whose_api_key_it_holds() {
        let cluster = |name: &str, key: &str| -> QdrantCluster {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantCluster",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"version": "v1.18.3", "apiKey": {"secretRef": {"name": key, "key": "k"}}}
            }))
            .unwrap()
        };
        let s = store(vec![cluster("a", "key-a"), cluster("b", "key-b")]);
        let woken = clusters_using(&s, &meta::<Secret>("ns", "key-b", &[]));
        assert_eq!(names(woken), ["b"]);
        assert!(clusters_using(&s, &meta::<Secret>("other", "key-b", &[])).is_empty());
    }

    #[test]
    fn a_restore_wakes_when_its_backup_changes() {
        let restore: QdrantRestore = serde_json::from_value(serde_json::json!({
            "apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantRestore",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"backupRef": {"name": "nightly"}, "targetClusterRef": {"name": "q"}}
        }))
        .unwrap();
        let s = store(vec![restore]);
        let nightly = backup("ns", "nightly", "q", "Completed", "Completed");
        assert_eq!(names(on_backup(&s, &nightly)), ["r"]);
        let other = backup("ns", "weekly", "q", "Completed", "Completed");
        assert!(on_backup(&s, &other).is_empty());
    }
}
