//! The QdrantBackupSchedule reconciler: at each fire it creates a
//! QdrantBackup (labelled with the schedule, not owned by it, so deleting a
//! schedule keeps its backups), applies the concurrency policy, prunes by
//! retention, and requeues itself exactly for the next fire.

use crate::crd::{
    ConcurrencyPolicy, OperationPhase, QdrantBackup, QdrantBackupSchedule,
    QdrantBackupScheduleStatus, QdrantBackupSpec, QdrantRestore, SchedulePhase,
};
use crate::cron::Cron;
use crate::runtime::{self, Context, Error, report};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use retention::{KEEP_FAILED, Kept};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use crate::cron;
pub mod retention;

/// Label on each backup a schedule creates: the schedule's name.
pub const SCHEDULE_LABEL: &str = "qdrant.io/schedule";
/// Label on each backup a schedule creates: the schedule's UID. A schedule
/// deleted and re-created under the same name is another object with
/// another UID, and never prunes the first one's backups.
pub const SCHEDULE_UID_LABEL: &str = "qdrant.io/schedule-uid";

/// Whether this schedule object made `b`: it carries the schedule's UID, is
/// named as the schedule names its fires (`<schedule>-YYYYMMDD-HHMMSS`,
/// which a copy under another name is not), and backs up the cluster the
/// schedule backs up now. Only such backups are ever replaced or pruned.
pub fn made_by(s: &QdrantBackupSchedule, b: &QdrantBackup) -> bool {
    let uid = s.uid().unwrap_or_default();
    let labelled = b.labels().get(SCHEDULE_UID_LABEL) == Some(&uid);
    let named = b
        .name_any()
        .strip_prefix(&format!("{}-", s.name_any()))
        .is_some_and(cron::is_fire_suffix);
    !uid.is_empty()
        && labelled
        && named
        && b.namespace() == s.namespace()
        && b.spec.cluster_ref == s.spec.cluster_ref
}

fn phase(b: &QdrantBackup) -> Option<OperationPhase> {
    b.status.as_ref().and_then(|s| s.phase)
}

fn running(b: &QdrantBackup) -> bool {
    !matches!(
        phase(b),
        Some(OperationPhase::Completed | OperationPhase::Failed)
    )
}

async fn event(
    ctx: &Context,
    s: &QdrantBackupSchedule,
    type_: EventType,
    reason: &str,
    note: String,
) {
    report::event(
        &ctx.recorder,
        &s.object_ref(&()),
        type_,
        reason,
        "Schedule",
        note,
    )
    .await
}

pub async fn reconcile(s: Arc<QdrantBackupSchedule>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = (ctx.now)();
    let ns = s.namespace().unwrap_or_else(|| "default".into());
    let backups: Api<QdrantBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let previous = s.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = s.metadata.generation;

    let parsed = Cron::parse(&s.spec.schedule)
        .map_err(|e| ("InvalidSchedule", format!("spec.schedule: {e}")))
        .and_then(|c| {
            cron::time_zone(&s.spec.time_zone)
                .map(|tz| (c, tz))
                .map_err(|e| ("InvalidTimeZone", e))
        });
    let (cron, tz) = match parsed {
        Ok(x) => x,
        Err((reason, message)) => {
            status.conditions = vec![report::ready(
                false,
                reason,
                message.clone(),
                now,
                &previous.conditions,
                s.metadata.generation,
            )];
            status.next_backup_time = None;
            report::write_status(&ctx.client, &*s, Some(&previous), &status).await?;
            if previous.conditions.first().map(|c| c.reason.as_str()) != Some(reason) {
                event(&ctx, &s, EventType::Warning, reason, message).await;
            }
            return Ok(Action::await_change());
        }
    };

    let uid = s.uid().unwrap_or_default();
    let mine: Vec<QdrantBackup> = backups
        .list(&ListParams::default().labels(&format!("{SCHEDULE_UID_LABEL}={uid}")))
        .await?
        .items
        .into_iter()
        .filter(|b| made_by(&s, b))
        .collect();
    let jitter = jiff::SignedDuration::from_secs(
        cron::jitter_seconds(
            &s.uid().unwrap_or_default(),
            s.spec.jitter_seconds.unwrap_or(0),
        )
        .into(),
    );
    let since = previous
        .last_schedule_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| s.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let due = cron::due(&cron, &tz, since, now, s.spec.starting_deadline_seconds);

    if !s.spec.suspend {
        if let Some(skipped) = due.skipped {
            status.last_schedule_time = Some(Time(skipped));
            event(
                &ctx,
                &s,
                EventType::Warning,
                "MissedSchedule",
                format!(
                    "the fire at {skipped} was missed by more than startingDeadlineSeconds; skipped"
                ),
            )
            .await;
        }
        if let Some(fire) = due.fire {
            let start_at = fire + jitter;
            if now < start_at {
                // Jitter: come back when this schedule's slot starts.
                report::write_status(&ctx.client, &*s, Some(&previous), &status).await?;
                return Ok(Action::requeue(until(now, start_at)));
            }
            fire_once(&ctx, &s, &backups, &mine, fire, &mut status).await?;
        }
    }

    prune(&ctx, &s, &backups, &mine, &tz, &mut status).await?;
    status.phase = Some(if s.spec.suspend {
        SchedulePhase::Suspended
    } else {
        SchedulePhase::Active
    });
    status.next_backup_time = if s.spec.suspend {
        None
    } else {
        due.next.map(|t| Time(t + jitter))
    };
    let msg = if s.spec.suspend {
        "suspended".to_string()
    } else {
        format!(
            "next backup at {}",
            status
                .next_backup_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| "never".into())
        )
    };
    status.conditions = vec![report::ready(
        true,
        if s.spec.suspend {
            "Suspended"
        } else {
            "Scheduled"
        },
        msg,
        now,
        &previous.conditions,
        s.metadata.generation,
    )];
    report::write_status(&ctx.client, &*s, Some(&previous), &status).await?;
    Ok(match status.next_backup_time.as_ref() {
        Some(t) => Action::requeue(until(now, t.0)),
        None => Action::await_change(),
    })
}

/// Time until `t`, at least a second, at most an hour (a safety net: the
/// next fire is recomputed on every wake).
fn until(now: jiff::Timestamp, t: jiff::Timestamp) -> Duration {
    let secs = (t.as_second() - now.as_second()).clamp(1, 3600);
    Duration::from_secs(secs as u64)
}

/// One fire: the concurrency policy, then the new backup.
async fn fire_once(
    ctx: &Context,
    s: &QdrantBackupSchedule,
    backups: &Api<QdrantBackup>,
    mine: &[QdrantBackup],
    fire: jiff::Timestamp,
    status: &mut QdrantBackupScheduleStatus,
) -> Result<(), Error> {
    let active: Vec<&QdrantBackup> = mine.iter().filter(|b| running(b)).collect();
    status.last_schedule_time = Some(Time(fire));
    match s.spec.concurrency_policy {
        ConcurrencyPolicy::Forbid if !active.is_empty() => {
            let names: Vec<String> = active.iter().map(|b| b.name_any()).collect();
            event(
                ctx,
                s,
                EventType::Normal,
                "Skipped",
                format!(
                    "backup {} still runs; concurrencyPolicy Forbid skips this fire",
                    names.join(", ")
                ),
            )
            .await;
            return Ok(());
        }
        ConcurrencyPolicy::Replace => {
            for b in &active {
                // Its finalizer cancels the agents' tasks and applies deletionPolicy.
                backups
                    .delete(&b.name_any(), &DeleteParams::default())
                    .await?;
                event(
                    ctx,
                    s,
                    EventType::Normal,
                    "Replaced",
                    format!("deleted running backup {} to start a new one", b.name_any()),
                )
                .await;
            }
        }
        _ => {}
    }
    let name = cron::backup_name(&s.name_any(), fire);
    let b = backup_for(s, &name);
    match backups.create(&PostParams::default(), &b).await {
        Ok(_) => {
            event(
                ctx,
                s,
                EventType::Normal,
                "BackupCreated",
                format!("created QdrantBackup {name}"),
            )
            .await
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {} // this fire's backup exists already
        Err(e) => return Err(e.into()),
    }
    status.last_backup_name = Some(name);
    Ok(())
}

/// The QdrantBackup a fire creates: the schedule's cluster, storage and
/// collections, with the template's deletion policy (Delete by default, so
/// retention frees the bucket). Labelled with the schedule's name and UID,
/// not owned.
pub fn backup_for(s: &QdrantBackupSchedule, name: &str) -> QdrantBackup {
    let t = &s.spec.backup_template;
    let mut labels: BTreeMap<String, String> = t.labels.clone();
    labels.insert(SCHEDULE_LABEL.into(), s.name_any());
    labels.insert(SCHEDULE_UID_LABEL.into(), s.uid().unwrap_or_default());
    let mut b = QdrantBackup::new(
        name,
        QdrantBackupSpec {
            cluster_ref: s.spec.cluster_ref.clone(),
            storage: s.spec.storage.clone(),
            collections: s.spec.collections.clone(),
            deletion_policy: t.deletion_policy,
            retention_days: None,
            active_deadline_seconds: None,
            mode: t.mode,
            verify: t.verify,
        },
    );
    b.metadata.namespace = s.namespace();
    b.metadata.labels = Some(labels);
    b
}

/// Retention: Completed backups outside the policy's picks and Failed ones
/// beyond the newest few are deleted; running ones never are.
async fn prune(
    ctx: &Context,
    s: &QdrantBackupSchedule,
    backups: &Api<QdrantBackup>,
    mine: &[QdrantBackup],
    tz: &jiff::tz::TimeZone,
    status: &mut QdrantBackupScheduleStatus,
) -> Result<(), Error> {
    let completed: Vec<Kept> = mine
        .iter()
        .filter(|b| phase(b) == Some(OperationPhase::Completed))
        .map(|b| Kept {
            name: b.name_any(),
            completed_at: b
                .status
                .as_ref()
                .and_then(|st| st.completion_time.as_ref())
                .map(|t| t.0)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
        })
        .collect();
    let keep = retention::retain(&completed, &s.spec.retention_policy, tz);
    status.last_successful_backup_time = completed.iter().map(|k| k.completed_at).max().map(Time);
    let mut failed: Vec<&QdrantBackup> = mine
        .iter()
        .filter(|b| phase(b) == Some(OperationPhase::Failed))
        .collect();
    failed.sort_by_key(|b| std::cmp::Reverse(b.metadata.creation_timestamp.clone().map(|t| t.0)));
    let mut doomed: Vec<String> = completed
        .iter()
        .filter(|k| !keep.contains(&k.name))
        .map(|k| k.name.clone())
        .chain(failed.iter().skip(KEEP_FAILED).map(|b| b.name_any()))
        .collect();
    if !doomed.is_empty() {
        // A backup a running restore reads from stays until it finished.
        let restores: Api<QdrantRestore> =
            Api::namespaced(ctx.client.clone(), &s.namespace().unwrap_or_default());
        let reading = in_use(&restores.list(&ListParams::default()).await?.items);
        doomed.retain(|b| !reading.contains(b));
    }
    for name in doomed {
        match backups.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                event(
                    ctx,
                    s,
                    EventType::Normal,
                    "Pruned",
                    format!("deleted backup {name} (retention)"),
                )
                .await
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    status.kept_backups = keep.into_iter().collect();
    Ok(())
}

/// The backups that restores not yet finished read from.
fn in_use(restores: &[QdrantRestore]) -> Vec<String> {
    restores
        .iter()
        .filter(|r| {
            !matches!(
                r.status.as_ref().and_then(|s| s.phase),
                Some(OperationPhase::Completed | OperationPhase::Failed)
            )
        })
        .filter_map(|r| r.spec.backup_ref.as_ref().map(|b| b.name.clone()))
        .collect()
}

/// Runs the schedule controller; a change to any labelled backup wakes its schedule.
pub async fn run(ctx: Arc<Context>) {
    let by_label = |b: QdrantBackup| {
        let ns = b.namespace()?;
        b.labels()
            .get(SCHEDULE_LABEL)
            .map(|s| ObjectRef::<QdrantBackupSchedule>::new(s).within(&ns))
    };
    let controller = runtime::controller::<QdrantBackupSchedule>(&ctx.client).watches(
        Api::<QdrantBackup>::all(ctx.client.clone()),
        watcher::Config::default().labels(SCHEDULE_LABEL),
        by_label,
    );
    let _ = ctx.state.schedules.set(controller.store());
    runtime::run(controller, ctx.clone(), reconcile).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ClusterKind, DeletionPolicy};

    #[test]
    fn a_fire_backs_up_the_schedules_cluster_whatever_its_kind() {
        let s: QdrantBackupSchedule = serde_yaml::from_str(
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackupSchedule\nmetadata: {name: nightly, namespace: search}\n\
             spec: {schedule: '@daily', clusterRef: {kind: StatefulSet, name: qdrant}, storage: {s3: {bucket: b}},\n\
             \x20 backupTemplate: {labels: {team: search}}}\n",
        )
        .unwrap();
        let b = backup_for(&s, "nightly-1");
        assert_eq!(
            (b.spec.cluster_ref.kind, b.spec.cluster_ref.name.as_str()),
            (ClusterKind::StatefulSet, "qdrant")
        );
        assert_eq!(b.spec.deletion_policy, DeletionPolicy::Delete);
        let labels = b.metadata.labels.unwrap();
        assert_eq!(labels[SCHEDULE_LABEL], "nightly");
        assert_eq!(labels["team"], "search");
        assert_eq!(b.metadata.namespace.as_deref(), Some("search"));
    }

    fn schedule(uid: &str, cluster: &str) -> QdrantBackupSchedule {
        serde_yaml::from_str(&format!(
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackupSchedule\nmetadata: {{name: nightly, namespace: search, uid: {uid}}}\n\
             spec: {{schedule: '@daily', clusterRef: {{name: {cluster}}}, storage: {{s3: {{bucket: b}}}}}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn retention_and_replace_act_only_on_backups_this_schedule_object_made_of_its_cluster() {
        let s = schedule("uid-1", "vectors");
        let made = backup_for(&s, "nightly-20261123-000000");
        assert_eq!(made.labels()[SCHEDULE_UID_LABEL], "uid-1");
        assert!(made_by(&s, &made));
        // The same name re-created for another cluster is another object.
        assert!(!made_by(&schedule("uid-2", "vectors"), &made));
        // The schedule now backs up another cluster: its old backups stay.
        assert!(!made_by(&schedule("uid-1", "other"), &made));
        // A copy under another name, labels and all, is not the schedule's.
        let mut copy = made.clone();
        copy.metadata.name = Some("nightly-20261123-000000-copy".into());
        assert!(!made_by(&s, &copy));
        copy.metadata.name = Some("nightly-before-migration".into());
        assert!(!made_by(&s, &copy));
        // A backup with the name label only (made by hand, or by an earlier
        // version) is not pruned either.
        let mut unlabelled = made.clone();
        unlabelled.labels_mut().remove(SCHEDULE_UID_LABEL);
        assert!(!made_by(&s, &unlabelled));
        // Nor a backup of another namespace.
        let mut elsewhere = made;
        elsewhere.metadata.namespace = Some("other".into());
        assert!(!made_by(&s, &elsewhere));
    }
}
