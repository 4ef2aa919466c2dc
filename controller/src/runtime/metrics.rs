//! Prometheus metrics: reconcile counts, errors and durations per kind.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub kind: String,
    pub reason: String,
}

pub struct Metrics {
    pub reconciles: Family<KindLabel, Counter>,
    pub failures: Family<ErrorLabel, Counter>,
    pub duration: Family<KindLabel, Histogram>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0])
            }),
        };
        registry.register(
            "qdrant_operator_reconciles",
            "Reconciles run",
            m.reconciles.clone(),
        );
        registry.register(
            "qdrant_operator_reconcile_errors",
            "Reconciles that failed, by reason",
            m.failures.clone(),
        );
        registry.register(
            "qdrant_operator_reconcile_duration_seconds",
            "Time spent in a reconcile",
            m.duration.clone(),
        );
        m
    }

    pub fn kind(kind: &str) -> KindLabel {
        KindLabel { kind: kind.into() }
    }
}
