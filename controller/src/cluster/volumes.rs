//! Growing a cluster's volumes. A StatefulSet's volume claim templates
//! cannot change, so a larger `persistence.size` keeps the template as it
//! was and patches each node's claim (`storage-<cluster>-<ordinal>`); the
//! storage provider grows the volume where its class allows expansion, and
//! the API server refuses the patch where it does not.

use crate::crd::QdrantCluster;
use crate::runtime::{Context, Error, report};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

/// A node's volume claim as the reconciler left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub name: String,
    /// What the claim asks for.
    pub requested: Option<String>,
    /// What the volume holds now (`status.capacity`).
    pub capacity: Option<String>,
    /// Why the API server refused to grow it.
    pub refused: Option<String>,
}

/// Bytes of a Kubernetes quantity such as `10Gi`, `500M` or `1.5Ti`;
/// `None` for forms a volume size does not take.
pub fn bytes(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return None,
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut total = whole.checked_mul(mult)?;
    if !frac.is_empty() {
        let scale = 10u128.checked_pow(frac.len() as u32)?;
        total += frac.parse::<u128>().ok()?.checked_mul(mult)? / scale;
    }
    Some(total)
}

/// Whether quantity `a` is smaller than `b`; `false` when either is unreadable.
fn smaller(a: &str, b: &str) -> bool {
    matches!((bytes(a), bytes(b)), (Some(a), Some(b)) if a < b)
}

/// The live template's storage request, which the applied StatefulSet keeps.
pub fn template_size(sts: &StatefulSet) -> Option<String> {
    sts.spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some("storage"))
        .and_then(storage_request)
}

fn storage_request(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

/// Asks each existing node claim smaller than `persistence.size` for that
/// size, and reports every claim.
pub async fn grow(
    ctx: &Context,
    c: &QdrantCluster,
    statefulset: &str,
) -> Result<Vec<Claim>, Error> {
    let ns = c.namespace().unwrap_or_else(|| "default".into());
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let want = &c.spec.persistence.size;
    let (mut claims, mut grown) = (Vec::new(), Vec::new());
    for i in 0..c.spec.replicas.max(0) {
        let name = format!("storage-{statefulset}-{i}");
        // Made by the StatefulSet controller with the pod; not yet there.
        let Some(pvc) = api.get_opt(&name).await? else {
            continue;
        };
        let mut claim = Claim {
            name: name.clone(),
            requested: storage_request(&pvc),
            capacity: pvc
                .status
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("storage"))
                .map(|q| q.0.clone()),
            refused: None,
        };
        if claim.requested.as_deref().is_some_and(|r| smaller(r, want)) {
            let patch = serde_json::json!({
                "spec": {"resources": {"requests": {"storage": want}}}
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    grown.push(format!(
                        "{name} (was {})",
                        claim.requested.as_deref().unwrap_or("?")
                    ));
                    claim.requested = Some(want.clone());
                }
                Err(kube::Error::Api(e)) if matches!(e.code, 403 | 422) => {
                    claim.refused = Some(e.message);
                }
                Err(e) => return Err(e.into()),
            }
        }
        claims.push(claim);
    }
    if !grown.is_empty() {
        report::event(
            &ctx.recorder,
            &c.object_ref(&()),
            EventType::Normal,
            "ExpandingVolumes",
            "Reconcile",
            format!("asked for {want} for volume claims {}", grown.join(", ")),
        )
        .await;
    }
    Ok(claims)
}

/// The `VolumesSized` condition: (status, reason, message), or `None` while
/// no claim exists yet.
pub fn condition(want: &str, claims: &[Claim]) -> Option<(bool, &'static str, String)> {
    if claims.is_empty() {
        return None;
    }
    let refused: Vec<&Claim> = claims.iter().filter(|c| c.refused.is_some()).collect();
    if let Some(first) = refused.first() {
        let names: Vec<&str> = refused.iter().map(|c| c.name.as_str()).collect();
        return Some((
            false,
            "ExpansionRefused",
            format!(
                "volume claims {} cannot grow to {want}: {}; use a storage class with allowVolumeExpansion: true, or restore a backup into a new QdrantCluster with the larger size",
                names.join(", "),
                first.refused.as_deref().unwrap_or_default()
            ),
        ));
    }
    // An unbound claim has no capacity yet: binding will bring its request.
    let pending: Vec<String> = claims
        .iter()
        .filter_map(|c| {
            let cap = c.capacity.as_deref()?;
            smaller(cap, want).then(|| format!("{} ({cap})", c.name))
        })
        .collect();
    if pending.is_empty() {
        Some((
            true,
            "AsRequested",
            format!("{} volumes of at least {want}", claims.len()),
        ))
    } else {
        Some((
            false,
            "Resizing",
            format!(
                "waiting for the storage provider to grow {} to {want}",
                pending.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_bytes() {
        assert_eq!(bytes("10Gi"), Some(10 << 30));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(bytes("500M"), Some(500_000_000));
        assert_eq!(bytes("1024"), Some(1024));
        assert_eq!(bytes("1e3"), None);
        assert_eq!(bytes("Gi"), None);
        assert!(smaller("10Gi", "20Gi") && !smaller("20Gi", "10Gi"));
        assert!(smaller("1000M", "1Gi") && !smaller("1Gi", "1G"));
        assert!(!smaller("garbage", "1Gi"));
    }

    fn claim(name: &str, requested: &str, capacity: Option<&str>) -> Claim {
        Claim {
            name: name.into(),
            requested: Some(requested.into()),
            capacity: capacity.map(str::to_string),
            refused: None,
        }
    }

    #[test]
    fn the_condition_says_whether_every_volume_has_grown() {
        assert_eq!(condition("20Gi", &[]), None);
        let grown = [
            claim("storage-v-0", "20Gi", Some("20Gi")),
            claim("storage-v-1", "20Gi", Some("21474836480")),
        ];
        assert_eq!(condition("20Gi", &grown).unwrap().1, "AsRequested");
        let unbound = [claim("storage-v-0", "20Gi", None)];
        assert_eq!(condition("20Gi", &unbound).unwrap().1, "AsRequested");
        let growing = [
            claim("storage-v-0", "20Gi", Some("20Gi")),
            claim("storage-v-1", "20Gi", Some("10Gi")),
        ];
        let (ok, reason, msg) = condition("20Gi", &growing).unwrap();
        assert_eq!((ok, reason), (false, "Resizing"));
        assert!(msg.contains("storage-v-1 (10Gi)") && !msg.contains("storage-v-0"));
        let mut refused = growing.clone();
        refused[1].refused = Some("only dynamically provisioned pvc can be resized".into());
        let (ok, reason, msg) = condition("20Gi", &refused).unwrap();
        assert_eq!((ok, reason), (false, "ExpansionRefused"));
        assert!(msg.contains("storage-v-1") && msg.contains("allowVolumeExpansion"));
    }
}
