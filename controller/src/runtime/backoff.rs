//! Exponential backoff per object, for errors and for waits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Seconds to wait after the `n`-th consecutive failure: 5, 10, 20, ... 300.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs((5u64 << n.saturating_sub(1).min(6)).min(300))
}

/// Consecutive failures per object UID.
#[derive(Default)]
pub struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a failure of `uid`; returns the count and the delay to wait.
    pub fn failed(&self, uid: &str) -> (u32, Duration) {
        let mut m = self.map();
        let n = m.entry(uid.to_string()).or_insert(0);
        *n += 1;
        (*n, backoff(*n))
    }

    /// The delay after one more failure, without counting it (for waits).
    pub fn next(&self, uid: &str) -> Duration {
        backoff(self.map().get(uid).copied().unwrap_or(0) + 1)
    }

    pub fn reset(&self, uid: &str) {
        self.map().remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_exponentially_up_to_five_minutes_per_object() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300]);
        let b = Backoff::default();
        assert_eq!(b.next("a"), Duration::from_secs(5));
        assert_eq!(b.failed("a"), (1, Duration::from_secs(5)));
        assert_eq!(b.failed("a"), (2, Duration::from_secs(10)));
        assert_eq!(b.next("a"), Duration::from_secs(20));
        assert_eq!(b.failed("b").0, 1);
        b.reset("a");
        assert_eq!(b.failed("a").0, 1);
    }
}
