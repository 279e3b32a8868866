//! Tier rules: which tier a qualifying value reaches, immediate upgrades,
//! the one-level soft landing at the evaluation date, progress towards the
//! next tier, and the calendar of windows and evaluation dates in the
//! program's time zone.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeDelta, Utc};

use loyalty_common::calendar::ProgramTz;

use super::program::{Evaluation, Metric, Tier, TierRules, Window};

/// Start of the qualifying window in force at `at`. Rolling N months: at
/// local date D the window covers local dates after D minus N months (the
/// day exactly N months back no longer counts). Calendar year: local
/// January 1st of the current year.
pub fn window_start(window: Window, cal: &ProgramTz, at: DateTime<Utc>) -> DateTime<Utc> {
    let today = cal.local_date(at);
    let first = match window {
        Window::RollingMonths(n) => today
            .checked_sub_months(Months::new(n))
            .and_then(|d| d.checked_add_days(Days::new(1)))
            .unwrap_or(NaiveDate::MIN),
        Window::CalendarYear => NaiveDate::from_ymd_opt(today.year(), 1, 1).unwrap_or(today),
    };
    cal.start_of_day(first)
}

/// The next evaluation date after a member reached or kept a tier at
/// `from`: local midnight N months later (anniversary), or the next local
/// January 1st.
pub fn next_evaluation(policy: Evaluation, cal: &ProgramTz, from: DateTime<Utc>) -> DateTime<Utc> {
    let day = cal.local_date(from);
    let date = match policy {
        Evaluation::AnniversaryMonths(n) => day.checked_add_months(Months::new(n)),
        Evaluation::CalendarYearEnd => NaiveDate::from_ymd_opt(day.year() + 1, 1, 1),
    };
    cal.start_of_day(date.unwrap_or(NaiveDate::MAX))
}

/// The review at instant `due` judges the window that ends just before it
/// (for a calendar-year window reviewed on January 1st: the year that ended).
pub fn review_window(
    rules: &TierRules,
    cal: &ProgramTz,
    due: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let just_before = due - TimeDelta::microseconds(1);
    (window_start(rules.window, cal, just_before), due)
}

/// The highest tier level whose threshold `value` reaches.
pub fn qualifying_level(tiers: &[Tier], value: i64) -> usize {
    tiers
        .iter()
        .rposition(|t| value >= t.threshold)
        .unwrap_or(0)
}

/// After new activity: the level to upgrade to, if the value reaches a
/// tier above the current one. Never a downgrade.
pub fn upgrade(tiers: &[Tier], current: usize, value: i64) -> Option<usize> {
    let reached = qualifying_level(tiers, value);
    (reached > current).then_some(reached)
}

/// What a review at the evaluation date decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    /// The value keeps (or reaches) this level; unchanged when equal.
    Keep(usize),
    /// Below the threshold: down to this level, at most one below.
    Downgrade(usize),
    /// The value reaches a higher level (activity the upgrade path missed).
    Upgrade(usize),
}

/// The review at the evaluation date: keep when the value still reaches
/// the current tier; otherwise go down to the tier it reaches, but at most
/// one level (soft landing).
pub fn review(tiers: &[Tier], current: usize, value: i64) -> Review {
    let reached = qualifying_level(tiers, value);
    match reached.cmp(&current) {
        std::cmp::Ordering::Equal => Review::Keep(current),
        std::cmp::Ordering::Greater => Review::Upgrade(reached),
        std::cmp::Ordering::Less => Review::Downgrade(reached.max(current.saturating_sub(1))),
    }
}

/// One qualifying activity row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub kind: ActivityKind,
    pub amount: i64,
    pub occurred_at: DateTime<Utc>,
}

/// Where an activity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityKind {
    Purchase,
    Refund,
    Points,
}

impl ActivityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::Refund => "refund",
            Self::Points => "points",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "purchase" => Some(Self::Purchase),
            "refund" => Some(Self::Refund),
            "points" => Some(Self::Points),
            _ => None,
        }
    }
}

/// The qualifying value of activity in `[from, to)` under `metric`: spend
/// is purchases plus (negative) refunds, never below 0; points are points;
/// orders count purchases.
pub fn qualifying_value<'a>(
    metric: Metric,
    activity: impl IntoIterator<Item = &'a Activity>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> i64 {
    let mut total: i64 = 0;
    for a in activity {
        if a.occurred_at < from || a.occurred_at >= to {
            continue;
        }
        let add = match (metric, a.kind) {
            (Metric::Spend, ActivityKind::Purchase | ActivityKind::Refund)
            | (Metric::Points, ActivityKind::Points) => a.amount,
            (Metric::OrderCount, ActivityKind::Purchase) => 1,
            _ => 0,
        };
        total = total.saturating_add(add);
    }
    total.max(0)
}

/// Progress of a member towards the next tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub current: usize,
    pub next: Option<usize>,
    pub value: i64,
    pub remaining_to_next: i64,
    pub percent_to_next: i32,
    pub remaining_to_keep: i64,
}

/// Progress from the value in the current window and the part of it that
/// will still be in the window at the evaluation date.
pub fn progress(
    tiers: &[Tier],
    current: usize,
    value: i64,
    still_counting_at_review: i64,
) -> Progress {
    let next = (current + 1 < tiers.len()).then_some(current + 1);
    let (remaining_to_next, percent_to_next) = match next {
        Some(n) => {
            let threshold = tiers[n].threshold;
            let pct = (i128::from(value.max(0)) * 100 / i128::from(threshold.max(1))).clamp(0, 100);
            ((threshold - value).max(0), pct as i32)
        }
        None => (0, 100),
    };
    Progress {
        current,
        next,
        value,
        remaining_to_next,
        percent_to_next,
        remaining_to_keep: (tiers[current].threshold - still_counting_at_review).max(0),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use std::collections::BTreeMap;

    use crate::domain::program::Privilege;

    /// Asia/Shanghai: UTC+8 all year.
    pub(crate) fn sh() -> ProgramTz {
        ProgramTz::parse("tz", "Asia/Shanghai").unwrap()
    }

    pub(crate) fn tiers(thresholds: &[i64]) -> Vec<Tier> {
        thresholds
            .iter()
            .enumerate()
            .map(|(i, t)| Tier {
                code: format!("T{i}"),
                name: format!("t{i}"),
                threshold: *t,
                privileges: vec![Privilege {
                    benefit_code: "points_multiplier_bp".into(),
                    value: 10_000 + 5_000 * i as i64,
                    parameters: BTreeMap::default(),
                }],
            })
            .collect()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn upgrade_happens_when_a_threshold_is_reached() {
        let t = tiers(&[0, 1000, 5000]);
        assert_eq!(upgrade(&t, 0, 999), None);
        assert_eq!(upgrade(&t, 0, 1000), Some(1));
        assert_eq!(upgrade(&t, 0, 9000), Some(2), "skips levels upwards");
        assert_eq!(upgrade(&t, 2, 0), None, "never downgrades");
    }

    #[test]
    fn review_lands_softly_one_level_down() {
        let t = tiers(&[0, 1000, 5000, 10_000]);
        assert_eq!(review(&t, 3, 0), Review::Downgrade(2), "one level at most");
        assert_eq!(review(&t, 3, 6000), Review::Downgrade(2));
        assert_eq!(review(&t, 3, 10_000), Review::Keep(3));
        assert_eq!(review(&t, 1, 0), Review::Downgrade(0));
        assert_eq!(review(&t, 0, 0), Review::Keep(0));
        assert_eq!(review(&t, 1, 7000), Review::Upgrade(2));
    }

    #[test]
    fn rolling_window_drops_the_day_exactly_n_months_back_in_local_time() {
        // 2026-03-15 01:00 in UTC+8 is still 2026-03-14 17:00 UTC.
        let at = utc("2026-03-14T17:00:00Z");
        let start = window_start(Window::RollingMonths(12), &sh(), at);
        // local 2025-03-16 00:00 (+8) = 2025-03-15 16:00 UTC
        assert_eq!(start, utc("2025-03-15T16:00:00Z"));
        // a purchase at local 2025-03-15 23:59 is exactly 12 months old: out
        let edge = utc("2025-03-15T15:59:00Z");
        assert!(edge < start);
        let acts = [Activity {
            kind: ActivityKind::Purchase,
            amount: 100,
            occurred_at: edge,
        }];
        assert_eq!(qualifying_value(Metric::Spend, &acts, start, at), 0);
        // one day earlier it still counted
        let day_before = at - TimeDelta::days(1);
        let start_before = window_start(Window::RollingMonths(12), &sh(), day_before);
        assert_eq!(
            qualifying_value(Metric::Spend, &acts, start_before, day_before),
            100
        );
    }

    #[test]
    fn month_end_windows_clamp() {
        // local 2026-03-31 - 1 month = 2026-02-28, window from 2026-03-01
        let at =
            sh().start_of_day(NaiveDate::from_ymd_opt(2026, 3, 31).unwrap()) + TimeDelta::hours(12);
        assert_eq!(
            sh().local_date(window_start(Window::RollingMonths(1), &sh(), at)),
            NaiveDate::from_ymd_opt(2026, 3, 1).unwrap()
        );
    }

    #[test]
    fn calendar_year_window_starts_at_local_new_year() {
        // 2025-12-31 16:30 UTC is 2026-01-01 00:30 in UTC+8: the new year
        let at = utc("2025-12-31T16:30:00Z");
        assert_eq!(
            window_start(Window::CalendarYear, &sh(), at),
            utc("2025-12-31T16:00:00Z")
        );
        let at = utc("2025-12-31T15:30:00Z");
        assert_eq!(
            window_start(Window::CalendarYear, &sh(), at),
            utc("2024-12-31T16:00:00Z")
        );
    }

    #[test]
    fn evaluation_dates_are_local_midnights() {
        let from = utc("2026-01-31T20:00:00Z"); // local 2026-02-01 04:00
        assert_eq!(
            next_evaluation(Evaluation::AnniversaryMonths(12), &sh(), from),
            utc("2027-01-31T16:00:00Z")
        );
        assert_eq!(
            next_evaluation(Evaluation::CalendarYearEnd, &sh(), from),
            utc("2026-12-31T16:00:00Z")
        );
    }

    #[test]
    fn review_of_a_calendar_year_judges_the_year_that_ended() {
        let rules = TierRules {
            tiers: tiers(&[0, 100]),
            metric: Metric::Spend,
            window: Window::CalendarYear,
            evaluation: Evaluation::CalendarYearEnd,
        };
        let due = utc("2026-12-31T16:00:00Z"); // local 2027-01-01
        let (from, to) = review_window(&rules, &sh(), due);
        assert_eq!(from, utc("2025-12-31T16:00:00Z"));
        assert_eq!(to, due);
    }

    #[test]
    fn refunds_lower_spend_and_orders_count_purchases() {
        let t0 = utc("2026-01-01T00:00:00Z");
        let acts = [
            Activity {
                kind: ActivityKind::Purchase,
                amount: 500,
                occurred_at: t0,
            },
            Activity {
                kind: ActivityKind::Purchase,
                amount: 300,
                occurred_at: t0,
            },
            Activity {
                kind: ActivityKind::Refund,
                amount: -200,
                occurred_at: t0,
            },
            Activity {
                kind: ActivityKind::Points,
                amount: 70,
                occurred_at: t0,
            },
        ];
        let end = t0 + TimeDelta::days(1);
        assert_eq!(qualifying_value(Metric::Spend, &acts, t0, end), 600);
        assert_eq!(qualifying_value(Metric::OrderCount, &acts, t0, end), 2);
        assert_eq!(qualifying_value(Metric::Points, &acts, t0, end), 70);
        assert_eq!(
            qualifying_value(Metric::Spend, &acts, end, end + TimeDelta::days(1)),
            0
        );
    }

    #[test]
    fn progress_reports_remaining_percent_and_what_keeps_the_tier() {
        let t = tiers(&[0, 1000, 5000]);
        let p = progress(&t, 1, 2500, 400);
        assert_eq!(p.next, Some(2));
        assert_eq!(p.remaining_to_next, 2500);
        assert_eq!(p.percent_to_next, 50);
        assert_eq!(p.remaining_to_keep, 600);
        let top = progress(&t, 2, 9000, 9000);
        assert_eq!(
            (
                top.next,
                top.remaining_to_next,
                top.percent_to_next,
                top.remaining_to_keep
            ),
            (None, 0, 100, 0)
        );
    }

    /// Property: for any value, upgrades only go up, reviews move at most
    /// one level down, and a value at or over the current threshold is
    /// always kept.
    #[test]
    fn property_review_and_upgrade_invariants() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(0x71e5);
        for _ in 0..5000 {
            let n = rng.random_range(1..7);
            let mut th = vec![0i64];
            for _ in 1..n {
                let last = *th.last().unwrap();
                th.push(last + rng.random_range(1..10_000));
            }
            let t = tiers(&th);
            let current = rng.random_range(0..n);
            let value = rng.random_range(-100..60_000);
            if let Some(up) = upgrade(&t, current, value) {
                assert!(up > current && value >= t[up].threshold);
            }
            match review(&t, current, value) {
                Review::Keep(l) => {
                    assert!(l == current && (value >= t[current].threshold || current == 0));
                }
                Review::Downgrade(l) => assert!(l + 1 == current && value < t[current].threshold),
                Review::Upgrade(l) => assert!(l > current),
            }
        }
    }
}
