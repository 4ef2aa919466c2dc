//! When a QdrantBackupSchedule fires: cron expressions, fire times in a time
//! zone, missed-fire catch-up, backup names and jitter.
//!
//! DST: civil times a spring-forward skips fire once, at the same distance
//! after the gap (so `30 2 * * *` fires at 03:30 on that day); civil times
//! a fall-back repeats fire once, at their first occurrence.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use std::collections::BTreeSet;

/// A parsed five-field cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: BTreeSet<u8>,
    hours: BTreeSet<u8>,
    days: BTreeSet<u8>,
    months: BTreeSet<u8>,
    weekdays: BTreeSet<u8>,
    /// Whether the day-of-month / day-of-week fields were restricted: when
    /// both are, a day matching either fires (classic cron).
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn field(
    spec: &str,
    name: &str,
    lo: u8,
    hi: u8,
    names: &[&str],
    names_from: u8,
) -> Result<BTreeSet<u8>, String> {
    let value = |s: &str| -> Result<u8, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u8 + names_from);
        }
        let v: u8 = s
            .parse()
            .map_err(|_| format!("{name} field has {s:?}, not a number"))?;
        if v < lo || v > hi {
            return Err(format!("{name} field has {v}, outside {lo}-{hi}"));
        }
        Ok(v)
    };
    let mut out = BTreeSet::new();
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let st: u8 = s
                    .parse()
                    .map_err(|_| format!("{name} field has step {s:?}, not a number"))?;
                if st == 0 {
                    return Err(format!("{name} field has a step of 0"));
                }
                (r, st)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if step > 1 { hi } else { v })
        };
        if a > b {
            return Err(format!("{name} field has the range {range:?} backwards"));
        }
        out.extend((a..=b).step_by(step as usize));
    }
    Ok(out)
}

impl Cron {
    /// Five fields (minute hour day-of-month month day-of-week) or a macro:
    /// @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let expanded = match expr.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            e if e.starts_with('@') => return Err(format!("unknown macro {e:?}")),
            e => e,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        let [mi, h, dom, mo, dow] = f[..] else {
            return Err(format!(
                "{expr:?} has {} fields; a schedule has 5 (minute hour day-of-month month day-of-week)",
                f.len()
            ));
        };
        let mut weekdays = field(dow, "day-of-week", 0, 7, &DAYS, 0)?;
        if weekdays.remove(&7) {
            weekdays.insert(0); // 7 is Sunday too
        }
        Ok(Self {
            minutes: field(mi, "minute", 0, 59, &[], 0)?,
            hours: field(h, "hour", 0, 23, &[], 0)?,
            days: field(dom, "day-of-month", 1, 31, &[], 0)?,
            months: field(mo, "month", 1, 12, &MONTHS, 1)?,
            weekdays,
            days_restricted: dom != "*",
            weekdays_restricted: dow != "*",
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        if !self.months.contains(&(d.month() as u8)) {
            return false;
        }
        let dom = self.days.contains(&(d.day() as u8));
        let dow = self
            .weekdays
            .contains(&(d.weekday().to_sunday_zero_offset() as u8));
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// Fire instants of civil day `d` in `tz`, from civil hour `from_hour`
    /// on (earlier ones cannot follow the start, even across a DST shift).
    fn fires_on(&self, d: Date, tz: &TimeZone, from_hour: u8) -> Vec<Timestamp> {
        let mut out = vec![];
        for &h in self.hours.range(from_hour..) {
            for &m in &self.minutes {
                let dt = DateTime::from(d)
                    .with()
                    .hour(h as i8)
                    .minute(m as i8)
                    .build();
                if let Ok(Ok(z)) = dt.map(|dt| tz.to_ambiguous_zoned(dt).compatible()) {
                    out.push(z.timestamp());
                }
            }
        }
        out
    }

    /// The first fire strictly after `after`, or `None` if the expression
    /// never fires within eight years (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start_z = after.to_zoned(tz.clone());
        let start = start_z.date();
        let start_hour = (start_z.hour() as u8).saturating_sub(3);
        let mut found: Option<Timestamp> = None;
        let mut d = start.yesterday().ok()?;
        for _ in 0..(366 * 8) {
            if self.day_matches(d) {
                // A gap can push a day's fire past the next day's first one:
                // keep the earliest across the first day found and the next.
                let from_hour = if d == start { start_hour } else { 0 };
                let best = self
                    .fires_on(d, tz, from_hour)
                    .into_iter()
                    .filter(|t| *t > after)
                    .min();
                if let Some(t) = best {
                    found = Some(found.map_or(t, |f: Timestamp| f.min(t)));
                }
            }
            if let Some(f) = found
                && d > f.to_zoned(tz.clone()).date()
            {
                return found;
            }
            d = d.tomorrow().ok()?;
        }
        found
    }
}

/// Resolves an IANA time zone name, with a message that names the field.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| {
        format!("spec.timeZone {name:?} is not an IANA time zone name (e.g. Europe/Berlin)")
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The fire to run now (at most one, even after many missed fires).
    pub fire: Option<Timestamp>,
    /// The latest fire that was missed by more than the starting deadline.
    pub skipped: Option<Timestamp>,
    /// When to look again.
    pub next: Option<Timestamp>,
}

/// What is due at `now`: the latest fire in `(since, now]`, unless it is
/// older than `starting_deadline` seconds (then it is skipped: at most one
/// catch-up, never a burst); and the next fire after `now`.
pub fn due(
    cron: &Cron,
    tz: &TimeZone,
    since: Timestamp,
    now: Timestamp,
    starting_deadline: Option<i64>,
) -> Due {
    let next = cron.next_after(now, tz);
    match (latest_fire(cron, tz, since, now), starting_deadline) {
        (Some(f), Some(d)) if now.as_second() - f.as_second() > d => Due {
            fire: None,
            skipped: Some(f),
            next,
        },
        (fire, _) => Due {
            fire,
            skipped: None,
            next,
        },
    }
}

/// The latest fire in `(since, now]`. Only the latest matters, so windows
/// growing back from `now` are searched rather than every missed fire.
fn latest_fire(cron: &Cron, tz: &TimeZone, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
    let mut window: i64 = 86_400;
    loop {
        let from = Timestamp::from_second(now.as_second().saturating_sub(window))
            .unwrap_or(since)
            .max(since);
        let mut t = from;
        let mut last = None;
        while let Some(f) = cron.next_after(t, tz).filter(|f| *f <= now) {
            last = Some(f);
            t = f;
        }
        if last.is_some() || from == since {
            return last;
        }
        window = window.saturating_mul(4);
    }
}

/// The name of the backup a fire creates: `<schedule>-<yyyymmdd-hhmmss>` (UTC).
pub fn backup_name(schedule: &str, fire: Timestamp) -> String {
    format!("{schedule}-{}", fire.strftime("%Y%m%d-%H%M%S"))
}

/// Whether `suffix` is what [`backup_name`] puts after the schedule's name.
pub fn is_fire_suffix(suffix: &str) -> bool {
    let b = suffix.as_bytes();
    b.len() == 15
        && b[8] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit())
}

/// A stable delay in `[0, max]` seconds per schedule, so many clusters on one
/// schedule spread out while each keeps its own rhythm.
pub fn jitter_seconds(schedule_uid: &str, max: u32) -> u32 {
    use sha2::{Digest, Sha256};
    if max == 0 {
        return 0;
    }
    let h = Sha256::digest(schedule_uid.as_bytes());
    (u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8])) % (u64::from(max) + 1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str, tz: &TimeZone) -> Timestamp {
        let dt: DateTime = s.parse().unwrap();
        tz.to_ambiguous_zoned(dt).compatible().unwrap().timestamp()
    }

    fn local(t: Timestamp, tz: &TimeZone) -> String {
        t.to_zoned(tz.clone())
            .strftime("%Y-%m-%d %H:%M %Z")
            .to_string()
    }

    fn fires(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let tz = time_zone(tz).unwrap();
        let cron = Cron::parse(expr).unwrap();
        let mut t = at(from, &tz);
        (0..n)
            .map(|_| {
                t = cron.next_after(t, &tz).unwrap();
                local(t, &tz)
            })
            .collect()
    }

    #[test]
    fn daily_fires_across_spring_forward_and_fall_back_in_berlin() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00", 4),
            [
                "2026-03-28 02:30 CET",
                "2026-03-29 03:30 CEST",
                "2026-03-30 02:30 CEST",
                "2026-03-31 02:30 CEST"
            ]
        );
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice, fires once.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00", 3),
            [
                "2026-10-25 02:30 CEST",
                "2026-10-26 02:30 CET",
                "2026-10-27 02:30 CET"
            ]
        );
        // Every 30 minutes through the gap: no fire twice, none lost after it.
        assert_eq!(
            fires("*/30 * * * *", "Europe/Berlin", "2026-03-29T01:10", 4),
            [
                "2026-03-29 01:30 CET",
                "2026-03-29 03:00 CEST",
                "2026-03-29 03:30 CEST",
                "2026-03-29 04:00 CEST"
            ]
        );
        // ...and through the fold, the repeated hour fires at its first occurrence only.
        let fold = fires("0 * * * *", "Europe/Berlin", "2026-10-25T00:30", 4);
        assert_eq!(
            fold,
            [
                "2026-10-25 01:00 CEST",
                "2026-10-25 02:00 CEST",
                "2026-10-25 03:00 CET",
                "2026-10-25 04:00 CET"
            ]
        );
    }

    #[test]
    fn month_ends_leap_days_and_day_rules() {
        assert_eq!(
            fires("0 0 31 * *", "UTC", "2026-01-31T12:00", 3),
            [
                "2026-03-31 00:00 UTC",
                "2026-05-31 00:00 UTC",
                "2026-07-31 00:00 UTC"
            ]
        );
        assert_eq!(
            fires("0 12 29 2 *", "UTC", "2026-01-01T00:00", 2),
            ["2028-02-29 12:00 UTC", "2032-02-29 12:00 UTC"]
        );
        assert_eq!(
            Cron::parse("0 0 30 2 *")
                .unwrap()
                .next_after(Timestamp::UNIX_EPOCH, &TimeZone::UTC),
            None,
            "never fires"
        );
        // Both day fields restricted: either matches (the 1st, or a Monday).
        assert_eq!(
            fires("0 9 1 * MON", "UTC", "2026-05-28T00:00", 3),
            [
                "2026-06-01 09:00 UTC",
                "2026-06-08 09:00 UTC",
                "2026-06-15 09:00 UTC"
            ]
        );
        assert_eq!(
            fires("0 9 * * 7", "UTC", "2026-06-01T00:00", 1),
            ["2026-06-07 09:00 UTC"],
            "7 is Sunday"
        );
        assert_eq!(
            fires("15 */6 * JAN-FEB *", "UTC", "2026-02-28T19:00", 2),
            ["2027-01-01 00:15 UTC", "2027-01-01 06:15 UTC"]
        );
        assert_eq!(
            fires("@weekly", "Asia/Kolkata", "2026-06-01T00:00", 1),
            ["2026-06-07 00:00 IST"]
        );
        assert_eq!(
            fires("@monthly", "UTC", "2026-06-01T00:00", 1),
            ["2026-07-01 00:00 UTC"]
        );
    }

    #[test]
    fn bad_schedules_and_zones_say_which_field_is_wrong() {
        let e = |s| Cron::parse(s).unwrap_err();
        assert!(e("61 * * * *").contains("minute field has 61, outside 0-59"));
        assert!(e("* 24 * * *").contains("hour field has 24"));
        assert!(e("* * 0 * *").contains("day-of-month field has 0"));
        assert!(e("* * * 13 *").contains("month field has 13"));
        assert!(e("* * * * FUNDAY").contains("day-of-week field has \"FUNDAY\""));
        assert!(e("*/0 * * * *").contains("step of 0"));
        assert!(e("5-1 * * * *").contains("backwards"));
        assert!(e("* * * *").contains("has 4 fields"));
        assert!(e("@sometimes").contains("unknown macro"));
        assert!(
            time_zone("Mars/Olympus")
                .unwrap_err()
                .contains("spec.timeZone \"Mars/Olympus\"")
        );
    }

    #[test]
    fn missed_fires_catch_up_once_within_the_deadline() {
        let tz = TimeZone::UTC;
        let cron = Cron::parse("0 * * * *").unwrap();
        let since = at("2026-06-01T00:00", &tz);
        // Down for five hours: one catch-up (the latest), not five.
        let d = due(&cron, &tz, since, at("2026-06-01T05:10", &tz), Some(3600));
        assert_eq!(
            d.fire.map(|t| local(t, &tz)).as_deref(),
            Some("2026-06-01 05:00 UTC")
        );
        assert_eq!(
            d.next.map(|t| local(t, &tz)).as_deref(),
            Some("2026-06-01 06:00 UTC")
        );
        // The latest fire is older than the deadline: skipped, said so.
        let d = due(&cron, &tz, since, at("2026-06-01T05:10", &tz), Some(300));
        assert_eq!(
            (d.fire, d.skipped.map(|t| local(t, &tz))),
            (None, Some("2026-06-01 05:00 UTC".into()))
        );
        // Nothing due between fires.
        let d = due(
            &cron,
            &tz,
            at("2026-06-01T05:00", &tz),
            at("2026-06-01T05:30", &tz),
            None,
        );
        assert_eq!(d.fire, None);
        // A monthly schedule missed long ago is found without walking every minute.
        let monthly = Cron::parse("@monthly").unwrap();
        let d = due(
            &monthly,
            &tz,
            at("2025-01-15T00:00", &tz),
            at("2026-06-20T00:00", &tz),
            None,
        );
        assert_eq!(
            d.fire.map(|t| local(t, &tz)).as_deref(),
            Some("2026-06-01 00:00 UTC")
        );
    }

    #[test]
    fn names_and_jitter_are_deterministic() {
        let t = at("2026-11-23T02:30:00", &TimeZone::UTC);
        assert_eq!(backup_name("nightly", t), "nightly-20261123-023000");
        assert_eq!(jitter_seconds("uid-1", 300), jitter_seconds("uid-1", 300));
        assert!(jitter_seconds("uid-1", 300) <= 300);
        assert_eq!(jitter_seconds("uid-1", 0), 0);
        let spread: BTreeSet<u32> = (0..50)
            .map(|i| jitter_seconds(&format!("uid-{i}"), 3600))
            .collect();
        assert!(
            spread.len() > 40,
            "different schedules get different delays"
        );
    }
}
