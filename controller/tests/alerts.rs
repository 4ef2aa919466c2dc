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
