use super::*;
use serde_json::json;

#[test]
fn size_estimate_counts_named_and_unnamed_vectors() {
    let single = json!({"points_count": 1000, "config": {"params": {"vectors": {"size": 384, "distance": "Cosine"}}}});
    assert_eq!(estimate_size(&single), 1000 * (384 * 4 + 1024));
    let named = json!({"points_count": 10, "config": {"params": {"vectors": {
        "a": {"size": 4, "distance": "Dot"}, "b": {"size": 8, "distance": "Dot"}}}}});
    assert_eq!(estimate_size(&named), 10 * (12 * 4 + 1024));
    assert_eq!(estimate_size(&json!({})), 0);
}
