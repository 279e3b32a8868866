//! Evaluation of a purchase.

use chrono::{DateTime, Datelike, NaiveDate, Utc};

use super::{
    Application, CapUsage, Evaluation, ONE_X_BP, PurchaseCondition, Reward, Rounding, Rule,
    RuleKind, allocate,
};

/// One line of a purchase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub line_id: String,
    pub sku: String,
    pub category: String,
    /// Line amount in minor units (>= 0).
    pub amount_minor: i64,
}

/// Everything a purchase's evaluation depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseFacts {
    pub lines: Vec<Line>,
    pub channel: String,
    pub store_id: String,
    pub purchased_at: DateTime<Utc>,
    /// Local date of the purchase in the program's time zone.
    pub local_date: NaiveDate,
    pub tier: String,
    /// The member's tier multiplier in basis points (10000 = none).
    pub multiplier_bp: i64,
    /// Which purchase of the member this is (1 = first).
    pub ordinal: u32,
    pub base_points_per_unit: i64,
    pub unit_minor: i64,
    pub rounding: Rounding,
}

impl PurchaseFacts {
    fn order_minor(&self) -> i64 {
        self.lines.iter().map(|l| l.amount_minor).sum()
    }
}

fn matches_order(c: &PurchaseCondition, f: &PurchaseFacts) -> bool {
    (c.channels.is_empty() || c.channels.contains(&f.channel))
        && (c.store_ids.is_empty() || c.store_ids.contains(&f.store_id))
        && (c.tiers.is_empty() || c.tiers.contains(&f.tier))
        && (c.weekdays.is_empty() || c.weekdays.contains(&f.local_date.weekday()))
        && c.date_from.is_none_or(|d| d <= f.local_date)
        && c.date_to.is_none_or(|d| f.local_date <= d)
        && f.order_minor() >= c.min_order_minor
        && (c.nth_purchase == 0 || c.nth_purchase == f.ordinal)
}

fn matches_line(c: &PurchaseCondition, l: &Line) -> bool {
    (c.skus.is_empty() || c.skus.contains(&l.sku))
        && (c.categories.is_empty() || c.categories.contains(&l.category))
}

/// What a purchase earns under `rules` (only purchase rules that apply at
/// the purchase instant count), given what capped rules already gave.
/// Pure: the same facts always give the same answer.
pub fn evaluate_purchase(rules: &[Rule], facts: &PurchaseFacts, used: &CapUsage) -> Evaluation {
    let r = facts.rounding;
    let unit = i128::from(facts.unit_minor.max(1));
    let base: Vec<i64> = facts
        .lines
        .iter()
        .map(|l| {
            r.div(
                i128::from(l.amount_minor.max(0)) * i128::from(facts.base_points_per_unit),
                unit,
            )
        })
        .collect();
    let mut line_points = base.clone();
    let mut applications = vec![Application {
        rule_id: "base".into(),
        version: 0,
        name: "base earning".into(),
        points: base.iter().sum(),
        capped: 0,
        detail: format!(
            "{} point(s) per {} minor units",
            facts.base_points_per_unit, facts.unit_minor
        ),
    }];
    let tier_extra_bp = facts.multiplier_bp.max(0) - ONE_X_BP;
    if tier_extra_bp > 0 {
        let extra: Vec<i64> = base
            .iter()
            .map(|b| {
                r.div(
                    i128::from(*b) * i128::from(tier_extra_bp),
                    i128::from(ONE_X_BP),
                )
            })
            .collect();
        for (p, e) in line_points.iter_mut().zip(&extra) {
            *p += e;
        }
        applications.push(Application {
            rule_id: "tier".into(),
            version: 0,
            name: format!("tier {}", facts.tier),
            points: extra.iter().sum(),
            capped: 0,
            detail: format!("tier multiplier {} bp", facts.multiplier_bp),
        });
    }
    // what this evaluation gives counts towards later rules' caps too
    let mut used = used.clone();
    let mut sorted: Vec<&Rule> = rules
        .iter()
        .filter(|r| r.applies_at(facts.purchased_at))
        .collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    for rule in sorted {
        let RuleKind::Purchase { condition, reward } = &rule.kind else {
            continue;
        };
        if !matches_order(condition, facts) {
            continue;
        }
        let matching: Vec<bool> = facts
            .lines
            .iter()
            .map(|l| matches_line(condition, l))
            .collect();
        if !matching.iter().any(|m| *m) {
            continue;
        }
        let (raw, detail): (Vec<i64>, String) = match *reward {
            Reward::ExtraMultiplierBp(bp) => (
                base.iter()
                    .zip(&matching)
                    .map(|(b, m)| {
                        if *m {
                            r.div(i128::from(*b) * i128::from(bp), i128::from(ONE_X_BP))
                        } else {
                            0
                        }
                    })
                    .collect(),
                format!("extra {bp} bp of base"),
            ),
            Reward::ExtraPointsPerUnit(n) => (
                facts
                    .lines
                    .iter()
                    .zip(&matching)
                    .map(|(l, m)| {
                        if *m {
                            r.div(i128::from(l.amount_minor.max(0)) * i128::from(n), unit)
                        } else {
                            0
                        }
                    })
                    .collect(),
                format!("extra {n} point(s) per unit"),
            ),
            Reward::Fixed(n) => {
                let weights: Vec<i64> = facts
                    .lines
                    .iter()
                    .zip(&matching)
                    .map(|(l, m)| if *m { l.amount_minor.max(0) } else { 0 })
                    .collect();
                // all-zero amounts: the first matching line takes it
                let first = matching.iter().position(|m| *m).unwrap_or(0);
                let parts = if weights.iter().all(|w| *w == 0) {
                    let mut p = vec![0; weights.len()];
                    p[first] = n;
                    p
                } else {
                    allocate(n, &weights)
                };
                (parts, format!("fixed bonus {n}"))
            }
        };
        let want: i64 = raw.iter().sum();
        let granted = rule.cap_room(&used).map_or(want, |room| want.min(room));
        used.add(&rule.id, granted);
        let parts = if granted == want {
            raw
        } else {
            allocate(granted, &raw)
        };
        for (p, e) in line_points.iter_mut().zip(&parts) {
            *p += e;
        }
        applications.push(Application {
            rule_id: rule.id.clone(),
            version: rule.version,
            name: rule.name.clone(),
            points: granted,
            capped: want - granted,
            detail,
        });
    }
    Evaluation {
        total: line_points.iter().sum(),
        lines: facts
            .lines
            .iter()
            .map(|l| l.line_id.clone())
            .zip(line_points)
            .collect(),
        applications,
    }
}
