//! What a QdrantBackup should do next, as a pure function of the backup,
//! its cluster, the other backups of the namespace and the time. Terminal
//! phases never change; one backup runs per cluster at a time.

use crate::crd::{OperationPhase, QdrantBackup};
use crate::operation::cluster_gate;
use crate::runtime::Wait;
use crate::target::Target;
use kube::ResourceExt;
use std::borrow::Borrow;

pub use crate::operation::Step;

/// How long a backup without `activeDeadlineSeconds` may run: whatever
/// goes wrong (an agent that never answers again), it ends.
pub const DEFAULT_DEADLINE_SECONDS: i64 = 24 * 3600;

fn phase(b: &QdrantBackup) -> Option<OperationPhase> {
    b.status.as_ref().and_then(|s| s.phase)
}

fn is_terminal(b: &QdrantBackup) -> bool {
    matches!(
        phase(b),
        Some(OperationPhase::Completed | OperationPhase::Failed)
    )
}

pub fn next_step<O: Borrow<QdrantBackup>>(
    b: &QdrantBackup,
    cluster: Option<&Target>,
    others: &[O],
    now: jiff::Timestamp,
) -> Step {
    let status = b.status.clone().unwrap_or_default();
    match status.phase {
        Some(OperationPhase::Completed) => {
            let expired = match (b.spec.retention_days, &status.completion_time) {
                (Some(days), Some(done)) => {
                    done.0 + jiff::SignedDuration::from_hours(24 * i64::from(days)) <= now
                }
                _ => false,
            };
            return if expired { Step::Expire } else { Step::Done };
        }
        Some(OperationPhase::Failed) => return Step::Done,
        _ => {}
    }
    for c in &b.spec.collections {
        if c.is_empty() || c.contains('/') || c == ".." || c.chars().any(char::is_control) {
            return Step::Fail {
                reason: "InvalidSpec",
                message: format!("spec.collections holds an invalid name {c:?}"),
            };
        }
    }
    let (deadline, given) = match b.spec.active_deadline_seconds {
        Some(d) => (d, ""),
        None => (DEFAULT_DEADLINE_SECONDS, ", the default"),
    };
    if let Some(start) = &status.start_time
        && start.0 + jiff::SignedDuration::from_secs(deadline) <= now
    {
        return Step::Fail {
            reason: "DeadlineExceeded",
            message: format!(
                "the backup ran longer than spec.activeDeadlineSeconds ({deadline}s{given})"
            ),
        };
    }
    let ns = b.namespace().unwrap_or_default();
    let running = phase(b) == Some(OperationPhase::InProgress);
    if let Some(step) = cluster_gate("backup", &b.spec.cluster_ref, &ns, cluster, running) {
        return step;
    }
    if phase(b) == Some(OperationPhase::InProgress) {
        return Step::Run;
    }
    // One backup per cluster: a running one blocks the rest; among those
    // waiting, the oldest goes first.
    let key = |x: &QdrantBackup| {
        (
            x.metadata.creation_timestamp.clone().map(|t| t.0),
            x.name_any(),
        )
    };
    let blocker = others
        .iter()
        .map(Borrow::borrow)
        .filter(|o| {
            o.name_any() != b.name_any()
                && o.spec.cluster_ref == b.spec.cluster_ref
                && !is_terminal(o)
        })
        .filter(|o| phase(o) == Some(OperationPhase::InProgress) || key(o) < key(b))
        .min_by_key(|o| (phase(o) != Some(OperationPhase::InProgress), key(o)));
    if let Some(o) = blocker {
        return Step::Wait {
            reason: Wait::WaitingForBackup,
            message: format!(
                "backup {} of cluster {} runs first (one backup per cluster at a time)",
                o.name_any(),
                b.spec.cluster_ref.name
            ),
        };
    }
    Step::Run
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ClusterPhase;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const NONE: &[QdrantBackup] = &[];

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn backup(
        name: &str,
        created: i64,
        phase: Option<OperationPhase>,
        extra: &str,
    ) -> QdrantBackup {
        let mut b: QdrantBackup = serde_yaml::from_str(&format!(
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: {name}, namespace: ns}}\n\
             spec: {{clusterRef: {{name: q}}, storage: {{s3: {{bucket: bkt}}}}{extra}}}\n"
        ))
        .unwrap();
        b.metadata.creation_timestamp = Some(Time(t(created)));
        b.status = Some(crate::crd::QdrantBackupStatus {
            phase,
            ..Default::default()
        });
        b
    }

    fn cluster(phase: ClusterPhase, agent: bool) -> Target {
        let mut c: crate::crd::QdrantCluster = serde_yaml::from_str(&format!(
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {{name: q, namespace: ns}}\nspec: {{version: v1.18.3, agent: {{enabled: {agent}}}}}\n"
        ))
        .unwrap();
        c.status = Some(crate::crd::QdrantClusterStatus {
            phase: Some(phase),
            ..Default::default()
        });
        Target::of_cluster(&c)
    }

    #[test]
    fn terminal_phases_never_change_and_retention_expires_completed_backups() {
        let running = cluster(ClusterPhase::Running, true);
        let failed = backup("b", 0, Some(OperationPhase::Failed), ", retentionDays: 1");
        assert_eq!(
            next_step(&failed, Some(&running), NONE, t(10 * 86400)),
            Step::Done
        );
        let mut done = backup(
            "b",
            0,
            Some(OperationPhase::Completed),
            ", retentionDays: 7",
        );
        done.status.as_mut().unwrap().completion_time = Some(Time(t(100)));
        assert_eq!(
            next_step(&done, None, NONE, t(100 + 7 * 86400 - 1)),
            Step::Done
        );
        assert_eq!(
            next_step(&done, None, NONE, t(100 + 7 * 86400)),
            Step::Expire
        );
        let kept = backup("b", 0, Some(OperationPhase::Completed), "");
        assert_eq!(
            next_step(&kept, None, NONE, t(1 << 30)),
            Step::Done,
            "no retentionDays: kept forever"
        );
    }

    #[test]
    fn waits_for_a_missing_or_unready_cluster_and_fails_without_an_agent() {
        let b = backup("b", 0, None, "");
        let Step::Wait { reason, message } = next_step(&b, None, NONE, t(0)) else {
            panic!()
        };
        assert_eq!(
            (reason, message.as_str()),
            (
                crate::runtime::Wait::ClusterNotFound,
                "QdrantCluster q not found in namespace ns"
            )
        );
        let running = backup("b", 0, Some(OperationPhase::InProgress), "");
        assert!(
            matches!(
                next_step(&running, None, NONE, t(0)),
                Step::Fail {
                    reason: "ClusterNotFound",
                    ..
                }
            ),
            "a cluster deleted under a running backup fails it"
        );
        let Step::Wait { reason, message } = next_step(
            &b,
            Some(&cluster(ClusterPhase::Upgrading, true)),
            NONE,
            t(0),
        ) else {
            panic!()
        };
        assert_eq!(reason, crate::runtime::Wait::ClusterNotReady);
        assert!(message.contains("is Upgrading, not Running"));
        let Step::Fail { reason, .. } =
            next_step(&b, Some(&cluster(ClusterPhase::Running, false)), NONE, t(0))
        else {
            panic!()
        };
        assert_eq!(reason, "AgentDisabled");
        assert_eq!(
            next_step(&b, Some(&cluster(ClusterPhase::Running, true)), NONE, t(0)),
            Step::Run
        );
        // A backup already running goes on while the cluster rolls.
        let started = backup("b", 0, Some(OperationPhase::InProgress), "");
        assert_eq!(
            next_step(
                &started,
                Some(&cluster(ClusterPhase::Degraded, true)),
                NONE,
                t(0)
            ),
            Step::Run
        );
    }

    #[test]
    fn one_backup_per_cluster_oldest_first_and_a_running_one_blocks_all() {
        let c = cluster(ClusterPhase::Running, true);
        let (old, new) = (
            backup("a-old", 0, Some(OperationPhase::Pending), ""),
            backup("b-new", 10, None, ""),
        );
        let all = vec![old.clone(), new.clone()];
        assert_eq!(next_step(&old, Some(&c), &all, t(20)), Step::Run);
        let Step::Wait { reason, message } = next_step(&new, Some(&c), &all, t(20)) else {
            panic!()
        };
        assert_eq!(reason, crate::runtime::Wait::WaitingForBackup);
        assert!(message.starts_with("backup a-old of cluster q runs first"));
        // A younger backup that is already running blocks an older pending one.
        let running_young = backup("z", 30, Some(OperationPhase::InProgress), "");
        let older = backup("y", 0, None, "");
        let Step::Wait { message, .. } = next_step(
            &older,
            Some(&c),
            &[older.clone(), running_young.clone()],
            t(40),
        ) else {
            panic!()
        };
        assert!(message.starts_with("backup z"));
        // Finished backups and other clusters' backups do not block.
        let finished = backup("a", 0, Some(OperationPhase::Completed), "");
        let mut other = backup("b", 0, Some(OperationPhase::InProgress), "");
        other.spec.cluster_ref.name = "other".into();
        assert_eq!(
            next_step(&new, Some(&c), &[finished, other, new.clone()], t(20)),
            Step::Run
        );
    }

    #[test]
    fn the_deadline_bounds_a_running_backup() {
        let c = cluster(ClusterPhase::Running, true);
        let mut b = backup(
            "b",
            0,
            Some(OperationPhase::InProgress),
            ", activeDeadlineSeconds: 3600",
        );
        b.status.as_mut().unwrap().start_time = Some(Time(t(0)));
        assert_eq!(next_step(&b, Some(&c), NONE, t(3599)), Step::Run);
        let Step::Fail { reason, message } = next_step(&b, Some(&c), NONE, t(3600)) else {
            panic!()
        };
        assert_eq!(reason, "DeadlineExceeded");
        assert!(message.contains("3600s"));
        // Without one, a default still bounds it.
        let mut b = backup("b", 0, Some(OperationPhase::InProgress), "");
        b.status.as_mut().unwrap().start_time = Some(Time(t(0)));
        let day = DEFAULT_DEADLINE_SECONDS;
        assert_eq!(next_step(&b, Some(&c), NONE, t(day - 1)), Step::Run);
        let Step::Fail { message, .. } = next_step(&b, Some(&c), NONE, t(day)) else {
            panic!("the default deadline passed")
        };
        assert!(message.contains("the default"), "{message}");
    }

    #[test]
    fn invalid_collection_names_fail_at_once() {
        let b = backup("b", 0, None, ", collections: [\"a/b\"]");
        let Step::Fail { reason, .. } = next_step(&b, None, NONE, t(0)) else {
            panic!()
        };
        assert_eq!(reason, "InvalidSpec");
    }
}
