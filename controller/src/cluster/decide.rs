//! The QdrantCluster reconcile decision as a pure function of the spec and
//! what was observed: whether the spec can be applied, and the phase and
//! conditions to report. Transition times move only when a condition's
//! status changes, so status writes do not loop.

use crate::crd::{ClusterPhase, QdrantCluster};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// What the reconciler saw before deciding.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The StatefulSet as last applied (with its status).
    pub statefulset: Option<StatefulSet>,
    /// Names of Secrets the spec refers to that do not exist.
    pub missing_secrets: Vec<String>,
    pub deleting: bool,
    /// The nodes' volume claims, once they exist.
    pub claims: Vec<super::volumes::Claim>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// False when the spec cannot be applied as it is.
    pub apply: bool,
    pub phase: ClusterPhase,
    /// (type, status, reason, message)
    pub conditions: Vec<(&'static str, bool, &'static str, String)>,
}

/// Problems in the spec a user must fix, in words that say how.
pub fn validate(c: &QdrantCluster) -> Vec<String> {
    let s = &c.spec;
    let mut errs = vec![];
    if s.replicas < 1 {
        errs.push(format!(
            "spec.replicas is {}; it must be at least 1",
            s.replicas
        ));
    }
    if s.replicas > 1 && !s.cluster.enabled {
        errs.push(format!("spec.replicas is {} but spec.cluster.enabled is false; set cluster.enabled: true to run more than one node", s.replicas));
    }
    errs
}

pub fn decide(c: &QdrantCluster, o: &Observed) -> Decision {
    let mut d = decide_phase(c, o);
    if d.apply
        && let Some((ok, reason, msg)) =
            super::volumes::condition(&c.spec.persistence.size, &o.claims)
    {
        d.conditions.push(("VolumesSized", ok, reason, msg));
    }
    d
}

fn decide_phase(c: &QdrantCluster, o: &Observed) -> Decision {
    let fail = |reason: &'static str, msg: String| Decision {
        apply: false,
        phase: ClusterPhase::Failed,
        conditions: vec![
            ("Ready", false, reason, msg.clone()),
            ("Progressing", false, reason, msg.clone()),
            ("Degraded", true, reason, msg),
        ],
    };
    if o.deleting {
        return Decision {
            apply: false,
            phase: ClusterPhase::Terminating,
            conditions: vec![(
                "Ready",
                false,
                "Deleting",
                "the cluster is being deleted".into(),
            )],
        };
    }
    let errs = validate(c);
    if !errs.is_empty() {
        return fail("InvalidSpec", errs.join("; "));
    }
    if !o.missing_secrets.is_empty() {
        return fail(
            "SecretMissing",
            format!(
                "Secret {} not found in namespace {}; create it or fix spec.apiKey",
                o.missing_secrets.join(", "),
                c.metadata.namespace.as_deref().unwrap_or("default")
            ),
        );
    }
    let want = c.spec.replicas;
    let Some(sts) = &o.statefulset else {
        return progressing(
            ClusterPhase::Pending,
            "Creating",
            "creating the StatefulSet".into(),
        );
    };
    let Some(st) = sts
        .status
        .clone()
        .filter(|s| s.observed_generation.is_some())
    else {
        return progressing(
            ClusterPhase::Pending,
            "Starting",
            format!("0/{want} pods ready"),
        );
    };
    let ready = st.ready_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    // With the OnDelete strategy the StatefulSet never moves its current
    // revision on: pods still on an old template are what is left to roll.
    let rolling = st.update_revision.is_some()
        && st.current_revision != st.update_revision
        && updated < st.replicas;
    let stale = st.observed_generation.unwrap_or(0) < sts.metadata.generation.unwrap_or(0);
    if rolling || (updated < want && st.replicas == want) {
        return progressing(
            ClusterPhase::Upgrading,
            "RollingUpdate",
            format!("{updated}/{want} pods updated, {ready} ready"),
        );
    }
    if stale || st.replicas != want {
        return progressing(
            ClusterPhase::Scaling,
            "Scaling",
            format!("{} of {want} pods, {ready} ready", st.replicas),
        );
    }
    if ready >= want {
        return Decision {
            apply: true,
            phase: ClusterPhase::Running,
            conditions: vec![
                (
                    "Ready",
                    true,
                    "AllReplicasReady",
                    format!("{ready}/{want} pods ready"),
                ),
                ("Progressing", false, "Stable", "nothing to roll out".into()),
                (
                    "Degraded",
                    false,
                    "AllReplicasReady",
                    format!("{ready}/{want} pods ready"),
                ),
            ],
        };
    }
    Decision {
        apply: true,
        phase: ClusterPhase::Degraded,
        conditions: vec![
            (
                "Ready",
                false,
                "ReplicasNotReady",
                format!("{ready}/{want} pods ready"),
            ),
            ("Progressing", false, "Stable", "nothing to roll out".into()),
            (
                "Degraded",
                true,
                "ReplicasNotReady",
                format!("{ready}/{want} pods ready"),
            ),
        ],
    }
}

/// Whether the pods may move from the version they all run (`running`,
/// none yet for a new cluster) to `wanted`. Qdrant keeps data readable one
/// minor version forward only, and never backward: a downgrade, or an
/// upgrade that skips a minor version, is refused with what to do instead.
pub fn version_change(running: Option<&str>, wanted: &str) -> Result<(), String> {
    let parse = |v: &str| -> Option<(u64, u64, u64)> {
        let core = v.trim_start_matches('v').split(['-', '+']).next()?;
        let mut it = core.split('.').map(|n| n.parse::<u64>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    };
    let (Some(running), Some(r), Some(w)) = (running, running.and_then(parse), parse(wanted))
    else {
        return Ok(());
    };
    if w < r {
        return Err(format!(
            "spec.version {wanted} is older than {running}, which every node runs: Qdrant does not support downgrades (data written by a newer version may not load in an older one); the pods keep {running}. To go back, restore a backup into a new QdrantCluster of {wanted}"
        ));
    }
    if w.0 == r.0 && w.1 > r.1 + 1 {
        return Err(format!(
            "spec.version {wanted} skips minor versions: Qdrant upgrades one minor version at a time, so the pods keep {running}; set the latest v{}.{}.x first, let every node run it, then {wanted}",
            r.0,
            r.1 + 1
        ));
    }
    Ok(())
}

/// Shards being evened out over the nodes: the cluster is Scaling, so no
/// backup or restore starts under the moves.
pub fn rebalancing(d: &mut Decision, r: Option<&crate::crd::Rebalance>) {
    let Some(r) = r else { return };
    let moving = !r.done
        && r.task
            .as_ref()
            .is_some_and(|t| t.state == crate::crd::AgentTaskState::Running);
    if !d.apply || !moving || d.phase != ClusterPhase::Running {
        return;
    }
    *d = progressing(
        ClusterPhase::Scaling,
        "MovingShards",
        format!(
            "evening out the shard replicas over the {} nodes: {} of {} moved",
            r.replicas, r.shards_moved, r.shards_to_move
        ),
    );
}

/// A rolling update that waits says why in the Progressing and Ready
/// conditions.
pub fn rolling(d: &mut Decision, waiting: Option<&(&'static str, String)>) {
    let Some((reason, message)) = waiting else {
        return;
    };
    if !d.apply || d.phase != ClusterPhase::Upgrading {
        return;
    }
    *d = progressing(ClusterPhase::Upgrading, reason, message.clone());
}

/// A refused version change says so: the pods keep the version they run.
pub fn version_refused(d: &mut Decision, why: &str) {
    if !d.apply {
        return;
    }
    let degraded = d
        .conditions
        .iter()
        .find(|c| c.0 == "Degraded")
        .map(|c| c.1)
        .unwrap_or(false);
    d.conditions = vec![
        ("Ready", false, "VersionRefused", why.to_string()),
        ("Progressing", false, "VersionRefused", why.to_string()),
        ("Degraded", degraded, "VersionRefused", why.to_string()),
    ];
}

/// A scale-in in progress or refused says so in the phase and conditions:
/// the StatefulSet keeps its pods until the shards of those that leave
/// have moved.
pub fn scaling(d: &mut Decision, s: Option<&crate::crd::ScaleIn>) {
    use crate::crd::ScaleInState;
    let Some(s) = s else { return };
    if !d.apply {
        return;
    }
    let leaving = match s.from - s.to {
        1 => "the pod that leaves".to_string(),
        n => format!("the {n} pods that leave"),
    };
    match s.state {
        ScaleInState::MovingShards => {
            let msg = match &s.message {
                Some(m) => m.clone(),
                None => format!(
                    "moving the shard replicas of {leaving} to the pods that stay before scaling in from {} to {}: {} of {} done",
                    s.from, s.to, s.shards_moved, s.shards_to_move
                ),
            };
            *d = progressing(ClusterPhase::Scaling, "MovingShards", msg);
        }
        ScaleInState::Refused => {
            let msg = format!(
                "scaling in from {} to {} is refused, and the cluster keeps its {} pods: {}",
                s.from,
                s.to,
                s.from,
                s.message.clone().unwrap_or_default()
            );
            d.phase = ClusterPhase::Scaling;
            d.conditions = vec![
                ("Ready", false, "ScaleInRefused", msg.clone()),
                ("Progressing", false, "ScaleInRefused", msg.clone()),
                ("Degraded", false, "ScaleInRefused", msg),
            ];
        }
        ScaleInState::Drained => {}
    }
}

fn progressing(phase: ClusterPhase, reason: &'static str, msg: String) -> Decision {
    Decision {
        apply: true,
        phase,
        conditions: vec![
            ("Ready", false, reason, msg.clone()),
            ("Progressing", true, reason, msg),
            ("Degraded", false, reason, String::new()),
        ],
    }
}

/// The conditions to write: each keeps its last transition time unless its
/// status changed, so an unchanged cluster writes an unchanged status.
pub fn conditions(
    previous: &[Condition],
    d: &Decision,
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    d.conditions
        .iter()
        .map(|(ty, ok, reason, msg)| {
            let status = if *ok { "True" } else { "False" }.to_string();
            let since = previous
                .iter()
                .find(|p| p.type_ == *ty && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: ty.to_string(),
                status,
                reason: reason.to_string(),
                message: msg.clone(),
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSetStatus;

    fn cluster(replicas: i32, distributed: bool) -> QdrantCluster {
        serde_yaml::from_str(&format!(
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {{name: q, namespace: ns, generation: 2}}\n\
             spec: {{version: v1.18.3, replicas: {replicas}, cluster: {{enabled: {distributed}}}}}\n"
        ))
        .unwrap()
    }

    fn sts(replicas: i32, ready: i32, updated: i32, current: &str, update: &str) -> StatefulSet {
        let mut s = StatefulSet::default();
        s.metadata.generation = Some(3);
        s.metadata.creation_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        s.status = Some(StatefulSetStatus {
            replicas,
            ready_replicas: Some(ready),
            updated_replicas: Some(updated),
            current_revision: Some(current.into()),
            update_revision: Some(update.into()),
            observed_generation: Some(3),
            ..Default::default()
        });
        s
    }

    fn phase(c: &QdrantCluster, o: Observed) -> (ClusterPhase, bool) {
        let d = decide(c, &o);
        (d.phase, d.apply)
    }

    #[test]
    fn phases_follow_the_statefulset() {
        let c = cluster(3, true);
        let obs = |s| Observed {
            statefulset: Some(s),
            ..Default::default()
        };
        assert_eq!(
            phase(&c, Observed::default()),
            (ClusterPhase::Pending, true)
        );
        assert_eq!(
            phase(&c, obs(sts(3, 3, 3, "r1", "r1"))),
            (ClusterPhase::Running, true)
        );
        assert_eq!(
            phase(&c, obs(sts(3, 2, 1, "r1", "r2"))),
            (ClusterPhase::Upgrading, true)
        );
        assert_eq!(
            phase(&c, obs(sts(2, 2, 2, "r1", "r1"))),
            (ClusterPhase::Scaling, true)
        );
        assert_eq!(
            phase(&c, obs(sts(3, 2, 3, "r1", "r1"))),
            (ClusterPhase::Degraded, true)
        );
        let deleting = Observed {
            deleting: true,
            ..obs(sts(3, 3, 3, "r1", "r1"))
        };
        assert_eq!(phase(&c, deleting), (ClusterPhase::Terminating, false));
    }

    #[test]
    fn invalid_specs_fail_with_a_reason_that_says_what_to_fix() {
        let d = decide(&cluster(3, false), &Observed::default());
        assert_eq!((d.phase, d.apply), (ClusterPhase::Failed, false));
        let (_, ok, reason, msg) = &d.conditions[0];
        assert!(!ok);
        assert_eq!(*reason, "InvalidSpec");
        assert!(msg.contains("set cluster.enabled: true"), "{msg}");

        let o = Observed {
            missing_secrets: vec!["qdrant-api-key".into()],
            ..Default::default()
        };
        let d = decide(&cluster(1, false), &o);
        assert_eq!(
            (d.phase, d.conditions[0].2),
            (ClusterPhase::Failed, "SecretMissing")
        );
        assert!(
            d.conditions[0]
                .3
                .contains("Secret qdrant-api-key not found in namespace ns")
        );
    }

    #[test]
    fn transition_times_move_only_when_a_status_changes() {
        let c = cluster(1, false);
        let t0 = Time(jiff::Timestamp::UNIX_EPOCH);
        let t1 = Time(jiff::Timestamp::from_second(1_000).unwrap());
        let running = decide(
            &c,
            &Observed {
                statefulset: Some(sts(1, 1, 1, "a", "a")),
                ..Default::default()
            },
        );
        let first = conditions(&[], &running, Some(2), t0.clone());
        let again = conditions(&first, &running, Some(2), t1.clone());
        assert_eq!(
            first, again,
            "an unchanged cluster writes an unchanged status"
        );
        let degraded = decide(
            &c,
            &Observed {
                statefulset: Some(sts(1, 0, 1, "a", "a")),
                ..Default::default()
            },
        );
        let later = conditions(&again, &degraded, Some(2), t1.clone());
        let ready = later.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), &ready.last_transition_time),
            ("False", &t1)
        );
        let progressing = later.iter().find(|c| c.type_ == "Progressing").unwrap();
        assert_eq!(
            progressing.last_transition_time, t0,
            "Progressing stayed False"
        );
    }

    #[test]
    fn versions_move_forward_one_minor_at_a_time() {
        assert_eq!(version_change(None, "v1.18.3"), Ok(()), "a new cluster");
        assert_eq!(version_change(Some("v1.18.3"), "v1.18.3"), Ok(()));
        assert_eq!(version_change(Some("v1.17.6"), "v1.18.3"), Ok(()));
        assert_eq!(version_change(Some("v1.18.1"), "1.18.3"), Ok(()));
        let down = version_change(Some("v1.18.3"), "v1.17.6").unwrap_err();
        assert!(down.contains("does not support downgrades"), "{down}");
        assert!(
            down.contains("restore a backup into a new QdrantCluster of v1.17.6"),
            "{down}"
        );
        assert!(
            version_change(Some("v1.18.3"), "v1.18.2").is_err(),
            "a patch downgrade"
        );
        let skip = version_change(Some("v1.16.2"), "v1.18.3").unwrap_err();
        assert!(skip.contains("set the latest v1.17.x first"), "{skip}");
        assert_eq!(version_change(Some("v1.18.3"), "v1.19.0-rc1"), Ok(()));
    }
}
