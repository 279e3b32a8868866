//! Badge rules: a badge is earned when every one of its conditions holds
//! over a member's counters. Counters only grow (refunds do not take a
//! badge back: a badge marks something that happened).

use std::collections::HashSet;

/// A counter kept per member from events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    Purchases,
    Reviews,
    CheckIns,
    CheckInStreak,
}

impl Counter {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchases => "purchases",
            Self::Reviews => "reviews",
            Self::CheckIns => "check_ins",
            Self::CheckInStreak => "check_in_streak",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Purchases,
            Self::Reviews,
            Self::CheckIns,
            Self::CheckInStreak,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// One condition: `counter >= at_least`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Condition {
    pub counter: Counter,
    pub at_least: i64,
}

/// A member's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub purchases: i64,
    pub reviews: i64,
    pub check_ins: i64,
    /// Longest streak seen (a broken streak does not lower it).
    pub best_streak: i64,
}

impl Counters {
    pub fn get(&self, c: Counter) -> i64 {
        match c {
            Counter::Purchases => self.purchases,
            Counter::Reviews => self.reviews,
            Counter::CheckIns => self.check_ins,
            Counter::CheckInStreak => self.best_streak,
        }
    }
}

/// Most conditions a badge may have.
pub const MAX_CONDITIONS: usize = 5;

/// Checks a rule when it is defined: 1..=5 conditions, one per counter,
/// positive thresholds. Returns the violations as (index, message).
pub fn validate(conditions: &[Condition]) -> Vec<(Option<usize>, String)> {
    let mut problems = Vec::new();
    if conditions.is_empty() || conditions.len() > MAX_CONDITIONS {
        problems.push((None, format!("must have 1 to {MAX_CONDITIONS} conditions")));
    }
    let mut seen = HashSet::new();
    for (i, c) in conditions.iter().enumerate() {
        if c.at_least <= 0 {
            problems.push((Some(i), "at_least must be positive".to_owned()));
        }
        if !seen.insert(c.counter) {
            problems.push((
                Some(i),
                "counter is already used by another condition".to_owned(),
            ));
        }
    }
    problems
}

/// Whether every condition holds.
pub fn earned(conditions: &[Condition], counters: &Counters) -> bool {
    !conditions.is_empty()
        && conditions
            .iter()
            .all(|c| counters.get(c.counter) >= c.at_least)
}

/// Codes of the badges earned now and not held yet, in definition order.
pub fn newly_earned<'a>(
    badges: &'a [(String, Vec<Condition>)],
    counters: &Counters,
    held: &HashSet<String>,
) -> Vec<&'a str> {
    badges
        .iter()
        .filter(|(code, rule)| !held.contains(code) && earned(rule, counters))
        .map(|(code, _)| code.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cond(counter: Counter, at_least: i64) -> Condition {
        Condition { counter, at_least }
    }

    #[test]
    fn every_condition_must_hold() {
        let rule = [cond(Counter::Purchases, 5), cond(Counter::Reviews, 1)];
        let mut c = Counters {
            purchases: 5,
            ..Counters::default()
        };
        assert!(!earned(&rule, &c));
        c.reviews = 1;
        assert!(earned(&rule, &c));
        assert!(!earned(&[], &c));
    }

    #[test]
    fn streak_badge_uses_the_best_streak() {
        let rule = [cond(Counter::CheckInStreak, 7)];
        let c = Counters {
            check_ins: 30,
            best_streak: 6,
            ..Counters::default()
        };
        assert!(!earned(&rule, &c));
        assert!(earned(
            &rule,
            &Counters {
                best_streak: 7,
                ..c
            }
        ));
    }

    #[test]
    fn held_badges_are_not_earned_again() {
        let badges = vec![
            ("first".to_owned(), vec![cond(Counter::Purchases, 1)]),
            ("tenth".to_owned(), vec![cond(Counter::Purchases, 10)]),
            ("critic".to_owned(), vec![cond(Counter::Reviews, 1)]),
        ];
        let c = Counters {
            purchases: 10,
            ..Counters::default()
        };
        let held: HashSet<String> = ["first".to_owned()].into();
        assert_eq!(newly_earned(&badges, &c, &held), ["tenth"]);
    }

    #[test]
    fn rules_are_validated() {
        assert!(validate(&[cond(Counter::Reviews, 3)]).is_empty());
        assert_eq!(validate(&[]).len(), 1);
        let bad = validate(&[cond(Counter::Reviews, 0), cond(Counter::Reviews, 2)]);
        assert_eq!(
            bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [Some(0), Some(1)]
        );
        for c in [
            Counter::Purchases,
            Counter::Reviews,
            Counter::CheckIns,
            Counter::CheckInStreak,
        ] {
            assert_eq!(Counter::parse(c.as_str()), Some(c));
        }
    }

    proptest! {
        #[test]
        fn earning_is_monotone_in_counters(
            p in 0i64..50, r in 0i64..50, k in 0i64..50, s in 0i64..50,
            tp in 1i64..50, tr in 1i64..50, more in 0i64..10,
        ) {
            let rule = [cond(Counter::Purchases, tp), cond(Counter::Reviews, tr)];
            let before = Counters { purchases: p, reviews: r, check_ins: k, best_streak: s };
            let after = Counters { purchases: p + more, reviews: r + more, ..before };
            prop_assert_eq!(earned(&rule, &before), p >= tp && r >= tr);
            if earned(&rule, &before) {
                prop_assert!(earned(&rule, &after));
            }
        }
    }
}
