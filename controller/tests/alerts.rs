//! The chart's alerting rules (`charts/qdrant-operator/files/alerts.yaml`)
//! are valid Prometheus rules, and each alert fires where it should and
//! stays quiet where it should not (`tests/alerts/alerts_test.yaml`), by
//! Prometheus' own `promtool` (Debian's prometheus package, installed by
//! scripts/setup.sh).

use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let root = test_support::bins::workspace_root();
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root.join("controller/tests/alerts"))
        .output()
        .expect("promtool runs (apt-get install prometheus, or scripts/setup.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alerting_rules_are_valid_and_each_fires_only_when_it_should() {
    let checked = promtool(&[
        "check",
        "rules",
        "../../../charts/qdrant-operator/files/alerts.yaml",
    ]);
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// `manifests/monitoring/prometheusrule.yaml` (kustomize users' copy) is the
/// chart's rule file as it is now (`UPDATE_SNAPSHOTS=1` writes it anew).
#[test]
fn the_kustomize_prometheus_rule_holds_the_charts_alerts() {
    let root = test_support::bins::workspace_root();
    let alerts =
        std::fs::read_to_string(root.join("charts/qdrant-operator/files/alerts.yaml")).unwrap();
    let mut want = String::from(
        "# Made from charts/qdrant-operator/files/alerts.yaml (a test keeps it the\n\
         # same; UPDATE_SNAPSHOTS=1 cargo nextest run -p qdrant-operator --test\n\
         # alerts writes it anew).\n\
         apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n\
         metadata:\n  name: qdrant-operator\nspec:\n",
    );
    for line in alerts.lines() {
        if line.is_empty() {
            want.push('\n');
        } else {
            want.push_str(&format!("  {line}\n"));
        }
    }
    let file = root.join("manifests/monitoring/prometheusrule.yaml");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&file, &want).unwrap();
    }
    let have = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        have == want,
        "{} differs from the chart's alerts.yaml: run UPDATE_SNAPSHOTS=1 cargo nextest run -p qdrant-operator --test alerts",
        file.display()
    );
    // It is a PrometheusRule whose rules promtool takes.
    let rule: serde_json::Value = serde_yaml::from_str(&have).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    let checked = promtool(&["check", "rules", &rules.display().to_string()]);
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
}
