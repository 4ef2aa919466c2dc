//! Writing only what the cluster owns: an object of a name the cluster
//! needs is read first, and forced server-side apply goes only onto one that
//! is absent or already the cluster's (by owner reference UID).

use crate::runtime::{Error, MANAGER};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Refuses when an object of `obj`'s name exists and is not ours: forced
/// apply takes every field, owner references included, so it goes only
/// onto an object that is already this cluster's.
pub(super) async fn check_ours<K>(client: &Client, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    match api.get_metadata_opt(&name).await? {
        Some(existing) => ours(
            &K::kind(&Default::default()),
            &existing.metadata,
            obj.meta(),
        ),
        None => Ok(()),
    }
}

/// Server-side applies `obj`, which [`check_ours`] (or a read of it) found
/// to be this cluster's or absent.
pub(super) async fn ssa<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

/// `Ok` when `existing` is owned by the owner that `desired` names (its
/// first owner reference), so the operator may write it; otherwise the
/// refusal, naming the object and who it belongs to.
pub fn ours(kind: &str, existing: &ObjectMeta, desired: &ObjectMeta) -> Result<(), Error> {
    let Some(owner) = desired.owner_references.as_ref().and_then(|o| o.first()) else {
        return Ok(());
    };
    let refs = existing.owner_references.as_deref().unwrap_or_default();
    if refs.iter().any(|r| r.uid == owner.uid) {
        return Ok(());
    }
    let labels = existing.labels.clone().unwrap_or_default();
    let annotations = existing.annotations.clone().unwrap_or_default();
    let belongs = if let Some(r) = refs.first() {
        format!("it belongs to {} {}", r.kind, r.name)
    } else if let Some(release) = annotations.get("meta.helm.sh/release-name") {
        format!("it belongs to Helm release {release}")
    } else if let Some(by) = labels.get("app.kubernetes.io/managed-by") {
        format!("it is managed by {by}")
    } else {
        "it was made by someone else".to_string()
    };
    Err(Error::NotOurs(format!(
        "{kind} {} exists and is not {} {}'s ({belongs}); the operator never takes over an object it did not create: rename the {}, or move that {kind} out of the way",
        existing.name.as_deref().unwrap_or_default(),
        owner.kind,
        owner.name,
        owner.kind,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owned_by(uid: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some("vectors".into()),
            owner_references: Some(vec![OwnerReference {
                kind: "QdrantCluster".into(),
                name: "vectors".into(),
                uid: uid.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn only_an_object_this_cluster_owns_is_written() {
        let desired = owned_by("c-1");
        assert!(ours("Service", &owned_by("c-1"), &desired).is_ok());
        // A Helm release's Service of the same name.
        let helm = ObjectMeta {
            name: Some("vectors".into()),
            annotations: Some([("meta.helm.sh/release-name".into(), "vectors".into())].into()),
            labels: Some([("app.kubernetes.io/managed-by".into(), "Helm".into())].into()),
            ..Default::default()
        };
        let e = ours("Service", &helm, &desired).unwrap_err().to_string();
        assert!(
            e.starts_with("Service vectors exists and is not QdrantCluster vectors's (it belongs to Helm release vectors)"),
            "{e}"
        );
        // A QdrantCluster deleted and re-created is another owner.
        let e = ours("StatefulSet", &owned_by("c-0"), &desired).unwrap_err();
        assert!(
            e.to_string()
                .contains("it belongs to QdrantCluster vectors"),
            "{e}"
        );
        let bare = ObjectMeta {
            name: Some("vectors".into()),
            ..Default::default()
        };
        assert!(ours("ConfigMap", &bare, &desired).is_err());
    }
}
