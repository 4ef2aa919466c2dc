//! Metrics about backups, restores and schedules, computed at each scrape
//! from the resources themselves (as kube-state-metrics does): they hold
//! across operator restarts and leader changes, and need no bookkeeping.
//! Labels are bounded: namespace, cluster, schedule, phase and reason,
//! never a backup's name.

use crate::crd::{
    AgentTaskState, OperationPhase, QdrantBackup, QdrantBackupSchedule, QdrantRestore,
};
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

/// The reconcilers' caches, set as each reconciler starts (a replica that
/// does not lead exports none of these metrics).
#[derive(Debug, Default)]
pub struct StateMetrics {
    pub backups: OnceLock<Store<QdrantBackup>>,
    pub restores: OnceLock<Store<QdrantRestore>>,
    pub schedules: OnceLock<Store<QdrantBackupSchedule>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct Cluster {
    namespace: String,
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Phase {
    namespace: String,
    cluster: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    namespace: String,
    cluster: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Schedule {
    namespace: String,
    schedule: String,
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    namespace: String,
    cluster: String,
    result: String,
}

type F<L> = Family<L, Gauge<f64, AtomicU64>>;

/// What one scrape exports, built from the resources.
#[derive(Default)]
struct Snapshot {
    backups: F<Phase>,
    last_success: F<Cluster>,
    last_failure: F<Reason>,
    last_duration: F<Cluster>,
    last_size: F<Cluster>,
    waiting: F<Reason>,
    verifications: F<Outcome>,
    restores: F<Phase>,
    restore_last_failure: F<Reason>,
    schedule_next: F<Schedule>,
    schedule_last_success: F<Schedule>,
    schedule_interval: F<Schedule>,
    schedule_created: F<Schedule>,
}

fn seconds(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

fn phase_name(p: &OperationPhase) -> &'static str {
    match p {
        OperationPhase::Pending => "Pending",
        OperationPhase::InProgress => "InProgress",
        OperationPhase::Completed => "Completed",
        OperationPhase::Failed => "Failed",
    }
}

/// The Ready condition's reason, the bounded why of a phase.
fn ready_reason(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> String {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone())
        .unwrap_or_else(|| "Unknown".into())
}

/// Per cluster, the latest of something and when it was.
type Latest<T> = BTreeMap<Cluster, (f64, T)>;

fn keep_latest<T>(m: &mut Latest<T>, here: &Cluster, at: f64, v: T) {
    if m.get(here).is_none_or(|(t, _)| *t < at) {
        m.insert(here.clone(), (at, v));
    }
}

/// Counts one backup or restore by phase, and a Pending one by why it
/// waits; its phase.
fn count(
    phases: &F<Phase>,
    waiting: &F<Reason>,
    here: &Cluster,
    phase: Option<&OperationPhase>,
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> &'static str {
    let phase = phase.map_or("Pending", phase_name);
    phases.get_or_create(&here.with_phase(phase)).inc();
    if phase == "Pending" {
        waiting
            .get_or_create(&here.with_reason(ready_reason(conditions)))
            .inc();
    }
    phase
}

/// Each cluster's latest failure, with its reason.
fn set_failures(family: &F<Reason>, failed: Latest<String>) {
    for (here, (at, reason)) in failed {
        family.get_or_create(&here.with_reason(reason)).set(at);
    }
}

impl Cluster {
    fn of(namespace: Option<String>, cluster: &str) -> Self {
        Self {
            namespace: namespace.unwrap_or_default(),
            cluster: cluster.to_string(),
        }
    }

    fn with_phase(&self, phase: &str) -> Phase {
        Phase {
            namespace: self.namespace.clone(),
            cluster: self.cluster.clone(),
            phase: phase.into(),
        }
    }

    fn with_reason(&self, reason: String) -> Reason {
        Reason {
            namespace: self.namespace.clone(),
            cluster: self.cluster.clone(),
            reason,
        }
    }
}

impl Snapshot {
    fn backups(&mut self, all: &[std::sync::Arc<QdrantBackup>]) {
        // The latest Completed and the latest Failed backup of each cluster.
        let mut completed: Latest<&QdrantBackup> = Latest::new();
        let mut failed: Latest<String> = Latest::new();
        for b in all {
            let here = Cluster::of(b.namespace(), &b.spec.cluster_ref.name);
            let Some(st) = &b.status else {
                continue;
            };
            let phase = count(
                &self.backups,
                &self.waiting,
                &here,
                st.phase.as_ref(),
                &st.conditions,
            );
            if let Some(v) = &st.verification
                && v.completion_time.is_some()
            {
                let result = if v.task.state == AgentTaskState::Succeeded {
                    "Passed"
                } else {
                    "Failed"
                };
                self.verifications
                    .get_or_create(&Outcome {
                        namespace: here.namespace.clone(),
                        cluster: here.cluster.clone(),
                        result: result.into(),
                    })
                    .inc();
            }
            let Some(done) = st.completion_time.as_ref().map(seconds) else {
                continue;
            };
            match phase {
                "Completed" => keep_latest(&mut completed, &here, done, b.as_ref()),
                "Failed" => keep_latest(&mut failed, &here, done, ready_reason(&st.conditions)),
                _ => {}
            }
        }
        for (here, (done, b)) in completed {
            self.last_success.get_or_create(&here).set(done);
            let st = b.status.as_ref();
            if let Some(start) = st.and_then(|s| s.start_time.as_ref()).map(seconds) {
                self.last_duration.get_or_create(&here).set(done - start);
            }
            if let Some(size) = st.and_then(|s| s.size_bytes) {
                self.last_size.get_or_create(&here).set(size as f64);
            }
        }
        set_failures(&self.last_failure, failed);
    }

    fn restores(&mut self, all: &[std::sync::Arc<QdrantRestore>]) {
        let mut failed: Latest<String> = Latest::new();
        for r in all {
            let here = Cluster::of(r.namespace(), &r.spec.target_cluster_ref.name);
            let Some(st) = &r.status else {
                continue;
            };
            let phase = count(
                &self.restores,
                &self.waiting,
                &here,
                st.phase.as_ref(),
                &st.conditions,
            );
            if let ("Failed", Some(done)) = (phase, st.completion_time.as_ref().map(seconds)) {
                keep_latest(&mut failed, &here, done, ready_reason(&st.conditions));
            }
        }
        set_failures(&self.restore_last_failure, failed);
    }

    fn schedules(&mut self, all: &[std::sync::Arc<QdrantBackupSchedule>]) {
        for s in all {
            let labels = Schedule {
                namespace: s.namespace().unwrap_or_default(),
                schedule: s.name_any(),
                cluster: s.spec.cluster_ref.name.clone(),
            };
            if let Some(t) = &s.metadata.creation_timestamp {
                self.schedule_created.get_or_create(&labels).set(seconds(t));
            }
            let Some(st) = &s.status else {
                continue;
            };
            if let Some(t) = &st.last_successful_backup_time {
                self.schedule_last_success
                    .get_or_create(&labels)
                    .set(seconds(t));
            }
            if let Some(next) = &st.next_backup_time {
                self.schedule_next.get_or_create(&labels).set(seconds(next));
                // The gap from that fire to the one after it.
                let after = crate::cron::Cron::parse(&s.spec.schedule)
                    .ok()
                    .zip(crate::cron::time_zone(&s.spec.time_zone).ok())
                    .and_then(|(c, tz)| c.next_after(next.0, &tz));
                if let Some(after) = after {
                    let gap = after.duration_since(next.0).as_secs_f64();
                    self.schedule_interval.get_or_create(&labels).set(gap);
                }
            }
        }
    }

    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        macro_rules! out {
            ($name:expr, $help:expr, $family:expr) => {
                $family.encode(e.encode_descriptor(
                    $name,
                    $help,
                    None,
                    $family.metric_type(),
                )?)?;
            };
        }
        out!(
            "qdrant_operator_backups",
            "QdrantBackups by cluster and phase",
            self.backups
        );
        out!(
            "qdrant_operator_backup_last_success_timestamp_seconds",
            "When the latest Completed backup of the cluster finished",
            self.last_success
        );
        out!(
            "qdrant_operator_backup_last_failure_timestamp_seconds",
            "When the latest Failed backup of the cluster ended, with its reason",
            self.last_failure
        );
        out!(
            "qdrant_operator_backup_last_duration_seconds",
            "How long the latest Completed backup of the cluster took",
            self.last_duration
        );
        out!(
            "qdrant_operator_backup_last_size_bytes",
            "The size of the latest Completed backup of the cluster",
            self.last_size
        );
        out!(
            "qdrant_operator_operations_waiting",
            "Pending backups and restores, by the reason they wait (AgentMissing, AgentUnreachable, ClusterNotReady, ...)",
            self.waiting
        );
        out!(
            "qdrant_operator_backup_verifications",
            "Backups whose read-back check (spec.verify) ended, by result",
            self.verifications
        );
        out!(
            "qdrant_operator_restores",
            "QdrantRestores by target cluster and phase",
            self.restores
        );
        out!(
            "qdrant_operator_restore_last_failure_timestamp_seconds",
            "When the latest Failed restore into the cluster ended, with its reason",
            self.restore_last_failure
        );
        out!(
            "qdrant_operator_schedule_next_fire_timestamp_seconds",
            "When the schedule fires next",
            self.schedule_next
        );
        out!(
            "qdrant_operator_schedule_last_success_timestamp_seconds",
            "When the schedule's latest successful backup finished",
            self.schedule_last_success
        );
        out!(
            "qdrant_operator_schedule_interval_seconds",
            "The time between the schedule's next fire and the one after it",
            self.schedule_interval
        );
        out!(
            "qdrant_operator_schedule_created_timestamp_seconds",
            "When the schedule was created",
            self.schedule_created
        );
        Ok(())
    }
}

impl Collector for StateMetrics {
    fn encode(&self, e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut s = Snapshot::default();
        if let Some(b) = self.backups.get() {
            s.backups(&b.state());
        }
        if let Some(r) = self.restores.get() {
            s.restores(&r.state());
        }
        if let Some(sc) = self.schedules.get() {
            s.schedules(&sc.state());
        }
        s.encode(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};

    fn scrape(m: StateMetrics) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(m));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    fn backup(name: &str, cluster: &str, status: &str) -> QdrantBackup {
        serde_yaml::from_str(&format!(
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: {name}, namespace: search}}\n\
             spec: {{clusterRef: {{name: {cluster}}}, storage: {{s3: {{bucket: b}}}}}}\nstatus: {status}\n"
        ))
        .unwrap()
    }

    const READY: &str =
        "lastTransitionTime: '2026-12-01T00:00:00Z', message: m, status: 'False', type: Ready";

    #[test]
    fn each_cluster_exports_its_latest_good_and_failed_backup_and_what_waits() {
        let (store, mut writer) = reflector::store::<QdrantBackup>();
        for b in [
            backup(
                "old",
                "vectors",
                "{phase: Completed, startTime: '2026-12-01T00:00:00Z', completionTime: '2026-12-01T00:01:00Z', sizeBytes: 10}",
            ),
            backup(
                "new",
                "vectors",
                "{phase: Completed, startTime: '2026-12-02T00:00:00Z', completionTime: '2026-12-02T00:02:30Z', sizeBytes: 2048}",
            ),
            backup(
                "broke",
                "vectors",
                &format!(
                    "{{phase: Failed, completionTime: '2026-12-03T00:00:00Z', conditions: [{{{READY}, reason: S3AccessDenied}}]}}"
                ),
            ),
            backup(
                "older-failure",
                "vectors",
                &format!(
                    "{{phase: Failed, completionTime: '2026-11-03T00:00:00Z', conditions: [{{{READY}, reason: QdrantUnreachable}}]}}"
                ),
            ),
            backup(
                "waits",
                "docs",
                &format!("{{phase: Pending, conditions: [{{{READY}, reason: AgentMissing}}]}}"),
            ),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(b));
        }
        let m = StateMetrics::default();
        m.backups.set(store).unwrap();
        let text = scrape(m);
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        let at = |t: &str| t.parse::<jiff::Timestamp>().unwrap().as_second();
        let v = r#"namespace="search",cluster="vectors""#;
        has(&format!(
            "qdrant_operator_backup_last_success_timestamp_seconds{{{v}}} {}.0",
            at("2026-12-02T00:02:30Z")
        ));
        has(&format!(
            "qdrant_operator_backup_last_duration_seconds{{{v}}} 150.0"
        ));
        has(&format!(
            "qdrant_operator_backup_last_size_bytes{{{v}}} 2048.0"
        ));
        // Only the latest failure, with its reason: labels stay bounded.
        has(&format!(
            r#"qdrant_operator_backup_last_failure_timestamp_seconds{{{v},reason="S3AccessDenied"}} {}.0"#,
            at("2026-12-03T00:00:00Z")
        ));
        assert!(!text.contains("QdrantUnreachable"), "{text}");
        has(&format!(
            r#"qdrant_operator_backups{{{v},phase="Completed"}} 2.0"#
        ));
        has(&format!(
            r#"qdrant_operator_backups{{{v},phase="Failed"}} 2.0"#
        ));
        has(
            r#"qdrant_operator_operations_waiting{namespace="search",cluster="docs",reason="AgentMissing"} 1.0"#,
        );
        // No backup's name is a label.
        for name in ["old", "new", "broke", "waits"] {
            assert!(!text.contains(&format!("\"{name}\"")), "{text}");
        }
    }

    #[test]
    fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
        let mut registry = prometheus_client::registry::Registry::default();
        let reconciles = super::super::metrics::Metrics::new(&mut registry);
        // Families without a series are not exported at all: one each.
        let kind = super::super::metrics::Metrics::kind("QdrantBackup");
        reconciles.reconciles.get_or_create(&kind).inc();
        reconciles
            .failures
            .get_or_create(&super::super::metrics::ErrorLabel {
                kind: "QdrantBackup".into(),
                reason: "Kube".into(),
            })
            .inc();
        let m = StateMetrics::default();
        m.backups.set(reflector::store().0).unwrap();
        m.restores.set(reflector::store().0).unwrap();
        m.schedules.set(reflector::store().0).unwrap();
        registry.register_collector(Box::new(m));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for (file, uses) in [
            (
                "alerts.yaml",
                include_str!("../../../charts/qdrant-operator/files/alerts.yaml"),
            ),
            (
                "dashboard.json",
                include_str!("../../../charts/qdrant-operator/files/dashboard.json"),
            ),
        ] {
            let mut used: Vec<&str> = uses
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("qdrant_operator_"))
                .collect();
            used.sort();
            used.dedup();
            assert!(used.len() >= 8, "{file}: {used:?}");
            for name in used {
                // A counter's TYPE line names it without `_total`.
                let exported = text.contains(&format!("# TYPE {name} gauge"))
                    || name
                        .strip_suffix("_total")
                        .is_some_and(|base| text.contains(&format!("# TYPE {base} counter")));
                assert!(
                    exported,
                    "{file} uses {name}, which is not exported:\n{text}"
                );
            }
        }
    }
}
