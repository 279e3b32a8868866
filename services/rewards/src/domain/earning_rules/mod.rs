//! The earning-rules engine: rules are data (versioned, valid within a
//! window), evaluated by pure functions. Integer arithmetic only:
//! multipliers in basis points, one rounding step per computed amount under
//! the program's rounding mode.
//!
//! A purchase earns, per line: the base (policy points per currency unit),
//! the tier multiplier's extra (member's multiplier from TierChanged), then
//! each matching purchase rule's extra (multiplier on the base, points per
//! unit, or a fixed bonus spread over the matching lines), each cut to its
//! caps. What each line earned is kept so refunds reverse exactly that.

mod behaviour;
pub mod parse;
mod purchase;

pub use behaviour::{BehaviourFacts, evaluate_behaviour, next_streak};
pub use parse::rule_from_proto;
pub use purchase::{Line, PurchaseFacts, evaluate_purchase};

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc, Weekday};

/// Basis points of "once": 10000 bp = 1x.
pub const ONE_X_BP: i64 = 10_000;

/// How a fraction of points is rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    Floor,
    HalfUp,
    Ceil,
}

impl Rounding {
    /// `num / den` rounded, for `num >= 0`, `den > 0` (i128: no overflow on
    /// amounts times rates).
    pub fn div(self, num: i128, den: i128) -> i64 {
        debug_assert!(num >= 0 && den > 0);
        let q = match self {
            Self::Floor => num / den,
            Self::HalfUp => (2 * num + den) / (2 * den),
            Self::Ceil => (num + den - 1) / den,
        };
        i64::try_from(q).unwrap_or(i64::MAX)
    }
}

/// What a purchase rule awards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reward {
    /// Extra share of the matching lines' base points (10000 = base once more).
    ExtraMultiplierBp(i64),
    /// Extra points per currency unit of the matching lines.
    ExtraPointsPerUnit(i64),
    /// A fixed bonus per matching order, spread over its matching lines.
    Fixed(i64),
}

/// Which purchases a rule applies to; empty parts match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurchaseCondition {
    pub skus: Vec<String>,
    pub categories: Vec<String>,
    pub channels: Vec<String>,
    pub store_ids: Vec<String>,
    pub tiers: Vec<String>,
    pub weekdays: Vec<Weekday>,
    pub date_from: Option<NaiveDate>,
    pub date_to: Option<NaiveDate>,
    pub min_order_minor: i64,
    /// Only the member's n-th purchase (0: any).
    pub nth_purchase: u32,
}

/// A rewarded behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    CheckIn,
    ReviewSubmitted,
    SurveyCompleted,
    ReferralQualified,
    Birthday,
    ProfileCompleted,
}

impl Behaviour {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CheckIn => "check_in",
            Self::ReviewSubmitted => "review_submitted",
            Self::SurveyCompleted => "survey_completed",
            Self::ReferralQualified => "referral_qualified",
            Self::Birthday => "birthday",
            Self::ProfileCompleted => "profile_completed",
        }
    }
}

/// What a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleKind {
    Purchase {
        condition: PurchaseCondition,
        reward: Reward,
    },
    Behaviour {
        behaviour: Behaviour,
        points: i64,
        /// (streak length in days, bonus on that day).
        streak_bonuses: Vec<(u32, i64)>,
    },
}

/// Period of a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapPeriod {
    Day,
    Month,
    Lifetime,
}

/// At most `max_points` from one rule per member per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub period: CapPeriod,
    pub max_points: i64,
}

/// An earning rule (one version of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub version: i64,
    pub name: String,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    pub enabled: bool,
    pub kind: RuleKind,
    pub caps: Vec<Cap>,
}

impl Rule {
    /// Enabled and within its validity window at `at` (until is exclusive).
    pub fn applies_at(&self, at: DateTime<Utc>) -> bool {
        self.enabled
            && self.valid_from.is_none_or(|f| f <= at)
            && self.valid_until.is_none_or(|u| at < u)
    }

    /// Points this rule may still give, given what it gave already
    /// (`None`: uncapped).
    pub fn cap_room(&self, used: &CapUsage) -> Option<i64> {
        self.caps
            .iter()
            .map(|c| (c.max_points - used.get(&self.id, c.period)).max(0))
            .min()
    }
}

/// Points each rule already gave the member, per cap period (the current
/// local day and month, and ever).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapUsage(pub HashMap<(String, CapPeriod), i64>);

impl CapUsage {
    pub fn get(&self, rule_id: &str, period: CapPeriod) -> i64 {
        self.0
            .get(&(rule_id.to_owned(), period))
            .copied()
            .unwrap_or(0)
    }

    pub fn add(&mut self, rule_id: &str, points: i64) {
        for p in [CapPeriod::Day, CapPeriod::Month, CapPeriod::Lifetime] {
            *self.0.entry((rule_id.to_owned(), p)).or_insert(0) += points;
        }
    }
}

/// What one rule (or the base, or the tier) contributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// Rule id; "base" and "tier" for the policy's base and the tier.
    pub rule_id: String,
    pub version: i64,
    pub name: String,
    pub points: i64,
    /// Points cut by caps.
    pub capped: i64,
    pub detail: String,
}

/// The result of an evaluation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluation {
    pub total: i64,
    /// Points per line id, in line order.
    pub lines: Vec<(String, i64)>,
    pub applications: Vec<Application>,
}

impl Evaluation {
    /// The rules (not base/tier) that gave points, for the ledger's cause.
    pub fn rule_refs(&self) -> Vec<crate::domain::ledger::RuleRef> {
        self.applications
            .iter()
            .filter(|a| a.version > 0 && a.points > 0)
            .map(|a| crate::domain::ledger::RuleRef {
                rule_id: a.rule_id.clone(),
                version: a.version,
            })
            .collect()
    }
}

/// Splits `total` over `weights` in proportion (largest remainder, ties to
/// the earlier item); the parts always sum to `total`. All-zero weights
/// give everything to the first item.
pub fn allocate(total: i64, weights: &[i64]) -> Vec<i64> {
    if weights.is_empty() {
        return Vec::new();
    }
    let sum: i128 = weights.iter().map(|w| i128::from((*w).max(0))).sum();
    if sum == 0 {
        let mut parts = vec![0; weights.len()];
        parts[0] = total;
        return parts;
    }
    let t = i128::from(total);
    let mut parts: Vec<i64> = weights
        .iter()
        .map(|w| i64::try_from(t * i128::from((*w).max(0)) / sum).unwrap_or(0))
        .collect();
    let mut rest = total - parts.iter().sum::<i64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // remainders, largest first
    order.sort_by_key(|&i| std::cmp::Reverse(t * i128::from(weights[i].max(0)) % sum));
    for i in order.into_iter().cycle() {
        if rest == 0 {
            break;
        }
        parts[i] += 1;
        rest -= 1;
    }
    parts
}

#[cfg(test)]
mod tests;
