//! Retention: which of a schedule's Completed backups to keep, by rule
//! (last N, hourly, daily, weekly, monthly) in the schedule's time zone.

use crate::crd::RetentionPolicy;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::collections::BTreeSet;

/// A retention bucket (an hour, a day, an ISO week or a month) and the
/// function that puts a local time in its bucket.
type Bucket = (i32, i32, i32, i32);
type BucketOf = fn(&jiff::Zoned) -> Bucket;

/// A backup of the schedule as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub name: String,
    pub completed_at: Timestamp,
}

/// The Completed backups to keep: the union of each rule's picks (the newest
/// backup of each of the N most recent hours, days, ISO weeks and months
/// that have one, in `tz`, and the newest `keepLast`). The newest backup is
/// always kept; a policy with no rule keeps everything.
pub fn retain(completed: &[Kept], p: &RetentionPolicy, tz: &TimeZone) -> BTreeSet<String> {
    let mut newest_first: Vec<&Kept> = completed.iter().collect();
    newest_first.sort_by(|a, b| {
        b.completed_at
            .cmp(&a.completed_at)
            .then_with(|| b.name.cmp(&a.name))
    });
    let rules = [
        p.keep_last,
        p.keep_hourly,
        p.keep_daily,
        p.keep_weekly,
        p.keep_monthly,
    ];
    if rules.iter().all(Option::is_none) {
        return newest_first.iter().map(|k| k.name.clone()).collect();
    }
    let mut keep = BTreeSet::new();
    if let Some(first) = newest_first.first() {
        keep.insert(first.name.clone());
    }
    if let Some(n) = p.keep_last {
        keep.extend(newest_first.iter().take(n as usize).map(|k| k.name.clone()));
    }
    let bucket_rules: [(Option<u32>, BucketOf); 4] = [
        (p.keep_hourly, |z| {
            (
                z.year() as i32,
                z.month() as i32,
                z.day() as i32,
                z.hour() as i32,
            )
        }),
        (p.keep_daily, |z| {
            (z.year() as i32, z.month() as i32, z.day() as i32, 0)
        }),
        (p.keep_weekly, |z| {
            let w = z.date().iso_week_date();
            (w.year() as i32, w.week() as i32, 0, 0)
        }),
        (p.keep_monthly, |z| {
            (z.year() as i32, z.month() as i32, 0, 0)
        }),
    ];
    for (n, bucket) in bucket_rules {
        let Some(n) = n else { continue };
        let mut seen: BTreeSet<Bucket> = BTreeSet::new();
        for k in &newest_first {
            if seen.len() >= n as usize {
                break;
            }
            let b = bucket(&k.completed_at.to_zoned(tz.clone()));
            if seen.insert(b) {
                keep.insert(k.name.clone());
            }
        }
    }
    keep
}

/// Failed backups kept for inspection; older ones are pruned.
pub const KEEP_FAILED: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::cron::time_zone;

    fn at(s: &str, tz: &TimeZone) -> Timestamp {
        let dt: jiff::civil::DateTime = s.parse().unwrap();
        tz.to_ambiguous_zoned(dt).compatible().unwrap().timestamp()
    }

    fn backups(hours: &[i64]) -> Vec<Kept> {
        let base = at("2026-01-01T00:00", &TimeZone::UTC);
        hours
            .iter()
            .map(|h| Kept {
                name: format!("b{h:05}"),
                completed_at: Timestamp::from_second(base.as_second() + h * 3600).unwrap(),
            })
            .collect()
    }

    fn policy(
        last: Option<u32>,
        hourly: Option<u32>,
        daily: Option<u32>,
        weekly: Option<u32>,
        monthly: Option<u32>,
    ) -> RetentionPolicy {
        RetentionPolicy {
            keep_last: last,
            keep_hourly: hourly,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
        }
    }

    #[test]
    fn retention_keeps_the_union_of_its_rules_in_the_schedules_zone() {
        // Two backups a day (01:00 and 13:00 UTC) for 60 days.
        let hours: Vec<i64> = (0..60).flat_map(|d| [d * 24 + 1, d * 24 + 13]).collect();
        let all = backups(&hours);
        let keep = retain(
            &all,
            &policy(Some(2), None, Some(3), None, None),
            &TimeZone::UTC,
        );
        // last 2 = day 59 13:00 and 01:00; daily 3 = newest of days 59, 58, 57.
        let mut want: Vec<String> = [59 * 24 + 13, 59 * 24 + 1, 58 * 24 + 13, 57 * 24 + 13]
            .iter()
            .map(|h| format!("b{h:05}"))
            .collect();
        want.sort();
        assert_eq!(keep.into_iter().collect::<Vec<_>>(), want);
        // Month buckets follow the schedule's zone: 20:00 UTC on Jan 31 is
        // already February in Tokyo (UTC+9).
        let edge = backups(&[30 * 24 + 10, 30 * 24 + 20, 40 * 24]);
        let monthly = |tz: &str| -> Vec<String> {
            retain(
                &edge,
                &policy(None, None, None, None, Some(2)),
                &time_zone(tz).unwrap(),
            )
            .into_iter()
            .collect()
        };
        assert_eq!(
            monthly("UTC"),
            [format!("b{:05}", 30 * 24 + 20), format!("b{:05}", 40 * 24)]
        );
        assert_eq!(
            monthly("Asia/Tokyo"),
            [format!("b{:05}", 30 * 24 + 10), format!("b{:05}", 40 * 24)]
        );
    }

    #[test]
    fn retention_never_drops_the_newest_and_keep_last_keeps_exactly_n() {
        let tz = TimeZone::UTC;
        // A deterministic sweep of histories and policies.
        for len in 0..25usize {
            let hours: Vec<i64> = (0..len as i64).map(|i| i * 7 + (i * i) % 5).collect();
            let all = backups(&hours);
            for n in 1..6u32 {
                let keep = retain(&all, &policy(Some(n), None, None, None, None), &tz);
                assert_eq!(keep.len(), len.min(n as usize), "len={len} keepLast={n}");
                for p in [
                    policy(None, Some(n), None, None, None),
                    policy(None, None, Some(n), Some(1), None),
                    policy(Some(n), None, None, None, Some(1)),
                ] {
                    let keep = retain(&all, &p, &tz);
                    if let Some(newest) = all.iter().max_by_key(|k| k.completed_at) {
                        assert!(
                            keep.contains(&newest.name),
                            "newest dropped: len={len} {p:?}"
                        );
                    }
                    assert!(keep.iter().all(|k| all.iter().any(|a| &a.name == k)));
                }
            }
            // No rule at all: nothing is deleted.
            assert_eq!(retain(&all, &RetentionPolicy::default(), &tz).len(), len);
        }
    }
}
