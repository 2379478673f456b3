//! The bridge's bookkeeping, alone.

use super::*;

#[test]
fn each_change_is_applied_once() {
    let mut seen = SeenChanges::default();
    assert!(seen.first_time("a", 1));
    assert!(!seen.first_time("a", 1), "the second copy");
    assert!(seen.first_time("b", 1), "another origin's change 1");
    for id in 2..=SeenChanges::KEEP as u64 + 1 {
        assert!(seen.first_time("a", id));
    }
    assert_eq!(seen.order.len(), SeenChanges::KEEP);
    assert!(seen.first_time("a", 1), "forgotten after KEEP newer ones");
    assert!(!seen.first_time("a", SeenChanges::KEEP as u64));
}
